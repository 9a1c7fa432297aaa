"""A fault-injecting TCP proxy for tests (loopback only, self-stopping).

The proxy sits between a client and a server on 127.0.0.1 and applies
:class:`Faults` independently to each direction: ``upstream`` (client to server)
and ``downstream`` (server to client).

* torn packets: every chunk is re-written in pieces of ``piece_size`` bytes (or
  random 1..piece_size), optionally sleeping ``piece_delay`` between pieces;
* ``latency``: sleep before forwarding each chunk;
* ``drop_after``: forward that many bytes, then close both sides abruptly
  (FIN; with ``rst=True`` an RST via ``SO_LINGER 0``);
* ``stall_after``: forward that many bytes, then stop forwarding (and stop
  reading, so the sender sees back-pressure) until :meth:`FaultProxy.resume`;
* ``inject``: insert arbitrary bytes just before source byte ``inject_at``.

Byte offsets count bytes *read from the source* in that direction since the
connection was opened; injected bytes do not count.  A fault whose offset lies
in the past (e.g. ``drop_after=0`` set on a live connection) fires on the next
chunk.  The fault settings may be replaced at any time (``proxy.downstream =
Faults.drop()``), they are read for every chunk.

Two ways to run it::

    async with FaultProxy("127.0.0.1", pg.port, downstream=Faults.torn()) as p:
        await asyncpg.connect(host="127.0.0.1", port=p.port, ...)

    with FaultProxy("127.0.0.1", pg.port, upstream=Faults.drop(100)) as p:  # thread
        psycopg.connect(pg.dsn(port=p.port))

The ``with`` form (or :meth:`FaultProxy.run_in_thread`) runs the proxy on its
own event loop in a daemon thread, for synchronous clients.  The proxy only
accepts loopback addresses, serves at most ``max_connections`` at a time and
shuts itself down after ``lifetime`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

__all__ = ["Direction", "FaultProxy", "Faults"]

Direction = Literal["upstream", "downstream"]
_T = TypeVar("_T")
_CHUNK = 65536


@dataclass(frozen=True)
class Faults:
    """What to do to the bytes flowing in one direction (all off by default)."""

    piece_size: int | None = None
    random_pieces: bool = False
    piece_delay: float = 0.0
    latency: float = 0.0
    drop_after: int | None = None
    rst: bool = False
    stall_after: int | None = None
    inject: bytes = b""
    inject_at: int = 0

    def __post_init__(self) -> None:
        if self.piece_size is not None and self.piece_size < 1:
            raise ValueError("piece_size must be >= 1")

    # Convenience constructors ------------------------------------------------

    @classmethod
    def torn(cls, max_piece: int = 1, *, delay: float = 0.0, randomize: bool = True) -> Faults:
        """Write chunks in pieces of 1..max_piece bytes (exactly max_piece unless randomize)."""
        return cls(piece_size=max_piece, random_pieces=randomize, piece_delay=delay)

    @classmethod
    def drop(cls, after: int = 0, *, rst: bool = False) -> Faults:
        """Close both sides once *after* bytes were forwarded in this direction."""
        return cls(drop_after=after, rst=rst)

    @classmethod
    def stall(cls, after: int = 0) -> Faults:
        """Stop forwarding once *after* bytes were forwarded, until resume()."""
        return cls(stall_after=after)

    @classmethod
    def garbage(cls, data: bytes, at: int = 0) -> Faults:
        """Inject *data* just before source byte *at*."""
        return cls(inject=data, inject_at=at)

    def plus(self, **changes: Any) -> Faults:
        """A copy with some fields changed: ``Faults.torn().plus(drop_after=500)``."""
        return replace(self, **changes)


@dataclass(eq=False)
class _Conn:
    client_w: asyncio.StreamWriter
    server_w: asyncio.StreamWriter
    offset: dict[str, int] = field(default_factory=lambda: {"upstream": 0, "downstream": 0})
    injected: dict[str, bool] = field(
        default_factory=lambda: {"upstream": False, "downstream": False}
    )
    unstalled: dict[str, bool] = field(
        default_factory=lambda: {"upstream": False, "downstream": False}
    )
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False

    def abort(self, rst: bool) -> None:
        if self.dead:
            return
        self.dead = True
        self.resumed.set()  # wake a stalled pump so it can finish
        for w in (self.client_w, self.server_w):
            if rst:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
            w.transport.abort()


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"FaultProxy only works on loopback addresses, not {host!r}")


class FaultProxy:
    """Forward ``listen_host:port`` to ``target_host:target_port`` with injected faults.

    ``faults`` applies to both directions unless ``upstream``/``downstream`` are
    given.  ``port`` is known after start (``async with``/``with``/``run_in_thread``).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        upstream: Faults | None = None,
        downstream: Faults | None = None,
        faults: Faults | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_connections: int = 64,
        lifetime: float = 300.0,
        connect_timeout: float = 5.0,
        seed: int | None = None,
    ) -> None:
        _check_loopback(target_host)
        _check_loopback(listen_host)
        self.target_host = target_host
        self.target_port = target_port
        base = faults or Faults()
        self.upstream: Faults = upstream or base
        self.downstream: Faults = downstream or base
        self.listen_host = listen_host
        self._listen_port = listen_port
        self.max_connections = max_connections
        self.lifetime = lifetime
        self.connect_timeout = connect_timeout
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lifetime_handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._closed: asyncio.Event | None = None
        # Statistics (read from any thread).
        self.connections_total = 0
        self.bytes_forwarded: dict[str, int] = {"upstream": 0, "downstream": 0}

    # ---------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def host(self) -> str:
        return self.listen_host

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    def faults_for(self, direction: Direction) -> Faults:
        return self.upstream if direction == "upstream" else self.downstream

    # ---------------------------------------------------------------- asyncio API

    async def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self._listen_port, limit=_CHUNK
        )
        self._lifetime_handle = self._loop.call_later(
            self.lifetime, lambda: self._spawn(self.aclose())
        )
        return self

    async def aclose(self) -> None:
        """Stop listening and abort all connections (idempotent)."""
        if self._lifetime_handle is not None:
            self._lifetime_handle.cancel()
            self._lifetime_handle = None
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort(rst=False)
        # Handlers notice the aborted transports and finish by themselves; only
        # stragglers are cancelled.
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._closed is not None:
            self._closed.set()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- thread API

    def run_in_thread(
        self, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    ) -> Self:
        """Run the proxy on a new event loop in a daemon thread; returns once listening.

        ``loop_factory`` e.g. ``uvloop.new_event_loop``; default asyncio's loop.
        Stop with :meth:`close` (or use the proxy as a ``with`` context manager).
        """
        if self._thread is not None:
            raise RuntimeError("already running in a thread")
        ready = threading.Event()
        error: list[BaseException] = []

        async def main() -> None:
            try:
                await self.start()
            except BaseException as e:
                error.append(e)
                ready.set()
                return
            ready.set()
            assert self._closed is not None
            await self._closed.wait()

        def target() -> None:
            loop = (loop_factory or asyncio.new_event_loop)()
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=target, name="FaultProxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if error:
            self._thread.join(5)
            self._thread = None
            raise error[0]
        if self._server is None:
            raise RuntimeError("FaultProxy thread did not start")
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop a proxy started with :meth:`run_in_thread` (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if thread.is_alive() and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop finished meanwhile
                fut = asyncio.run_coroutine_threadsafe(self.aclose(), self._loop)
                fut.result(timeout)
        thread.join(timeout)

    def __enter__(self) -> Self:
        return self.run_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run *fn* on the proxy's loop (directly when already on it)."""
        loop = self._loop
        if loop is None or self._thread is None:
            return fn()
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                return fn()

        async def wrapper() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(10)

    # ---------------------------------------------------------------- controls

    def resume(self) -> None:
        """Release every stalled direction of every current connection."""

        def do() -> None:
            for conn in self._conns:
                conn.unstalled = {"upstream": True, "downstream": True}
                conn.resumed.set()

        self._call(do)

    def drop_all(self, *, rst: bool = False) -> int:
        """Abort every current connection now; returns how many were open."""

        def do() -> int:
            conns = list(self._conns)
            for conn in conns:
                conn.abort(rst)
            return len(conns)

        return self._call(do)

    # ---------------------------------------------------------------- internals

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Python 3.11's start_server logs a bogus error when a handler task ends
        # cancelled (it calls task.exception()); a cancelled handler just returns.
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve(client_r, client_w)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self.max_connections:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port, limit=_CHUNK),
                self.connect_timeout,
            )
        except (OSError, TimeoutError):
            client_w.transport.abort()
            return
        conn = _Conn(client_w, server_w)
        self._conns.add(conn)
        self.connections_total += 1
        try:
            await asyncio.gather(
                self._pump(conn, "upstream", client_r, server_w),
                self._pump(conn, "downstream", server_r, client_w),
            )
        finally:
            self._conns.discard(conn)
            for w in (client_w, server_w):
                if conn.dead:
                    w.transport.abort()
                else:
                    w.close()

    async def _pump(
        self,
        conn: _Conn,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while not conn.dead:
                data = await reader.read(_CHUNK)
                if not data:
                    if not conn.dead and writer.can_write_eof():
                        writer.write_eof()  # half-close, like the source did
                    return
                if not await self._forward(conn, direction, data, writer):
                    return
        except (OSError, asyncio.IncompleteReadError):
            conn.abort(rst=False)  # one side failed: tear down the other

    async def _forward(
        self, conn: _Conn, direction: Direction, data: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Forward one chunk applying the current faults; False once the connection is dropped."""
        f = self.faults_for(direction)
        if f.latency:
            await asyncio.sleep(f.latency)
        while data:
            f = self.faults_for(direction)  # may change while we stall
            pos = conn.offset[direction]
            end = pos + len(data)
            # (position, priority, kind): the event fires before source byte `position`.
            events: list[tuple[int, int, str]] = []
            if f.inject and not conn.injected[direction]:
                events.append((max(f.inject_at, pos), 0, "inject"))
            if f.stall_after is not None and not conn.unstalled[direction]:
                events.append((max(f.stall_after, pos), 1, "stall"))
            if f.drop_after is not None:
                events.append((max(f.drop_after, pos), 2, "drop"))
            due = [e for e in events if e[0] < end]
            if not due:
                await self._send(conn, direction, data, writer, f)
                return True
            at, _, kind = min(due)
            k = at - pos
            if k:
                await self._send(conn, direction, data[:k], writer, f)
                data = data[k:]
            if kind == "inject":
                conn.injected[direction] = True
                await self._write(conn, writer, f.inject, f, None)
            elif kind == "stall":
                conn.resumed.clear()
                while not conn.unstalled[direction] and not conn.dead:
                    await conn.resumed.wait()
                    conn.resumed.clear()
            else:
                conn.abort(f.rst)
                return False
            if conn.dead:
                return False
        return True

    async def _send(
        self,
        conn: _Conn,
        direction: Direction,
        data: bytes,
        writer: asyncio.StreamWriter,
        f: Faults,
    ) -> None:
        await self._write(conn, writer, data, f, direction)

    async def _write(
        self,
        conn: _Conn,
        writer: asyncio.StreamWriter,
        data: bytes,
        f: Faults,
        direction: Direction | None,
    ) -> None:
        """Write *data* (in pieces if asked); count it as source bytes of *direction*."""
        piece_size = f.piece_size
        i = 0
        while i < len(data) and not conn.dead:
            if piece_size is None:
                size = len(data)
            elif f.random_pieces:
                size = self._rng.randint(1, piece_size)
            else:
                size = piece_size
            piece = data[i : i + size]
            # TCP_NODELAY is on (asyncio and uvloop set it): each write is its own segment.
            writer.write(piece)
            await writer.drain()
            i += len(piece)
            if direction is not None:
                conn.offset[direction] += len(piece)
                self.bytes_forwarded[direction] += len(piece)
            if piece_size is not None:
                # Yield even without a delay so the peer can read partial data.
                await asyncio.sleep(f.piece_delay)
