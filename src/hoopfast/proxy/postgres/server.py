"""The PostgreSQL listener: accepts clients, owns the sessions, and routes
CancelRequests to the session that owns the key."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import ssl

from hoopfast.config import GatewayConfig
from hoopfast.identity.tokens import TokenValidator
from hoopfast.proxy.postgres import upstream
from hoopfast.proxy.postgres.session import PgSession
from hoopfast.settings import Settings

log = logging.getLogger("hoopfast.server")


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


class PgGateway:
    def __init__(self, settings: Settings, config: GatewayConfig, validator: TokenValidator) -> None:
        self.settings = settings
        self.config = config
        self.validator = validator
        self.ssl_context = server_ssl_context(settings)
        self.sessions: dict[int, PgSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> asyncio.Server:
        host, port = self.settings.pg_listen_address
        self._server = await asyncio.start_server(self._accept, host, port, backlog=1024)
        return self._server

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = PgSession(self, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await session.run()
        finally:
            self._tasks.discard(task)

    def register(self, session: PgSession) -> tuple[int, bytes]:
        """A fresh cancel key for the session: the client never learns the
        upstream's, so it cannot cancel anyone else's query directly."""
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self.sessions:
                break
        self.sessions[pid] = session
        return pid, secrets.token_bytes(4)

    def unregister(self, session: PgSession) -> None:
        if self.sessions.get(session.pid) is session:
            del self.sessions[session.pid]

    async def cancel(self, pid: int, secret: bytes) -> None:
        session = self.sessions.get(pid)
        # Compare in constant time; a wrong key is ignored silently, as PostgreSQL does.
        if session is None or not hmac.compare_digest(session.secret, secret):
            log.info("cancel request for unknown key ignored")
            return
        up, conn = session.upstream, session.connection
        if up is None or conn is None:
            return
        log.info("session %s: cancel request forwarded", session.id)
        try:
            await upstream.send_cancel(conn, up.pid, up.secret)
        except upstream.UpstreamError as e:
            log.warning("session %s: cancel could not reach upstream: %s", session.id, e)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.end_reason = "gateway shutting down"
            if session.upstream is not None:
                session.upstream.writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
