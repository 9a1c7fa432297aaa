//! Startup-phase packets: Int32 length (counts itself), Int32 request code,
//! body. Protocol 3.x carries NUL-terminated key/value pairs ended by a zero
//! byte; SSLRequest and GSSENCRequest carry nothing; CancelRequest carries the
//! backend pid (Int32) and a secret key of 4..256 bytes (protocol 3.2 allows
//! longer than 4).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping, PyString};

use super::{int_in, lossy, CodecError, Reader, Result, INT32_MAX};

/// Protocol 3.0 (`3 << 16`).
pub const PROTOCOL_3_0: u32 = 196_608;
pub const PROTOCOL_MAJOR_3: u32 = 3;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_SECRET_MIN: usize = 4;
pub const CANCEL_SECRET_MAX: usize = 256;
const HEAD_LEN: usize = 8;

fn is_v3(code: u32) -> bool {
    code >> 16 == PROTOCOL_MAJOR_3
}

/// Decoded packet: the code and its parameters as raw pairs, in order.
/// A CancelRequest yields `pid` (decimal) and `secret` (lowercase hex).
pub fn decode(packet: &[u8]) -> Result<(u32, Vec<(String, String)>)> {
    let mut r = Reader::new(packet);
    let (Some(length), Some(code)) = (r.i32(), r.u32()) else {
        return Err(CodecError(format!(
            "startup packet too short: {} bytes",
            packet.len()
        )));
    };
    if usize::try_from(length).ok() != Some(packet.len()) {
        return Err(CodecError(format!(
            "startup packet length {length} does not match the {} bytes given",
            packet.len()
        )));
    }
    if is_v3(code) {
        let mut params = Vec::new();
        loop {
            match r.peek() {
                None => return Err(CodecError::new("startup parameters lack their terminator")),
                Some(0) => {
                    if r.remaining() != 1 {
                        return Err(CodecError::new("trailing bytes after startup parameters"));
                    }
                    return Ok((code, params));
                }
                Some(_) => {
                    let unterminated = || CodecError::new("unterminated startup parameter");
                    let key = r.cstr().ok_or_else(unterminated)?;
                    let value = r.cstr().ok_or_else(unterminated)?;
                    params.push((lossy(key).into_owned(), lossy(value).into_owned()));
                }
            }
        }
    }
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if r.remaining() != 0 {
                return Err(CodecError::new("SSLRequest/GSSENCRequest carries no body"));
            }
            Ok((code, Vec::new()))
        }
        CANCEL_REQUEST_CODE => {
            let n = r.remaining();
            if !(4 + CANCEL_SECRET_MIN..=4 + CANCEL_SECRET_MAX).contains(&n) {
                return Err(CodecError(format!("CancelRequest body of {n} bytes")));
            }
            let pid = r
                .i32()
                .ok_or_else(|| CodecError::new("CancelRequest without pid"))?;
            let secret = r.take(r.remaining()).unwrap_or_default();
            Ok((
                code,
                vec![
                    ("pid".to_owned(), pid.to_string()),
                    ("secret".to_owned(), hex(secret)),
                ],
            ))
        }
        _ => Ok((code, Vec::new())),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let raw = s.as_bytes();
    if raw.is_empty() || raw.len() % 2 != 0 {
        return None;
    }
    raw.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

fn parse_pid(s: &str) -> Option<i32> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Leading zeros are fine; too many digits is out of range.
    let trimmed = digits.trim_start_matches('0');
    if trimmed.len() > 10 {
        return None;
    }
    let v: i64 = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse().ok()?
    };
    let v = if s.starts_with('-') { -v } else { v };
    i32::try_from(v).ok()
}

fn encode_cancel(params: &[(&str, &str)]) -> Result<Vec<u8>> {
    let get = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let (Some(pid), Some(secret), 2) = (get("pid"), get("secret"), params.len()) else {
        return Err(CodecError::new(
            "a CancelRequest takes exactly \"pid\" and \"secret\"",
        ));
    };
    let pid = parse_pid(pid).ok_or_else(|| {
        CodecError(format!(
            "CancelRequest pid must be a decimal Int32: {pid:?}"
        ))
    })?;
    let secret = unhex(secret)
        .filter(|s| (CANCEL_SECRET_MIN..=CANCEL_SECRET_MAX).contains(&s.len()))
        .ok_or_else(|| {
            CodecError(format!(
                "CancelRequest secret must be {CANCEL_SECRET_MIN}..{CANCEL_SECRET_MAX} bytes as hex"
            ))
        })?;
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(&secret);
    Ok(body)
}

/// Encode a whole startup-phase packet.
pub fn encode(code: u32, params: &[(&str, &str)]) -> Result<Vec<u8>> {
    let body = if is_v3(code) {
        let mut body = Vec::new();
        for (key, value) in params {
            if key.is_empty() {
                return Err(CodecError::new("startup parameter name must not be empty"));
            }
            if key.as_bytes().contains(&0) {
                return Err(CodecError::new(
                    "startup parameter name must not contain NUL",
                ));
            }
            if value.as_bytes().contains(&0) {
                return Err(CodecError::new(
                    "startup parameter value must not contain NUL",
                ));
            }
            body.extend_from_slice(key.as_bytes());
            body.push(0);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    } else if code == CANCEL_REQUEST_CODE {
        encode_cancel(params)?
    } else {
        if !params.is_empty() {
            return Err(CodecError(format!(
                "startup code {code} takes no parameters"
            )));
        }
        Vec::new()
    };
    let length = body
        .len()
        .checked_add(HEAD_LEN)
        .and_then(|l| u32::try_from(l).ok())
        .filter(|&l| l <= INT32_MAX)
        .ok_or_else(|| CodecError::new("startup packet too long"))?;
    let mut out = Vec::with_capacity(body.len() + HEAD_LEN);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

#[pyfunction(name = "decode_startup")]
pub fn py_decode_startup<'py>(
    py: Python<'py>,
    packet: &[u8],
) -> PyResult<(u32, Bound<'py, PyDict>)> {
    let (code, params) = decode(packet)?;
    let dict = PyDict::new(py);
    for (k, v) in params {
        dict.set_item(PyString::new(py, &k), PyString::new(py, &v))?;
    }
    Ok((code, dict))
}

/// The `code` argument: a Python int in `0..=u32::MAX`, else ValueError.
pub struct Code(u32);

impl<'a, 'py> FromPyObject<'a, 'py> for Code {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let v = int_in(&obj, 0, i64::from(u32::MAX), "startup code")?;
        Ok(Code(u32::try_from(v).unwrap_or_default()))
    }
}

#[pyfunction(name = "encode_startup")]
#[pyo3(signature = (params, code = Code(PROTOCOL_3_0)), text_signature = "(params, code=196608)")]
pub fn py_encode_startup(params: &Bound<'_, PyAny>, code: Code) -> PyResult<Vec<u8>> {
    let code = code.0;
    let mapping = params.cast::<PyMapping>().map_err(|_| {
        PyTypeError::new_err(format!(
            "params must be a dict, not {}",
            params
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let mut owned: Vec<(String, String)> = Vec::new();
    for item in mapping.items()?.try_iter()? {
        let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
        let (Ok(k), Ok(v)) = (k.cast::<PyString>(), v.cast::<PyString>()) else {
            return Err(PyTypeError::new_err("startup parameters must be str: str"));
        };
        owned.push((k.to_str()?.to_owned(), v.to_str()?.to_owned()));
    }
    let borrowed: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Ok(encode(code, &borrowed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_v3() {
        let params = [
            ("user", "alice"),
            ("database", "db"),
            ("application_name", "ünï"),
        ];
        for code in [PROTOCOL_3_0, 196_610] {
            let pkt = encode(code, &params).unwrap();
            let (c, got) = decode(&pkt).unwrap();
            assert_eq!(c, code);
            let got: Vec<(&str, &str)> =
                got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(got, params);
        }
        assert_eq!(
            encode(PROTOCOL_3_0, &[]).unwrap(),
            b"\0\0\0\x09\0\x03\0\0\0"
        );
    }

    #[test]
    fn special_requests() {
        for code in [SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, 1234] {
            let pkt = encode(code, &[]).unwrap();
            assert_eq!(pkt.len(), 8);
            assert_eq!(decode(&pkt).unwrap(), (code, vec![]));
        }
        let pkt = encode(
            CANCEL_REQUEST_CODE,
            &[("pid", "-42"), ("secret", "DEADbeef")],
        )
        .unwrap();
        assert_eq!(&pkt[8..], b"\xff\xff\xff\xd6\xde\xad\xbe\xef");
        let (_, p) = decode(&pkt).unwrap();
        assert_eq!(
            p,
            vec![
                ("pid".into(), "-42".into()),
                ("secret".into(), "deadbeef".into())
            ]
        );
        let long = "ab".repeat(256);
        assert!(encode(CANCEL_REQUEST_CODE, &[("pid", "1"), ("secret", &long)]).is_ok());
        let too_long = "ab".repeat(257);
        assert!(encode(CANCEL_REQUEST_CODE, &[("pid", "1"), ("secret", &too_long)]).is_err());
        assert!(encode(
            CANCEL_REQUEST_CODE,
            &[("pid", "+1"), ("secret", "00000000")]
        )
        .is_err());
        assert!(encode(
            CANCEL_REQUEST_CODE,
            &[("pid", "2147483648"), ("secret", "00000000")]
        )
        .is_err());
        assert!(encode(
            CANCEL_REQUEST_CODE,
            &[("pid", "-2147483648"), ("secret", "00000000")]
        )
        .is_ok());
        assert!(encode(SSL_REQUEST_CODE, &[("a", "b")]).is_err());
    }

    #[test]
    fn rejects_malformed() {
        assert!(decode(b"\0\0\0\x08\0\x03\0").is_err()); // short
        assert!(decode(b"\0\0\0\x09\0\x03\0\0\0").is_ok());
        assert!(decode(b"\0\0\0\x0a\0\x03\0\0\0").is_err()); // length mismatch
        assert!(decode(b"\0\0\0\x08\0\x03\0\0").is_err()); // no terminator
        assert!(decode(b"\0\0\0\x0b\0\x03\0\0a\0\0").is_err()); // key without value
        assert!(decode(b"\0\0\0\x0a\0\x03\0\0\0\0").is_err()); // trailing
        assert!(decode(b"\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\x01").is_err()); // cancel too short
        assert!(decode(b"\0\0\0\x09\x04\xd2\x16\x2f\0").is_err()); // ssl with body
        assert!(decode(b"\xff\xff\xff\xff\0\x03\0\0").is_err());
    }
}
