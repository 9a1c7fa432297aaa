//! Masking engine: a [`MaskPlan`] holds one rule per result column of a
//! RowDescription and rewrites whole buffers of DataRow messages, re-encoding
//! only the rows where a value changed.
//!
//! The reference is `src/hoopfast/core/_mask.py`; output is byte-identical.
//! Detectors are byte regexes over ASCII classes only (the same text as the
//! reference, so the regex crate and Python's `re` find the same
//! leftmost-first matches). A plan's detectors are searched in one pass by a
//! `RegexSet`; only the detectors that hit are then located and validated
//! (Luhn, mod-97, octets, entropy ...). Nothing here panics on input: every
//! length and offset is checked, malformed DataRows are `MaskError`s
//! (Python `ValueError`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use hmac::{Hmac, Mac};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyString};
use regex::bytes::{Regex, RegexSet, RegexSetBuilder};
use sha2::{Digest, Sha256};

/// Error text of a bad rule or a malformed DataRow buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskError(pub String);

impl From<MaskError> for PyErr {
    fn from(e: MaskError) -> PyErr {
        PyValueError::new_err(e.0)
    }
}

type Result<T> = std::result::Result<T, MaskError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(MaskError(msg.into()))
}

// --------------------------------------------------------------------------
// Detectors

/// name, pattern, bytes refused just before / just after a match (ASCII
/// letters and digits are refused on both sides for every detector).
pub struct Detector {
    pub name: &'static str,
    pattern: &'static str,
    before: &'static [u8],
    after: &'static [u8],
}

const fn det(
    name: &'static str,
    pattern: &'static str,
    before: &'static [u8],
    after: &'static [u8],
) -> Detector {
    Detector {
        name,
        pattern,
        before,
        after,
    }
}

/// In priority order (ties between overlapping matches of equal start and
/// length go to the earlier one). Same table as `_mask.DETECTORS`.
pub const DETECTORS: [Detector; 15] = [
    det(
        "pem_private_key",
        concat!(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:(?:[A-Za-z0-9+/=\r\n\t :,-]|\\[nrt])*?",
            r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|(?:[A-Za-z0-9+/=\r\n\t :,-]|\\[nrt])*)"
        ),
        b"",
        b"",
    ),
    det(
        "jwt",
        r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
        b"_-",
        b"_-",
    ),
    det(
        "azure_storage_key",
        r"AccountKey=[A-Za-z0-9+/]{86}==",
        b"",
        b"",
    ),
    det("aws_access_key", r"(?:AKIA|ASIA)[A-Z0-9]{16}", b"", b""),
    det("gcp_api_key", r"AIza[0-9A-Za-z_-]{35}", b"_-", b"_-"),
    det(
        "email",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        b"",
        b"",
    ),
    det(
        "iban",
        r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?",
        b"",
        b"",
    ),
    det("card", r"[0-9](?:[ -]?[0-9]){12,18}", b"", b""),
    det("us_ssn", r"[0-9]{3}-[0-9]{2}-[0-9]{4}", b"-", b"-"),
    det(
        "uk_nino",
        r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]",
        b"",
        b"",
    ),
    det(
        "mac",
        r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}",
        b":-",
        b":-",
    ),
    det(
        "ipv6",
        r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}",
        b":",
        b":",
    ),
    det("ipv4", r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}", b".", b""),
    det(
        "phone",
        concat!(
            r"\+[1-9][0-9 .()-]{6,20}[0-9]",
            r"|(?:1[ .-])?\(?[2-9][0-9]{2}\)?[ .-]?[2-9][0-9]{2}[ .-][0-9]{4}",
            r"|0[1-9][0-9]{0,4}(?:[ .-][0-9]{2,4}){2,4}"
        ),
        b"+-.",
        b"-",
    ),
    det("secret", r"[A-Za-z0-9+/_=-]{32,}", b"", b""),
];

const IBAN: usize = 6;
const AZURE: usize = 2;
const EMAIL: usize = 5;
const PHONE: usize = 13;

fn detector_index(name: &str) -> Option<usize> {
    DETECTORS.iter().position(|d| d.name == name)
}

fn regexes() -> &'static [Regex] {
    static CELL: OnceLock<Vec<Regex>> = OnceLock::new();
    CELL.get_or_init(|| {
        DETECTORS
            .iter()
            .map(|d| Regex::new(d.pattern).expect("detector pattern"))
            .collect()
    })
}

fn email_full() -> &'static Regex {
    static CELL: OnceLock<Regex> = OnceLock::new();
    CELL.get_or_init(|| {
        Regex::new(&format!(r"\A(?:{})\z", DETECTORS[EMAIL].pattern)).expect("email pattern")
    })
}

/// One `RegexSet` per distinct detector selection, shared by every plan.
fn regex_set(mask: u32, ids: &[usize]) -> Arc<RegexSet> {
    static CACHE: OnceLock<Mutex<HashMap<u32, Arc<RegexSet>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut guard = match cache.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    guard
        .entry(mask)
        .or_insert_with(|| {
            Arc::new(
                RegexSetBuilder::new(ids.iter().map(|&i| DETECTORS[i].pattern))
                    .build()
                    .expect("detector set"),
            )
        })
        .clone()
}

/// The detectors of one rule (or of `mask_text`): their ids in priority
/// order, and the set that finds which of them occur in one pass.
pub struct Detectors {
    ids: Vec<usize>,
    set: Option<Arc<RegexSet>>,
}

/// (start, end, detector) of a chosen match.
type Span = (usize, usize, usize);

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

impl Detectors {
    pub fn new(mut ids: Vec<usize>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        let set = if ids.is_empty() {
            None
        } else {
            let mask = ids.iter().fold(0u32, |m, &i| m | (1 << i));
            Some(regex_set(mask, &ids))
        };
        Detectors { ids, set }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Chosen spans, non-overlapping, in order.
    pub fn find(&self, text: &[u8]) -> Vec<Span> {
        let Some(set) = &self.set else {
            return Vec::new();
        };
        // Most values hold nothing: is_match may stop early and needs no
        // overlapping search, so it is the cheap way to say so.
        if !set.is_match(text) {
            return Vec::new();
        }
        let hits = set.matches(text);
        let mut found: Vec<Span> = Vec::new();
        for (k, &i) in self.ids.iter().enumerate() {
            if !hits.matched(k) {
                continue;
            }
            let d = &DETECTORS[i];
            let re = &regexes()[i];
            let mut pos = 0;
            while let Some(m) = re.find_at(text, pos) {
                let (mut start, mut end) = (m.start(), m.end());
                // A match cut short by its validator resumes the scan at its new end.
                pos = end;
                let s = m.as_bytes();
                if i == IBAN || i == PHONE {
                    let len = if i == IBAN { iban_len(s) } else { phone_len(s) };
                    match len {
                        Some(n) => {
                            end = start + n;
                            pos = end;
                        }
                        None => continue,
                    }
                } else if !check(d.name, s) {
                    continue;
                }
                if !context_ok(text, start, end, d.before, d.after) {
                    continue;
                }
                if i == AZURE {
                    start += "AccountKey=".len();
                }
                found.push((start, end, i));
            }
        }
        if found.is_empty() {
            return found;
        }
        found.sort_by_key(|&(s, e, i)| (s, std::cmp::Reverse(e - s), i));
        let mut chosen = Vec::with_capacity(found.len());
        let mut last = 0;
        for span in found {
            if span.0 >= last {
                last = span.1;
                chosen.push(span);
            } else if span.1 > last {
                // Overlapping matches are masked as one span, their union,
                // under the first one's name: dropping the later one would
                // show its tail (a "secret" run "access_token=eyJ..." stops
                // at the first dot, the JWT it overlaps goes on).
                if let Some(prev) = chosen.last_mut() {
                    prev.1 = span.1;
                }
                last = span.1;
            }
        }
        chosen
    }
}

fn context_ok(text: &[u8], start: usize, end: usize, before: &[u8], after: &[u8]) -> bool {
    if start > 0 {
        let b = text[start - 1];
        if (is_alnum(b) || before.contains(&b))
            && !(b"nrtbfu".contains(&b) && start >= 2 && text[start - 2] == b'\\')
        {
            return false;
        }
        if b == b'.' && start >= 2 && text[start - 2].is_ascii_digit() {
            return false;
        }
    }
    if end < text.len() {
        let b = text[end];
        if is_alnum(b) || after.contains(&b) {
            return false;
        }
        if b == b'.' && end + 1 < text.len() && text[end + 1].is_ascii_digit() {
            return false;
        }
    }
    true
}

fn check(name: &str, m: &[u8]) -> bool {
    match name {
        "card" => card(m),
        "us_ssn" => ssn(m),
        "uk_nino" => !matches!(
            m.get(0..2),
            Some(b"BG" | b"GB" | b"NK" | b"KN" | b"TN" | b"NT" | b"ZZ")
        ),
        "mac" => mac(m),
        "ipv6" => ipv6(m),
        "ipv4" => ipv4(m),
        "secret" => secret(m),
        _ => true,
    }
}

fn luhn(digits: &[u8]) -> bool {
    let mut total = 0u32;
    for (i, &c) in digits.iter().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i & 1 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        total += d;
    }
    total % 10 == 0
}

fn card(m: &[u8]) -> bool {
    let digits: Vec<u8> = m.iter().copied().filter(u8::is_ascii_digit).collect();
    digits.first().is_some_and(|&d| d != b'0') && luhn(&digits)
}

fn iban_ok(compact: &[u8]) -> bool {
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let mut rem = 0u32;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        let v = if c <= b'9' {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn iban_len(mut m: &[u8]) -> Option<usize> {
    loop {
        let compact: Vec<u8> = m.iter().copied().filter(|&c| c != b' ').collect();
        if iban_ok(&compact) {
            return Some(m.len());
        }
        let cut = m.iter().rposition(|&c| c == b' ')?;
        m = &m[..cut];
    }
}

fn ssn(m: &[u8]) -> bool {
    let (area, group, serial) = (&m[0..3], &m[4..6], &m[7..11]);
    area != b"000" && area != b"666" && m[0] != b'9' && group != b"00" && serial != b"0000"
}

fn mac(m: &[u8]) -> bool {
    if m.len() == 14 {
        return true;
    }
    m[2] == m[5] && m[5] == m[8] && m[8] == m[11] && m[11] == m[14]
}

fn hex_groups(part: &[u8]) -> Option<usize> {
    if part.is_empty() {
        return Some(0);
    }
    let mut n = 0;
    for g in part.split(|&c| c == b':') {
        if !(1..=4).contains(&g.len()) {
            return None;
        }
        n += 1;
    }
    Some(n)
}

fn find_sub(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn ipv6(m: &[u8]) -> bool {
    if find_sub(m, b":::").is_some() {
        return false;
    }
    match find_sub(m, b"::") {
        Some(at) => {
            let (head, tail) = (&m[..at], &m[at + 2..]);
            if find_sub(tail, b"::").is_some() {
                return false;
            }
            match (hex_groups(head), hex_groups(tail)) {
                (Some(h), Some(t)) => (1..=7).contains(&(h + t)),
                _ => false,
            }
        }
        None => hex_groups(m) == Some(8),
    }
}

fn ipv4(m: &[u8]) -> bool {
    m.split(|&c| c == b'.').all(|octet| {
        if octet.len() > 1 && octet[0] == b'0' {
            return false;
        }
        octet
            .iter()
            .fold(0u32, |n, &c| n * 10 + u32::from(c - b'0'))
            <= 255
    })
}

fn phone(m: &[u8]) -> bool {
    let digits = m.iter().filter(|c| c.is_ascii_digit()).count();
    let mut prev_sep = false;
    for &c in m {
        let sep = matches!(c, b' ' | b'.' | b'-');
        if sep && prev_sep {
            return false;
        }
        prev_sep = sep;
    }
    let opens = m.iter().filter(|&&c| c == b'(').count();
    let closes = m.iter().filter(|&&c| c == b')').count();
    if opens != closes || opens > 1 {
        return false;
    }
    if opens == 1 {
        let o = m.iter().position(|&c| c == b'(');
        let c = m.iter().position(|&c| c == b')');
        if o > c {
            return false;
        }
    }
    if !m.last().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    if m.first() == Some(&b'+') {
        (8..=15).contains(&digits)
    } else {
        (10..=11).contains(&digits)
    }
}

fn phone_len(mut m: &[u8]) -> Option<usize> {
    loop {
        if phone(m) {
            return Some(m.len());
        }
        let cut = m.iter().rposition(|c| b" .-(".contains(c))?;
        if cut == 0 {
            return None;
        }
        m = &m[..cut];
    }
}

fn entropy(m: &[u8]) -> f64 {
    let mut counts = [0usize; 256];
    for &c in m {
        counts[c as usize] += 1;
    }
    let n = m.len() as f64;
    let mut h = 0.0f64;
    for &c in counts.iter() {
        if c != 0 {
            let p = c as f64 / n;
            h -= p * p.log2();
        }
    }
    h
}

fn secret(m: &[u8]) -> bool {
    let has_digit = m.iter().any(u8::is_ascii_digit);
    let has_letter = m.iter().any(u8::is_ascii_alphabetic);
    if !(has_digit && has_letter) {
        return false;
    }
    if m.iter().all(u8::is_ascii_hexdigit) {
        entropy(m) >= 3.0
    } else {
        entropy(m) >= 4.2
    }
}

fn push_token(out: &mut Vec<u8>, det: usize, quoted: bool) {
    if quoted {
        out.push(b'"');
    }
    out.extend_from_slice(b"[REDACTED:");
    out.extend_from_slice(DETECTORS[det].name.as_bytes());
    out.push(b']');
    if quoted {
        out.push(b'"');
    }
}

/// Every chosen match replaced by `[REDACTED:<name>]`; None if none.
pub fn redact_text(dets: &Detectors, text: &[u8]) -> Option<Vec<u8>> {
    let spans = dets.find(text);
    if spans.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() + 16 * spans.len());
    let mut pos = 0;
    for (start, end, i) in spans {
        out.extend_from_slice(&text[pos..start]);
        push_token(&mut out, i, false);
        pos = end;
    }
    out.extend_from_slice(&text[pos..]);
    Some(out)
}

fn is_number_char(b: u8) -> bool {
    matches!(b, b'-' | b'+' | b'.' | b'0'..=b'9' | b'e' | b'E')
}

/// Like [`redact_text`], keeping a JSON text valid (see `_redact_json`).
pub fn redact_json(dets: &Detectors, text: &[u8]) -> Option<Vec<u8>> {
    let spans = dets.find(text);
    if spans.is_empty() {
        return None;
    }
    let n = text.len();
    let mut out: Vec<u8> = Vec::with_capacity(n + 16 * spans.len());
    let mut changed = false;
    let mut pos = 0;
    let mut i = 0;
    let mut in_string = false;
    for (mut start, mut end, det) in spans {
        while i < start {
            let c = text[i];
            if in_string {
                if c == b'\\' {
                    i += if i + 1 < n && text[i + 1] == b'u' {
                        6
                    } else {
                        2
                    };
                    continue;
                }
                if c == b'"' {
                    in_string = false;
                }
            } else if c == b'"' {
                in_string = true;
            }
            i += 1;
        }
        let quoted = !in_string;
        if in_string {
            start = start.max(i);
            if start >= end {
                continue;
            }
        } else {
            while start > pos && is_number_char(text[start - 1]) {
                start -= 1;
            }
            while end < n && is_number_char(text[end]) {
                end += 1;
            }
        }
        out.extend_from_slice(&text[pos..start]);
        push_token(&mut out, det, quoted);
        changed = true;
        pos = end;
        i = i.max(end);
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&text[pos..]);
    Some(out)
}

// --------------------------------------------------------------------------
// Strategies

const TEXT_TYPES: [u32; 5] = [25, 1043, 1042, 19, 705];
const JSON_TYPES: [u32; 2] = [114, 3802];
const JSONB: u32 = 3802;

/// The text strategies a json (or jsonb) value can take.
fn json_strategy(strategy: &str) -> bool {
    ["redact", "hash", "detect"].contains(&strategy)
}

fn array_default(elem: u32) -> (&'static [u8], Vec<u8>) {
    let mut b = vec![0u8; 8];
    b.extend_from_slice(&elem.to_be_bytes());
    (b"{}", b)
}

/// (text-format default, binary-format default) of a type, None: NULL.
fn type_default(oid: u32) -> Option<(&'static [u8], Vec<u8>)> {
    let z = |n: usize| vec![0u8; n];
    Some(match oid {
        16 => (b"f", vec![0]),
        17 => (b"\\x", vec![]),
        19 | 25 | 705 | 1042 | 1043 => (b"", vec![]),
        20 => (b"0", z(8)),
        21 => (b"0", z(2)),
        23 | 26 => (b"0", z(4)),
        114 => (b"null", b"null".to_vec()),
        3802 => (b"null", b"\x01null".to_vec()),
        700 => (b"0", z(4)),
        701 => (b"0", z(8)),
        829 => (b"00:00:00:00:00:00", z(6)),
        869 => (b"0.0.0.0", b"\x02\x20\x00\x04\0\0\0\0".to_vec()),
        650 => (b"0.0.0.0/32", b"\x02\x20\x01\x04\0\0\0\0".to_vec()),
        1082 => (b"1970-01-01", (-10957i32).to_be_bytes().to_vec()),
        1083 => (b"00:00:00", z(8)),
        1114 => (
            b"1970-01-01 00:00:00",
            (-946_684_800_000_000i64).to_be_bytes().to_vec(),
        ),
        1184 => (
            b"1970-01-01 00:00:00+00",
            (-946_684_800_000_000i64).to_be_bytes().to_vec(),
        ),
        1186 => (b"00:00:00", z(16)),
        1266 => (b"00:00:00+00", z(12)),
        1700 => (b"0", z(8)),
        2950 => (b"00000000-0000-0000-0000-000000000000", z(16)),
        1000 => array_default(16),
        1005 => array_default(21),
        1007 => array_default(23),
        1009 => array_default(25),
        1014 => array_default(1042),
        1015 => array_default(1043),
        1016 => array_default(20),
        1021 => array_default(700),
        1022 => array_default(701),
        1182 => array_default(1082),
        1115 => array_default(1114),
        1185 => array_default(1184),
        1231 => array_default(1700),
        2951 => array_default(2950),
        199 => array_default(114),
        3807 => array_default(3802),
        _ => return None,
    })
}

pub const STRATEGIES: [&str; 8] = [
    "redact",
    "same_length",
    "partial",
    "hash",
    "null",
    "default",
    "fake",
    "detect",
];

pub enum Masker {
    Null,
    Const(Option<Vec<u8>>),
    SameLength,
    Partial {
        first: usize,
        last: usize,
    },
    Hash {
        json: bool,
    },
    Fake,
    Detect {
        dets: Detectors,
        json: bool,
    },
    /// jsonb in binary format: a version byte (1), then its text, which the
    /// inner json masker masks; any other version is NULL (fail closed).
    Jsonb(Box<Masker>),
}

/// A value after masking.
enum Masked<'a> {
    Null,
    Value(Cow<'a, [u8]>),
}

/// One rule as given: (strategy, format_code, type_oid, detectors, keep_first, keep_last).
pub struct Rule {
    pub strategy: String,
    pub format_code: i64,
    pub type_oid: i64,
    pub detectors: Vec<String>,
    pub keep_first: i64,
    pub keep_last: i64,
}

fn compile_rule(rule: &Rule, key: &[u8], index: usize) -> Result<(Masker, Vec<usize>)> {
    let strategy = rule.strategy.as_str();
    if !STRATEGIES.contains(&strategy) {
        return err(format!(
            "column {index}: unknown masking strategy '{strategy}'"
        ));
    }
    for (what, v, lo, hi) in [
        ("format code", rule.format_code, 0, 1),
        ("type oid", rule.type_oid, 0, 0xFFFF_FFFF),
        ("keep_first", rule.keep_first, 0, 0x7FFF_FFFF),
        ("keep_last", rule.keep_last, 0, 0x7FFF_FFFF),
    ] {
        if !(lo..=hi).contains(&v) {
            return err(format!(
                "column {index}: {what} {v} out of range {lo}..{hi}"
            ));
        }
    }
    let (format_code, oid) = (rule.format_code as usize, rule.type_oid as u32);
    let mut ids = Vec::new();
    for name in &rule.detectors {
        match detector_index(name) {
            Some(i) => ids.push(i),
            None => return err(format!("column {index}: unknown detector '{name}'")),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let json = JSON_TYPES.contains(&oid);
    // jsonb's binary form is a version byte and its text: the json
    // strategies apply to the text.
    let jsonb_binary = format_code == 1 && oid == JSONB && json_strategy(strategy);
    if strategy != "null" && strategy != "default" {
        if format_code != 0 && !jsonb_binary {
            return err(format!(
                "column {index}: a binary-format column can only be masked with null or default"
            ));
        }
        if json {
            if !json_strategy(strategy) {
                return err(format!(
                    "column {index}: a json column can only be masked with redact, hash, detect, null or default"
                ));
            }
        } else if !TEXT_TYPES.contains(&oid) {
            return err(format!(
                "column {index}: a column of type {oid} (not text) can only be masked with null or default"
            ));
        }
    }
    if (strategy == "hash" || strategy == "fake") && key.is_empty() {
        return err(format!(
            "column {index}: the {strategy} strategy needs a non-empty hmac key"
        ));
    }
    if strategy == "detect" && ids.is_empty() {
        return err(format!(
            "column {index}: the detect strategy needs at least one detector"
        ));
    }
    let masker = match strategy {
        "null" => Masker::Null,
        "default" => Masker::Const(type_default(oid).map(|(text, binary)| {
            if format_code == 0 {
                text.to_vec()
            } else {
                binary
            }
        })),
        "redact" => Masker::Const(Some(if json {
            b"\"****\"".to_vec()
        } else {
            b"****".to_vec()
        })),
        "same_length" => Masker::SameLength,
        "partial" => Masker::Partial {
            first: rule.keep_first as usize,
            last: rule.keep_last as usize,
        },
        "hash" => Masker::Hash { json },
        "fake" => Masker::Fake,
        _ => Masker::Detect {
            dets: Detectors::new(ids.clone()),
            json,
        },
    };
    let masker = if jsonb_binary {
        Masker::Jsonb(Box::new(masker))
    } else {
        masker
    };
    Ok((masker, ids))
}

/// Byte ranges of the value's characters: UTF-8 code points if valid, else bytes.
fn char_ranges(v: &[u8]) -> Vec<(usize, usize)> {
    match std::str::from_utf8(v) {
        Ok(s) => s
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect(),
        Err(_) => (0..v.len()).map(|i| (i, i + 1)).collect(),
    }
}

fn char_count(v: &[u8]) -> usize {
    if v.is_ascii() {
        return v.len();
    }
    match std::str::from_utf8(v) {
        Ok(s) => s.chars().count(),
        Err(_) => v.len(),
    }
}

fn keep(v: &[u8], first: usize, last: usize) -> Vec<u8> {
    if v.is_ascii() {
        // One byte per character: no table of character positions.
        let n = v.len();
        if first.saturating_add(last) >= n {
            return vec![b'*'; n];
        }
        let mut out = Vec::with_capacity(n);
        out.extend_from_slice(&v[..first]);
        out.resize(n - last, b'*');
        out.extend_from_slice(&v[n - last..]);
        return out;
    }
    let chars = char_ranges(v);
    let n = chars.len();
    if first.saturating_add(last) >= n {
        return vec![b'*'; n];
    }
    let mut out = Vec::with_capacity(v.len());
    if first > 0 {
        out.extend_from_slice(&v[..chars[first - 1].1]);
    }
    out.resize(out.len() + (n - first - last), b'*');
    if last > 0 {
        out.extend_from_slice(&v[chars[n - last].0..]);
    }
    out
}

type HmacSha256 = Hmac<Sha256>;

/// The plan's HMAC key, with its inner and outer pads hashed once: each
/// value then costs a clone and the two compressions of its own data,
/// instead of four.
pub struct Keyed(HmacSha256);

impl Keyed {
    fn new(key: &[u8]) -> Self {
        // new_from_slice accepts any key length for HMAC.
        match HmacSha256::new_from_slice(key) {
            Ok(m) => Keyed(m),
            Err(_) => unreachable_hmac(),
        }
    }

    fn digest(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC takes keys of any length; this cannot happen.
    std::process::abort()
}

fn hex16(digest: &[u8; 32]) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, &b) in digest[..8].iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

fn fake(key: &Keyed, v: &[u8]) -> Vec<u8> {
    let seed = key.digest(&[b"fake:", v]);
    let mut out = v.to_vec();
    let mut stream = [0u8; 32];
    let mut used = 32;
    let mut block: u32 = 0;
    for b in out.iter_mut() {
        let c = *b;
        if !c.is_ascii_alphanumeric() {
            continue;
        }
        if used == 32 {
            let mut h = Sha256::new();
            h.update(seed);
            h.update(block.to_be_bytes());
            stream = h.finalize().into();
            block = block.wrapping_add(1);
            used = 0;
        }
        let k = stream[used];
        used += 1;
        *b = if c <= b'9' {
            b'0' + k % 10
        } else if c <= b'Z' {
            b'A' + k % 26
        } else {
            b'a' + k % 26
        };
    }
    out
}

impl Masker {
    fn apply<'a>(&'a self, key: &Keyed, v: &'a [u8]) -> Masked<'a> {
        match self {
            Masker::Null => Masked::Null,
            Masker::Const(None) => Masked::Null,
            Masker::Const(Some(c)) => Masked::Value(Cow::Borrowed(c)),
            Masker::SameLength => Masked::Value(Cow::Owned(vec![b'*'; char_count(v)])),
            Masker::Partial { first, last } => {
                if email_full().is_match(v) {
                    // The email pattern has one '@'.
                    let at = v.iter().rposition(|&c| c == b'@').unwrap_or(0);
                    let mut out = keep(&v[..at], *first, 0);
                    out.extend_from_slice(&v[at..]);
                    Masked::Value(Cow::Owned(out))
                } else {
                    Masked::Value(Cow::Owned(keep(v, *first, *last)))
                }
            }
            Masker::Hash { json } => {
                let h = hex16(&key.digest(&[v]));
                let mut out = Vec::with_capacity(18);
                if *json {
                    out.push(b'"');
                }
                out.extend_from_slice(&h);
                if *json {
                    out.push(b'"');
                }
                Masked::Value(Cow::Owned(out))
            }
            Masker::Fake => Masked::Value(Cow::Owned(fake(key, v))),
            Masker::Detect { dets, json } => {
                let r = if *json {
                    redact_json(dets, v)
                } else {
                    redact_text(dets, v)
                };
                match r {
                    Some(out) => Masked::Value(Cow::Owned(out)),
                    None => Masked::Value(Cow::Borrowed(v)),
                }
            }
            Masker::Jsonb(inner) => match v.split_first() {
                Some((1, text)) => match inner.apply(key, text) {
                    Masked::Null => Masked::Null,
                    // Unchanged: the value as it came, version byte included.
                    Masked::Value(Cow::Borrowed(b)) if std::ptr::eq(b, text) => {
                        Masked::Value(Cow::Borrowed(v))
                    }
                    Masked::Value(out) => {
                        let mut with_version = Vec::with_capacity(out.len() + 1);
                        with_version.push(1);
                        with_version.extend_from_slice(&out);
                        Masked::Value(Cow::Owned(with_version))
                    }
                },
                _ => Masked::Null,
            },
        }
    }
}

// --------------------------------------------------------------------------
// The plan

pub struct MaskPlan {
    maskers: Vec<Option<Masker>>,
    key: Keyed,
    text: Detectors,
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl MaskPlan {
    pub fn new(
        columns: &[Option<Rule>],
        key: &[u8],
        text_detectors: Option<&[String]>,
    ) -> Result<Self> {
        if columns.len() > 0x7FFF {
            return err(format!("too many columns: {}", columns.len()));
        }
        let mut maskers = Vec::with_capacity(columns.len());
        let mut union: Vec<usize> = Vec::new();
        for (index, rule) in columns.iter().enumerate() {
            match rule {
                None => maskers.push(None),
                Some(rule) => {
                    let (m, ids) = compile_rule(rule, key, index)?;
                    maskers.push(Some(m));
                    union.extend(ids);
                }
            }
        }
        if let Some(names) = text_detectors {
            union.clear();
            for name in names {
                match detector_index(name) {
                    Some(i) => union.push(i),
                    None => return err(format!("unknown detector '{name}'")),
                }
            }
        }
        Ok(MaskPlan {
            maskers,
            key: Keyed::new(key),
            text: Detectors::new(union),
        })
    }

    pub fn masks_anything(&self) -> bool {
        self.maskers.iter().any(Option::is_some)
    }

    pub fn mask_text<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        if self.text.is_empty() {
            return Cow::Borrowed(text);
        }
        match redact_text(&self.text, text) {
            Some(v) => Cow::Owned(v),
            None => Cow::Borrowed(text),
        }
    }

    /// Masked copy of a buffer of whole DataRows, or None when nothing changed.
    pub fn apply(&self, buf: &[u8]) -> Result<Option<Vec<u8>>> {
        let ncols = self.maskers.len();
        let n = buf.len();
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0usize;
        let mut pos = 0usize;
        while pos < n {
            if n - pos < 5 {
                return err("DataRow buffer truncated in a message header");
            }
            if buf[pos] != b'D' {
                return err(format!("not a DataRow message: type 0x{:02x}", buf[pos]));
            }
            let length = be_i32(buf, pos + 1).unwrap_or(0);
            if length < 6 {
                return err(format!("invalid DataRow length {length}"));
            }
            let end = pos + 1 + length as usize;
            if end > n {
                return err("DataRow buffer truncated in a message");
            }
            let count = i16::from_be_bytes([buf[pos + 5], buf[pos + 6]]);
            if count < 0 || count as usize != ncols {
                return err(format!("DataRow has {count} columns, the plan {ncols}"));
            }
            let mut p = pos + 7;
            // Where this row's rewrite starts in `out`, once a value changed.
            let mut row_start: Option<usize> = None;
            for masker in self.maskers.iter() {
                if end - p < 4 {
                    return err("DataRow truncated in a column length");
                }
                let col_start = p;
                let size = be_i32(buf, p).unwrap_or(-1);
                p += 4;
                if size < 0 {
                    if size != -1 {
                        return err(format!("invalid DataRow column length {size}"));
                    }
                    if let (Some(_), Some(o)) = (row_start, out.as_mut()) {
                        o.extend_from_slice(&(-1i32).to_be_bytes());
                    }
                    continue;
                }
                let size = size as usize;
                if end - p < size {
                    return err("DataRow truncated in a column value");
                }
                let value = &buf[p..p + size];
                p += size;
                if let Some(masker) = masker {
                    let masked = masker.apply(&self.key, value);
                    let changed = match &masked {
                        Masked::Null => true,
                        Masked::Value(v) => v.as_ref() != value,
                    };
                    if changed {
                        let o = out.get_or_insert_with(|| Vec::with_capacity(n + n / 8));
                        if row_start.is_none() {
                            o.extend_from_slice(&buf[copied..pos]);
                            row_start = Some(o.len());
                            o.extend_from_slice(&[b'D', 0, 0, 0, 0]);
                            o.extend_from_slice(&buf[pos + 5..pos + 7]);
                            o.extend_from_slice(&buf[pos + 7..col_start]);
                        }
                        match masked {
                            Masked::Null => o.extend_from_slice(&(-1i32).to_be_bytes()),
                            Masked::Value(v) => {
                                let len = u32::try_from(v.len())
                                    .ok()
                                    .filter(|&l| l <= i32::MAX as u32)
                                    .ok_or_else(|| MaskError("masked value too long".into()))?;
                                o.extend_from_slice(&len.to_be_bytes());
                                o.extend_from_slice(&v);
                            }
                        }
                        continue;
                    }
                }
                if let (Some(_), Some(o)) = (row_start, out.as_mut()) {
                    o.extend_from_slice(&buf[col_start..p]);
                }
            }
            if p != end {
                return err(format!("{} trailing bytes after DataRow columns", end - p));
            }
            if let (Some(start), Some(o)) = (row_start, out.as_mut()) {
                let length = o.len() - start - 1;
                if length > i32::MAX as usize {
                    return err("masked DataRow too long");
                }
                o[start + 1..start + 5].copy_from_slice(&(length as u32).to_be_bytes());
                copied = end;
            }
            pos = end;
        }
        Ok(out.map(|mut o| {
            o.extend_from_slice(&buf[copied..]);
            o
        }))
    }
}

// --------------------------------------------------------------------------
// Python

fn value_error(index: usize, what: &str) -> PyErr {
    PyValueError::new_err(format!("column {index}: {what}"))
}

fn extract_int(obj: &Bound<'_, PyAny>, index: usize, what: &str) -> PyResult<i64> {
    if obj.is_instance_of::<PyBool>() {
        return Err(value_error(index, &format!("{what} must be an int")));
    }
    match obj.extract::<i64>() {
        Ok(v) => Ok(v),
        Err(_) => {
            // Out of i64 range or not an int: out of range either way.
            Err(value_error(
                index,
                &format!("{what} {} out of range", obj.repr()?),
            ))
        }
    }
}

fn extract_rule(obj: &Bound<'_, PyAny>, index: usize) -> PyResult<Rule> {
    let bad = || value_error(index, "a rule is None or a 6-tuple");
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(bad());
    }
    let items: Vec<Bound<'_, PyAny>> = obj.extract().map_err(|_| bad())?;
    if items.len() != 6 {
        return Err(bad());
    }
    let strategy: String = items[0]
        .extract()
        .map_err(|_| value_error(index, "unknown masking strategy"))?;
    let det_obj = &items[3];
    if det_obj.is_instance_of::<PyString>() || det_obj.is_instance_of::<PyBytes>() {
        return Err(value_error(index, "detectors must be a list of names"));
    }
    let detectors: Vec<String> = det_obj
        .extract()
        .map_err(|_| value_error(index, "detectors must be a list of names"))?;
    Ok(Rule {
        strategy,
        format_code: extract_int(&items[1], index, "format code")?,
        type_oid: extract_int(&items[2], index, "type oid")?,
        detectors,
        keep_first: extract_int(&items[4], index, "keep_first")?,
        keep_last: extract_int(&items[5], index, "keep_last")?,
    })
}

/// Masking rules for the columns of one RowDescription.
#[pyclass(frozen, name = "MaskPlan", module = "hoopfast_core")]
pub struct PyMaskPlan {
    plan: MaskPlan,
}

#[pymethods]
impl PyMaskPlan {
    #[new]
    #[pyo3(signature = (columns, hmac_key, text_detectors = None))]
    fn new(
        columns: &Bound<'_, PyAny>,
        hmac_key: &Bound<'_, PyAny>,
        text_detectors: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let key = hmac_key
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("hmac_key must be bytes"))?;
        let mut rules = Vec::new();
        for (index, item) in columns.try_iter()?.enumerate() {
            let item = item?;
            if item.is_none() {
                rules.push(None);
            } else {
                rules.push(Some(extract_rule(&item, index)?));
            }
        }
        let plan = MaskPlan::new(&rules, key.as_bytes(), text_detectors.as_deref())?;
        Ok(PyMaskPlan { plan })
    }

    #[getter]
    fn masks_anything(&self) -> bool {
        self.plan.masks_anything()
    }

    fn mask_text<'py>(&self, text: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyString>> {
        let s = text.to_str()?;
        match self.plan.mask_text(s.as_bytes()) {
            Cow::Borrowed(_) => Ok(text.clone()),
            Cow::Owned(v) => {
                // Matches are ASCII and replace whole characters: still UTF-8.
                let s = String::from_utf8(v)
                    .map_err(|_| PyValueError::new_err("masked text is not UTF-8"))?;
                Ok(PyString::new(text.py(), &s))
            }
        }
    }

    fn apply<'py>(&self, buffer: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let py = buffer.py();
        let bytes = buffer
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("buffer must be bytes"))?;
        let data = bytes.as_bytes();
        let plan = &self.plan;
        match py.detach(|| plan.apply(data))? {
            None => Ok(bytes.clone()),
            Some(v) => Ok(PyBytes::new(py, &v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        crate::messages::data_row::encode(values).unwrap()
    }

    fn rule(strategy: &str, dets: &[&str]) -> Option<Rule> {
        Some(Rule {
            strategy: strategy.into(),
            format_code: 0,
            type_oid: 25,
            detectors: dets.iter().map(|s| s.to_string()).collect(),
            keep_first: 1,
            keep_last: 2,
        })
    }

    #[test]
    fn binary_jsonb_keeps_its_version_byte() {
        let mut r = rule("detect", &["email"]).unwrap();
        r.format_code = 1;
        r.type_oid = 3802;
        let plan = MaskPlan::new(&[Some(r)], b"k", None).unwrap();
        let value: &[u8] = b"\x01{\"e\": \"bob@example.com\"}";
        let out = plan.apply(&row(&[Some(value)])).unwrap().unwrap();
        let masked: &[u8] = b"\x01{\"e\": \"[REDACTED:email]\"}";
        assert_eq!(out, row(&[Some(masked)]));
        // Unchanged: the buffer as it came; an unknown version: NULL.
        assert!(plan.apply(&row(&[Some(b"\x01{}")])).unwrap().is_none());
        let out = plan.apply(&row(&[Some(b"\x02{}")])).unwrap().unwrap();
        assert_eq!(out, row(&[None]));
    }

    #[test]
    fn detectors_compile() {
        assert_eq!(regexes().len(), DETECTORS.len());
        assert_eq!(DETECTORS[IBAN].name, "iban");
        assert_eq!(DETECTORS[PHONE].name, "phone");
        assert_eq!(DETECTORS[EMAIL].name, "email");
        assert_eq!(DETECTORS[AZURE].name, "azure_storage_key");
        let all = Detectors::new((0..DETECTORS.len()).collect());
        assert!(all.find(b"nothing here").is_empty());
    }

    #[test]
    fn redacts_and_validates() {
        let all = Detectors::new((0..DETECTORS.len()).collect());
        let text = b"mail bob@example.com card 4111 1111 1111 1111 bad 4111 1111 1111 1112";
        let out = redact_text(&all, text).unwrap();
        assert_eq!(
            out,
            b"mail [REDACTED:email] card [REDACTED:card] bad 4111 1111 1111 1112".to_vec()
        );
        assert!(redact_text(&all, b"GB82 WEST 1234 5698 7654 33").is_none());
        assert!(redact_text(&all, b"GB82 WEST 1234 5698 7654 32").is_some());
    }

    #[test]
    fn apply_rewrites_lengths_and_keeps_unchanged() {
        let plan = MaskPlan::new(&[None, rule("redact", &[])], b"k", None).unwrap();
        let buf = [
            row(&[Some(b"a"), None]),
            row(&[Some(b"b"), Some(b"secret")]),
        ]
        .concat();
        let out = plan.apply(&buf).unwrap().unwrap();
        let expect = [row(&[Some(b"a"), None]), row(&[Some(b"b"), Some(b"****")])].concat();
        assert_eq!(out, expect);
        let unchanged = row(&[Some(b"x"), None]);
        assert!(plan.apply(&unchanged).unwrap().is_none());
    }

    #[test]
    fn malformed_is_an_error() {
        let plan = MaskPlan::new(&[rule("redact", &[])], b"k", None).unwrap();
        let good = row(&[Some(b"abc")]);
        for cut in 0..good.len() {
            assert!(plan.apply(&good[..cut]).is_err() || cut == 0);
        }
        assert!(plan.apply(&row(&[Some(b"a"), Some(b"b")])).is_err());
        let mut bad = good.clone();
        bad[7..11].copy_from_slice(&(-2i32).to_be_bytes());
        assert!(plan.apply(&bad).is_err());
        let mut huge = good.clone();
        huge[1..5].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(plan.apply(&huge).is_err());
    }

    #[test]
    fn partial_email_and_fake() {
        let plan = MaskPlan::new(&[rule("partial", &[]), rule("fake", &[])], b"k", None).unwrap();
        let out = plan
            .apply(&row(&[Some(b"alice@example.com"), Some(b"Ab-12")]))
            .unwrap()
            .unwrap();
        let values = crate::messages::data_row::decode(&out).unwrap();
        assert_eq!(values[0], Some(&b"a****@example.com"[..]));
        let f = values[1].unwrap();
        assert_eq!(f.len(), 5);
        assert!(f[0].is_ascii_uppercase() && f[1].is_ascii_lowercase() && f[2] == b'-');
    }
}
