# cython: language_level=3, boundscheck=False, wraparound=False
"""The relay pump, compiled: the same class as hoopfast/core/_pump.py (the
reference; read its docstring), typed so that the per-chunk path
(data_received) runs without interpreter dispatch, in the style of asyncpg's
Cython protocol."""


cdef class Pump:
    cdef public object framer
    cdef public object owner
    cdef public object transport
    cdef public object peer
    cdef public unsigned long long bytes_in
    cdef object _framing_error
    cdef object _feed
    cdef object _peer_write

    def __init__(self, framer, owner, framing_error):
        self.framer = framer
        self.owner = owner
        self._framing_error = framing_error
        self._feed = framer.feed
        self.transport = None
        self.peer = None
        self._peer_write = None
        self.bytes_in = 0

    def attach(self, transport, peer):
        self.transport = transport
        self.peer = peer
        self._peer_write = peer.write
        transport.set_protocol(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, bytes data):
        cdef list items
        cdef object item
        self.bytes_in += len(data)
        try:
            items = self._feed(data)
        except self._framing_error as e:
            self.owner.pump_violation(self, e)
            return
        for item in items:
            if type(item) is bytes:
                self._peer_write(item)
            else:
                self.owner.pump_message(self, (<tuple>item)[0], (<tuple>item)[1])

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

