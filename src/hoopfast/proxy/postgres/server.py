"""The PostgreSQL listener: accepts clients, owns the sessions, and routes
CancelRequests to the session that owns the key."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import ssl
from pathlib import Path

from hoopfast.approvals import Approvals
from hoopfast.config import Connection, GatewayConfig, load_config
from hoopfast.errors import ConfigurationError
from hoopfast.identity.tokens import TokenValidator
from hoopfast.masking.catalog import CatalogCache
from hoopfast.masking.rules import every_detector
from hoopfast.policy.analysis import Analyst
from hoopfast.policy.guard import Policy
from hoopfast.proxy.postgres import startup, upstream
from hoopfast.proxy.postgres.session import PgSession
from hoopfast.recording.recorder import Recorder
from hoopfast.settings import Settings
from hoopfast.telemetry import Metrics, Tracing

log = logging.getLogger("hoopfast.server")


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    # PostgreSQL 17's: required of a direct TLS handshake (startup), and
    # offered to libpq 17's on SSLRequest too.
    context.set_alpn_protocols([startup.ALPN])
    return context


class PgGateway:
    def __init__(
        self, settings: Settings, config: GatewayConfig, validator: TokenValidator
    ) -> None:
        self.settings = settings
        self.config = config
        self.policy = Policy(config)
        self.validator = validator
        self.ssl_context = server_ssl_context(settings)
        #: Every session, from accept to close.
        self.active: set[PgSession] = set()
        #: Sessions past startup, by the cancel key (pid) the client was given.
        self.by_key: dict[int, PgSession] = {}
        #: (upstream host, port, backend pid) -> the pid the client was given.
        self._by_upstream: dict[tuple[str, int, int], int] = {}
        self._server: asyncio.Server | None = None
        #: Column catalogs of the upstreams, for masking.
        self.catalogs = CatalogCache()
        # The masking key when the configuration names none: masked values
        # join within this process only.
        self._process_mask_key = secrets.token_bytes(32)
        self._recorder: Recorder | None = None
        #: Reviews and access grants; None only when embedded without a store
        #: (statements sent to review are then refused).
        self.approvals: Approvals | None = None
        self.metrics = Metrics()
        #: Off unless OTEL_TRACES_EXPORTER says otherwise (hoopfast.serve).
        self.tracing = Tracing(None)
        #: Bound parameter values reach the trail through every detector.
        self.param_mask = every_detector(self._process_mask_key)
        #: Statements without a verdict are analysed off the event loop.
        self.analyst = Analyst(settings.analysis_timeout)

    @property
    def recorder(self) -> Recorder | None:
        """Where sessions record their trails; None only with recording off."""
        return self._recorder

    @recorder.setter
    def recorder(self, recorder: Recorder | None) -> None:
        self._recorder = recorder
        if recorder is not None:
            recorder.full_watchers.append(self._recording_full_changed)

    def _recording_full_changed(self, full: bool) -> None:
        for session in list(self.active):
            session.recording_full_changed()

    def mask_key(self, connection: Connection) -> bytes:
        """The HMAC key of the hash and fake strategies on ``connection``.
        Raises ConfigurationError when the configured secret is unreadable."""
        masking = connection.masking
        if masking is None or masking.key is None:
            return self._process_mask_key
        key = masking.key.resolve().encode("utf-8")
        if len(key) < 32:
            raise ConfigurationError(
                f"the masking key ({masking.key.describe()}) is under 32 bytes"
            )
        return key

    def reload(self, config: GatewayConfig) -> None:
        """Swap in a new configuration, atomically: new sessions use it at
        once, open sessions at their next statement (a session whose access
        it removes is ended). The identity section and the listener are
        read at start only."""
        if config.identity != self.config.identity:
            log.warning("identity settings changed: they take effect after a restart")
        self.config = config
        self.policy = Policy(
            config, self.policy.version + 1, classifications=self.policy.classifications
        )
        for session in self.active:
            session.policy_changed()
        log.info("configuration reloaded (policy version %d)", self.policy.version)

    def reload_file(self, path: Path) -> bool:
        """Reload from ``path``; a file that does not validate changes
        nothing (the current policy stays) and says why in the log."""
        try:
            config = load_config(path)
        except ConfigurationError as e:
            log.error("configuration reload failed; keeping the current configuration: %s", e)
            return False
        self.reload(config)
        return True

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
        session.task = asyncio.current_task()
        self.active.add(session)
        try:
            await session.run()
        finally:
            self.active.discard(session)

    def register(self, session: PgSession) -> tuple[int, bytes]:
        """A fresh cancel key for the session: the client never learns the
        upstream's, so it cannot cancel anyone else's query directly."""
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self.by_key:
                break
        self.by_key[pid] = session
        if session.upstream is not None and session.connection is not None:
            conn = session.connection
            self._by_upstream[(conn.host, conn.port, session.upstream.pid)] = pid
        return pid, secrets.token_bytes(4)

    def unregister(self, session: PgSession) -> None:
        if self.by_key.get(session.pid) is session:
            del self.by_key[session.pid]
            if session.upstream is not None and session.connection is not None:
                conn = session.connection
                self._by_upstream.pop((conn.host, conn.port, session.upstream.pid), None)

    def gateway_pid(self, connection: Connection, upstream_pid: int) -> int | None:
        """The pid a client of this gateway knows the upstream backend
        ``upstream_pid`` of ``connection``'s server by, if it is one of ours."""
        return self._by_upstream.get((connection.host, connection.port, upstream_pid))

    async def cancel(self, pid: int, secret: bytes) -> None:
        session = self.by_key.get(pid)
        # Compare in constant time; a wrong key is ignored silently, as PostgreSQL does.
        if session is None or not hmac.compare_digest(session.secret, secret):
            log.info("cancel request for unknown key ignored")
            return
        if session.cancel_review():
            # The statement waits for approval and never reached the
            # upstream: cancelling withdraws the review instead.
            log.info("session %s: cancel request withdrew a held statement", session.id)
            return
        up, conn = session.upstream, session.connection
        if up is None or conn is None:
            return
        log.info("session %s: cancel request forwarded", session.id)
        try:
            await upstream.send_cancel(conn, up.pid, up.secret)
        except upstream.UpstreamError as e:
            log.warning("session %s: cancel could not reach upstream: %s", session.id, e)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, tell every client why, and wait for the sessions."""
        if self._server is not None:
            self._server.close()
        for session in list(self.active):
            session.shutdown()
        await self._until_idle(timeout)
        # Whatever did not finish by itself (e.g. stuck connecting upstream) is
        # cancelled; each session's own cleanup still runs.
        for session in list(self.active):
            if session.task is not None:
                session.task.cancel()
        await self._until_idle(5.0)

    async def _until_idle(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
