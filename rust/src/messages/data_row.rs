//! DataRow ('D'): Int16 column count, then per column an Int32 length (-1 for
//! NULL) and that many bytes.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::backend::DATA_ROW;
use super::{body, header, CodecError, Reader, Result, HEADER_LEN, INT16_MAX, INT32_MAX};

const WHAT: &str = "DataRow";
const NULL: [u8; 4] = (-1i32).to_be_bytes();

/// Decode a whole DataRow into borrowed column values (None = NULL).
pub fn decode(message: &[u8]) -> Result<Vec<Option<&[u8]>>> {
    let mut r = Reader::new(body(message, &[DATA_ROW], WHAT)?);
    let count = r
        .i16()
        .ok_or_else(|| CodecError::new("DataRow lacks its column count"))?;
    let count = usize::try_from(count)
        .map_err(|_| CodecError(format!("negative DataRow column count {count}")))?;
    // Each column needs at least 4 bytes: never pre-allocate beyond the buffer.
    let mut values = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        let size = r
            .i32()
            .ok_or_else(|| CodecError::new("DataRow truncated in a column length"))?;
        if size < 0 {
            if size != -1 {
                return Err(CodecError(format!("invalid DataRow column length {size}")));
            }
            values.push(None);
            continue;
        }
        let size = usize::try_from(size).map_err(|_| CodecError::new("DataRow column too long"))?;
        let value = r
            .take(size)
            .ok_or_else(|| CodecError::new("DataRow truncated in a column value"))?;
        values.push(Some(value));
    }
    if r.remaining() != 0 {
        return Err(CodecError(format!(
            "{} trailing bytes after DataRow columns",
            r.remaining()
        )));
    }
    Ok(values)
}

/// The size of the whole encoded message.
pub fn encoded_len(values: &[Option<&[u8]>]) -> Result<usize> {
    if values.len() > INT16_MAX {
        return Err(CodecError(format!(
            "too many DataRow columns: {}",
            values.len()
        )));
    }
    let mut payload = 2usize;
    for v in values {
        let n = v.map_or(0, <[u8]>::len);
        if n > INT32_MAX as usize {
            return Err(CodecError::new("DataRow column value too long"));
        }
        payload = payload
            .checked_add(4 + n)
            .ok_or_else(|| CodecError::new("DataRow message too long"))?;
    }
    header(DATA_ROW, payload, WHAT)?;
    Ok(payload + HEADER_LEN)
}

/// Write the whole message into `out`, which must be `encoded_len` bytes.
pub fn write(values: &[Option<&[u8]>], out: &mut [u8]) -> Result<()> {
    let total = encoded_len(values)?;
    if out.len() != total {
        return Err(CodecError::new("DataRow output buffer has the wrong size"));
    }
    let (head, mut rest) = out.split_at_mut(HEADER_LEN);
    head.copy_from_slice(&header(DATA_ROW, total - HEADER_LEN, WHAT)?);
    let (count, r) = rest.split_at_mut(2);
    count.copy_from_slice(&(values.len() as u16).to_be_bytes());
    rest = r;
    for v in values {
        let (len, r) = rest.split_at_mut(4);
        match v {
            None => {
                len.copy_from_slice(&NULL);
                rest = r;
            }
            Some(v) => {
                len.copy_from_slice(&(v.len() as u32).to_be_bytes());
                let (dst, r) = r.split_at_mut(v.len());
                dst.copy_from_slice(v);
                rest = r;
            }
        }
    }
    Ok(())
}

/// Encode a whole DataRow.
pub fn encode(values: &[Option<&[u8]>]) -> Result<Vec<u8>> {
    let mut out = vec![0; encoded_len(values)?];
    write(values, &mut out)?;
    Ok(out)
}

#[pyfunction(name = "decode_data_row")]
pub fn py_decode_data_row<'py>(py: Python<'py>, message: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let values = decode(message)?;
    let list = PyList::empty(py);
    for v in values {
        match v {
            None => list.append(py.None())?,
            Some(v) => list.append(PyBytes::new(py, v))?,
        }
    }
    Ok(list)
}

#[pyfunction(name = "encode_data_row")]
pub fn py_encode_data_row<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut objs: Vec<Option<Bound<'py, PyBytes>>> = Vec::new();
    for item in values.try_iter()? {
        let item = item?;
        if item.is_none() {
            objs.push(None);
        } else {
            match item.cast_into::<PyBytes>() {
                Ok(b) => objs.push(Some(b)),
                Err(e) => {
                    return Err(PyTypeError::new_err(format!(
                        "DataRow values must be bytes or None, not {}",
                        e.into_inner().get_type().name()?
                    )))
                }
            }
        }
    }
    let slices: Vec<Option<&[u8]>> = objs
        .iter()
        .map(|o| o.as_ref().map(|b| b.as_bytes()))
        .collect();
    let total = encoded_len(&slices)?;
    PyBytes::new_with(py, total, |buf| Ok(write(&slices, buf)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let big = vec![9u8; 70_000];
        let rows: Vec<Vec<Option<&[u8]>>> = vec![
            vec![],
            vec![None],
            vec![Some(b"")],
            vec![Some(b"1"), None, Some(b"hello"), Some(&big)],
        ];
        for row in rows {
            let msg = encode(&row).unwrap();
            assert_eq!(msg.len(), encoded_len(&row).unwrap());
            assert_eq!(decode(&msg).unwrap(), row);
        }
        assert_eq!(
            encode(&[Some(b"ab"), None]).unwrap(),
            b"D\0\0\0\x10\0\x02\0\0\0\x02ab\xff\xff\xff\xff"
        );
    }

    #[test]
    fn rejects_malformed() {
        assert!(decode(b"D\0\0\0\x04").is_err()); // no count
        assert!(decode(b"D\0\0\0\x06\xff\xff").is_err()); // negative count
        assert!(decode(b"D\0\0\0\x06\0\x01").is_err()); // missing column
        assert!(decode(b"D\0\0\0\x0a\0\x01\xff\xff\xff\xfe").is_err()); // -2
        assert!(decode(b"D\0\0\0\x0a\0\x01\0\0\0\x01").is_err()); // short value
        assert!(decode(b"D\0\0\0\x0b\0\x01\xff\xff\xff\xff\0").is_err()); // trailing
        assert!(decode(b"D\0\0\0\x0a\0\x01\x7f\xff\xff\xff").is_err()); // huge
        assert!(decode(b"D\0\0\0\x06\x7f\xff").is_err()); // count lies
        let many: Vec<Option<&[u8]>> = vec![None; 32768];
        assert!(encode(&many).is_err());
    }
}
