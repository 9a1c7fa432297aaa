# cython: language_level=3, boundscheck=False, wraparound=False
"""The relay pump, compiled: the same class as hoopfast/core/_pump.py (the
reference; read its docstring), typed so that the per-chunk path
(data_received) runs without interpreter dispatch, in the style of asyncpg's
Cython protocol."""


from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memset


cdef object _fast_text(int type_code, bytes message):
    """hoopfast/core/_pump.py fast_text, without building slices."""
    cdef const char* buf = PyBytes_AS_STRING(message)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(message)
    cdef Py_ssize_t start
    cdef const char* nul
    if type_code == 81:  # Query: one string, the NUL its last byte
        start = 5
        if size <= start:
            return None
        nul = <const char*>memchr(buf + start, 0, size - start)
        if nul == NULL or nul - buf != size - 1:
            return None
    elif type_code == 80 and size > 6 and buf[5] == 0:  # unnamed Parse
        start = 6
        nul = <const char*>memchr(buf + start, 0, size - start)
        if nul == NULL:
            return None
    else:
        return None
    try:
        return PyUnicode_DecodeUTF8(buf + start, nul - (buf + start), NULL)
    except UnicodeDecodeError:
        return None


cdef list _split(bytes run):
    """A framer's run as one (type, message) item per message."""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(run)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(run)
    cdef Py_ssize_t pos = 0, end
    cdef unsigned long long length
    cdef list items = []
    while pos + 5 <= size:
        length = ((<unsigned long long>buf[pos + 1] << 24) | (buf[pos + 2] << 16)
                  | (buf[pos + 3] << 8) | buf[pos + 4])
        end = pos + 1 + <Py_ssize_t>length
        items.append((buf[pos], run[pos:end]))
        pos = end
    return items


cdef class Pump:
    cdef public object framer
    cdef public object owner
    cdef public object transport
    cdef public object peer
    cdef public unsigned long long bytes_in
    cdef public object fast
    cdef public object held
    cdef public Py_ssize_t hold_limit
    cdef Py_ssize_t _held_bytes
    cdef object _framing_error
    cdef object _feed
    cdef object _peer_write
    cdef object _fingerprint
    cdef object _observe
    cdef object _observe_statement
    cdef unsigned char _observed[256]
    cdef public object barrier
    cdef Py_ssize_t _deferred

    def __init__(self, framer, owner, framing_error, fingerprint=None):
        self.framer = framer
        self.owner = owner
        self._framing_error = framing_error
        self._fingerprint = fingerprint
        self.fast = None
        self._feed = framer.feed
        self.transport = None
        self.peer = None
        self._peer_write = None
        self.bytes_in = 0
        self.held = None
        self.hold_limit = 8 << 20
        self._held_bytes = 0
        self._observe = None
        self._observe_statement = None
        memset(self._observed, 0, 256)
        self.barrier = None
        self._deferred = 0

    def observe(self, bytes types, observe=None, observe_statement=None):
        cdef unsigned char t
        memset(self._observed, 0, 256)
        for t in types:
            self._observed[t] = 1
        self.framer.set_runs(types)
        self._observe = observe
        self._observe_statement = observe_statement

    def attach(self, transport, peer):
        self.transport = transport
        self.peer = peer
        self._peer_write = peer.write
        transport.set_protocol(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, bytes data):
        cdef list items
        self.bytes_in += len(data)
        try:
            items = self._feed(data)
        except self._framing_error as e:
            self.owner.pump_violation(self, e)
            return
        if self.held is not None:
            (<list>self.held).extend(items)
            self._held_bytes += len(data)
            if self._held_bytes > self.hold_limit:
                self.owner.pump_violation(self, OverflowError(
                    f"more than {self.hold_limit} bytes sent while a statement is held"
                ))
            return
        if len(items) == 1 and type(items[0]) is bytes:
            self._write(items[0])
            return
        self._process(items, [])

    cdef _write(self, object data):
        barrier = self.barrier
        if barrier is not None and (self._deferred or barrier.pending):
            self._deferred += 1
            barrier.defer(self, data)
            return
        self._peer_write(data)

    def write(self, data):
        self._write(data)

    def deferred_write(self, data):
        self._deferred -= 1
        peer = self.peer
        if data is not None and peer is not None and not peer.is_closing():
            self._peer_write(data)

    cdef _process(self, list items, list out):
        cdef object item
        cdef int type_code
        cdef bytes message
        cdef list parts
        cdef Py_ssize_t i, j
        cdef Py_ssize_t n = len(items)
        for i in range(n):
            item = items[i]
            if type(item) is bytes:
                out.append(item)
                continue
            type_code = (<tuple>item)[0]
            message = (<tuple>item)[1]
            if type_code == 0 and not self._all_observed(message):
                # (See the reference: its messages one by one, in a loop.)
                parts = _split(message)
                for j in range(len(parts)):
                    if self._one((<tuple>parts[j])[0], (<tuple>parts[j])[1], out):
                        (<list>self.held).extend(parts[j + 1 :])
                        break
            elif not self._one(type_code, message, out):
                continue
            if self.held is not None:
                (<list>self.held).extend(items[i + 1 :])
                break
        if out and not self.peer.is_closing():
            self._write(out[0] if len(out) == 1 else b"".join(out))

    cdef bint _one(self, int type_code, bytes message, list out) except -1:
        """One item (a message, or a run still all observed) to its
        consumer; True when the owner holds from here on."""
        cdef object forward
        cdef object sql
        cdef object fast
        cdef object verdict
        if type_code == 0 or self._observed[type_code & 0xFF]:
            self._observe(type_code, message)
            out.append(message)
            return False
        fast = self.fast
        if fast is not None:
            sql = _fast_text(type_code, message)
            if sql is not None:
                verdict = (<dict>fast).get((<tuple>self._fingerprint(sql))[0])
                if verdict is not None:
                    if self._observe_statement is not None:
                        self._observe_statement(type_code, message, sql, verdict)
                    out.append(message)
                    return False
        forward = self.owner.pump_message(self, type_code, message)
        if forward:
            out.append(forward)
        return self.held is not None

    cdef bint _all_observed(self, bytes run):
        """Whether every message of a framer's run is of a type still
        observed."""
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(run)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(run)
        cdef Py_ssize_t pos = 0
        cdef unsigned long long length
        while pos + 5 <= size:
            if not self._observed[buf[pos]]:
                return False
            length = ((<unsigned long long>buf[pos + 1] << 24) | (buf[pos + 2] << 16)
                      | (buf[pos + 3] << 8) | buf[pos + 4])
            pos += 1 + <Py_ssize_t>length
        return True

    def hold(self):
        if self.held is None:
            self.held = []
            self._held_bytes = 0

    def release(self, forward):
        items = self.held
        self.held = None
        if items is None or self.peer is None or self.peer.is_closing():
            return
        self._process(items, [forward] if forward else [])

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.owner.pump_closed(self, exc)

    def pause_writing(self):
        peer = self.peer
        if peer is not None and not peer.is_closing():
            peer.pause_reading()

    def resume_writing(self):
        peer = self.peer
        if peer is not None and not peer.is_closing():
            peer.resume_reading()

