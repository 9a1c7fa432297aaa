//! ErrorResponse ('E') and NoticeResponse ('N'): repeated (code byte,
//! cstring value) fields terminated by a zero byte.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use super::backend::{ERROR_RESPONSE, NOTICE_RESPONSE};
use super::{body, header, lossy, CodecError, Reader, Result};

const WHAT: &str = "ErrorResponse/Notice";

/// Decode the fields of a whole 'E'/'N' message as (code, raw value) pairs.
pub fn decode(message: &[u8]) -> Result<Vec<(u8, &[u8])>> {
    let mut r = Reader::new(body(message, &[ERROR_RESPONSE, NOTICE_RESPONSE], WHAT)?);
    let mut fields = Vec::new();
    loop {
        let code = r
            .take(1)
            .and_then(|c| c.first().copied())
            .ok_or_else(|| CodecError::new("ErrorResponse/Notice fields lack their terminator"))?;
        if code == 0 {
            if r.remaining() != 0 {
                return Err(CodecError::new(
                    "trailing bytes after ErrorResponse/Notice fields",
                ));
            }
            return Ok(fields);
        }
        let value = r
            .cstr()
            .ok_or_else(|| CodecError::new("unterminated ErrorResponse/Notice field"))?;
        fields.push((code, value));
    }
}

/// Encode a whole 'E'/'N' message; codes must be non-zero, values NUL-free.
pub fn encode(kind: u8, fields: &[(u8, &[u8])]) -> Result<Vec<u8>> {
    if kind != ERROR_RESPONSE && kind != NOTICE_RESPONSE {
        return Err(CodecError(format!(
            "kind must be ord('E') or ord('N'), not {kind}"
        )));
    }
    let mut payload_len = 1usize;
    for (code, value) in fields {
        if *code == 0 {
            return Err(CodecError::new("field code must not be NUL"));
        }
        if value.contains(&0) {
            return Err(CodecError::new("field value must not contain NUL"));
        }
        payload_len = payload_len
            .checked_add(value.len() + 2)
            .ok_or_else(|| CodecError::new("ErrorResponse/Notice message too long"))?;
    }
    let mut out = Vec::with_capacity(payload_len + 5);
    out.extend_from_slice(&header(kind, payload_len, WHAT)?);
    for (code, value) in fields {
        out.push(*code);
        out.extend_from_slice(value);
        out.push(0);
    }
    out.push(0);
    Ok(out)
}

#[pyfunction(name = "decode_fields")]
pub fn py_decode_fields<'py>(py: Python<'py>, message: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let fields = decode(message)?;
    let list = PyList::empty(py);
    for (code, value) in fields {
        let code = char::from(code).to_string();
        list.append((PyString::new(py, &code), PyString::new(py, &lossy(value))))?;
    }
    Ok(list)
}

#[pyfunction(name = "encode_fields")]
pub fn py_encode_fields(kind: &Bound<'_, PyAny>, fields: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let kind = super::int_in(kind, i64::MIN, i64::MAX, "kind")?;
    let kind = match u8::try_from(kind) {
        Ok(k) if k == ERROR_RESPONSE || k == NOTICE_RESPONSE => k,
        _ => {
            return Err(PyValueError::new_err(format!(
                "kind must be ord('E') or ord('N'), not {kind}"
            )))
        }
    };
    let mut owned: Vec<(u8, String)> = Vec::new();
    for item in fields.try_iter()? {
        let item = item?;
        let (code, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
        let (Ok(code), Ok(value)) = (code.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err("fields must be (str, str) pairs"));
        };
        let code_s = code.to_str()?;
        let mut chars = code_s.chars();
        let c = match (chars.next(), chars.next()) {
            (Some(c), None) if (1..=0xff).contains(&u32::from(c)) => c as u8,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "field code must be one character in U+0001..U+00FF: {}",
                    code.repr()?
                )))
            }
        };
        let value = value.to_str()?;
        if value.as_bytes().contains(&0) {
            return Err(PyValueError::new_err("field value must not contain NUL"));
        }
        owned.push((c, value.to_owned()));
    }
    let borrowed: Vec<(u8, &[u8])> = owned.iter().map(|(c, v)| (*c, v.as_bytes())).collect();
    Ok(encode(kind, &borrowed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let fields: Vec<(u8, &[u8])> = vec![
            (b'S', b"ERROR"),
            (b'C', b"42P01"),
            (b'M', b"relation \"x\" does not exist"),
        ];
        for kind in [b'E', b'N'] {
            let msg = encode(kind, &fields).unwrap();
            assert_eq!(msg[0], kind);
            assert_eq!(decode(&msg).unwrap(), fields);
        }
        let empty = encode(b'E', &[]).unwrap();
        assert_eq!(empty, b"E\0\0\0\x05\0");
        assert_eq!(decode(&empty).unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed() {
        assert!(decode(b"E\0\0\0\x04").is_err()); // no terminator
        assert!(decode(b"E\0\0\0\x06Sx").is_err()); // unterminated value
        assert!(decode(b"E\0\0\0\x06\0\0").is_err()); // trailing
        assert!(decode(b"D\0\0\0\x05\0").is_err()); // wrong type
        assert!(decode(b"E\0\0\0\x07\0").is_err()); // length mismatch
        assert!(encode(b'X', &[]).is_err());
        assert!(encode(b'E', &[(0, b"x")]).is_err());
        assert!(encode(b'E', &[(b'M', b"a\0b")]).is_err());
    }
}
