//! RowDescription ('T'): Int16 field count; per field a cstring name, Int32
//! table OID, Int16 column attnum, Int32 type OID, Int16 type size, Int32
//! type modifier, Int16 format code. OIDs are unsigned 32-bit.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::backend::ROW_DESCRIPTION;
use super::{body, header, int_in, CodecError, Reader, Result, HEADER_LEN, INT16_MAX};

const WHAT: &str = "RowDescription";
/// Bytes after the name: 4 + 2 + 4 + 2 + 4 + 2.
pub const FIELD_TAIL_LEN: usize = 18;

/// One field; `name` borrows from the message when decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub typlen: i16,
    pub typmod: i32,
    pub format: i16,
}

pub fn decode(message: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut r = Reader::new(body(message, &[ROW_DESCRIPTION], WHAT)?);
    let count = r
        .i16()
        .ok_or_else(|| CodecError::new("RowDescription lacks its field count"))?;
    let count = usize::try_from(count)
        .map_err(|_| CodecError(format!("negative RowDescription field count {count}")))?;
    let mut fields = Vec::with_capacity(count.min(r.remaining() / (FIELD_TAIL_LEN + 1)));
    for _ in 0..count {
        let name = r
            .cstr()
            .ok_or_else(|| CodecError::new("unterminated RowDescription field name"))?;
        let truncated = || CodecError::new("RowDescription truncated in a field");
        let mut tail = Reader::new(r.take(FIELD_TAIL_LEN).ok_or_else(truncated)?);
        let field = (|| {
            Some(Field {
                name,
                table_oid: tail.u32()?,
                attnum: tail.i16()?,
                type_oid: tail.u32()?,
                typlen: tail.i16()?,
                typmod: tail.i32()?,
                format: tail.i16()?,
            })
        })()
        .ok_or_else(truncated)?;
        fields.push(field);
    }
    if r.remaining() != 0 {
        return Err(CodecError(format!(
            "{} trailing bytes after RowDescription fields",
            r.remaining()
        )));
    }
    Ok(fields)
}

pub fn encode(fields: &[Field<'_>]) -> Result<Vec<u8>> {
    if fields.len() > INT16_MAX {
        return Err(CodecError(format!(
            "too many RowDescription fields: {}",
            fields.len()
        )));
    }
    let mut payload = 2usize;
    for f in fields {
        if f.name.contains(&0) {
            return Err(CodecError::new("field name must not contain NUL"));
        }
        payload = payload
            .checked_add(f.name.len() + 1 + FIELD_TAIL_LEN)
            .ok_or_else(|| CodecError::new("RowDescription message too long"))?;
    }
    let mut out = Vec::with_capacity(payload + HEADER_LEN);
    out.extend_from_slice(&header(ROW_DESCRIPTION, payload, WHAT)?);
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for f in fields {
        out.extend_from_slice(f.name);
        out.push(0);
        out.extend_from_slice(&f.table_oid.to_be_bytes());
        out.extend_from_slice(&f.attnum.to_be_bytes());
        out.extend_from_slice(&f.type_oid.to_be_bytes());
        out.extend_from_slice(&f.typlen.to_be_bytes());
        out.extend_from_slice(&f.typmod.to_be_bytes());
        out.extend_from_slice(&f.format.to_be_bytes());
    }
    Ok(out)
}

#[pyfunction(name = "decode_row_description")]
pub fn py_decode_row_description<'py>(
    py: Python<'py>,
    message: &[u8],
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for f in decode(message)? {
        list.append((
            PyBytes::new(py, f.name),
            f.table_oid,
            f.attnum,
            f.type_oid,
            f.typlen,
            f.typmod,
            f.format,
        ))?;
    }
    Ok(list)
}

#[pyfunction(name = "encode_row_description")]
pub fn py_encode_row_description(fields: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let mut names: Vec<Bound<'_, PyBytes>> = Vec::new();
    let mut nums: Vec<(u32, i16, u32, i16, i32, i16)> = Vec::new();
    for item in fields.try_iter()? {
        let item = item?;
        let parts: Vec<Bound<'_, PyAny>> = item.try_iter()?.collect::<PyResult<_>>()?;
        if parts.len() != 7 {
            return Err(PyValueError::new_err("a RowDescription field is a 7-tuple"));
        }
        let name = parts[0].cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "field name must be bytes, not {}",
                parts[0]
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        if name.as_bytes().contains(&0) {
            return Err(PyValueError::new_err("field name must not contain NUL"));
        }
        let i16r = (i64::from(i16::MIN), i64::from(i16::MAX));
        let u32r = (0, i64::from(u32::MAX));
        nums.push((
            int_in(&parts[1], u32r.0, u32r.1, "table oid")? as u32,
            int_in(&parts[2], i16r.0, i16r.1, "column attnum")? as i16,
            int_in(&parts[3], u32r.0, u32r.1, "type oid")? as u32,
            int_in(&parts[4], i16r.0, i16r.1, "type size")? as i16,
            int_in(
                &parts[5],
                i64::from(i32::MIN),
                i64::from(i32::MAX),
                "type modifier",
            )? as i32,
            int_in(&parts[6], i16r.0, i16r.1, "format code")? as i16,
        ));
        names.push(name.clone());
    }
    let fields: Vec<Field<'_>> = names
        .iter()
        .zip(&nums)
        .map(
            |(n, &(table_oid, attnum, type_oid, typlen, typmod, format))| Field {
                name: n.as_bytes(),
                table_oid,
                attnum,
                type_oid,
                typlen,
                typmod,
                format,
            },
        )
        .collect();
    Ok(encode(&fields)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let fields = vec![
            Field {
                name: b"id",
                table_oid: 16384,
                attnum: 1,
                type_oid: 23,
                typlen: 4,
                typmod: -1,
                format: 0,
            },
            Field {
                name: b"",
                table_oid: u32::MAX,
                attnum: i16::MIN,
                type_oid: 0,
                typlen: -1,
                typmod: i32::MIN,
                format: 1,
            },
        ];
        let msg = encode(&fields).unwrap();
        assert_eq!(decode(&msg).unwrap(), fields);
        assert_eq!(decode(&encode(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed() {
        let ok = encode(&[Field {
            name: b"a",
            table_oid: 1,
            attnum: 1,
            type_oid: 1,
            typlen: 1,
            typmod: 1,
            format: 0,
        }])
        .unwrap();
        for cut in 5..ok.len() {
            let mut m = ok[..cut].to_vec();
            let len = (cut - 1) as u32;
            m[1..5].copy_from_slice(&len.to_be_bytes());
            assert!(decode(&m).is_err(), "cut at {cut}");
        }
        let mut trailing = ok.clone();
        trailing.push(0);
        let len = (trailing.len() - 1) as u32;
        trailing[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(decode(&trailing).is_err());
        assert!(encode(&[Field {
            name: b"a\0",
            table_oid: 0,
            attnum: 0,
            type_oid: 0,
            typlen: 0,
            typmod: 0,
            format: 0
        }])
        .is_err());
    }
}
