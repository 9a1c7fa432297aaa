//! Wire messages: one module per message, each a pure-Rust codec (testable
//! without Python) plus a thin pyo3 wrapper.
//!
//! Every decoder takes a whole message including its header, checks the type
//! byte and that the declared length matches the buffer exactly, and never
//! trusts a length prefix: all arithmetic and slicing is checked, malformed
//! input becomes a [`CodecError`] (Python `ValueError`), never a panic.

pub mod data_row;
pub mod error_response;
pub mod row_description;
pub mod startup;

use std::fmt;

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;

/// Type byte + Int32 length.
pub const HEADER_LEN: usize = 5;
/// The smallest legal length: the length field counts itself.
pub const MIN_LENGTH: i32 = 4;
pub const INT32_MAX: u32 = i32::MAX as u32;
pub const INT16_MAX: usize = i16::MAX as usize;

/// Backend message type codes handled here.
pub mod backend {
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const DATA_ROW: u8 = b'D';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// A malformed message or an unencodable value (Python `ValueError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl CodecError {
    pub fn new(msg: impl Into<String>) -> Self {
        CodecError(msg.into())
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

impl From<CodecError> for PyErr {
    fn from(e: CodecError) -> PyErr {
        PyValueError::new_err(e.0)
    }
}

pub type Result<T> = std::result::Result<T, CodecError>;

/// How a type byte is shown in error messages: `'Q'` if printable, else `0x00`.
pub fn type_name(code: u8) -> String {
    if (0x21..=0x7e).contains(&code) {
        format!("'{}'", char::from(code))
    } else {
        format!("0x{code:02x}")
    }
}

/// Check the header of a whole message and return its payload.
pub fn body<'a>(message: &'a [u8], expected: &[u8], what: &str) -> Result<&'a [u8]> {
    let [code, l0, l1, l2, l3, payload @ ..] = message else {
        return Err(CodecError(format!(
            "{what} message too short: {} bytes",
            message.len()
        )));
    };
    if !expected.contains(code) {
        return Err(CodecError(format!(
            "not a {what} message: type {}",
            type_name(*code)
        )));
    }
    let length = i32::from_be_bytes([*l0, *l1, *l2, *l3]);
    let actual = message.len() - 1;
    if usize::try_from(length).ok() != Some(actual) {
        return Err(CodecError(format!(
            "{what} length {length} does not match the {actual} bytes given"
        )));
    }
    Ok(payload)
}

/// Start a message: type byte and length for a payload of `payload_len` bytes.
pub fn header(code: u8, payload_len: usize, what: &str) -> Result<[u8; HEADER_LEN]> {
    let length = payload_len
        .checked_add(4)
        .and_then(|l| u32::try_from(l).ok())
        .filter(|&l| l <= INT32_MAX)
        .ok_or_else(|| CodecError(format!("{what} message too long")))?;
    let l = length.to_be_bytes();
    Ok([code, l[0], l[1], l[2], l[3]])
}

/// A bounds-checked reader over a payload.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| s.try_into().ok())
    }

    pub fn i16(&mut self) -> Option<i16> {
        self.array().map(i16::from_be_bytes)
    }

    pub fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_be_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// A NUL-terminated string, without its terminator.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let rest = self.buf.get(self.pos..)?;
        let nul = rest.iter().position(|&b| b == 0)?;
        self.pos += nul + 1;
        rest.get(..nul)
    }
}

/// Lossy UTF-8 decoding, matching Python's `bytes.decode("utf-8", "replace")`.
pub fn lossy(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(raw)
}

/// A Python int (anything with `__index__`) within `lo..=hi`, else ValueError
/// (TypeError for non-integers), matching the reference implementation.
pub fn int_in(obj: &Bound<'_, PyAny>, lo: i64, hi: i64, what: &str) -> PyResult<i64> {
    match obj.extract::<i64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        Ok(v) => Err(PyValueError::new_err(format!(
            "{what} {v} out of range {lo}..{hi}"
        ))),
        Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => {
            let shown = obj.call_method0("__index__")?.str()?.to_string();
            Err(PyValueError::new_err(format!(
                "{what} {shown} out of range {lo}..{hi}"
            )))
        }
        Err(e) => Err(e),
    }
}

/// Register the codec functions on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(error_response::py_decode_fields, m)?)?;
    m.add_function(wrap_pyfunction!(error_response::py_encode_fields, m)?)?;
    m.add_function(wrap_pyfunction!(data_row::py_decode_data_row, m)?)?;
    m.add_function(wrap_pyfunction!(data_row::py_encode_data_row, m)?)?;
    m.add_function(wrap_pyfunction!(
        row_description::py_decode_row_description,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(
        row_description::py_encode_row_description,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(startup::py_decode_startup, m)?)?;
    m.add_function(wrap_pyfunction!(startup::py_encode_startup, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_checks_header() {
        assert_eq!(body(b"D\0\0\0\x04", b"D", "DataRow"), Ok(&b""[..]));
        assert!(body(b"D\0\0\0\x05", b"D", "DataRow").is_err());
        assert!(body(b"D\0\0\0", b"D", "DataRow").is_err());
        assert!(body(b"X\0\0\0\x04", b"D", "DataRow").is_err());
        assert!(body(b"D\xff\xff\xff\xff", b"D", "DataRow").is_err());
    }

    /// Deterministic garbage through every decoder and the framer: errors
    /// are fine, panics are not.
    #[test]
    fn garbage_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pool: [&[u8]; 8] = [
            b"\0",
            b"\xff\xff\xff\xff",
            b"\0\x01",
            b"a",
            b"\xc3",
            b"\0\0\0\x04",
            b"E",
            b"D",
        ];
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            for _ in 0..(next() % 12) {
                buf.extend_from_slice(pool[(next() % 8) as usize]);
            }
            let mut framed = buf.clone();
            if next() % 2 == 0 {
                let code = [b'E', b'N', b'D', b'T'][(next() % 4) as usize];
                framed = vec![code];
                framed.extend_from_slice(&((buf.len() + 4) as i32).to_be_bytes());
                framed.extend_from_slice(&buf);
            }
            let _ = error_response::decode(&framed);
            let _ = data_row::decode(&framed);
            let _ = row_description::decode(&framed);
            let _ = startup::decode(&buf);
            let mut f = crate::framer::Framer::new(4 + (next() % 64) as u32, b"EN");
            let mut out = Vec::new();
            let cut = (next() as usize) % (framed.len() + 1);
            let _ = f.feed(&framed[..cut], &mut out);
            let _ = f.feed(&framed[cut..], &mut out);
        }
    }

    #[test]
    fn reader_never_overruns() {
        let mut r = Reader::new(b"ab\0c");
        assert_eq!(r.cstr(), Some(&b"ab"[..]));
        assert_eq!(r.i32(), None);
        assert_eq!(r.take(usize::MAX), None);
        assert_eq!(r.cstr(), None);
        assert_eq!(r.take(1), Some(&b"c"[..]));
        assert_eq!(r.peek(), None);
    }
}
