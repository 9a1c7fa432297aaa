"""The relay pump, pure-Python reference. ``ext/_cpump.pyx`` is the Cython
build of the same class; :mod:`hoopfast.core` picks one.

A Pump is the asyncio protocol of one socket. It frames what that socket
receives and writes it to the *peer* socket; intercepted messages go to the
owner instead, which returns what to forward in their place. Everything one
received chunk yields is written with one ``write`` (one system call, not one
per intercepted message: a pipelined Parse/Bind/Execute/Sync stays one
send).

The guardrails' fast path lives here too, so a statement already judged
never leaves compiled code: ``fast`` (set by the owner) holds the
fingerprints of statement texts that may pass exactly as sent. A Query, or
an unnamed Parse, whose UTF-8 text has such a fingerprint is forwarded
without calling the owner; anything else (a new statement, a named Parse,
text that is not UTF-8, ``fast`` unset) goes to the owner. Back-pressure: when this
socket's write buffer crosses its high-water mark, the loop calls
``pause_writing`` here, and the pump stops reading from the peer (whose bytes
would only pile up in that buffer) until ``resume_writing``.

Observing: a message type the owner follows but never changes (the audit
trail's) goes to ``observe(type_code, message)`` instead, set with
:meth:`Pump.observe`, and is forwarded as it came. The framer hands over
adjacent observed messages as one run (``Framer.set_runs``, which observe
sets; an item of type 0): one call for a pgbench statement's four client
messages rather than four. A run with a type the owner took back since the framer made it (it
intercepts Binds from the next Parse on) is split, each message going where
it now belongs; a statement the fast path
passes goes to ``observe_statement(type_code, message, sql, verdict)``. A
recorded session then runs as cheaply as an unrecorded one: nothing per
message calls the owner. The observer may close the peer (its audit record
could not be written): what the chunk held is then not written.

Write-ahead: with a ``barrier`` (the recorder's journal, hoopfast.core
Journal), a write to the peer waits while the barrier has records not yet
in the spool (``barrier.pending``):
it goes to ``barrier.defer(pump, data)``, which calls
:meth:`Pump.deferred_write` once they are written, in the same loop
iteration. So a statement's completion never reaches the client before its
audit record is on disk, and the spool takes one write per loop iteration
rather than one per statement. Later writes of the pump queue behind a
deferred one, in order.

Holding: the owner may call :meth:`Pump.hold` from ``pump_message`` (a
statement waits for a second person's approval). The message it was handed
is then the owner's to keep; everything after it (the rest of the chunk,
anything still arriving) is kept unprocessed, in order, until
:meth:`Pump.release` writes what the owner says in the held message's place
and processes the rest as if it had just arrived. Reading goes on while
holding, so a peer that leaves is noticed (a paused TLS socket would not
see it), up to ``hold_limit`` bytes; past it the owner hears of a violation
(an OverflowError) and ends the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Protocol


def held_messages(items: list[Any]) -> Iterator[tuple[int, bytes]]:
    """The whole messages among a pump's ``held`` items, in order, a run's
    one by one (bytes passed through are skipped)."""
    for item in items:
        if type(item) is bytes:
            continue
        if item[0] == 0:
            yield from _split(item[1])
        else:
            yield item


def _split(run: bytes) -> list[tuple[int, bytes]]:
    """A framer's run (whole messages) as one (type, message) item each."""
    items = []
    pos = 0
    while pos + 5 <= len(run):
        end = pos + 1 + int.from_bytes(run[pos + 1 : pos + 5], "big")
        items.append((run[pos], run[pos:end]))
        pos = end
    return items


class PumpOwner(Protocol):
    def pump_message(self, pump: Any, type_code: int, message: bytes) -> bytes | None:
        """What to forward in the message's place (None or b"": nothing)."""
        ...

    def pump_violation(self, pump: Any, error: Exception) -> None: ...

    def pump_closed(self, pump: Any, error: Exception | None) -> None: ...

    def pump_unrecorded(self, pump: Any, reason: str) -> None:
        """What the pump held back behind the audit trail was dropped: the
        trail could not be written (see Pump.barrier)."""
        ...


_QUERY = ord("Q")
_PARSE = ord("P")


def fast_text(type_code: int, message: bytes) -> str | None:
    """The SQL of a Query, or of an unnamed Parse, if it is exactly one
    NUL-terminated UTF-8 string; else None (the owner decides)."""
    if type_code == _QUERY:
        start = 5
        end = message.find(b"\0", start)
        if end != len(message) - 1:
            return None
    elif type_code == _PARSE and len(message) > 6 and message[5] == 0:
        start = 6
        end = message.find(b"\0", start)
        if end < 0:
            return None
    else:
        return None
    try:
        return message[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return None


class Pump(asyncio.Protocol):
    __slots__ = (
        "_deferred",
        "_fingerprint",
        "_framing_error",
        "_held_bytes",
        "_observe",
        "_observe_statement",
        "_observed",
        "barrier",
        "bytes_in",
        "fast",
        "framer",
        "held",
        "hold_limit",
        "owner",
        "peer",
        "transport",
    )

    def __init__(
        self,
        framer: Any,
        owner: PumpOwner,
        framing_error: type[Exception],
        fingerprint: Any = None,
    ) -> None:
        self.framer = framer
        self.owner = owner
        self._framing_error = framing_error
        self._fingerprint = fingerprint
        #: Fingerprints of statements that pass as sent (see the module docstring).
        self.fast: dict[bytes, Any] | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.bytes_in = 0
        #: While on hold: the framed items not processed yet (see hold()).
        self.held: list[Any] | None = None
        self.hold_limit = 8 << 20
        self._held_bytes = 0
        self._observe: Any = None
        self._observe_statement: Any = None
        self._observed = bytes(256)
        #: The recorder, for a pump whose writes acknowledge recorded statements.
        self.barrier: Any = None
        self._deferred = 0

    def observe(self, types: bytes, observe: Any = None, observe_statement: Any = None) -> None:
        """Hand messages of ``types`` to ``observe`` instead of the owner
        (the framer must intercept them), adjacent ones as one run, and
        statements the fast path passes to ``observe_statement`` (see the
        module docstring)."""
        table = bytearray(256)
        for t in types:
            table[t] = 1
        self._observed = bytes(table)
        self.framer.set_runs(types)
        self._observe = observe
        self._observe_statement = observe_statement

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
        if self.held is not None:
            self.held.extend(items)
            self._held_bytes += len(data)
            if self._held_bytes > self.hold_limit:
                error = OverflowError(
                    f"more than {self.hold_limit} bytes sent while a statement is held"
                )
                self.owner.pump_violation(self, error)
            return
        if len(items) == 1 and type(items[0]) is bytes:
            self._write(items[0])  # the common case: nothing intercepted
            return
        self._process(items, [])

    def write(self, data: bytes) -> None:
        """Write to the peer after what the pump wrote before (which a
        barrier may still hold back)."""
        self._write(data)

    def _write(self, data: bytes) -> None:
        barrier = self.barrier
        if barrier is not None and (self._deferred or barrier.pending):
            self._deferred += 1
            barrier.defer(self, data)
            return
        assert self.peer is not None
        self.peer.write(data)

    def deferred_write(self, data: bytes | None) -> None:
        """A write the barrier held back: now (None: dropped)."""
        self._deferred -= 1
        peer = self.peer
        if data is not None and peer is not None and not peer.is_closing():
            peer.write(data)

    def _process(self, items: list[Any], out: list[bytes]) -> None:
        peer = self.peer
        assert peer is not None
        for i, item in enumerate(items):
            if type(item) is bytes:
                out.append(item)
                continue
            type_code, message = item
            if type_code == 0 and not self._all_observed(message):
                # The owner changed what it intercepts after the framer made
                # this run (a Parse made the session watch Binds): its
                # messages go one by one, each where it now belongs. (A
                # loop, not a call per run: a release may hold thousands.)
                parts = _split(message)
                for j, (code, part) in enumerate(parts):
                    if self._one(code, part, out):
                        assert self.held is not None
                        self.held.extend(parts[j + 1 :])
                        break
            elif not self._one(type_code, message, out):
                continue
            if self.held is not None:
                self.held.extend(items[i + 1 :])
                break
        # The owner may have closed the peer (ending the session).
        if out and not peer.is_closing():
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def _one(self, type_code: int, message: bytes, out: list[bytes]) -> bool:
        """One item (a message, or a run still all observed: type 0) to its
        consumer; True when the owner holds from here on."""
        if type_code == 0 or self._observed[type_code]:
            self._observe(type_code, message)
            out.append(message)
            return False
        fast = self.fast
        if fast is not None:
            sql = fast_text(type_code, message)
            if sql is not None:
                verdict = fast.get(self._fingerprint(sql)[0])
                if verdict is not None:
                    if self._observe_statement is not None:
                        self._observe_statement(type_code, message, sql, verdict)
                    out.append(message)
                    return False
        forward = self.owner.pump_message(self, type_code, message)
        if forward:
            out.append(forward)
        return self.held is not None

    def _all_observed(self, run: bytes) -> bool:
        """Whether every message of a framer's run is of a type still
        observed."""
        observed = self._observed
        pos = 0
        while pos + 5 <= len(run):
            if not observed[run[pos]]:
                return False
            pos += 1 + int.from_bytes(run[pos + 1 : pos + 5], "big")
        return True

    def hold(self) -> None:
        """Keep everything after the current message, unprocessed, until
        release()."""
        if self.held is None:
            self.held = []
            self._held_bytes = 0

    def release(self, forward: bytes | None) -> None:
        """Write ``forward`` in the held message's place, then process what
        was held (which may hold again), then read again."""
        items, self.held = self.held, None
        if items is None or self.peer is None or self.peer.is_closing():
            return
        self._process(items, [forward] if forward else [])

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
