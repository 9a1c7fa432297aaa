//! The incremental framer: splits one direction of a post-startup message
//! stream into pass-through runs and intercepted whole messages.
//!
//! The core ([`Framer`]) is pure Rust and works on borrowed chunks; it reports
//! what to emit as [`Item`]s that refer back into the chunk, so the common
//! case (a chunk of complete pass-through messages) allocates nothing. The
//! pyo3 wrapper ([`PyFramer`]) turns those items into Python objects and hands
//! back the very same `bytes` object when the whole chunk passes through.
//!
//! Batching (the `batch` type codes) is done in the core, as the items are
//! produced: an intercepted message of a batch type that directly follows one
//! of the same type in the same `feed` call widens the previous item instead of
//! adding one. Adjacent whole messages are contiguous in the chunk, so a run of
//! them stays a single `data[start..end]` slice and the wrapper builds one
//! `bytes` object for it with one copy; doing it in the wrapper instead would
//! need a second pass over the items and could not keep the core's own output
//! (and its unit tests) in the form Python sees.

use std::fmt;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::messages::{type_name, HEADER_LEN, INT32_MAX, MIN_LENGTH};

/// Initial capacity cap for a held intercepted message; it grows as bytes
/// arrive, so a lying length prefix cannot make us reserve `max_length` up front.
const HELD_INITIAL_CAPACITY: usize = 64 * 1024;
/// The merge class of every run type (batch types have 1..=256).
const RUN_CLASS: u16 = 257;
/// The code of an item of several messages of run types: no protocol
/// message has type 0, so the reader knows a run from one message.
pub const RUN_CODE: u8 = 0;

/// Why a chunk could not be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// A header declared a length under 4 or over the configured maximum.
    BadLength {
        code: u8,
        length: i32,
        max_length: u32,
    },
    /// An earlier error broke the stream; nothing more can be framed.
    Broken,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::BadLength {
                code,
                length,
                max_length,
            } => write!(
                f,
                "invalid message length {length} for type {} (allowed 4..{max_length})",
                type_name(*code)
            ),
            FramingError::Broken => f.write_str("framer is broken by an earlier framing error"),
        }
    }
}

impl std::error::Error for FramingError {}

/// Header bytes carried over from earlier chunks that begin a pass-through run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefix {
    bytes: [u8; HEADER_LEN - 1],
    len: u8,
}

impl Prefix {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One output item of [`Framer::feed`], referring into the chunk fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Forward `prefix` followed by `data[start..end]` unchanged.
    Pass {
        prefix: Prefix,
        start: usize,
        end: usize,
    },
    /// An intercepted message wholly inside the chunk: `data[start..end]`
    /// (with batching, a run of adjacent messages of type `code`).
    Whole { code: u8, start: usize, end: usize },
    /// An intercepted message assembled across chunks, followed by
    /// `data[start..end]`: the whole messages of the same batch type that come
    /// right after it in this chunk (an empty range without batching).
    Held {
        code: u8,
        message: Vec<u8>,
        start: usize,
        end: usize,
    },
}

impl Item {
    /// The bytes this item stands for (for tests and non-Python users).
    pub fn to_vec(&self, data: &[u8]) -> Vec<u8> {
        match self {
            Item::Pass { prefix, start, end } => {
                let mut v = prefix.as_slice().to_vec();
                v.extend_from_slice(data.get(*start..*end).unwrap_or_default());
                v
            }
            Item::Whole { start, end, .. } => data.get(*start..*end).unwrap_or_default().to_vec(),
            Item::Held {
                message,
                start,
                end,
                ..
            } => {
                let mut v = message.clone();
                v.extend_from_slice(data.get(*start..*end).unwrap_or_default());
                v
            }
        }
    }
}

/// The pure-Rust incremental framer.
#[derive(Debug, Clone)]
pub struct Framer {
    max_length: u32,
    intercept: [bool; 256],
    /// Intercepted types whose adjacent whole messages come out as one item.
    batch: [bool; 256],
    /// Intercepted types whose adjacent whole messages come out as one item
    /// whatever their types (a run, for an observer that reads each).
    runs: [bool; 256],
    /// Which adjacent whole messages merge: those of one nonzero class
    /// (a batch type's own; RUN_CLASS for every run type).
    merge: [u16; 256],
    /// A partial header (fewer than 5 bytes) from earlier chunks.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current message still to come.
    remaining: usize,
    /// The intercepted message being collected, if any.
    held: Option<Vec<u8>>,
    held_code: u8,
    messages: u64,
    broken: bool,
}

impl Framer {
    /// `max_length` must be in `4..=i32::MAX` (checked by the caller).
    pub fn new(max_length: u32, intercept: &[u8]) -> Self {
        let mut f = Framer {
            max_length,
            intercept: [false; 256],
            batch: [false; 256],
            runs: [false; 256],
            merge: [0; 256],
            header: [0; HEADER_LEN],
            header_len: 0,
            remaining: 0,
            held: None,
            held_code: 0,
            messages: 0,
            broken: false,
        };
        f.set_intercept(intercept);
        f
    }

    pub fn set_intercept(&mut self, types: &[u8]) {
        self.intercept = [false; 256];
        for &t in types {
            self.intercept[usize::from(t)] = true;
        }
    }

    /// Intercepted types whose adjacent whole messages (within one `feed`
    /// call) are merged into one item; types not intercepted are unaffected.
    pub fn set_batch(&mut self, types: &[u8]) {
        self.batch = [false; 256];
        for &t in types {
            self.batch[usize::from(t)] = true;
        }
        self.classify();
    }

    /// Intercepted types whose adjacent whole messages (within one `feed`
    /// call) are merged into one item whatever their types, whose code is
    /// RUN_CODE when it holds more than one; types not intercepted are
    /// unaffected. A type in both `runs` and `batch` merges as a run.
    pub fn set_runs(&mut self, types: &[u8]) {
        self.runs = [false; 256];
        for &t in types {
            self.runs[usize::from(t)] = true;
        }
        self.classify();
    }

    fn classify(&mut self) {
        for code in 0..256usize {
            self.merge[code] = if self.runs[code] {
                RUN_CLASS
            } else if self.batch[code] {
                // (code + 1: nonzero, and unlike any other type's)
                u16::try_from(code + 1).unwrap_or(u16::MAX)
            } else {
                0
            };
        }
        if self.runs.contains(&true) {
            // (A run item, RUN_CODE, takes the next run type's message.)
            self.merge[usize::from(RUN_CODE)] = RUN_CLASS;
        }
    }

    /// `self` with [`Framer::set_batch`] applied.
    pub fn with_batch(mut self, types: &[u8]) -> Self {
        self.set_batch(types);
        self
    }

    pub fn buffered(&self) -> usize {
        self.header_len + self.held.as_ref().map_or(0, Vec::len)
    }

    pub fn messages(&self) -> u64 {
        self.messages
    }

    pub fn at_boundary(&self) -> bool {
        !self.broken && self.remaining == 0 && self.header_len == 0 && self.held.is_none()
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    #[inline]
    fn check(&mut self, code: u8, length: i32) -> Result<usize, FramingError> {
        match u32::try_from(length) {
            Ok(len) if length >= MIN_LENGTH && len <= self.max_length => {
                usize::try_from(len - 4).map_err(|_| self.fail(code, length))
            }
            _ => Err(self.fail(code, length)),
        }
    }

    #[cold]
    fn fail(&mut self, code: u8, length: i32) -> FramingError {
        self.broken = true;
        self.header_len = 0;
        self.held = None;
        self.remaining = 0;
        FramingError::BadLength {
            code,
            length,
            max_length: self.max_length,
        }
    }

    /// Emit the whole intercepted message `data[start..end]`, merging it into
    /// the previous item of this call (`out[base..]`) when both are of the
    /// same batch type. Adjacent intercepted items are always contiguous in
    /// the chunk (anything between them would be a pass-through item), so
    /// merging only moves an `end`.
    #[inline]
    fn push_whole(&self, out: &mut Vec<Item>, base: usize, code: u8, start: usize, end: usize) {
        let class = self.merge[usize::from(code)];
        if class != 0 && out.len() > base {
            match out.last_mut() {
                Some(Item::Whole {
                    code: c, end: e, ..
                })
                | Some(Item::Held {
                    code: c, end: e, ..
                }) if self.merge[usize::from(*c)] == class => {
                    debug_assert_eq!(*e, start);
                    *e = end;
                    if class == RUN_CLASS {
                        *c = RUN_CODE;
                    }
                    return;
                }
                _ => {}
            }
        }
        out.push(Item::Whole { code, start, end });
    }

    /// Frame one chunk, appending items to `out` (which is not cleared;
    /// batching never merges into items from earlier calls).
    /// On error nothing useful is left in `out` and the framer is broken.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Item>) -> Result<(), FramingError> {
        if self.broken {
            return Err(FramingError::Broken);
        }
        let n = data.len();
        if n == 0 {
            return Ok(());
        }
        let base = out.len();
        let mut pos = 0usize;
        // Start of the pending pass-through run in `data`, and what precedes it.
        let mut run: Option<usize> = None;
        let mut prefix = Prefix::default();

        if self.header_len > 0 {
            // Complete the header held from earlier chunks.
            let old = self.header_len;
            let take = (HEADER_LEN - old).min(n);
            self.header[old..old + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            if self.header_len < HEADER_LEN {
                return Ok(());
            }
            self.header_len = 0;
            pos = take;
            let head = self.header;
            let code = head[0];
            let length = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            let remaining = self.check(code, length)?;
            self.remaining = remaining;
            if self.intercept[usize::from(code)] {
                if remaining > 0 {
                    let mut held =
                        Vec::with_capacity((remaining + HEADER_LEN).min(HELD_INITIAL_CAPACITY));
                    held.extend_from_slice(&head);
                    self.held = Some(held);
                    self.held_code = code;
                } else {
                    self.messages += 1;
                    out.push(Item::Held {
                        code,
                        message: head.to_vec(),
                        start: pos,
                        end: pos,
                    });
                }
            } else {
                prefix.bytes[..old].copy_from_slice(&head[..old]);
                prefix.len = old as u8; // old < HEADER_LEN
                run = Some(0);
                if remaining == 0 {
                    self.messages += 1;
                }
            }
        }

        while pos < n {
            if self.remaining > 0 {
                let take = self.remaining.min(n - pos);
                match self.held.as_mut() {
                    None => {
                        if run.is_none() {
                            run = Some(pos);
                        }
                        pos += take;
                        self.remaining -= take;
                        if self.remaining == 0 {
                            self.messages += 1;
                        }
                    }
                    Some(held) => {
                        held.extend_from_slice(&data[pos..pos + take]);
                        pos += take;
                        self.remaining -= take;
                        if self.remaining == 0 {
                            self.messages += 1;
                            let message = self.held.take().unwrap_or_default();
                            out.push(Item::Held {
                                code: self.held_code,
                                message,
                                start: pos,
                                end: pos,
                            });
                        }
                    }
                }
                continue;
            }
            let rest = &data[pos..];
            let [code, l0, l1, l2, l3, ..] = *rest else {
                // Fewer than 5 bytes left: hold the partial header.
                self.header[..rest.len()].copy_from_slice(rest);
                self.header_len = rest.len();
                break;
            };
            let length = i32::from_be_bytes([l0, l1, l2, l3]);
            let payload = self.check(code, length)?;
            if self.intercept[usize::from(code)] {
                if let Some(start) = run.take() {
                    out.push(Item::Pass {
                        prefix,
                        start,
                        end: pos,
                    });
                    prefix = Prefix::default();
                }
                let total = payload + HEADER_LEN;
                if total <= n - pos {
                    self.push_whole(out, base, code, pos, pos + total);
                    self.messages += 1;
                    pos += total;
                } else {
                    let mut held =
                        Vec::with_capacity(total.min(HELD_INITIAL_CAPACITY).max(n - pos));
                    held.extend_from_slice(rest);
                    self.held = Some(held);
                    self.held_code = code;
                    self.remaining = total - (n - pos);
                    pos = n;
                }
            } else {
                if run.is_none() {
                    run = Some(pos);
                }
                // Skip whole pass-through messages in place; a partial one
                // continues through `remaining`.
                let avail = n - pos - HEADER_LEN;
                if payload <= avail {
                    pos += HEADER_LEN + payload;
                    self.messages += 1;
                } else {
                    self.remaining = payload - avail;
                    pos = n;
                }
            }
        }

        if let Some(start) = run {
            out.push(Item::Pass {
                prefix,
                start,
                end: pos,
            });
        }
        Ok(())
    }
}

/// The Python exception, `hoopfast_core.FramingError` (a `ValueError`).
pub mod exc {
    pyo3::create_exception!(
        hoopfast_core,
        FramingError,
        pyo3::exceptions::PyValueError,
        "A message header with an impossible length; the stream cannot be framed."
    );
}

/// Incremental framer for one direction of a post-startup message stream.
#[pyclass(module = "hoopfast_core", name = "Framer")]
pub struct PyFramer {
    inner: Framer,
    items: Vec<Item>,
}

fn check_types(types: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    match types.cast::<PyBytes>() {
        Ok(b) => Ok(b.as_bytes().to_vec()),
        Err(_) => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{what} must be bytes, not {}",
            types.get_type().name()?
        ))),
    }
}

fn check_intercept(types: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    check_types(types, "intercept")
}

/// The `intercept` argument: `bytes` only (like the reference implementation).
#[derive(Default)]
pub struct Intercept(Vec<u8>);

impl<'a, 'py> FromPyObject<'a, 'py> for Intercept {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        check_intercept(&obj).map(Intercept)
    }
}

/// The `batch` argument: `bytes` only, like `intercept`.
#[derive(Default)]
pub struct Batch(Vec<u8>);

impl<'a, 'py> FromPyObject<'a, 'py> for Batch {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        check_types(&obj, "batch").map(Batch)
    }
}

#[pymethods]
impl PyFramer {
    #[new]
    #[pyo3(
        signature = (max_length, intercept = Intercept::default(), batch = Batch::default()),
        text_signature = "(max_length, intercept=b'', batch=b'')"
    )]
    fn new(max_length: &Bound<'_, PyAny>, intercept: Intercept, batch: Batch) -> PyResult<Self> {
        let index = max_length.call_method0("__index__").map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "'{}' object cannot be interpreted as an integer",
                max_length
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let max = match index
            .extract::<i64>()
            .ok()
            .and_then(|v| u32::try_from(v).ok())
        {
            Some(v) if (4..=INT32_MAX).contains(&v) => v,
            _ => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "max_length must be between 4 and {INT32_MAX}, not {}",
                    index.str()?
                )))
            }
        };
        Ok(PyFramer {
            inner: Framer::new(max, &intercept.0).with_batch(&batch.0),
            items: Vec::new(),
        })
    }

    /// Frame one chunk; see `hoopfast.core.abc.Framer.feed`.
    fn feed<'py>(&mut self, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let py = data.py();
        if self.inner.is_broken() {
            return Err(exc::FramingError::new_err(FramingError::Broken.to_string()));
        }
        let chunk = data.cast::<PyBytes>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "feed() needs bytes, not {}",
                data.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let bytes = chunk.as_bytes();
        let mut items = std::mem::take(&mut self.items);
        items.clear();
        let result = self.inner.feed(bytes, &mut items);
        if let Err(e) = result {
            items.clear();
            self.items = items;
            return Err(exc::FramingError::new_err(e.to_string()));
        }
        // Fast path: the whole chunk passes through, hand back the same object.
        if let [Item::Pass {
            prefix,
            start: 0,
            end,
        }] = items.as_slice()
        {
            if prefix.is_empty() && *end == bytes.len() {
                self.items = items;
                return PyList::new(py, [chunk]);
            }
        }
        let list = PyList::empty(py);
        for item in items.drain(..) {
            match item {
                Item::Pass { prefix, start, end } => {
                    let body = &bytes[start..end];
                    let obj = if prefix.is_empty() {
                        PyBytes::new(py, body)
                    } else {
                        let p = prefix.as_slice();
                        PyBytes::new_with(py, p.len() + body.len(), |buf| {
                            buf[..p.len()].copy_from_slice(p);
                            buf[p.len()..].copy_from_slice(body);
                            Ok(())
                        })?
                    };
                    list.append(obj)?;
                }
                Item::Whole { code, start, end } => {
                    // One slice and one copy for a whole batch; a chunk that
                    // is all one batch (or one message) is handed back as is.
                    let msg = if start == 0 && end == bytes.len() {
                        chunk.clone()
                    } else {
                        PyBytes::new(py, &bytes[start..end])
                    };
                    list.append(PyTuple::new(
                        py,
                        [code.into_pyobject(py)?.into_any(), msg.into_any()],
                    )?)?;
                }
                Item::Held {
                    code,
                    message,
                    start,
                    end,
                } => {
                    let tail = &bytes[start..end];
                    let msg = if tail.is_empty() {
                        PyBytes::new(py, &message)
                    } else {
                        PyBytes::new_with(py, message.len() + tail.len(), |buf| {
                            buf[..message.len()].copy_from_slice(&message);
                            buf[message.len()..].copy_from_slice(tail);
                            Ok(())
                        })?
                    };
                    list.append(PyTuple::new(
                        py,
                        [code.into_pyobject(py)?.into_any(), msg.into_any()],
                    )?)?;
                }
            }
        }
        self.items = items;
        Ok(list)
    }

    /// Change the intercepted type codes (from the next message header on).
    fn set_intercept(&mut self, types: &Bound<'_, PyAny>) -> PyResult<()> {
        let t = check_intercept(types)?;
        self.inner.set_intercept(&t);
        Ok(())
    }

    /// Change the types whose adjacent whole messages come out as one item
    /// whatever their types; see `hoopfast.core.abc.Framer.set_runs`.
    fn set_runs(&mut self, types: &Bound<'_, PyAny>) -> PyResult<()> {
        let t = check_types(types, "runs")?;
        self.inner.set_runs(&t);
        Ok(())
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    #[getter]
    fn messages(&self) -> u64 {
        self.inner.messages()
    }

    #[getter]
    fn at_boundary(&self) -> bool {
        self.inner.at_boundary()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(code: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![code];
        v.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Feed `chunks`, returning (kind, bytes) items: kind 0 = pass-through.
    fn run(f: &mut Framer, chunks: &[&[u8]]) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        for c in chunks {
            let mut out = Vec::new();
            f.feed(c, &mut out).unwrap();
            for it in &out {
                let code = match it {
                    Item::Pass { .. } => 0,
                    Item::Whole { code, .. } | Item::Held { code, .. } => *code,
                };
                all.push((code, it.to_vec(c)));
            }
        }
        all
    }

    #[test]
    fn whole_chunk_passes_through_as_one_item() {
        let mut data = msg(b'Z', b"I");
        data.extend(msg(b'C', b"SELECT 1\0"));
        data.extend(msg(b'D', b"\0\x01\0\0\0\x011"));
        let mut f = Framer::new(1 << 20, b"E");
        let mut out = Vec::new();
        f.feed(&data, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Item::Pass {
                prefix: Prefix::default(),
                start: 0,
                end: data.len()
            }]
        );
        assert_eq!(f.messages(), 3);
        assert!(f.at_boundary());
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn intercepted_message_split_everywhere() {
        let mut data = msg(b'C', b"x\0");
        data.extend(msg(b'E', b"SERROR\0\0"));
        data.extend(msg(b'Z', b"I"));
        for cut in 0..=data.len() {
            let mut f = Framer::new(1000, b"E");
            let items = run(&mut f, &[&data[..cut], &data[cut..]]);
            let joined: Vec<u8> = items.iter().flat_map(|(_, b)| b.clone()).collect();
            assert_eq!(joined, data);
            let e: Vec<_> = items.iter().filter(|(c, _)| *c == b'E').collect();
            assert_eq!(e.len(), 1);
            assert_eq!(e[0].1, msg(b'E', b"SERROR\0\0"));
            assert_eq!(f.messages(), 3);
            assert!(f.at_boundary());
        }
    }

    #[test]
    fn large_pass_through_is_streamed() {
        let data = msg(b'd', &vec![7u8; 100_000]);
        let mut f = Framer::new(1 << 20, b"");
        let mut out = Vec::new();
        f.feed(&data[..1000], &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(f.buffered(), 0);
        assert!(!f.at_boundary());
        out.clear();
        f.feed(&data[1000..], &mut out).unwrap();
        assert_eq!(f.messages(), 1);
        assert!(f.at_boundary());
    }

    #[test]
    fn bad_lengths_break_the_framer() {
        for (len, max) in [(3i32, 100u32), (-1, 100), (101, 100), (0, 100)] {
            let mut data = msg(b'Z', b"I");
            data.push(b'Q');
            data.extend_from_slice(&len.to_be_bytes());
            let mut f = Framer::new(max, b"");
            let mut out = Vec::new();
            let err = f.feed(&data, &mut out).unwrap_err();
            assert!(err
                .to_string()
                .contains(&format!("invalid message length {len} for type 'Q'")));
            assert_eq!(f.messages(), 1);
            assert!(!f.at_boundary());
            assert_eq!(f.feed(b"", &mut out), Err(FramingError::Broken));
            // Split header: the same error.
            let mut f = Framer::new(max, b"");
            f.feed(&data[..7], &mut out).unwrap();
            assert_eq!(f.buffered(), 1);
            assert!(f.feed(&data[7..], &mut out).is_err());
            assert!(f.is_broken());
        }
    }

    #[test]
    fn header_split_in_three() {
        let data = msg(b'D', b"abc");
        let mut f = Framer::new(100, b"");
        let items = run(&mut f, &[&data[..1], &data[1..3], &data[3..6], &data[6..]]);
        let joined: Vec<u8> = items.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(joined, data);
        assert_eq!(items.len(), 2); // header + first payload byte, then the rest
        assert_eq!(items[0].1, data[..6].to_vec());
    }

    #[test]
    fn zero_payload_messages() {
        let data = [msg(b'E', b""), msg(b'1', b""), msg(b'E', b"")].concat();
        for cut in 0..=data.len() {
            let mut f = Framer::new(100, b"E");
            let items = run(&mut f, &[&data[..cut], &data[cut..]]);
            assert_eq!(items.iter().filter(|(c, _)| *c == b'E').count(), 2);
            assert_eq!(f.messages(), 3);
        }
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    fn msg(code: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![code];
        v.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// One chunk's items as (None for pass-through | Some(code), bytes).
    type Items = Vec<(Option<u8>, Vec<u8>)>;

    fn feed(f: &mut Framer, chunk: &[u8]) -> Items {
        // A non-empty `out` checks that nothing merges into earlier items.
        let mut out = vec![Item::Whole {
            code: b'D',
            start: 0,
            end: 0,
        }];
        f.feed(chunk, &mut out).unwrap();
        out.drain(1..)
            .map(|it| {
                let kind = match &it {
                    Item::Pass { .. } => None,
                    Item::Whole { code, .. } | Item::Held { code, .. } => Some(*code),
                };
                (kind, it.to_vec(chunk))
            })
            .collect()
    }

    /// The contract: adjacent intercepted items of one batch type merged.
    fn merged(items: Items, batch: &[u8]) -> Items {
        let mut out: Items = Vec::new();
        for (kind, bytes) in items {
            if let (Some(code), Some((Some(last), prev))) = (kind, out.last_mut()) {
                if code == *last && batch.contains(&code) {
                    prev.extend_from_slice(&bytes);
                    continue;
                }
            }
            out.push((kind, bytes));
        }
        out
    }

    fn rows(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| msg(b'D', format!("row {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn many_rows_make_one_item() {
        let data = rows(1000);
        let mut f = Framer::new(1 << 20, b"DE").with_batch(b"D");
        let mut out = Vec::new();
        f.feed(&data, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Item::Whole {
                code: b'D',
                start: 0,
                end: data.len()
            }]
        );
        assert_eq!(f.messages(), 1000);
        assert!(f.at_boundary());
    }

    #[test]
    fn runs_are_cut_by_other_items() {
        let e = msg(b'E', b"SERROR\0\0");
        let c = msg(b'C', b"SELECT 2\0");
        let data = [rows(2), e.clone(), e.clone(), rows(3), c.clone(), rows(1)].concat();
        let mut f = Framer::new(1 << 20, b"DE").with_batch(b"D");
        let items = feed(&mut f, &data);
        assert_eq!(
            items,
            vec![
                (Some(b'D'), rows(2)),
                (Some(b'E'), e.clone()),
                (Some(b'E'), e),
                (Some(b'D'), rows(3)),
                (None, c),
                (Some(b'D'), rows(1)),
            ]
        );
        assert_eq!(f.messages(), 9);
    }

    #[test]
    fn run_types_merge_whatever_their_types() {
        let two = msg(b'2', b"");
        let t = msg(b'T', b"\0\0");
        let c = msg(b'C', b"SELECT 1\0");
        let z = msg(b'Z', b"I");
        let e = msg(b'E', b"SERROR\0\0");
        let data = [
            two.clone(),
            t.clone(),
            rows(2),
            c.clone(),
            e.clone(),
            z.clone(),
        ]
        .concat();
        // D is in batch and runs: it merges as a run; E is intercepted
        // alone and cuts the run; 'C' passes through.
        let mut f = Framer::new(1 << 20, b"2TDEZ").with_batch(b"D");
        f.set_runs(b"2TDZ");
        let items = feed(&mut f, &data);
        assert_eq!(
            items,
            vec![
                (Some(RUN_CODE), [two.clone(), t.clone(), rows(2)].concat()),
                (None, c.clone()),
                (Some(b'E'), e.clone()),
                (Some(b'Z'), z.clone()),
            ]
        );
        // A held message starts a run that whole ones after it join.
        let whole = [t.clone(), z.clone()].concat();
        let mut f = Framer::new(1 << 20, b"TZ");
        f.set_runs(b"TZ");
        assert!(feed(&mut f, &whole[..3]).is_empty());
        assert_eq!(feed(&mut f, &whole[3..]), vec![(Some(RUN_CODE), whole)]);
        // A batch type not in runs merges only with its own type.
        let data = [rows(2), z.clone(), rows(1)].concat();
        let mut f = Framer::new(1 << 20, b"DZ").with_batch(b"D");
        f.set_runs(b"Z");
        assert_eq!(
            feed(&mut f, &data),
            vec![
                (Some(b'D'), rows(2)),
                (Some(b'Z'), z),
                (Some(b'D'), rows(1))
            ]
        );
    }

    #[test]
    fn held_row_merges_with_following_rows() {
        let data = rows(5);
        let first = msg(b'D', b"row 0").len();
        let mut f = Framer::new(1 << 20, b"D").with_batch(b"D");
        assert!(feed(&mut f, &data[..3]).is_empty());
        let mut out = Vec::new();
        f.feed(&data[3..], &mut out).unwrap();
        assert_eq!(
            out,
            vec![Item::Held {
                code: b'D',
                message: data[..first].to_vec(),
                start: first - 3,
                end: data.len() - 3,
            }]
        );
        assert_eq!(f.messages(), 5);
        // Split inside the header of an empty row, too.
        let data = [msg(b'D', b""), rows(2)].concat();
        let mut f = Framer::new(1 << 20, b"D").with_batch(b"D");
        assert!(feed(&mut f, &data[..2]).is_empty());
        assert_eq!(feed(&mut f, &data[2..]), vec![(Some(b'D'), data.clone())]);
    }

    #[test]
    fn batch_without_intercept_changes_nothing() {
        let data = rows(10);
        let mut f = Framer::new(1 << 20, b"E").with_batch(b"D");
        let mut out = Vec::new();
        f.feed(&data, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Item::Pass {
                prefix: Prefix::default(),
                start: 0,
                end: data.len()
            }]
        );
    }

    #[test]
    fn every_two_and_three_way_split_matches_the_contract() {
        let e = msg(b'E', b"SERROR\0\0");
        let data = [
            msg(b'D', b""),
            rows(2),
            msg(b'C', b"x\0"),
            rows(1),
            e.clone(),
            e,
            rows(2),
            msg(b'E', b""),
            msg(b'D', b"abcdefgh"),
        ]
        .concat();
        let n = data.len();
        for batch in [&b"D"[..], b"DE", b"E", b"DZ"] {
            for a in 0..=n {
                for b in (a..=n).step_by(3) {
                    let chunks = [&data[..a], &data[a..b], &data[b..]];
                    let mut plain = Framer::new(1000, b"DE");
                    let mut batched = Framer::new(1000, b"DE").with_batch(batch);
                    let mut all = Vec::new();
                    for c in chunks {
                        let want = merged(feed(&mut plain, c), batch);
                        let got = feed(&mut batched, c);
                        assert_eq!(got, want, "batch {batch:?} cuts {a} {b}");
                        assert_eq!(
                            (
                                batched.messages(),
                                batched.buffered(),
                                batched.at_boundary()
                            ),
                            (plain.messages(), plain.buffered(), plain.at_boundary())
                        );
                        all.extend(got.into_iter().flat_map(|(_, v)| v));
                    }
                    assert_eq!(all, data);
                }
            }
        }
    }
}
