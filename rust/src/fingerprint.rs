//! SQL statement fingerprints: a cache key under which statements that differ
//! only in literal values are equal (see `fingerprint` in
//! `hoopfast.core._python` for the rules; both implementations must produce
//! the same bytes for every input).
//!
//! A small hand-written lexer over PostgreSQL's lexical rules (scan.l,
//! assuming `standard_conforming_strings = on`) turns the text into a token
//! stream, each token a kind byte plus, for tokens whose text matters, its
//! length (unsigned LEB128) and the bytes. The key is the BLAKE2b-128 digest
//! of that stream. The lexer works on bytes and never panics: every index is
//! checked, unterminated quotes and comments become one verbatim token.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Prefix of the hashed token stream: versions the scheme.
const DOMAIN: &[u8] = b"hoopfast-fingerprint-1\0";

// Token kinds.
const K_WORD: u8 = b'w'; // keyword or unquoted identifier, ASCII-lowercased
const K_QIDENT: u8 = b'q'; // quoted identifier, verbatim with its quotes
const K_OP: u8 = b'o'; // operator or punctuation, verbatim
const K_SEMI: u8 = b';'; // statement separator
const K_PARAM: u8 = b'p'; // $n, its digits verbatim
const K_VERBATIM: u8 = b'v'; // string constant after UESCAPE, verbatim
const K_UNTERMINATED: u8 = b'u'; // unterminated quote/comment: rest of input
const K_STR: u8 = b's'; // '...', E'...', U&'...', $tag$...$tag$
const K_NSTR: u8 = b'n'; // N'...'
const K_BSTR: u8 = b'b'; // B'...'
const K_XSTR: u8 = b'x'; // X'...'
const K_INT4: u8 = b'i'; // integer constant that fits int4
const K_INT8: u8 = b'l'; // integer constant that fits int8
const K_NUMERIC: u8 = b'd'; // any other numeric constant

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b')
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_op_char(c: u8) -> bool {
    b"~!@#^&|`?+-*/%<>=".contains(&c)
}

/// String constant flavours that differ in how they end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Plain,
    Escape,
}

struct Lexer<'a> {
    s: &'a [u8],
    out: Vec<u8>,
    statements: usize,
    in_statement: bool,
    after_uescape: bool,
}

impl<'a> Lexer<'a> {
    fn at(&self, i: usize) -> u8 {
        self.s.get(i).copied().unwrap_or(0)
    }

    fn starts(&self, i: usize, prefix: &[u8]) -> bool {
        self.s.get(i..).is_some_and(|r| r.starts_with(prefix))
    }

    fn emit(&mut self, kind: u8, text: Option<&[u8]>) {
        if kind == K_SEMI {
            if self.in_statement {
                self.statements += 1;
            }
            self.in_statement = false;
        } else {
            self.in_statement = true;
        }
        self.after_uescape = false;
        self.out.push(kind);
        if let Some(t) = text {
            self.length(t.len());
            self.out.extend_from_slice(t);
        }
    }

    /// A token's length, as an unsigned LEB128 varint.
    fn length(&mut self, mut n: usize) {
        while n >= 0x80 {
            self.out.push((n & 0x7f) as u8 | 0x80);
            n >>= 7;
        }
        self.out.push(n as u8);
    }

    /// A keyword or identifier, ASCII-lowercased straight into the stream.
    fn emit_word(&mut self, word: &[u8]) {
        self.emit(K_WORD, None);
        self.length(word.len());
        self.out.extend(word.iter().map(u8::to_ascii_lowercase));
        self.after_uescape = word.eq_ignore_ascii_case(b"uescape");
    }

    fn rest(&self, start: usize) -> &'a [u8] {
        self.s.get(start..).unwrap_or_default()
    }

    /// End (exclusive) of the decimal integer `digit(_?digit)*` at `i`, if any.
    fn digits(&self, i: usize, radix: u32) -> Option<usize> {
        let ok = |c: u8| char::from(c).is_digit(radix);
        if !ok(self.at(i)) {
            return None;
        }
        let mut j = i + 1;
        loop {
            if ok(self.at(j)) {
                j += 1;
            } else if self.at(j) == b'_' && ok(self.at(j + 1)) {
                j += 2;
            } else {
                return Some(j);
            }
        }
    }

    /// The closing quote of a string body starting at `i` (just after the
    /// opening quote), or None if unterminated.
    fn close_quote(&self, mut i: usize, quote: u8, mode: Quote) -> Option<usize> {
        loop {
            let c = *self.s.get(i)?;
            if mode == Quote::Escape && c == b'\\' {
                i += 2;
            } else if c == quote {
                if self.at(i + 1) == quote {
                    i += 2;
                } else {
                    return Some(i);
                }
            } else {
                i += 1;
            }
        }
    }

    /// After a string constant's closing quote at `i - 1`: the position just
    /// after the opening quote of a continuation (whitespace and `--`
    /// comments including at least one newline, then a quote), if any.
    fn continuation(&self, mut i: usize) -> Option<usize> {
        let mut newline = false;
        loop {
            let c = self.at(i);
            if is_space(c) {
                newline |= c == b'\n' || c == b'\r';
                i += 1;
            } else if self.starts(i, b"--") {
                while i < self.s.len() && !matches!(self.s[i], b'\n' | b'\r') {
                    i += 1;
                }
            } else if c == b'\'' && newline {
                return Some(i + 1);
            } else {
                return None;
            }
        }
    }

    /// A quoted string constant whose body starts at `body`; `start` is where
    /// its prefix begins. Returns the end, or None if unterminated.
    fn string(&mut self, start: usize, body: usize, mode: Quote, kind: u8) -> Option<usize> {
        let mut i = body;
        let end = loop {
            let close = self.close_quote(i, b'\'', mode)? + 1;
            match self.continuation(close) {
                Some(next) => i = next,
                None => break close,
            }
        };
        self.literal(kind, start, end);
        Some(end)
    }

    fn literal(&mut self, kind: u8, start: usize, end: usize) {
        if self.after_uescape {
            let s = self.s;
            self.emit(K_VERBATIM, Some(&s[start..end]));
        } else {
            self.emit(kind, None);
        }
    }

    /// A numeric constant at `i` (a digit, or a dot before a digit).
    fn number(&mut self, i: usize) -> usize {
        if self.at(i) == b'0' {
            let radix = match self.at(i + 1) {
                b'x' | b'X' => 16,
                b'o' | b'O' => 8,
                b'b' | b'B' => 2,
                _ => 0,
            };
            if radix != 0 {
                let from = if self.at(i + 2) == b'_' { i + 3 } else { i + 2 };
                if let Some(end) = self.digits(from, radix) {
                    let kind = integer_kind(&self.s[i + 2..end], radix);
                    self.emit(kind, None);
                    return end;
                }
            }
        }
        let mut integer = true;
        let mut j = match self.digits(i, 10) {
            Some(end) => end,
            None => i, // a leading dot
        };
        if self.at(j) == b'.' && self.at(j + 1) != b'.' {
            integer = false;
            j = self.digits(j + 1, 10).unwrap_or(j + 1);
        }
        if matches!(self.at(j), b'e' | b'E') {
            let sign = usize::from(matches!(self.at(j + 1), b'+' | b'-'));
            if let Some(end) = self.digits(j + 1 + sign, 10) {
                integer = false;
                j = end;
            }
        }
        let kind = if integer {
            integer_kind(&self.s[i..j], 10)
        } else {
            K_NUMERIC
        };
        self.emit(kind, None);
        j
    }

    /// One token (or whitespace/comment) at `i`; returns where the next
    /// begins, or None when the rest of the input was consumed.
    fn step(&mut self, i: usize) -> Option<usize> {
        let s = self.s;
        let c = s[i];
        let c1 = self.at(i + 1);
        if is_space(c) {
            return Some(i + 1);
        }
        if c == b'-' && c1 == b'-' {
            let mut j = i;
            while j < s.len() && !matches!(s[j], b'\n' | b'\r') {
                j += 1;
            }
            return Some(j);
        }
        if c == b'/' && c1 == b'*' {
            let mut depth = 1usize;
            let mut j = i + 2;
            while j < s.len() {
                if s[j] == b'/' && self.at(j + 1) == b'*' {
                    depth += 1;
                    j += 2;
                } else if s[j] == b'*' && self.at(j + 1) == b'/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        return Some(j);
                    }
                } else {
                    j += 1;
                }
            }
            return None;
        }
        if c == b'\'' {
            return self.string(i, i + 1, Quote::Plain, K_STR);
        }
        if c == b'"' {
            let end = self.close_quote(i + 1, b'"', Quote::Plain)? + 1;
            self.emit(K_QIDENT, Some(&s[i..end]));
            return Some(end);
        }
        if is_ident_start(c) {
            if c1 == b'\'' {
                match c {
                    b'e' | b'E' => return self.string(i, i + 2, Quote::Escape, K_STR),
                    b'b' | b'B' => return self.string(i, i + 2, Quote::Plain, K_BSTR),
                    b'x' | b'X' => return self.string(i, i + 2, Quote::Plain, K_XSTR),
                    b'n' | b'N' => return self.string(i, i + 2, Quote::Plain, K_NSTR),
                    _ => {}
                }
            }
            if matches!(c, b'u' | b'U') && c1 == b'&' {
                match self.at(i + 2) {
                    b'\'' => return self.string(i, i + 3, Quote::Plain, K_STR),
                    b'"' => {
                        let end = self.close_quote(i + 3, b'"', Quote::Plain)? + 1;
                        self.emit(K_QIDENT, Some(&s[i..end]));
                        return Some(end);
                    }
                    _ => {}
                }
            }
            let mut j = i + 1;
            while j < s.len() && is_ident_cont(s[j]) {
                j += 1;
            }
            self.emit_word(&s[i..j]);
            return Some(j);
        }
        if c.is_ascii_digit() || (c == b'.' && c1.is_ascii_digit()) {
            return Some(self.number(i));
        }
        if c == b'$' {
            if c1.is_ascii_digit() {
                let mut j = i + 1;
                while self.at(j).is_ascii_digit() {
                    j += 1;
                }
                self.emit(K_PARAM, Some(&s[i + 1..j]));
                return Some(j);
            }
            let mut j = i + 1;
            if is_ident_start(c1) {
                j += 1;
                while j < s.len() && (is_ident_start(s[j]) || s[j].is_ascii_digit()) {
                    j += 1;
                }
            }
            if self.at(j) == b'$' {
                let delim = &s[i..=j];
                let body = j + 1;
                let found = self
                    .rest(body)
                    .windows(delim.len())
                    .position(|w| w == delim)?;
                let end = body + found + delim.len();
                self.literal(K_STR, i, end);
                return Some(end);
            }
            self.emit(K_OP, Some(b"$"));
            return Some(i + 1);
        }
        if c == b';' {
            self.emit(K_SEMI, None);
            return Some(i + 1);
        }
        if is_op_char(c) {
            let mut j = i + 1;
            while j < s.len()
                && is_op_char(s[j])
                && !self.starts(j, b"--")
                && !self.starts(j, b"/*")
            {
                j += 1;
            }
            self.emit(K_OP, Some(&s[i..j]));
            return Some(j);
        }
        let len = if matches!((c, c1), (b':', b':' | b'=') | (b'.', b'.')) {
            2
        } else {
            1
        };
        self.emit(K_OP, Some(&s[i..i + len]));
        Some(i + len)
    }
}

/// int4, int8 or numeric, as PostgreSQL types an integer constant.
fn integer_kind(digits: &[u8], radix: u32) -> u8 {
    let mut value: u64 = 0;
    for &d in digits {
        let Some(v) = char::from(d).to_digit(radix) else {
            continue; // an underscore separator
        };
        match value
            .checked_mul(u64::from(radix))
            .and_then(|x| x.checked_add(u64::from(v)))
        {
            Some(x) => value = x,
            None => return K_NUMERIC,
        }
    }
    if value <= i32::MAX as u64 {
        K_INT4
    } else if value <= i64::MAX as u64 {
        K_INT8
    } else {
        K_NUMERIC
    }
}

/// The normalized token stream of `sql` and its number of statements.
pub fn normalize(sql: &[u8]) -> (Vec<u8>, usize) {
    let mut lx = Lexer {
        s: sql,
        out: Vec::with_capacity(DOMAIN.len() + sql.len() * 2 + 16),
        statements: 0,
        in_statement: false,
        after_uescape: false,
    };
    lx.out.extend_from_slice(DOMAIN);
    let mut i = 0;
    while i < sql.len() {
        match lx.step(i) {
            Some(next) => i = next,
            None => {
                lx.emit(K_UNTERMINATED, Some(&sql[i..]));
                break;
            }
        }
    }
    if lx.in_statement {
        lx.statements += 1;
    }
    (lx.out, lx.statements)
}

/// An upper bound on how deeply PostgreSQL's parse tree of `sql` nests
/// (tokens, not levels: each level of a chain such as `1+1+...`, `a || b`,
/// `UNION ALL`, `JOIN` or `IS NULL` needs an operator or a word, and a
/// nested expression a bracket): the deepest brackets plus every binary
/// operator and every word but NULL, TRUE, FALSE and DEFAULT. Literals,
/// commas, dots and prefix operators (`-1`) add nothing, so a long
/// multi-row VALUES stays low.
pub fn nesting_bound(sql: &[u8]) -> usize {
    let (stream, _) = normalize(sql);
    let mut i = DOMAIN.len();
    let (mut depth, mut deepest, mut chained) = (0usize, 0usize, 0usize);
    // After an operand an operator is binary (a chain's link); a prefix
    // one (`-1`, `- - x`) nests on the grammar's own, bounded stack.
    let mut after_operand = false;
    while i < stream.len() {
        let kind = stream[i];
        i += 1;
        let text: &[u8] = if matches!(
            kind,
            K_WORD | K_QIDENT | K_OP | K_PARAM | K_VERBATIM | K_UNTERMINATED
        ) {
            let mut length = 0usize;
            let mut shift = 0;
            while i < stream.len() {
                let byte = stream[i];
                i += 1;
                length |= usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte < 0x80 {
                    break;
                }
            }
            let end = (i + length).min(stream.len());
            let text = &stream[i..end];
            i = end;
            text
        } else {
            &[]
        };
        after_operand = match kind {
            K_OP => match text {
                b"(" | b"[" => {
                    depth += 1;
                    deepest = deepest.max(depth);
                    false
                }
                b")" | b"]" => {
                    depth = depth.saturating_sub(1);
                    true
                }
                b"," | b"." | b";" => false,
                _ => {
                    chained += usize::from(after_operand);
                    false
                }
            },
            K_WORD => {
                chained += usize::from(!matches!(text, b"null" | b"true" | b"false" | b"default"));
                true
            }
            K_SEMI => false,
            _ => true,
        };
    }
    deepest + chained
}

/// (16-byte key, number of non-empty statements).
pub fn fingerprint(sql: &[u8]) -> ([u8; 16], usize) {
    let (stream, statements) = normalize(sql);
    (blake2b_128(&stream), statements)
}

// ---------------------------------------------------------------------------
// BLAKE2b (RFC 7693), unkeyed, 16-byte digest: the same as Python's
// hashlib.blake2b(data, digest_size=16).

const IV: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

const SIGMA: [[usize; 16]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

#[allow(clippy::many_single_char_names)]
fn g(v: &mut [u64; 16], a: usize, b: usize, c: usize, d: usize, x: u64, y: u64) {
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
    v[d] = (v[d] ^ v[a]).rotate_right(32);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(24);
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
    v[d] = (v[d] ^ v[a]).rotate_right(16);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(63);
}

fn compress(h: &mut [u64; 8], block: &[u8; 128], t: u128, last: bool) {
    let mut m = [0u64; 16];
    for (w, chunk) in m.iter_mut().zip(block.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    let mut v = [0u64; 16];
    v[..8].copy_from_slice(h);
    v[8..].copy_from_slice(&IV);
    v[12] ^= t as u64;
    v[13] ^= (t >> 64) as u64;
    if last {
        v[14] = !v[14];
    }
    for r in 0..12 {
        let s = &SIGMA[r % 10];
        g(&mut v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
        g(&mut v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
        g(&mut v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
        g(&mut v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
        g(&mut v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
        g(&mut v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
        g(&mut v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
        g(&mut v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for i in 0..8 {
        h[i] ^= v[i] ^ v[i + 8];
    }
}

/// BLAKE2b with a 16-byte digest and no key.
pub fn blake2b_128(data: &[u8]) -> [u8; 16] {
    let mut h = IV;
    h[0] ^= 0x0101_0000 ^ 16;
    let mut t: u128 = 0;
    let mut rest = data;
    while rest.len() > 128 {
        let (block, tail) = rest.split_at(128);
        let mut b = [0u8; 128];
        b.copy_from_slice(block);
        t += 128;
        compress(&mut h, &b, t, false);
        rest = tail;
    }
    let mut b = [0u8; 128];
    b[..rest.len()].copy_from_slice(rest);
    t += rest.len() as u128;
    compress(&mut h, &b, t, true);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&h[0].to_le_bytes());
    out[8..].copy_from_slice(&h[1].to_le_bytes());
    out
}

// ---------------------------------------------------------------------------

/// fingerprint(sql) -> (16-byte key, statement count)
#[pyfunction(name = "fingerprint")]
pub fn py_fingerprint<'py>(py: Python<'py>, sql: &str) -> (Bound<'py, PyBytes>, usize) {
    let (key, count) = fingerprint(sql.as_bytes());
    (PyBytes::new(py, &key), count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_bound_counts_links_not_data() {
        let bound = |sql: &str| nesting_bound(sql.as_bytes());
        assert_eq!(bound("SELECT 1+1+1"), 3); // SELECT, two links
        assert_eq!(bound("SELECT -1, - -2, 'a-b'"), 2); // a minus after a word counts
        let rows = vec!["(1,-2,NULL,'x',true)"; 30_000].join(",");
        assert_eq!(bound(&format!("INSERT INTO t VALUES {rows}")), 5);
        assert_eq!(bound("SELECT ((((1))))"), 5);
        assert_eq!(bound("SELECT a[1][2] FROM t WHERE x = 1 OR x = 2"), 11);
        assert_eq!(bound("SELECT 1 UNION ALL SELECT 2"), 4);
    }

    fn key(sql: &str) -> [u8; 16] {
        fingerprint(sql.as_bytes()).0
    }

    fn count(sql: &str) -> usize {
        fingerprint(sql.as_bytes()).1
    }

    #[test]
    fn blake2b_matches_reference() {
        // hashlib.blake2b(data, digest_size=16) for b"", b"abc" * 100, b"x" * 128.
        assert_eq!(hex(&blake2b_128(b"")), "cae66941d9efbd404e4d88758ea67670");
        assert_eq!(
            hex(&blake2b_128(&b"abc".repeat(100))),
            "a9ef5419348600c6473d41e3e6869ca2"
        );
        assert_eq!(
            hex(&blake2b_128(&[b'x'; 128])),
            "874acca82a22239ec64a3e70c3ae494e"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn literal_values_do_not_matter() {
        assert_eq!(
            key("SELECT * FROM t WHERE id = 1"),
            key("select  *  from T where ID=42 -- c")
        );
        assert_eq!(key("SELECT 'DROP TABLE x'"), key("SELECT 'hello'"));
        assert_eq!(
            key("DO $$ BEGIN DELETE FROM t; END $$"),
            key("DO $$ BEGIN SELECT 1; END $$")
        );
        assert_eq!(key("/* /* */ DROP TABLE t */ SELECT 1"), key("SELECT 1"));
        assert_eq!(key("SELECT E'a\\'b'"), key("SELECT 'x'"));
    }

    #[test]
    fn meaning_matters() {
        assert_ne!(key("SELECT * FROM t"), key("SELECT * FROM u"));
        assert_ne!(key("SELECT * FROM \"T\""), key("SELECT * FROM t"));
        assert_ne!(key("DELETE FROM t"), key("SELECT FROM t"));
        assert_ne!(key("SELECT 'DROP TABLE x'"), key("DROP TABLE x"));
        assert_ne!(key("SELECT 1e10"), key("SELECT 1"));
        assert_ne!(key("SELECT $1"), key("SELECT $2"));
        assert_ne!(key("SELECT 'a"), key("SELECT 'b"));
    }

    #[test]
    fn statement_counts() {
        assert_eq!(count("SELECT 1"), 1);
        assert_eq!(count("id = 1; DROP TABLE t"), 2);
        assert_eq!(count(";; SELECT 1 ;; -- x\n;"), 1);
        assert_eq!(count("SELECT E'\\'; DROP TABLE t; --'"), 1);
        assert_eq!(count("DO $$ BEGIN DELETE FROM t; END $$"), 1);
        assert_eq!(count(""), 0);
        assert_eq!(count("/* unterminated"), 1);
    }

    #[test]
    fn lexical_details() {
        // Quote continuation needs a newline; UESCAPE's string is kept.
        assert_eq!(key("SELECT 'a'\n 'b'"), key("SELECT 'ab'"));
        assert_ne!(key("SELECT 'a' 'b'"), key("SELECT 'ab'"));
        assert_ne!(
            key("SELECT U&'d!0061' UESCAPE '!'"),
            key("SELECT U&'d!0061' UESCAPE '#'")
        );
        // int4 / int8 / numeric, in any radix, with separators.
        assert_eq!(key("SELECT 0x7fff_ffff"), key("SELECT 1"));
        assert_eq!(key("SELECT 0x8000_0000"), key("SELECT 5000000000"));
        assert_eq!(key("SELECT 99999999999999999999"), key("SELECT 1.5"));
        assert_ne!(key("SELECT 1..2"), key("SELECT 1.0.2"));
        // A doubled quote at the end leaves the string unterminated.
        assert_eq!(count("'ab'';SELECT 1"), 1);
        assert_eq!(blake2b_128(&normalize(b"x").0), key("X"));
    }

    /// Deterministic garbage from a quote-rich alphabet: never panics.
    #[test]
    fn garbage_never_panics() {
        let pool: [&[u8]; 16] = [
            b"'",
            b"\"",
            b"$",
            b"$a$",
            b"-",
            b"/",
            b"*",
            b"\\",
            b"E",
            b"U&",
            b"0x",
            b"1",
            b".",
            b"\n",
            b"\xc3\xa9",
            b";",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50_000 {
            let mut buf = Vec::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut x = state;
            for _ in 0..(x % 16) {
                x = x.rotate_left(5) ^ 0x5851_f42d_4c95_7f2d;
                buf.extend_from_slice(pool[(x % 16) as usize]);
            }
            let _ = fingerprint(&buf);
        }
    }
}
