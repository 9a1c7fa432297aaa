# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, auto_pickle=False
"""The audit trail, compiled: the same classes as hoopfast/core/_trail.py (the
reference; read its docstring and keep the two in step), typed so that the
per-message path (server_message, client_message, fast_statement, called by
the relay pump for every message of a recorded session) runs without
interpreter dispatch. Messages are read where they lie, in the bytes the
pump hands over: nothing is sliced but the names and values that are kept.

Where the reference reads a field with int.from_bytes of a slice that a
malformed message may cut short (or leave empty), _uint and _sint read the
bytes there are, so both give the same values on any input."""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from cpython.unicode cimport (
    PyUnicode_1BYTE_DATA,
    PyUnicode_DecodeASCII,
    PyUnicode_Decode,
    PyUnicode_DecodeUTF8,
    PyUnicode_New,
)
from libc.limits cimport LLONG_MAX, LLONG_MIN
from libc.math cimport fabs, nearbyint
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memchr
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

import codecs
import functools

from hoopfast.core import _shown
from hoopfast.core._shown import BINARY_KINDS as _BINARY_KINDS
from hoopfast.core._shown import composite_text as _composite_text

from hoopfast.core._drops import EVERYTHING as _DROPS_EVERYTHING
from hoopfast.core._drops import FIRST as _FIRST
from hoopfast.core._drops import PREPARE as _DROPS_PREPARE
from hoopfast.core._drops import STATEMENT as _DROPS_STATEMENT
from hoopfast.core._drops import TAGS as _DROPS_TAGS
from hoopfast.core._drops import drops as _drops_of

#: (See the reference.)
_PREPARE_TAG = _DROPS_TAGS[_DROPS_PREPARE]
_SQL_PREPARED = "/* made by SQL PREPARE */ "
from hoopfast.core._trail import SYNC_COMMIT as _SYNC_COMMIT, UNANSWERED as _UNANSWERED
from hoopfast.core._trail import name_key as _name_key

# Message type codes, as in _trail.py. From the client:
cdef enum:
    _QUERY = 81  # Q
    _BIND = 66  # B
    _EXECUTE = 69  # E
    _SYNC = 83  # S
    _DESCRIBE = 68  # D
    _CLOSE = 67  # C
    _COPY_DONE = 99  # c
    _COPY_FAIL = 102  # f

# From the server:
cdef enum:
    _DATA_ROW = 68  # D
    _ROW_DESCRIPTION = 84  # T
    _COMMAND_COMPLETE = 67  # C
    _EMPTY_QUERY = 73  # I
    _PORTAL_SUSPENDED = 115  # s
    _READY_FOR_QUERY = 90  # Z
    _ERROR_RESPONSE = 69  # E
    _NOTICE_RESPONSE = 78  # N
    _PARSE_COMPLETE = 49  # 1
    _BIND_COMPLETE = 50  # 2
    _CLOSE_COMPLETE = 51  # 3
    _NO_DATA = 110  # n
    _PARAMETER_DESCRIPTION = 116  # t
    _COPY_IN_RESPONSE = 71  # G
    _COPY_DATA = 100  # d

# Queue entry kinds.
cdef enum:
    _K_SIMPLE = 0  # Query or FunctionCall: answered up to ReadyForQuery
    _K_PARSE = 1
    _K_BIND = 2
    _K_DESCRIBE = 3
    _K_EXECUTE = 4
    _K_CLOSE = 5
    _K_SYNC = 6
    _K_COPY_END = 7  # (see the reference)

#: Distinct RowDescriptions (and tags) a session keeps parsed; queue
#: entries a Parse looks back through (see the reference).
cdef enum:
    _CACHED = 64
    _DROP_LOOKBACK = 64
    #: (_trail._MAX_COLUMNS.)
    _MAX_COLUMNS = 1664
    #: (_trail._NAME_BYTES: how much of a name the server keys it by.)
    _NAME_BYTES = 63

cdef const char* _HEX = b"0123456789abcdef"
cdef const char* _REPLACE = b"replace"


# -- reading ------------------------------------------------------------------

cdef inline long long _uint(const unsigned char* buf, Py_ssize_t size, Py_ssize_t pos,
                            Py_ssize_t width) noexcept nogil:
    """int.from_bytes(data[pos:pos + width], "big"), the slice as short as
    the message makes it (empty: 0). Summed unsigned: 8 bytes read back as
    their two's complement (an int8), without signed overflow."""
    cdef unsigned long long value = 0
    cdef Py_ssize_t end = pos + width
    if end > size:
        end = size
    while pos < end:
        value = (value << 8) | buf[pos]
        pos += 1
    return <long long>value


cdef inline long long _sint(const unsigned char* buf, Py_ssize_t size, Py_ssize_t pos,
                            Py_ssize_t width) noexcept nogil:
    """The same, signed=True: two's complement over the bytes there are."""
    cdef Py_ssize_t n = (size if pos + width > size else pos + width) - pos
    cdef long long value = _uint(buf, size, pos, width)
    if n > 0 and value >= (1LL << (8 * n - 1)):
        value -= 1LL << (8 * n)
    return value


cdef inline Py_ssize_t _find_nul(const unsigned char* buf, Py_ssize_t size,
                                 Py_ssize_t start) noexcept nogil:
    """data.find(b"\\0", start)."""
    if start >= size:
        return -1
    cdef const unsigned char* p = <const unsigned char*>memchr(buf + start, 0, size - start)
    return -1 if p == NULL else p - buf


cdef inline double _monotonic() noexcept nogil:
    """time.perf_counter, without calling into the interpreter."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>(ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9


cdef inline double _wall_clock() noexcept nogil:
    """time.time() to the microsecond, as the reference's _wall_clock: an
    event's time, which the log writes without repr (_put_float)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>(ts.tv_sec * 1000000LL + ts.tv_nsec // 1000) / 1e6


cdef inline double _milliseconds(double seconds) noexcept nogil:
    """A duration in milliseconds to the microsecond, as the reference's
    _milliseconds (nearbyint rounds half to even, as round does)."""
    return nearbyint(seconds * 1e6) / 1000.0


cdef str _hex(const unsigned char* buf, Py_ssize_t n):
    """A binary value as the reference writes it (a backslash, "x", then
    raw.hex()), straight into the string."""
    cdef str s = PyUnicode_New(2 + 2 * n, 127)
    cdef unsigned char* out = PyUnicode_1BYTE_DATA(s)
    cdef Py_ssize_t i
    out[0] = 92  # backslash
    out[1] = 120  # x
    for i in range(n):
        out[2 + 2 * i] = _HEX[buf[i] >> 4]
        out[3 + 2 * i] = _HEX[buf[i] & 15]
    return s


cdef long long _clamp(object value) except? -1:
    """A cap as a C integer: beyond the range, no count reaches it anyway."""
    if value > LLONG_MAX:
        return LLONG_MAX
    if value < LLONG_MIN:
        return LLONG_MIN
    return value


cdef struct _BindLayout:
    Py_ssize_t portal_end  # the NULs ending the portal's and the statement's names
    Py_ssize_t name_end
    Py_ssize_t nfmt  # parameter format codes, at formats_at
    Py_ssize_t formats_at
    Py_ssize_t nparams  # parameter values (each length and bytes), from values_at
    Py_ssize_t values_at
    Py_ssize_t nres  # result format codes, at results_at
    Py_ssize_t results_at


cdef bint _bind_layout(const unsigned char* buf, Py_ssize_t size, _BindLayout* b) noexcept nogil:
    """Where a Bind's parts are; false where parse_bind (messages.py) raises
    ValueError. The whole message is checked before any value is read: a
    malformed Bind yields no parameters, and has none masked."""
    cdef Py_ssize_t pos, i
    cdef long long length
    b.portal_end = _find_nul(buf, size, 5)
    if b.portal_end < 0:
        return False
    b.name_end = _find_nul(buf, size, b.portal_end + 1)
    if b.name_end < 0:
        return False
    pos = b.name_end + 1
    if pos + 2 > size:
        return False
    b.nfmt = _uint(buf, size, pos, 2)
    b.formats_at = pos + 2
    pos = b.formats_at + 2 * b.nfmt
    if pos + 2 > size:
        return False
    b.nparams = _uint(buf, size, pos, 2)
    pos += 2
    b.values_at = pos
    for i in range(b.nparams):
        if pos + 4 > size:
            return False
        length = _sint(buf, size, pos, 4)
        pos += 4
        if length >= 0:
            if pos + length > size:
                return False
            pos += length
    if pos + 2 > size:
        return False
    b.nres = _uint(buf, size, pos, 2)
    b.results_at = pos + 2
    return b.results_at + 2 * b.nres <= size


# -- the classes --------------------------------------------------------------

@cython.final
cdef class Caps:
    # Each cap as given (read back unchanged) and as the C integer _rows
    # compares with. Set once: a session's caps do not change.
    cdef readonly object rows
    cdef readonly object bytes
    cdef readonly object session_bytes
    cdef long long c_rows
    cdef long long c_bytes
    cdef long long c_session_bytes

    def __init__(self, rows, bytes, session_bytes):
        self.c_rows = _clamp(rows)
        self.c_bytes = _clamp(bytes)
        self.c_session_bytes = _clamp(session_bytes)
        self.rows = rows
        self.bytes = bytes
        self.session_bytes = session_bytes

    def __repr__(self):
        return f"Caps(rows={self.rows!r}, bytes={self.bytes!r}, session_bytes={self.session_bytes!r})"


@cython.final
cdef class _Columns:
    """A RowDescription read (the reference's (columns, formats) tuple), and
    which of its columns come in binary."""
    cdef readonly list columns
    cdef readonly list formats
    cdef bytes binary


# How binary result values are shown: hoopfast/core/_shown.py's codes (its
# table, BINARY_KINDS, is used as is; the codes are checked at import).
cdef enum:
    _B_HEX = 0
    _B_TEXT = 1
    _B_INT2 = 2
    _B_INT4 = 3
    _B_INT8 = 4
    _B_OID = 5
    _B_BOOL = 6
    _B_UUID = 7
    _B_JSONB = 8
    _B_NUMERIC = 9
    _B_FLOAT4 = 10
    _B_DATE = 12
    _B_TIMESTAMPTZ = 15
    _B_INET = 16
    _B_INTERVAL = 20
    _B_ARRAY = 21

if (_shown.HEX, _shown.TEXT, _shown.INT2, _shown.INT4, _shown.INT8, _shown.OID, _shown.BOOL,
        _shown.UUID, _shown.JSONB, _shown.NUMERIC, _shown.FLOAT4, _shown.FLOAT8, _shown.DATE,
        _shown.TIME, _shown.TIMESTAMP, _shown.TIMESTAMPTZ) != tuple(range(16)) \
        or (_shown.INET, _shown.CIDR, _shown.MACADDR, _shown.MACADDR8, _shown.INTERVAL,
            _shown.ARRAY) != tuple(range(16, 22)) \
        or _shown.max_text(10) != 72 \
        or max(_BINARY_KINDS.values()) > 125:  # (a kind + 1 is kept in a char)
    raise ImportError("hoopfast.core._shown's binary codes changed: rebuild ext/_ctrail.pyx")

cdef bytes _binary(list formats, list columns):
    """Per column, 0 where its format code is text, else 1 + how its binary
    values are shown (_shown.BINARY_KINDS, by the column's type)."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(formats)
    cdef Py_ssize_t described = PyList_GET_SIZE(columns)
    cdef bytes mask = PyBytes_FromStringAndSize(NULL, n)
    cdef char* out = PyBytes_AS_STRING(mask)
    for i in range(n):
        if formats[i] != 1:
            out[i] = 0
        elif i < described:
            out[i] = 1 + <int>_BINARY_KINDS.get(columns[i]["type_oid"], _B_HEX)
        else:
            # (No Describe said what they are: up to _MAX_COLUMNS, shown as
            # hex; no lookup each, for this runs once per such statement.)
            out[i] = 1 + _B_HEX
    return mask


cdef _Columns _columns(list columns, list formats, bytes binary):
    cdef _Columns c = _Columns.__new__(_Columns)
    c.columns = columns
    c.formats = formats
    c.binary = _binary(formats, columns) if binary is None else binary
    return c


@cython.final
cdef class _ResultSet:
    cdef public list columns
    cdef public list formats
    cdef public list rows
    cdef public bint truncated
    cdef bytes binary

    def __cinit__(self):
        self.rows = []


cdef _ResultSet _result_set(_Columns c):
    cdef _ResultSet r = _ResultSet.__new__(_ResultSet)
    r.columns = c.columns
    r.formats = c.formats
    r.binary = c.binary
    return r


@cython.final
cdef class _Portal:
    cdef public object text
    cdef public object verdict
    cdef public list params
    cdef public list formats
    cdef public _Columns columns
    cdef long long ends
    #: (See the reference.)
    cdef bint gone


@cython.final
cdef class Statement:
    """One statement in flight, then done."""

    cdef public object text
    cdef public object verdict
    cdef public object params
    cdef public double started
    cdef public double started_at
    cdef public object rows
    #: DataRows since the last CommandComplete (whose count is exact).
    cdef public long long pending_rows
    #: (See _trail.Statement.uncounted.)
    cdef public bint uncounted
    #: (See _trail.Statement.inexact.)
    cdef public bint inexact
    #: The Execute's row limit (0: none).
    cdef public long long max_rows
    cdef public _Portal portal
    cdef public list tags
    cdef public object error
    cdef public list results
    cdef public long long kept_bytes
    cdef public list result_formats
    cdef public double duration
    cdef public long long server_bytes
    cdef public object drops

    def __cinit__(self):
        self.rows = 0
        self.tags = []
        self.results = []
        self.result_formats = []

    def __init__(self, text, verdict, params=None, double started=0.0, double started_at=0.0):
        self.text = text
        self.verdict = verdict
        self.params = params
        self.started = started
        self.started_at = started_at

    def event(self, n):
        cdef _ResultSet r
        cdef Py_ssize_t kept = 0
        cdef list results = []
        for r in self.results:
            results.append({"columns": r.columns, "rows": r.rows, "truncated": r.truncated})
            kept += len(r.rows)
        event = {
            "n": n,
            "text": self.text,
            "params": self.params,
            "verdict": self.verdict.action,
            "rule": self.verdict.rule,
            "started_at": self.started_at,
            "duration_ms": _milliseconds(self.duration),
            "rows": self.rows,
            "bytes": self.server_bytes,
            "tags": self.tags,
            "error": self.error,
            "results": results,
            "result_rows_kept": kept,
        }
        if self.uncounted or self.inexact:
            event["rows_exact"] = False
        return event


cdef Statement _start(object text, object verdict, object params):
    cdef Statement st = Statement.__new__(Statement)
    st.text = text
    st.verdict = verdict
    st.params = params
    st.started = _monotonic()
    st.started_at = _wall_clock()
    return st


@cython.final
cdef class _Entry:
    cdef int kind
    cdef Statement statement
    #: A Describe's: its "S" or "P" byte (-1: none), and the name after it.
    cdef int target
    cdef bytes name
    #: A Bind's portal, as bound (a later Parse may reuse the name).
    cdef _Portal portal
    #: A Close's or a statement Describe's: what its name meant when the
    #: client sent it.
    cdef object meant
    cdef long long ends
    #: A Parse's: what its name meant before it; a Bind's: the portal its
    #: name had (see the reference).
    cdef object previous
    #: A Bind's portal name.
    cdef bytes portal_name
    #: A Parse's: the session's undo (see the reference).
    cdef object undo
    #: A Bind's message, or a Parse's expected to fail (see the reference).
    cdef bytes message


cdef _run(list undos):
    """(See the reference.)"""
    for undo in reversed(undos):
        undo()


cdef inline Py_ssize_t _message_end(const unsigned char* buf, Py_ssize_t size,
                                    Py_ssize_t pos) noexcept nogil:
    """(_trail._message_end.)"""
    cdef long long length
    if pos + 5 > size:
        return size
    length = _uint(buf, size, pos + 1, 4)
    if length < 4 or pos + 1 + length > size:
        return size
    return pos + 1 + length


cdef inline bytes _slice(bytes data, const unsigned char* buf, Py_ssize_t size,
                         Py_ssize_t start, Py_ssize_t end):
    return data if start == 0 and end == size else PyBytes_FromStringAndSize(
        <const char*>buf + start, end - start)


cdef _Entry _named_entry(int kind, bytes message):
    """A Describe's or Close's entry: its "S" or "P" byte and the name after
    it (target -1 and no name when the message has no name's end)."""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(message)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(message)
    cdef Py_ssize_t end = _find_nul(buf, size, 6)
    cdef _Entry entry = _entry(kind, None)
    if end >= 0:
        entry.target = buf[5]
        entry.name = PyBytes_FromStringAndSize(<const char*>buf + 6, end - 6)
    else:
        entry.name = b""
    return entry


cdef _Entry _entry(int kind, Statement statement):
    cdef _Entry e = _Entry.__new__(_Entry)
    e.kind = kind
    e.statement = statement
    e.target = -1
    return e


@cython.final
cdef class Tally:
    """A session's statements added up (see the reference, _trail.Tally):
    counted here with no Python call per statement."""

    cdef readonly tuple bounds
    cdef readonly dict statements
    cdef public long long errors
    cdef public object rows
    cdef public object server_bytes
    cdef public long long duration_ns
    cdef double* _bounds
    cdef long long* _durations
    cdef Py_ssize_t _n

    def __cinit__(self):
        self._bounds = NULL
        self._durations = NULL
        self._n = 0
        self.bounds = ()
        self.statements = {}
        self.rows = 0
        self.server_bytes = 0

    def __init__(self, bounds=()):
        cdef tuple given = tuple([float(b) for b in bounds])
        cdef Py_ssize_t i, n = len(given)
        cdef double* new_bounds = <double*>malloc((n + 1) * sizeof(double))
        cdef long long* new_durations = <long long*>calloc(n + 1, sizeof(long long))
        if new_bounds == NULL or new_durations == NULL:
            free(new_bounds)
            free(new_durations)
            raise MemoryError()
        for i in range(n):
            new_bounds[i] = given[i]
        free(self._bounds)
        free(self._durations)
        self._bounds = new_bounds
        self._durations = new_durations
        self._n = n
        self.bounds = given
        self.statements = {}
        self.errors = 0
        self.rows = 0
        self.server_bytes = 0
        self.duration_ns = 0

    def __dealloc__(self):
        free(self._bounds)
        free(self._durations)

    @property
    def durations(self):
        if self._durations == NULL:
            return [0]
        return [self._durations[i] for i in range(self._n + 1)]

    cpdef add(self, Statement st):
        action = st.verdict.action
        cdef object count = self.statements.get(action)
        self.statements[action] = 1 if count is None else count + 1
        if st.error is not None:
            self.errors += 1
        self.rows = self.rows + st.rows
        self.server_bytes = self.server_bytes + st.server_bytes
        cdef double d = st.duration
        self.duration_ns += _nanoseconds(d)
        if self._durations == NULL:
            return  # (never initialised: counted, not bucketed)
        # bisect_left: the first bound not below the duration (as bisect,
        # a NaN goes to the first).
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) // 2
            if self._bounds[mid] < d:
                lo = mid + 1
            else:
                hi = mid
        self._durations[lo] += 1


cdef inline long long _nanoseconds(double seconds) noexcept:
    """As the reference's _nanoseconds: whole nanoseconds (half to even),
    0 for what is not a duration a clock gives (NaN, infinite, centuries)."""
    cdef double scaled = seconds * 1e9
    if not (fabs(scaled) < 9e18):
        return 0
    return <long long>nearbyint(scaled)


cdef class Trail:
    """Feeds a session's traffic in and follows its statements to their
    answers: the log, then the tally, then ``done(statement)`` while set
    (see the reference)."""

    cdef bytes _encoding
    cdef bint _utf8
    cdef Caps _caps
    cdef object _mask_text
    cdef public object done
    cdef public object server_codec
    cdef object _unknown
    #: The queue: entries from _head on (a list and an index, so that taking
    #: the head is no method call; emptied whenever it drains).
    cdef list _queue
    cdef Py_ssize_t _head
    cdef dict _statements
    cdef dict _portals
    cdef long long _ends
    #: (See the reference.)
    cdef long long _ended
    cdef tuple _last_parse
    cdef dict _described
    cdef dict _param_types
    cdef long long _session_kept
    cdef dict _row_descriptions
    cdef dict _tags
    cdef SessionLog _log
    cdef object _unrecorded
    cdef Tally _tally
    #: (See the reference.)
    cdef bint _skipping
    cdef bint _copying_in

    def __cinit__(self):
        # Safe defaults, should a subclass never call __init__.
        self._encoding = b"utf-8"
        self._utf8 = True
        self._caps = Caps(0, 0, 0)
        self._queue = []
        self._head = 0
        self._statements = {}
        self._portals = {}
        self._described = {}
        self._param_types = {}
        self._row_descriptions = {}
        self._tags = {}

    def __init__(self, codec, Caps caps not None, mask_text, done, unknown, SessionLog log=None,
                 unrecorded=None, Tally tally=None):
        self._encoding = codec.encode("utf-8")
        try:
            # Decoded straight by PyUnicode_DecodeUTF8, as bytes.decode does.
            self._utf8 = codecs.lookup(codec).name == "utf-8"
        except LookupError:
            self._utf8 = False  # (the first decode raises, as the reference's)
        self._caps = caps
        self._mask_text = mask_text
        self.done = done
        self.server_codec = None
        self._unknown = unknown
        self._log = log
        self._unrecorded = unrecorded
        self._tally = tally

    # -- the queue -------------------------------------------------------------

    cdef inline void _push(self, _Entry entry):
        self._queue.append(entry)

    cdef inline _Entry _peek(self):
        if self._head < PyList_GET_SIZE(self._queue):
            return self._queue[self._head]
        return None

    cdef _Entry _popleft(self):
        cdef list queue = self._queue
        cdef _Entry entry = queue[self._head]
        self._head += 1
        if self._head == PyList_GET_SIZE(queue):
            del queue[:]
            self._head = 0
        elif self._head >= 1024 and 2 * self._head >= PyList_GET_SIZE(queue):
            # A long pipeline: drop what was taken now and then.
            del queue[:self._head]
            self._head = 0
        return entry

    # -- from the client -------------------------------------------------------

    def query(self, text, verdict):
        if self._skipping:
            return  # (the server ignores it: it never runs)
        self._last_parse = None
        cdef Statement st = _start(text, verdict, None)
        self._dropping(st)
        self._push_end(_entry(_K_SIMPLE, st))

    cdef inline void _push_end(self, _Entry entry):
        """A Sync's, Query's or FunctionCall's entry: numbered (_ends)."""
        self._ends += 1
        entry.ends = self._ends
        self._push(entry)

    cdef bytes _key(self, bytes name):
        """(See the reference.) A short name, in the usual case, as it is."""
        if self.server_codec is None:
            return name if PyBytes_GET_SIZE(name) <= _NAME_BYTES else name[:_NAME_BYTES]
        return _name_key(name, self._encoding.decode("utf-8"), self.server_codec)

    cdef _dropping(self, Statement st):
        """(See the reference.) The first character is tested here, in C:
        most statements go no further."""
        text = st.text
        if type(text) is not str or len(<str>text) == 0:
            return
        if (<str>text)[0] not in _FIRST:
            return
        found = _drops_of(text, self._encoding.decode("utf-8"))
        if found is None:
            return
        kind, name = <tuple>found
        name = self._key(name)
        cdef dict statements
        if kind == _DROPS_PREPARE:
            self._preparing(st, name)
            return
        if kind == _DROPS_STATEMENT:
            meant = self._statements.get(name)
            if meant is None:
                return
            statements = {name: meant}
        else:
            statements = dict(self._statements)
        portals = dict(self._portals) if kind == _DROPS_EVERYTHING else {}
        st.drops = (_DROPS_TAGS[kind], statements, portals)

    cdef _takes(self, bytes name, tuple new):
        """(See the reference.)"""
        self._statements[name] = new
        self._described.pop(name, None)
        self._param_types.pop(name, None)

    cdef _preparing(self, Statement st, bytes name):
        """(See the reference.)"""
        old = self._statements.get(name)
        cdef tuple new = (_SQL_PREPARED + st.text, st.verdict)
        cdef bint dropped = old is not None and self._dropped_before(name)
        if old is None or dropped:
            self._takes(name, new)
            st.drops = (_PREPARE_TAG, {name: new}, {name: None if dropped else old})
        else:
            st.drops = (_PREPARE_TAG, {name: old}, {})

    cdef _unprepared(self, tuple drops):
        """(See the reference.)"""
        for name, previous in (<dict>drops[2]).items():
            self._give_back(name, (<dict>drops[1])[name], previous)

    cdef _give_back(self, bytes name, made, previous):
        """(See the reference.)"""
        if self._statements.get(name) is not made:
            return
        self._forget_statement(name, made)
        if previous is not None:
            self._statements[name] = previous
            self._rebind(name, made, previous, [])

    cdef _dropped(self, Statement st, str tag):
        """(See the reference.)"""
        expected, statements, portals = <tuple>st.drops
        if tag != expected:
            return
        cdef tuple new
        if expected == _PREPARE_TAG:
            if portals:
                return  # (it made the name as it was sent)
            new = (_SQL_PREPARED + st.text, st.verdict)
            for name, meant in (<dict>statements).items():
                current = self._statements.get(name)
                if current is meant or current is None:
                    self._takes(name, new)
                    self._rebind(name, meant, new, [])
            return
        for name, meant in (<dict>statements).items():
            self._forget_statement(name, meant)
        for name, meant in (<dict>portals).items():
            self._forget_portal(name, meant)

    cdef _forget_statement(self, bytes name, meant):
        """(See the reference.)"""
        if self._statements.get(name) is meant:
            del self._statements[name]
            self._described.pop(name, None)
            self._param_types.pop(name, None)

    cdef _forget_portal(self, bytes name, meant):
        if meant is not None:
            (<_Portal>meant).gone = True
        if self._portals.get(name) is meant:
            del self._portals[name]

    def function_call(self, oid, verdict):
        if self._skipping:
            return
        self._last_parse = None
        self._push_end(_entry(_K_SIMPLE, _start(f"-- function call, oid {oid}", verdict, None)))

    def parse(self, name, text, verdict, message=None, undo=None):
        """(See the reference.)"""
        self._parse(name, text, verdict, message, undo)

    cdef _parse(self, bytes name, text, verdict, bytes message, undo=None):
        # (fast_statement calls this without a Python method call per Parse.)
        if self._skipping:
            if undo is not None:
                undo()  # (the server skips it)
            return
        cdef _Entry e = _entry(_K_PARSE, _start(text, verdict, None))
        cdef tuple known
        name = self._key(name)
        e.name = name
        e.ends = self._ends
        e.undo = undo
        # (See the reference: a name the session has keeps its statement.)
        cdef object previous, described = None, types = None
        if name == b"" or name not in self._statements or self._dropped_before(name):
            previous = e.previous = self._statements.get(name)
            known = (text, verdict)
            e.meant = known
            self._statements[name] = known
            if self._described:
                described = self._described.pop(name, None)
            if self._param_types:
                types = self._param_types.pop(name, None)
            declared = _declared_types(message) if message is not None else None
            last = self._last_parse
            self._last_parse = (name, known, declared)
            if (
                last is not None
                and types is not None
                and previous is not None
                and (<tuple>last)[0] == name
                and (<tuple>last)[1] is previous
                and (<tuple>last)[2] == declared
                and (<tuple>previous)[0] == text
                and (<tuple>types)[0] is previous
            ):
                # (See the reference: the same text made again, nothing run.)
                declared = (<tuple>types)[1]
                if described is not None:
                    self._described[name] = described
            if declared is not None:
                self._param_types[name] = (known, declared)
        else:
            e.previous = self._statements[name]  # (see the reference)
            e.message = message
        self._push(e)

    cdef bint _dropped_before(self, bytes name):
        """(See the reference.)"""
        cdef _Entry e
        cdef Py_ssize_t i, end = PyList_GET_SIZE(self._queue)
        cdef Py_ssize_t first = max(self._head, end - _DROP_LOOKBACK)
        for i in range(end - 1, first - 1, -1):
            e = self._queue[i]
            if e.kind == _K_CLOSE and e.target == 83 and e.name == name:
                return True
            if (
                e.statement is not None
                and e.statement.drops is not None
                and (<tuple>e.statement.drops)[0] != _PREPARE_TAG
                and name in (<tuple>e.statement.drops)[1]
            ):
                return True
        return False

    cdef _unparsed(self, _Entry entry, bint skipped, list undos):
        """(See the reference.)"""
        if entry.undo is not None:
            undos.append(entry.undo)
        if entry.meant is not None:
            undos.append(functools.partial(self._unnamed, entry, skipped))

    def _unnamed(self, _Entry entry, bint skipped):
        """(See the reference.)"""
        self._give_back(entry.name, entry.meant, entry.previous if skipped else None)

    def unsettled(self, bytes name):
        """(See the reference.)"""
        cdef _Entry e
        cdef Py_ssize_t i
        cdef bytes key = self._key(name)
        for i in range(self._head, PyList_GET_SIZE(self._queue)):
            e = self._queue[i]
            if e.kind == _K_PARSE and e.ends < self._ends and e.name == key:
                return True
        return False

    def fast_statement(self, int type_code, message, text, verdict):
        """A Query, or an unnamed Parse, that the relay's fast path passed
        (hoopfast.core._pump): its text and the verdict it had."""
        if type_code == _QUERY:
            self.query(text, verdict)
        else:
            self._parse(b"", text, verdict, message)

    def client_run(self, int type_code, bytes data not None):
        """(See the reference.) Each message without a Python call."""
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0, end
        if size >= 5 and 1 + _uint(buf, size, 1, 4) == size:
            self._client_message(buf[0], data, None)
            return
        while pos < size:
            end = _message_end(buf, size, pos)
            self._client_message(buf[pos], _slice(data, buf, size, pos, end), None)
            pos = end

    def server_run(self, int type_code, bytes data not None):
        """(See the reference.) Each message without a Python call."""
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0, end
        cdef unsigned char code
        if size >= 5 and 1 + _uint(buf, size, 1, 4) == size:
            self._server_message(buf[0], data)
            return
        while pos < size:
            code = buf[pos]
            end = _message_end(buf, size, pos)
            if code == _DATA_ROW or code == _COPY_DATA:
                while end < size and buf[end] == code:
                    end = _message_end(buf, size, end)
            self._server_message(code, _slice(data, buf, size, pos, end))
            pos = end

    def client_message(self, int type_code, bytes message not None, refused=None):
        """Bind, Execute, Sync, Describe, Close, CopyDone and CopyFail, as the
        client sent them (``refused``: the gateway refused this Bind, for
        that reason)."""
        self._client_message(type_code, message, refused)

    cdef _client_message(self, int type_code, bytes message, refused):
        if type_code == _SYNC:
            if self._copying_in:
                return  # (read and ignored by the server during COPY FROM STDIN)
            self._skipping = False
            self._last_parse = None  # (see the reference's parse)
            self._push_end(_entry(_K_SYNC, None))
            return
        if type_code == _COPY_DONE or type_code == _COPY_FAIL:
            if self._copying_in:
                self._copying_in = False
            else:
                self._push(_entry(_K_COPY_END, None))
            return
        if self._skipping:
            return  # (skipped by the server up to the Sync)
        if type_code == _BIND:
            self._bind(message, refused)
        elif type_code == _EXECUTE:
            self._execute(message)
        elif type_code == _DESCRIBE:
            self._describe(message)
        elif type_code == _CLOSE:
            self._close(message)

    cdef _execute(self, bytes message):
        self._last_parse = None  # (something runs: see the reference's parse)
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(message)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(message)
        cdef Py_ssize_t end = _find_nul(buf, size, 5)
        cdef bytes name = (
            self._key(PyBytes_FromStringAndSize(<const char*>buf + 5, end - 5))
            if end >= 0 else b""
        )
        cdef _Portal p = self._portals.get(name)
        cdef Statement st
        if p is None:
            st = _start("", self._unknown, None)
        else:
            st = _start(p.text, p.verdict, p.params if p.params else None)
            st.result_formats = p.formats
            st.portal = p
            self._dropping(st)
        if end >= 0:
            # int32; zero or less: no limit (as PostgreSQL reads it).
            st.max_rows = max(0, _sint(buf, size, end + 1, 4))
        self._push(_entry(_K_EXECUTE, st))

    cdef _close(self, bytes message):
        # Forgotten when the server confirms (_closed).
        cdef _Entry entry = _named_entry(_K_CLOSE, message)
        entry.name = self._key(entry.name)
        if entry.target >= 0:
            names = self._statements if entry.target == 83 else self._portals  # S
            entry.meant = names.get(entry.name)
        self._push(entry)

    cdef _transaction_ended(self, long long ends):
        """(See the reference.)"""
        cdef _Portal p
        self._ended = ends
        if not self._portals:
            return
        for name in [n for n, p in self._portals.items() if p.ends < ends]:
            del self._portals[name]

    cdef _parsed_after_all(self, _Entry entry):
        """(See the reference.)"""
        cdef Statement st = entry.statement
        old = entry.previous
        new = (st.text, st.verdict)
        entry.meant = new
        declared = (_declared_types(entry.message)
                    if entry.message is not None and PyBytes_GET_SIZE(entry.message) else None)
        current = self._statements.get(entry.name)
        if current is old or current is None:
            self._takes(entry.name, new)
            if declared is not None:
                self._param_types[entry.name] = (new, declared)
        self._rebind(entry.name, old, new, declared if declared is not None else [])

    cdef _rebind(self, bytes name, object old, tuple new, list types):
        """(See the reference.) A rare path: in Python objects."""
        cdef list rebound = []
        cdef _Entry e
        cdef _Portal p
        cdef Statement st
        cdef _BindLayout b
        cdef const unsigned char* buf
        cdef Py_ssize_t i, size
        for i in range(self._head, PyList_GET_SIZE(self._queue)):
            e = self._queue[i]
            if (e.kind == _K_BIND and e.name == name and e.meant is old
                    and e.portal is not None):
                p = e.portal
                e.meant = new
                if p.verdict is (<tuple>old)[1]:
                    p.verdict = new[1]
                p.text = new[0]
                p.columns = None
                buf = <const unsigned char*>PyBytes_AS_STRING(e.message)
                size = PyBytes_GET_SIZE(e.message)
                if _bind_layout(buf, size, &b):
                    p.params = self._shown_values(buf, size, &b, types)
                rebound.append(p)
            elif e.kind == _K_EXECUTE and e.statement is not None:
                st = e.statement
                p = st.portal
                if p is not None and any(p is r for r in rebound):
                    st.text = p.text
                    st.verdict = p.verdict
                    st.params = p.params if p.params else None
                    st.drops = None
            elif e.kind == _K_PARSE and e.name == name and e.previous is old:
                e.previous = new
            elif ((e.kind == _K_CLOSE or e.kind == _K_DESCRIBE) and e.target == 83
                    and e.name == name and e.meant is old):
                e.meant = new

    cdef _closed(self, _Entry entry):
        """(See the reference.)"""
        if entry.meant is None:
            return
        if entry.target == 83:  # S
            self._forget_statement(entry.name, entry.meant)
        else:
            self._forget_portal(entry.name, entry.meant)

    cdef _describe(self, bytes message):
        # Its RowDescription belongs to the statement or portal it names (and
        # a statement's ParameterDescription to what the name means now).
        cdef _Entry entry = _named_entry(_K_DESCRIBE, message)
        entry.name = self._key(entry.name)
        if entry.target == 83:  # S
            entry.meant = self._statements.get(entry.name)
        elif entry.target >= 0:
            entry.meant = self._portals.get(entry.name)
        self._push(entry)

    cdef _bind(self, bytes message, object refused):
        self._last_parse = None  # (see the reference's parse)
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(message)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(message)
        cdef _BindLayout b
        cdef Py_ssize_t i
        if not _bind_layout(buf, size, &b):
            # Malformed: the server refuses it; still one answer to follow.
            self._push(_entry(_K_BIND, None))
            return
        cdef bytes name = self._key(PyBytes_FromStringAndSize(
            <const char*>buf + b.portal_end + 1, b.name_end - b.portal_end - 1
        ))
        known = self._statements.get(name)
        if known is None:
            text, verdict = "", self._unknown
        else:
            text, verdict = <tuple>known
        verdict = refused or verdict
        cdef _Entry entry = _entry(_K_BIND, None)
        entry.name = name
        entry.meant = known
        entry.message = message
        self._push(entry)
        cdef list types = None
        described = self._param_types.get(name)
        if known is not None and described is not None and (<tuple>described)[0] is known:
            types = (<tuple>described)[1]
        cdef _Portal p = _Portal.__new__(_Portal)
        p.text = text
        p.verdict = verdict
        p.params = self._shown_values(buf, size, &b, types)
        p.formats = [_uint(buf, size, b.results_at + 2 * i, 2) for i in range(b.nres)]
        p.columns = self._described.get(name)
        p.ends = self._ends
        entry.portal = p
        cdef bytes portal = self._key(
            PyBytes_FromStringAndSize(<const char*>buf + 5, b.portal_end - 5)
        )
        entry.portal_name = portal
        entry.previous = self._portals.get(portal)
        self._portals[portal] = p

    cdef list _shown_values(self, const unsigned char* buf, Py_ssize_t size, _BindLayout* b,
                            list types):
        """(See the reference.)"""
        cdef list params = []
        cdef Py_ssize_t pos, i
        cdef long long length
        cdef int fmt
        cdef str exact
        pos = b.values_at
        for i in range(b.nparams):
            length = _sint(buf, size, pos, 4)
            pos += 4
            if b.nfmt == 1:
                fmt = <int>_uint(buf, size, b.formats_at, 2)
            elif i < b.nfmt:
                fmt = <int>_uint(buf, size, b.formats_at + 2 * i, 2)
            else:
                fmt = 0
            if length < 0:
                params.append(None)
                continue
            # (hoopfast/core/_shown.py, shown_parameter.)
            if fmt == 1 and types is not None and i < PyList_GET_SIZE(types):
                exact = self._binary_text(
                    buf + pos, length, <int>_BINARY_KINDS.get(types[i], _B_HEX)
                )
                if exact is not None:
                    params.append(self._mask_text(exact))
                    pos += length
                    continue
            value = self._decode(buf + pos, length)
            masked = self._mask_text(value)
            if fmt == 1 and masked == value:
                params.append(_hex(buf + pos, length))
            else:
                params.append(masked)
            pos += length
        return params

    cdef inline str _decode(self, const unsigned char* buf, Py_ssize_t n):
        """raw.decode(codec, "replace")."""
        if self._utf8:
            return PyUnicode_DecodeUTF8(<char*>buf, n, <char*>_REPLACE)
        return PyUnicode_Decode(<char*>buf, n, <char*>self._encoding, <char*>_REPLACE)

    # -- from the server -------------------------------------------------------

    def server_message(self, int type_code, bytes data not None):
        """A server message as forwarded to the client (DataRows and
        CopyData may come as a batch of several)."""
        self._server_message(type_code, data)

    cdef _server_message(self, int type_code, bytes data):
        cdef _Entry head = self._peek()
        cdef _Entry entry
        cdef Statement st
        cdef _Portal p
        cdef int kind
        while head is not None and head.kind == _K_COPY_END:
            # (See the reference: nothing answers it.)
            self._popleft()
            head = self._peek()
        if head is not None and head.statement is not None:
            head.statement.server_bytes += PyBytes_GET_SIZE(data)
        if type_code == _DATA_ROW:
            if head is not None:
                self._rows(head.statement, data)
            return
        cdef list undos
        if type_code == _READY_FOR_QUERY:
            undos = []
            while self._head < PyList_GET_SIZE(self._queue):
                entry = self._popleft()
                if entry.kind == _K_PARSE:
                    self._unparsed(entry, True, undos)  # (never answered)
                if entry.kind == _K_SIMPLE or entry.kind == _K_SYNC:
                    if PyBytes_GET_SIZE(data) > 5 and PyBytes_AS_STRING(data)[5] == 73:  # I
                        self._transaction_ended(entry.ends)
                    if entry.kind == _K_SIMPLE:
                        self._finish(entry.statement)
                    break
            if undos:
                _run(undos)
            return
        if head is None:
            return
        kind = head.kind
        if type_code == _ERROR_RESPONSE:
            self._error(data)
            return
        if type_code == _COPY_IN_RESPONSE:
            self._copy_in()
            return
        if kind == _K_SIMPLE:
            st = head.statement
            if type_code == _ROW_DESCRIPTION:
                st.results.append(_result_set(self._row_description(data)))
            elif type_code == _COMMAND_COMPLETE:
                self._tag(st, data)
            elif type_code == _EMPTY_QUERY:
                st.tags.append("")
            return
        if type_code == _PARSE_COMPLETE and kind == _K_PARSE:
            self._popleft()
            if head.meant is None:
                self._parsed_after_all(head)
        elif type_code == _BIND_COMPLETE and kind == _K_BIND:
            self._popleft()
        elif type_code == _CLOSE_COMPLETE and kind == _K_CLOSE:
            self._popleft()
            self._closed(head)
        elif kind == _K_DESCRIBE:
            if type_code == _ROW_DESCRIPTION or type_code == _NO_DATA:
                columns = self._row_description(data) if type_code == _ROW_DESCRIPTION else None
                if head.target == 83:  # S
                    # (For the statement the name still has.)
                    if self._statements.get(head.name) is head.meant:
                        self._described[head.name] = columns
                else:
                    p = head.meant
                    if p is not None:
                        p.columns = columns
                self._popleft()
            elif type_code == _PARAMETER_DESCRIPTION and head.target == 83:  # S
                # (Comes first for a statement; RowDescription or NoData follows.)
                if self._statements.get(head.name) is head.meant:
                    self._param_types[head.name] = (head.meant, _oids(data))
        elif kind == _K_EXECUTE:
            st = head.statement
            if type_code == _COMMAND_COMPLETE:
                self._tag(st, data)
                self._popleft()
                self._finish(st)
            elif type_code == _EMPTY_QUERY or type_code == _PORTAL_SUSPENDED:
                st.tags.append("" if type_code == _EMPTY_QUERY else "(suspended)")
                if type_code == _PORTAL_SUSPENDED and st.uncounted and st.max_rows:
                    # Suspended: exactly the Execute's limit of rows came.
                    st.pending_rows = st.max_rows
                    st.uncounted = False
                self._popleft()
                self._finish(st)

    cdef _copy_in(self):
        """(See the reference.)"""
        cdef list queue = self._queue
        cdef Py_ssize_t i = self._head + 1
        cdef _Entry e
        while i < PyList_GET_SIZE(queue):
            e = queue[i]
            if e.kind == _K_COPY_END:
                del queue[i]
                return
            if e.kind == _K_SYNC:
                del queue[i]
            else:
                i += 1
        self._copying_in = True

    cdef _rows(self, Statement st, bytes data):
        cdef _Columns described = None
        cdef _ResultSet result
        cdef list formats
        cdef Caps caps = self._caps
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0
        cdef long long length
        cdef list rows
        if st is None:
            return
        if not st.results:
            if st.portal is not None:
                described = st.portal.columns
            if described is None:
                result = _result_set(_columns([], [], b""))
            else:
                result = _result_set(described)
            if st.result_formats:
                result.formats = _formats(st.result_formats, len(result.columns))
                result.binary = _binary(result.formats, result.columns)
            st.results.append(result)
        result = st.results[PyList_GET_SIZE(st.results) - 1]
        if result.truncated:
            st.uncounted = True  # (see Statement.uncounted)
            return
        rows = result.rows
        while pos < size:
            length = _uint(buf, size, pos + 1, 4)
            if (
                PyList_GET_SIZE(rows) < caps.c_rows
                and st.kept_bytes + length <= caps.c_bytes
                and self._session_kept + length <= caps.c_session_bytes
            ):
                st.pending_rows += 1  # a suspended portal's rows have no tag
                rows.append(self._decode_row(
                    buf, size if pos + 1 + length > size else pos + 1 + length, pos + 5,
                    result.binary,
                ))
                st.kept_bytes += length
                self._session_kept += length
            else:
                result.truncated = True
                st.uncounted = True
                return
            pos += 1 + length

    cdef list _decode_row(self, const unsigned char* buf, Py_ssize_t end, Py_ssize_t pos,
                          bytes binary):
        # (See the reference: nothing is read past the row's own length.)
        cdef const char* is_binary = PyBytes_AS_STRING(binary)
        cdef Py_ssize_t nbinary = PyBytes_GET_SIZE(binary)
        cdef Py_ssize_t count = _uint(buf, end, pos, 2)
        cdef Py_ssize_t i, take
        cdef long long length
        cdef list row = []
        pos += 2
        for i in range(count):
            if pos + 4 > end:
                break
            length = _sint(buf, end, pos, 4)
            pos += 4
            if length < 0:
                row.append(None)
                continue
            take = min(length, end - pos)
            if i < nbinary and is_binary[i]:
                row.append(self._binary_value(buf + pos, take, is_binary[i] - 1))
            else:
                row.append(self._decode(buf + pos, take))
            pos += length
        return row

    cdef str _binary_value(self, const unsigned char* buf, Py_ssize_t n, int kind):
        """(_shown.shown_binary, in C.)"""
        cdef str text = self._binary_text(buf, n, kind)
        return _hex(buf, n) if text is None else text

    cdef str _binary_text(self, const unsigned char* buf, Py_ssize_t n, int kind):
        """(_shown.binary_text, in C: None where not exact.)"""
        cdef str h
        if kind == _B_TEXT:
            return self._decode(buf, n)
        if kind == _B_JSONB:
            if n >= 1 and buf[0] == 1:
                return self._decode(buf + 1, n - 1)
        elif kind == _B_NUMERIC:
            return _numeric_text(buf, n)
        elif kind >= _B_ARRAY:
            # (Arrays, ranges and multiranges are rare enough to be read by
            # the reference.)
            return _composite_text(
                PyBytes_FromStringAndSize(<const char*>buf, n),
                kind,
                self._encoding.decode("utf-8"),
            )
        elif _B_INET <= kind <= _B_INTERVAL:
            # (Addresses and intervals are read by the reference, as floats.)
            return _shown.other_text(PyBytes_FromStringAndSize(<const char*>buf, n), kind)
        elif _B_FLOAT4 <= kind <= _B_TIMESTAMPTZ:
            # (Floats, dates and times are read by the reference: kept
            # values only, within the caps.)
            if n == (4 if kind == _B_FLOAT4 or kind == _B_DATE else 8):
                return _shown.settled_text(PyBytes_FromStringAndSize(<const char*>buf, n), kind)
        elif kind == _B_BOOL and n == 1:
            return "t" if buf[0] else "f"
        elif kind == _B_UUID and n == 16:
            h = _hex(buf, 16)
            return f"{h[2:10]}-{h[10:14]}-{h[14:18]}-{h[18:22]}-{h[22:]}"
        elif kind == _B_INT8 and n == 8:
            return str(_uint(buf, n, 0, 8))  # (8 bytes: two's complement, signed)
        elif (kind == _B_INT2 and n == 2) or ((kind == _B_INT4 or kind == _B_OID) and n == 4):
            return str(_uint(buf, n, 0, n) if kind == _B_OID else _sint(buf, n, 0, n))
        return None

    cdef _Columns _row_description(self, bytes data):
        """Columns and formats of a RowDescription; a session asks the same
        few again and again, so they are read once (never changed after)."""
        cdef _Columns known = self._row_descriptions.get(data)
        if known is None:
            known = self._read_row_description(data)
            _remember(self._row_descriptions, data, known)
        return known

    cdef _Columns _read_row_description(self, bytes data):
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t count = _uint(buf, size, 5, 2)
        cdef Py_ssize_t pos = 7
        cdef Py_ssize_t end
        cdef list columns = []
        cdef list formats = []
        for _ in range(count):
            end = _find_nul(buf, size, pos)
            if end < 0:
                break  # (the reference's ValueError from data.index)
            name = self._decode(buf + pos, end - pos)
            pos = end + 1
            columns.append({"name": name, "type_oid": _uint(buf, size, pos + 6, 4)})
            formats.append(_uint(buf, size, pos + 16, 2))
            pos += 18
        return _columns(columns, formats, None)

    cdef _tag(self, Statement st, bytes data):
        known = self._tags.get(data)
        if known is None:
            known = _remember(self._tags, data, _read_tag(data))
        tag, count = <tuple>known
        st.tags.append(tag)
        if st.drops is not None:
            self._dropped(st, tag)
        if count is not None:
            st.rows = st.rows + count  # exact, where DataRows may not be seen (COPY)
            st.uncounted = False
        else:
            st.rows = st.rows + st.pending_rows
            if st.uncounted:
                st.inexact = True  # (see the reference)
        st.pending_rows = 0

    cdef _error(self, bytes data):
        self._copying_in = False  # (see the reference)
        cdef _Entry head = self._peek()
        cdef Statement st
        cdef _Portal p
        cdef dict error = _error_fields(data, self._utf8, self._encoding)
        if head.kind == _K_SIMPLE:
            head.statement.error = error
            return  # ReadyForQuery completes it
        if head.kind == _K_SYNC:
            # The Sync itself failed (see the reference): an event of its own.
            st = _start(_SYNC_COMMIT, self._unknown, None)
            st.error = error
            self._finish(st)
            return
        # Extended: this message failed; the server skips the rest up to Sync.
        self._popleft()
        cdef list undos = []
        if head.kind == _K_PARSE:
            # (See the reference: 42P05, the name taken, keeps what it meant.)
            self._unparsed(head, error["sqlstate"] == "42P05", undos)
        st = head.statement
        if head.kind == _K_BIND:
            # A Bind that fails (or a refused one's stand-in): the statement
            # it binds was attempted.
            p = head.portal
            if p is None:
                st = _start("", self._unknown, None)
            else:
                st = _start(p.text, p.verdict, p.params if p.params else None)
        if st is not None:
            st.error = error
            self._finish(st)
        cdef list unbound = [head] if head.kind == _K_BIND else None
        while True:
            head = self._peek()
            if head is None:
                # No Sync sent yet: what the client sends until it is skipped.
                self._skipping = True
                break
            if head.kind == _K_SYNC:
                break
            self._popleft()
            if head.kind == _K_PARSE:
                self._unparsed(head, True, undos)
            elif head.kind == _K_BIND:
                if unbound is None:
                    unbound = []
                unbound.append(head)
        if unbound is not None:
            for head in reversed(unbound):
                self._unbound(head)
        if undos:
            _run(undos)

    cdef _unbound(self, _Entry entry):
        """(See the reference.)"""
        cdef _Portal failed = entry.portal
        cdef _Portal previous = entry.previous
        cdef _Entry e
        cdef Statement st
        cdef Py_ssize_t i
        if failed is None:
            return
        if previous is not None and (previous.gone or previous.ends < self._ended):
            previous = None
        if self._portals.get(entry.portal_name) is failed:
            if previous is None:
                del self._portals[entry.portal_name]
            else:
                self._portals[entry.portal_name] = previous
        for i in range(self._head, PyList_GET_SIZE(self._queue)):
            e = self._queue[i]
            if e.kind == _K_BIND and e.previous is failed:
                e.previous = previous
            elif e.kind == _K_EXECUTE and e.statement is not None and e.statement.portal is failed:
                st = e.statement
                if previous is None:
                    st.text, st.verdict, st.params = "", self._unknown, None
                    st.result_formats, st.portal = [], None
                else:
                    st.text, st.verdict = previous.text, previous.verdict
                    st.params = previous.params if previous.params else None
                    st.result_formats, st.portal = previous.formats, previous
                st.drops = None
            elif (e.kind == _K_CLOSE or e.kind == _K_DESCRIBE) and e.meant is failed:
                e.meant = previous

    def abandon(self):
        """(See the reference.)"""
        cdef _Entry entry
        while self._head < PyList_GET_SIZE(self._queue):
            entry = self._popleft()
            if entry.statement is not None and (
                entry.kind == _K_SIMPLE or entry.kind == _K_EXECUTE
            ):
                if entry.statement.error is None:
                    entry.statement.error = dict(_UNANSWERED)
                self._finish(entry.statement)

    cdef _finish(self, Statement st):
        if st is None:
            return
        cdef tuple drops
        if st.drops is not None:
            drops = <tuple>st.drops
            if drops[2] and drops[0] == _PREPARE_TAG and _PREPARE_TAG not in st.tags:
                self._unprepared(drops)  # (it failed: see the reference)
        st.rows = st.rows + st.pending_rows
        st.pending_rows = 0
        st.duration = _monotonic() - st.started
        if self._log is not None and st.verdict is not self._unrecorded:
            self._log.statement(st)
        if self._tally is not None:
            self._tally.add(st)
        if self.done is not None:
            self.done(st)


cdef object _remember(dict cache, object key, object value):
    """Put ``value`` in a per-session parse cache, emptied when full."""
    if len(cache) >= _CACHED:
        cache.clear()
    cache[key] = value
    return value


_COUNTING = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"})


cdef inline Py_ssize_t _shown_max_text(Py_ssize_t n) noexcept:
    """(_shown.max_text.)"""
    return 4 * n + 32


cdef int _POW10[4]
_POW10[:] = [1, 10, 100, 1000]


cdef inline int _numeric_digit(const unsigned char* buf, Py_ssize_t i, Py_ssize_t cut,
                               int drop) noexcept:
    """Base-10000 digit ``i`` of a numeric_send value; the digit at ``cut``
    loses its decimal digits below ``drop`` (numeric_recv's trunc_var)."""
    cdef int d = (buf[8 + 2 * i] << 8) | buf[9 + 2 * i]
    return d - d % drop if i == cut else d


cdef str _numeric_text(const unsigned char* buf, Py_ssize_t n):
    """(_shown.numeric_text, in C: numeric_out of what numeric_recv makes
    of ``buf``, or None where it would refuse it.)"""
    if n < 8:
        return None
    cdef Py_ssize_t ndigits = (buf[0] << 8) | buf[1]
    cdef long weight = <short>((buf[2] << 8) | buf[3])
    cdef unsigned int sign = (buf[4] << 8) | buf[5]
    cdef long dscale = (buf[6] << 8) | buf[7]
    cdef Py_ssize_t i, first = 0, last = ndigits, cut = -1, size, at
    cdef int drop = 1, d, j
    if n != 8 + 2 * ndigits or dscale > 0x3FFF:
        return None
    for i in range(ndigits):
        if ((buf[8 + 2 * i] << 8) | buf[9 + 2 * i]) >= 10000:
            return None
    if sign == 0xC000:
        return "NaN"
    if sign == 0xD000:
        return "Infinity"
    if sign == 0xF000:
        return "-Infinity"
    if sign != 0 and sign != 0x4000:
        return None
    # trunc_var: (weight + 1) * 4 + dscale decimal digits are kept.
    cdef long wanted = (weight + 1) * 4 + dscale
    if wanted <= 0:
        last = 0
    elif (wanted + 3) // 4 <= ndigits:
        last = (wanted + 3) // 4
        cut = last - 1
        if wanted % 4:
            drop = _POW10[4 - wanted % 4]
    # strip_var: zero digits off both ends; nothing left is a positive zero.
    while first < last and _numeric_digit(buf, first, cut, drop) == 0:
        first += 1
        weight -= 1
    while last > first and _numeric_digit(buf, last - 1, cut, drop) == 0:
        last -= 1
    if first == last:
        weight = 0
        sign = 0
    # get_str_from_var: the length first, then the characters.
    d = _numeric_digit(buf, first, cut, drop) if first < last else 0
    size = (1 if sign else 0) + (1 if dscale > 0 else 0) + dscale
    if weight < 0:
        size += 1
    else:
        size += 4 * weight + (4 if d >= 1000 else 3 if d >= 100 else 2 if d >= 10 else 1)
    if size > _shown_max_text(n):
        return None
    cdef str text = PyUnicode_New(size, 127)
    cdef unsigned char* out = PyUnicode_1BYTE_DATA(text)
    at = 0
    if sign:
        out[0] = 45  # -
        at = 1
    if weight < 0:
        out[at] = 48  # 0
        at += 1
        i = first + weight + 1  # (first + index d, as numeric.c counts)
    else:
        for i in range(weight + 1):
            d = _numeric_digit(buf, first + i, cut, drop) if first + i < last else 0
            for j in range(3, -1, -1):
                if i > 0 or j == 0 or d >= _POW10[j]:
                    out[at] = 48 + (d // _POW10[j]) % 10
                    at += 1
        i = first + weight + 1
    if dscale > 0:
        out[at] = 46  # .
        at += 1
        while at < size:
            d = _numeric_digit(buf, i, cut, drop) if first <= i < last else 0
            for j in range(3, -1, -1):
                if at < size:
                    out[at] = 48 + (d // _POW10[j]) % 10
                    at += 1
            i += 1
    return text


@cython.wraparound(True)
cdef tuple _read_tag(bytes data):
    """A CommandComplete's tag, and its row count where the tag has one
    (read once per distinct tag, so plain Python, as the reference's)."""
    tag = data[5:-1].decode("ascii", "replace")
    words = tag.split()
    # (A count has at most 20 digits, uint64: a longer one from a broken
    # server is no count, rather than an int() past Python's digit limit.)
    if words and words[-1].isdigit() and len(words[-1]) <= 20 and words[0] in _COUNTING:
        return tag, int(words[-1])
    return tag, None


cdef list _declared_types(bytes parse):
    """(_shown.declared_types, in C.)"""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(parse)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(parse)
    cdef Py_ssize_t name_end = _find_nul(buf, size, 5), text_end, at, i, count
    if name_end < 0:
        return None
    text_end = _find_nul(buf, size, name_end + 1)
    if text_end < 0 or size < text_end + 3:
        return None
    at = text_end + 3
    count = <Py_ssize_t>_uint(buf, size, text_end + 1, 2)
    if count == 0 or size != at + 4 * count:
        return None
    cdef list oids = [_uint(buf, size, at + 4 * i, 4) for i in range(count)]
    for i in range(count):
        if oids[i]:
            return oids
    return None


cdef list _oids(bytes data):
    """(See the reference.)"""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i, count = _uint(buf, size, 5, 2)
    return [_uint(buf, size, 7 + 4 * i, 4) for i in range(count)]


cdef list _formats(list codes, Py_ssize_t n):
    if not codes:
        return [0] * n
    if len(codes) == 1:
        # (See the reference.)
        return codes * (n if n or codes[0] != 1 else _MAX_COLUMNS)
    return codes


cdef dict _error_fields(bytes data, bint utf8, bytes encoding):
    """An ErrorResponse's SQLSTATE (C) and message (M) in the session's
    client encoding, "" where absent or when the message is malformed (see
    _trail._error_fields)."""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 5, end
    cdef Py_ssize_t code_at = 0, code_len = 0, message_at = 0, message_len = 0
    cdef unsigned char field
    if (
        size < 5
        or (buf[0] != _ERROR_RESPONSE and buf[0] != _NOTICE_RESPONSE)
        or _sint(buf, size, 1, 4) != size - 1
    ):
        return {"sqlstate": "", "message": ""}
    while True:
        if pos >= size:
            return {"sqlstate": "", "message": ""}  # no terminator
        field = buf[pos]
        if field == 0:
            if pos + 1 != size:
                return {"sqlstate": "", "message": ""}  # trailing bytes
            break
        end = _find_nul(buf, size, pos + 1)
        if end < 0:
            return {"sqlstate": "", "message": ""}  # unterminated field
        if field == 67:  # C
            code_at, code_len = pos + 1, end - pos - 1
        elif field == 77:  # M
            message_at, message_len = pos + 1, end - pos - 1
        pos = end + 1
    if utf8:
        return {
            "sqlstate": PyUnicode_DecodeUTF8(<char*>buf + code_at, code_len, <char*>_REPLACE),
            "message": PyUnicode_DecodeUTF8(<char*>buf + message_at, message_len, <char*>_REPLACE),
        }
    return {
        "sqlstate": PyUnicode_Decode(
            <char*>buf + code_at, code_len, <char*>encoding, <char*>_REPLACE
        ),
        "message": PyUnicode_Decode(
            <char*>buf + message_at, message_len, <char*>encoding, <char*>_REPLACE
        ),
    }


# -- the statement's audit event ------------------------------------------------
#
# The trail's half of the recorder's data path (hoopfast.recording.recorder):
# a finished statement becomes its event's canonical JSON, hash-chain link and
# spool frame here, without a Python call per statement. The reference
# (_trail.SessionLog) builds the event as a dict and encodes it with the
# recorder's ``encode`` (orjson, sorted keys); the JSON written here is the
# same text byte for byte: the keys are known, so they are written in sorted
# order, strings are escaped as orjson escapes them, and floats are written
# as repr writes them, which is orjson's text for 0 and for magnitudes from
# 1e-4 up to 1e16. Anything else (a float outside that range, an integer past
# 64 bits, a string with no UTF-8, an unexpected type, an event past the size
# limit) goes the reference's way, through ``encode``.

cdef extern from "zlib.h":
    unsigned long crc32(unsigned long crc, const unsigned char* buf, unsigned int n) nogil

# The low-level SHA-256 calls: deprecated in OpenSSL 3 (setup.py silences
# that) but the fastest way there, with no algorithm fetched per call.
cdef extern from "openssl/sha.h":
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX* c) nogil
    int SHA256_Update(SHA256_CTX* c, const void* data, size_t n) nogil
    int SHA256_Final(unsigned char* md, SHA256_CTX* c) nogil

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport isfinite
from libc.stdlib cimport realloc
from libc.string cimport memcpy



class _Fallback(Exception):
    """The fast encoder cannot write this event exactly as the reference."""


cdef struct _Buf:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef int _grow(_Buf* b, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap = b.cap * 2 if b.cap else 1024
    while cap < b.len + n:
        cap *= 2
    cdef char* data = <char*>realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef inline int _put(_Buf* b, const char* s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        _grow(b, n)
    memcpy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef inline int _put_char(_Buf* b, char c) except -1:
    if b.len + 1 > b.cap:
        _grow(b, 1)
    b.data[b.len] = c
    b.len += 1
    return 0


#: A control character's short JSON escape letter, or "u" for \u00XX.
cdef const char* _CONTROL_ESCAPES = b"uuuuuuuubtnufruuuuuuuuuuuuuuuuuu"


cdef int _put_str(_Buf* b, object value) except -1:
    """A JSON string, escaped as orjson escapes: the quote, the backslash
    and control characters (\\b \\t \\n \\f \\r short, the rest \\u00XX);
    everything else as UTF-8."""
    if type(value) is not str:
        raise _Fallback()
    cdef Py_ssize_t n
    cdef const char* s
    try:
        s = PyUnicode_AsUTF8AndSize(value, &n)
    except UnicodeEncodeError:
        raise _Fallback()  # (a lone surrogate: the reference writes ASCII)
    cdef Py_ssize_t i, start = 0
    cdef unsigned char c
    cdef char esc[6]
    _put_char(b, 34)
    for i in range(n):
        c = <unsigned char>s[i]
        if c >= 32 and c != 34 and c != 92:
            continue
        if i > start:
            _put(b, s + start, i - start)
        start = i + 1
        esc[0] = 92  # backslash
        esc[1] = c if c >= 32 else _CONTROL_ESCAPES[c]
        if esc[1] != 117:  # \" \\ \b \t \n \f \r
            _put(b, esc, 2)
        else:  # \u00XX
            esc[2] = 48
            esc[3] = 48
            esc[4] = _HEX[c >> 4]
            esc[5] = _HEX[c & 15]
            _put(b, esc, 6)
    if n > start:
        _put(b, s + start, n - start)
    _put_char(b, 34)
    return 0


cdef int _put_ascii(_Buf* b, str text) except -1:
    cdef Py_ssize_t n
    cdef const char* s = PyUnicode_AsUTF8AndSize(text, &n)
    _put(b, s, n)
    return 0


cdef int _put_int(_Buf* b, object value) except -1:
    if type(value) is not int or not (-(2**63) <= value < 2**63):
        raise _Fallback()
    _put_ll(b, value)
    return 0


cdef int _put_ll(_Buf* b, long long value) except -1:
    """str(value), without making the str."""
    cdef char digits[24]
    cdef int n = 24
    # The magnitude in unsigned arithmetic, where -LLONG_MIN fits.
    cdef unsigned long long m = <unsigned long long>value
    if value < 0:
        m = 0ULL - m
    while True:
        n -= 1
        digits[n] = <char>(48 + m % 10)
        m //= 10
        if m == 0:
            break
    if value < 0:
        n -= 1
        digits[n] = 45  # -
    _put(b, digits + n, 24 - n)
    return 0


cdef int _put_float(_Buf* b, double value) except -1:
    cdef double m = fabs(value)
    if not isfinite(value) or (m != 0.0 and (m < 1e-4 or m >= 1e16)):
        raise _Fallback()
    if not _put_micros(b, value):
        _put_ascii(b, repr(value))
    return 0


cdef bint _put_micros(_Buf* b, double value) except -1:
    cdef char text[32]
    cdef int n = _micros_text(value, text)
    if n:
        _put(b, text, n)
    return n != 0


cdef int _micros_text(double value, char* text) noexcept:
    """repr(value) into ``text`` (32 bytes) without Python's search for the
    shortest digits, for the values the log mostly writes (times to the
    microsecond, durations in ms to the µs): when ``value`` is the double
    nearest to u / 10**6 for an integer u and its ulp is below 10**-6
    (|value| < 2**33), no other decimal with at most six fraction digits
    rounds to it, so u's digits, trailing zeros cut, are the shortest text
    that does: repr's (fixed-point from 1e-4 up). Its length, or 0 where
    that does not hold (and for zero, whose sign repr keeps)."""
    cdef double m = fabs(value)
    if value == 0.0 or not (1e-4 <= m < 8589934592.0):
        return 0
    cdef long long u = <long long>nearbyint(value * 1e6)
    if <double>u / 1e6 != value:
        return 0
    cdef char digits[24]
    cdef int n = 0, i, j, end = 0
    if u < 0:
        text[0] = 45  # -
        end = 1
        u = -u
    while True:
        digits[n] = 48 + u % 10
        u //= 10
        n += 1
        if u == 0 and n > 6:
            break
    # digits holds u backwards, at least seven of them: the integer part,
    # then six fraction digits.
    for i in range(n - 1, 5, -1):
        text[end] = digits[i]
        end += 1
    text[end] = 46  # .
    end += 1
    i = 0
    while i < 5 and digits[i] == 48:
        i += 1  # trailing zeros (one fraction digit stays)
    for j in range(5, i - 1, -1):
        text[end] = digits[j]
        end += 1
    return end


def float_repr(double value):
    """repr(value), faster for times to the microsecond (the store writes
    an event's time in its block line with it)."""
    cdef char text[32]
    cdef int n = _micros_text(value, text)
    if n:
        return PyUnicode_DecodeASCII(text, n, NULL)
    return repr(value)


cdef inline bint _breaks(str text) except -1:
    """Whether ``text`` holds a tab or a newline (a block line's head)."""
    if text is None:
        raise TypeError("an event's fields are str")
    return u"\t" in text or u"\n" in text


def event_lines(list events not None):
    """(See the reference, _trail.event_lines.)"""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(events)
    cdef str kind, verdict, prev_hash, hash_, data, at
    cdef char text[32]
    cdef int size
    cdef double value
    cdef list lines = []
    for i in range(n):
        e = events[i]
        kind = e.kind
        verdict = e.verdict
        prev_hash = e.prev_hash
        hash_ = e.hash
        data = e.data
        if data is None:
            raise TypeError("an event's fields are str")
        if (_breaks(kind) or _breaks(verdict) or _breaks(prev_hash) or _breaks(hash_)
                or u"\n" in data):
            return None
        value = e.at
        size = _micros_text(value, text)
        at = PyUnicode_DecodeASCII(text, size, NULL) if size else repr(value)
        lines.append(f"{e.seq}\t{at}\t{kind}\t{verdict}\t{prev_hash}\t{hash_}\t{data}\n")
    return lines


def block_end(list events not None, list lines not None, Py_ssize_t start,
              Py_ssize_t max_events, Py_ssize_t max_chars, double span):
    """(See the reference, _trail.block_end.)"""
    first = events[start]
    cdef str subject = first.subject, connection = first.connection
    cdef Py_ssize_t chars = len(<str>lines[start])
    cdef double previous = first.at, at
    cdef double latest = previous + span
    cdef Py_ssize_t end = min(PyList_GET_SIZE(events), start + max_events), i
    for i in range(start + 1, end):
        e = events[i]
        chars += len(<str>lines[i])
        at = e.at
        if (at < previous or at > latest or chars > max_chars
                or e.subject != subject or e.connection != connection):
            return i
        previous = at
    return end


cdef int _put_value(_Buf* b, object value) except -1:
    """A str or None (a parameter, a kept value)."""
    if value is None:
        _put(b, b"null", 4)
    else:
        _put_str(b, value)
    return 0


cdef int _put_strings(_Buf* b, object values) except -1:
    """A list of str or None, or None."""
    if values is None:
        _put(b, b"null", 4)
        return 0
    if type(values) is not list:
        raise _Fallback()
    cdef Py_ssize_t i
    _put_char(b, 91)
    for i in range(PyList_GET_SIZE(values)):
        if i:
            _put_char(b, 44)
        _put_value(b, (<list>values)[i])
    _put_char(b, 93)
    return 0


cdef int _put_error(_Buf* b, object error) except -1:
    if error is None:
        _put(b, b"null", 4)
        return 0
    if type(error) is not dict or len(<dict>error) != 2:
        raise _Fallback()
    _put(b, b'{"message":', 11)
    _put_str(b, (<dict>error).get("message"))
    _put(b, b',"sqlstate":', 12)
    _put_str(b, (<dict>error).get("sqlstate"))
    _put_char(b, 125)
    return 0


cdef int _put_results(_Buf* b, list results) except -1:
    cdef _ResultSet r
    cdef Py_ssize_t i, j
    cdef object column
    _put_char(b, 91)
    for i in range(PyList_GET_SIZE(results)):
        r = results[i]
        if i:
            _put_char(b, 44)
        _put(b, b'{"columns":[', 12)
        for j in range(PyList_GET_SIZE(r.columns)):
            column = r.columns[j]
            if type(column) is not dict or len(<dict>column) != 2:
                raise _Fallback()
            if j:
                _put_char(b, 44)
            _put(b, b'{"name":', 8)
            _put_str(b, (<dict>column).get("name"))
            _put(b, b',"type_oid":', 12)
            _put_int(b, (<dict>column).get("type_oid"))
            _put_char(b, 125)
        _put(b, b'],"rows":[', 10)
        for j in range(PyList_GET_SIZE(r.rows)):
            if j:
                _put_char(b, 44)
            _put_strings(b, r.rows[j])
        _put(b, b'],"truncated":', 14)
        if r.truncated:
            _put(b, b"true}", 5)
        else:
            _put(b, b"false}", 6)
    _put_char(b, 93)
    return 0


#: (See the reference's _SHOWN_TEXTS.)
cdef Py_ssize_t _SHOWN_TEXTS = 256
cdef Py_ssize_t _SHOWN_TEXT_MAX = 4096


@cython.final
cdef class Journal:
    """What the data path recorded and the spool does not have yet: spool
    frames, in order, each with its record for the store, and the writes
    to clients held back behind them. The recorder writes the frames with
    one write at the end of the loop iteration, then lets the writes go
    (Recorder.commit). It is the relay pumps' barrier (see the reference,
    _trail.Journal)."""

    cdef public list frames
    cdef public list records
    cdef public list deferred
    #: Past the spool's bound with on_full "continue": events are dropped
    #: (counted), but for the essential ones.
    cdef public bint dropping
    cdef public long long dropped
    #: Something waits for the commit ``on_first`` scheduled.
    cdef public bint pending
    cdef public object on_first

    def __init__(self, on_first):
        self.frames = []
        self.records = []
        self.deferred = []
        self.on_first = on_first

    cpdef add(self, bytes frame, object record, bint essential=False):
        """``on_first()`` is called when the journal stops being empty."""
        if self.dropping and not essential:
            self.dropped += 1
            return
        if not self.pending:
            self._arm()
        self.frames.append(frame)
        self.records.append(record)

    cpdef defer(self, object pump, object data):
        """Hold ``data`` back until the commit: then ``pump.deferred_write``."""
        if not self.pending:
            self._arm()
        self.deferred.append((pump, data))

    cdef inline int _arm(self) except -1:
        """(See the reference.)"""
        self.on_first()
        self.pending = True
        return 0

    def take(self):
        """(frames, records), leaving the journal empty and not pending."""
        frames, records = self.frames, self.records
        self.frames = []
        self.records = []
        self.pending = False
        return frames, records

    def take_deferred(self):
        """The writes held back, in order (pump, data)."""
        deferred = self.deferred
        self.deferred = []
        return deferred

    @staticmethod
    def release(list deferred not None, bint written):
        """Each held-back write to its pump: ``data``, or None when the
        frames before it could not be written (it is dropped)."""
        cdef tuple item
        for item in deferred:
            item[0].deferred_write(item[1] if written else None)


cdef void _frame_header(unsigned char* out, Py_ssize_t n) noexcept:
    """The spool's framing of the ``n`` bytes at ``out + 8``: big-endian
    length and CRC-32, in the 8 bytes before them."""
    cdef unsigned long crc = crc32(0, out + 8, <unsigned int>n)
    out[0] = (n >> 24) & 255
    out[1] = (n >> 16) & 255
    out[2] = (n >> 8) & 255
    out[3] = n & 255
    out[4] = (crc >> 24) & 255
    out[5] = (crc >> 16) & 255
    out[6] = (crc >> 8) & 255
    out[7] = crc & 255


cdef bytes _frame(bytes payload):
    """The spool's framing of one record."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, 8 + n)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(frame)
    memcpy(out + 8, PyBytes_AS_STRING(payload), n)
    _frame_header(out, n)
    return frame


@cython.final
cdef class SessionLog:
    """One session's hash chain, as the recorder keeps it: sequence numbers,
    the last hash, and its events into the journal (see the reference,
    _trail.SessionLog)."""

    cdef readonly str session_id
    cdef readonly str subject
    cdef readonly str connection
    cdef public long long count
    cdef public str last_hash
    cdef public long long statements
    cdef Journal _journal
    cdef object _record
    cdef object _encode
    cdef str _statement_kind
    cdef Py_ssize_t _max_bytes
    cdef object _show_text
    cdef dict _shown

    def __init__(self, Journal journal not None, str session_id, str subject, str connection,
                 record, encode, str statement_kind, Py_ssize_t max_bytes, str genesis,
                 show_text=None):
        self._journal = journal
        self._show_text = show_text
        self._shown = {}
        self.session_id = session_id
        self.subject = subject
        self.connection = connection
        self._record = record
        self._encode = encode
        self._statement_kind = statement_kind
        self._max_bytes = max_bytes
        self.count = 0
        self.last_hash = genesis
        self.statements = 0

    cpdef append(self, str kind, double at, verdict, dict body, bint essential=False):
        """An event from a dict (session start and end, and statements from
        elsewhere than a trail): ``body`` is taken over."""
        cdef long long seq = self.count
        if kind == self._statement_kind:
            text = body.get("text")
            if type(text) is str:
                body["text"] = self._shown_text(text)
        body["session"] = self.session_id
        body["seq"] = seq
        body["kind"] = kind
        body["at"] = at
        body["subject"] = self.subject
        body["connection"] = self.connection
        body["verdict"] = verdict
        self._add(seq, at, kind, verdict, self._encode(body), essential)

    cdef object _shown_text(self, object text):
        """(See the reference.)"""
        if self._show_text is None or type(text) is not str:
            return text
        shown = self._shown.get(text)
        if shown is None:
            shown = self._show_text(text)
            if len(<str>text) <= _SHOWN_TEXT_MAX:
                if len(self._shown) >= _SHOWN_TEXTS:
                    self._shown.clear()
                self._shown[text] = shown
        return shown

    cpdef statement(self, Statement st):
        """A finished statement's event (n: its number in the session)."""
        cdef long long seq = self.count
        cdef long long n = self.statements + 1
        cdef double at = _wall_clock()
        verdict = st.verdict.action
        self.statements = n
        cdef bytes raw
        try:
            raw = self._statement_json(st, n, seq, at, verdict)
        except _Fallback:
            # The reference's way: the event as a dict, through ``encode``.
            self.append(self._statement_kind, at, verdict, st.event(n))
            return
        self._add(seq, at, self._statement_kind, verdict, raw, False)

    cdef _add(self, long long seq, double at, str kind, object verdict, bytes raw,
              bint essential):
        # The spool record (b"e", the previous and this event's hash in hex,
        # the JSON) is written in place after the frame's header; the hash
        # is SHA-256 over the previous hash, a newline and the JSON
        # (chain.link), by libcrypto without a Python call.
        cdef str prev = self.last_hash
        cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), prev_n
        cdef const char* prev_s = PyUnicode_AsUTF8AndSize(prev, &prev_n)
        cdef Py_ssize_t at_hash = 9 + prev_n
        cdef bytes frame = PyBytes_FromStringAndSize(NULL, at_hash + 64 + n)
        cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(frame)
        cdef unsigned char digest[32]
        cdef SHA256_CTX ctx
        cdef Py_ssize_t i
        SHA256_Init(&ctx)
        SHA256_Update(&ctx, prev_s, prev_n)
        SHA256_Update(&ctx, b"\n", 1)
        SHA256_Update(&ctx, PyBytes_AS_STRING(raw), n)
        SHA256_Final(digest, &ctx)
        out[8] = 101  # e
        memcpy(out + 9, prev_s, prev_n)
        for i in range(32):
            out[at_hash + 2 * i] = _HEX[digest[i] >> 4]
            out[at_hash + 1 + 2 * i] = _HEX[digest[i] & 15]
        memcpy(out + at_hash + 64, PyBytes_AS_STRING(raw), n)
        _frame_header(out, at_hash + 56 + n)
        cdef str hash_ = PyUnicode_New(64, 127)
        memcpy(PyUnicode_1BYTE_DATA(hash_), out + at_hash, 64)
        record = self._record(
            self.session_id,
            seq,
            at,
            kind,
            self.subject,
            self.connection,
            verdict,
            PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw), n, NULL),
            prev,
            hash_,
        )
        self._journal.add(frame, record, essential)
        self.count = seq + 1
        self.last_hash = hash_

    cdef bytes _statement_json(self, Statement st, long long n, long long seq, double at,
                               object verdict):
        cdef _Buf b
        cdef _ResultSet r
        cdef Py_ssize_t kept = 0
        b.data = NULL
        b.len = 0
        b.cap = 0
        try:
            rule = st.verdict.rule
            for r in st.results:
                kept += PyList_GET_SIZE(r.rows)
            _put(&b, b'{"at":', 6)
            _put_float(&b, at)
            _put(&b, b',"bytes":', 9)
            _put_ll(&b, st.server_bytes)
            _put(&b, b',"connection":', 14)
            _put_str(&b, self.connection)
            _put(&b, b',"duration_ms":', 15)
            _put_float(&b, _milliseconds(st.duration))
            _put(&b, b',"error":', 9)
            _put_error(&b, st.error)
            _put(&b, b',"kind":', 8)
            _put_str(&b, self._statement_kind)
            _put(&b, b',"n":', 5)
            _put_ll(&b, n)
            _put(&b, b',"params":', 10)
            _put_strings(&b, st.params)
            _put(&b, b',"result_rows_kept":', 20)
            _put_ll(&b, kept)
            _put(&b, b',"results":', 11)
            _put_results(&b, st.results)
            _put(&b, b',"rows":', 8)
            _put_int(&b, st.rows)
            if st.uncounted or st.inexact:
                _put(&b, b',"rows_exact":false', 19)
            _put(&b, b',"rule":', 8)
            _put_str(&b, rule)
            _put(&b, b',"seq":', 7)
            _put_ll(&b, seq)
            _put(&b, b',"session":', 11)
            _put_str(&b, self.session_id)
            _put(&b, b',"started_at":', 14)
            _put_float(&b, st.started_at)
            _put(&b, b',"subject":', 11)
            _put_str(&b, self.subject)
            _put(&b, b',"tags":', 8)
            _put_strings(&b, st.tags)
            _put(&b, b',"text":', 8)
            _put_str(&b, self._shown_text(st.text))
            _put(&b, b',"verdict":', 11)
            _put_str(&b, verdict)
            _put_char(&b, 125)
            if b.len > self._max_bytes:
                raise _Fallback()  # (the reference cuts it down)
            return PyBytes_FromStringAndSize(b.data, b.len)
        finally:
            free(b.data)

    def _statement_json_for_tests(self, Statement st, long long n, long long seq, double at):
        """The fast encoder's text, or None where it defers to the reference."""
        try:
            return self._statement_json(st, n, seq, at, st.verdict.action)
        except _Fallback:
            return None


def frame(bytes payload not None):
    """The spool's framing of one record (as _trail.frame)."""
    return _frame(payload)
