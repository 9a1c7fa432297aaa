"""The relay pump, pure-Python reference. ``ext/_cpump.pyx`` is the Cython
build of the same class; :mod:`hoopfast.core` picks one.

A Pump is the asyncio protocol of one socket. It frames what that socket
receives and writes it to the *peer* socket; intercepted messages go to the
owner instead, which decides what to forward. Back-pressure: when this
socket's write buffer crosses its high-water mark, the loop calls
``pause_writing`` here, and the pump stops reading from the peer (whose bytes
would only pile up in that buffer) until ``resume_writing``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class PumpOwner(Protocol):
    def pump_message(self, pump: Any, type_code: int, message: bytes) -> None: ...

    def pump_violation(self, pump: Any, error: Exception) -> None: ...

    def pump_closed(self, pump: Any, error: Exception | None) -> None: ...


class Pump(asyncio.Protocol):
    __slots__ = ("_framing_error", "bytes_in", "framer", "owner", "peer", "transport")

    def __init__(self, framer: Any, owner: PumpOwner, framing_error: type[Exception]) -> None:
        self.framer = framer
        self.owner = owner
        self._framing_error = framing_error
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.bytes_in = 0

    def attach(self, transport: Any, peer: Any) -> None:
        """Take over ``transport`` (already connected) and write to ``peer``."""
        self.transport = transport
        self.peer = peer
        transport.set_protocol(self)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            items = self.framer.feed(data)
        except self._framing_error as e:
            self.owner.pump_violation(self, e)
            return
        peer = self.peer
        assert peer is not None
        for item in items:
            if type(item) is bytes:
                peer.write(item)
            else:
                self.owner.pump_message(self, item[0], item[1])

    def eof_received(self) -> bool:
        return False  # close our side; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.pump_closed(self, exc)

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and not peer.is_closing():
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and not peer.is_closing():
            peer.resume_reading()
