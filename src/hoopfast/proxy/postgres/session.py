"""One client session through the gateway, in three phases:

1. startup and authentication (:mod:`.startup`), then the upstream
   connection with the gateway's credential (:mod:`.upstream`);
2. the relay: two pumps move framed bytes between the sockets;
3. shutdown: both sockets closed, the cancel key released.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from hoopfast import core
from hoopfast.approvals.service import grantable
from hoopfast.config import UNMASKED_ROLE, Connection
from hoopfast.core import Framer, FramingError, Pump
from hoopfast.errors import ConfigurationError
from hoopfast.identity.principal import Principal
from hoopfast.masking import copyout
from hoopfast.masking.catalog import CATALOG_SQL, TYPES_SQL, Catalog
from hoopfast.masking.rules import masks_for
from hoopfast.policy.access import Access, access_to, roles_of
from hoopfast.policy.classify import Classification
from hoopfast.policy.guard import (
    ALLOW,
    CLIENT_ENCODINGS,
    Rules,
    Verdict,
    clean_encoding_name,
    function_call_classification,
    merge,
)
from hoopfast.proxy.postgres import messages as m
from hoopfast.proxy.postgres import params, resultmask, startup, trail, upstream
from hoopfast.proxy.postgres.resultmask import ResultMasker, Unmaskable
from hoopfast.proxy.postgres.review import CANCELLED, ReviewHold, bound_values
from hoopfast.proxy.postgres.trail import Statement, Trail
from hoopfast.proxy.postgres.upstream import Upstream, UpstreamError, UpstreamRefused
from hoopfast.recording.recorder import RecordingUnavailable, SessionRecording
from hoopfast.telemetry import NOOP_SESSION_SPAN, SessionSpan, SpanTotals

if TYPE_CHECKING:
    from hoopfast.proxy.postgres.server import PgGateway

log = logging.getLogger("hoopfast.session")

#: Startup parameters that are the gateway's to set, not the client's.
_NOT_FORWARDED = frozenset({"user", "database", "replication"})

# Messages each direction hands to the session instead of passing through:
# from the client, every message that carries SQL (or runs a function).
_CLIENT_INTERCEPT = bytes([m.TERMINATE, m.QUERY, m.PARSE, m.FUNCTION_CALL])
_CLIENT_INTERCEPT_UNGUARDED = bytes([m.TERMINATE])  # HOOPFAST_GUARDRAILS=false
#: Messages that start running SQL: refused while the trail cannot be written.
_STATEMENTS = frozenset({m.QUERY, m.PARSE, m.BIND, m.FUNCTION_CALL})
_SERVER_INTERCEPT = bytes([m.ERROR_RESPONSE, m.NOTIFICATION_RESPONSE])
#: The server's answers that settle Parses, which come here while the
#: session follows them (_follow_parses) beside ErrorResponse.
_SETTLING = bytes([m.PARSE_COMPLETE, m.READY_FOR_QUERY])
# Masked sessions get DataRows and CopyData a chunk's worth at a time.
_SERVER_BATCH = bytes([m.DATA_ROW, m.COPY_DATA])


class PgSession:
    def __init__(
        self, gateway: PgGateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.gateway = gateway
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.client_address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        #: Unique across replicas and restarts: recordings are keyed by it.
        self.id = secrets.token_hex(12)
        self.principal: Principal | None = None
        self.connection_name = ""
        self.connection: Connection | None = None
        self.upstream: Upstream | None = None
        self.access: Access | None = None
        #: The task running this session (set by the server, for shutdown).
        self.task: asyncio.Task[None] | None = None
        # The cancel key the client sees; the upstream's own key stays here.
        self.pid = 0
        self.secret = b""
        self.started = time.monotonic()
        self.end_reason = "unknown"
        self._client_pump: Any = None
        self._server_pump: Any = None
        self._open_sides = 0
        self._done: asyncio.Future[None] | None = None
        self._terminating = False
        self._upstream_sent_fatal = False
        self._expiry: asyncio.TimerHandle | None = None
        #: The statement policy for this person on this connection.
        self.rules: Rules | None = None
        #: Prepared statements (SQL PREPARE and named Parse) by name, with
        #: what their bodies do, so EXECUTE is judged by its body.
        self._prepared: dict[str, Classification] = {}
        #: Refused statements whose stand-in error has not come back yet:
        #: token -> verdict. See _refuse.
        self._refusals: OrderedDict[bytes, Verdict] = OrderedDict()
        self.refused = 0
        #: After a reload that changed the rules: prepared statements the new
        #: rules refuse, and whether the unnamed one predates it.
        self._revoked: set[str] = set()
        self._stale_unnamed = False
        #: Whether _remember ever forgot a name (past _MAX_PREPARED), and so,
        #: after such a reload, whether a Bind of a name it does not know may
        #: be of a statement prepared before it (a reload cannot revoke what
        #: is forgotten).
        self._forgot = False
        self._stale_forgotten = False
        #: Names prepared by SQL PREPARE: a protocol Bind can run them too
        #: (one namespace), so it is judged as an EXECUTE would be (_on_bind).
        self._sql_prepared: set[str] = set()
        #: Python codec of the session's client encoding.
        self._codec = "utf-8"
        #: The server's encoding where protocol names convert to it before
        #: the server keys them (core.name_key); None where nothing converts.
        self._server_codec: str | None = None
        #: Masks results, when the connection has masking rules for this person.
        self._masker: ResultMasker | None = None
        #: Whether statements are judged (HOOPFAST_GUARDRAILS, which a masked
        #: session ignores: COPY out of masked tables is refused there).
        self._guarded = True
        self._client_types = _CLIENT_INTERCEPT
        #: Server messages this session handles itself (_SETTLING aside).
        self._server_types = _SERVER_INTERCEPT
        #: The audit trail of this session (None when recording is off; one
        #: that records nothing on connections with approvals, see _relay).
        self._recording: SessionRecording | None = None
        self._trail: Trail | None = None
        #: The last statement judged: its verdict and its text, for the trail.
        self._verdict: Verdict = ALLOW
        self._sql: str | None = None
        self.application_name = ""
        self.tls: dict[str, str] | None = None
        self._span: SessionSpan = NOOP_SESSION_SPAN
        self._counted = False
        self._tally: core.Tally | None = None
        #: The client message being handled (a statement held for review is
        #: replayed from it).
        self._message: tuple[int, bytes] = (0, b"")
        #: The statement held for a second person's approval, if any; while
        #: it is replayed, the outcome stands in for the review verdict.
        self._review_hold: ReviewHold | None = None
        self._review_outcome: Verdict | None = None
        self._held_now = False
        #: How many times a message was held (_replay tells by it whether
        #: the message it replays was held again).
        self._holds = 0
        #: A statement analysed off the event loop (its text and what it
        #: does), for the replay of the message held meanwhile; and the task.
        self._analysed: tuple[str, Classification] | None = None
        self._analysis: asyncio.Task[None] | None = None
        self._paused_for_analysis = False
        #: A CancelRequest withdrew the statement held for its analysis.
        self._cancelled: Verdict | None = None
        #: Prepared statements (by name, "" the unnamed) a review approved:
        #: they run once; after their first Bind they are spent.
        self._once: set[str] = set()
        self._spent: set[str] = set()
        #: The digest of the values approved with each of _once, if known.
        self._once_values: dict[str, str] = {}
        self._approved_values = ""
        #: Whether the bookkeeping above follows which Parses the server
        #: carried out (_follow_parses): the trail, which follows every
        #: answer, undoes what a Parse changed when the server does not carry
        #: it out. With the undo of the Parse being handled, and the name
        #: whose Parse a held Bind or Parse waits on (_wait_for_parse_of).
        self._following = False
        self._undo: Callable[[], None] | None = None
        self._waiting_for: bytes | None = None
        #: Roles granted through approved access requests: role -> until.
        self._granted: dict[str, float] = {}
        self._stop_listening: Any = None
        self._grant_timer: asyncio.TimerHandle | None = None

    # -- phase 1 ----------------------------------------------------------

    async def run(self) -> None:
        settings = self.gateway.settings
        try:
            async with asyncio.timeout(settings.pg_auth_timeout):
                ready = await self._start()
            if ready:
                await self._relay()
        except startup.StartupRefused as e:
            self.end_reason = f"refused: {e}"
            if e.message is not None:
                self.writer.write(e.message)
        except m.ProtocolViolation as e:
            self.end_reason = f"protocol violation: {e}"
            self.writer.write(m.fatal("08P01", str(e)))
        except UpstreamRefused as e:
            self.end_reason = f"upstream refused: {e}"
            self.writer.write(
                e.relayed
                or m.fatal(e.sqlstate, f"{e.message} (connection {self.connection_name!r})")
            )
        except UpstreamError as e:
            self.end_reason = f"upstream: {e}"
            self.writer.write(
                m.fatal(e.sqlstate, f"{e.message} (connection {self.connection_name!r})")
            )
        except TimeoutError:
            self.end_reason = "startup timed out"
            self.writer.write(m.fatal("08006", "startup and authentication did not finish in time"))
        except ssl.SSLError as e:
            self.end_reason = f"TLS handshake failed ({e.reason or type(e).__name__})"
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self.end_reason = f"client went away during startup ({type(e).__name__})"
        except Exception:
            log.exception("session %s: internal error", self.id)
            self.end_reason = "internal error"
            self.writer.write(m.fatal("XX000", "internal error in the gateway"))
        finally:
            await self._close()

    async def _start(self) -> bool:
        gw = self.gateway
        request = await startup.negotiate(
            self.reader, self.writer, gw.ssl_context, gw.settings.pg_max_startup_packet
        )
        if isinstance(request, startup.CancelTarget):
            self.end_reason = "cancel request"
            await gw.cancel(request.pid, request.secret)
            return False
        if len(gw.active) > gw.settings.pg_max_client_connections:
            # Checked after the startup packet, as PostgreSQL does, so the
            # client reads the error in the encryption it asked for.
            raise startup.StartupRefused(
                m.fatal("53300", "sorry, too many clients already"), "too many clients"
            )
        self.principal = await startup.authenticate(
            self.reader, self.writer, request, gw.validator, gw.settings.allow_cleartext_without_tls
        )
        self.connection_name = request.database
        conn = gw.config.connections.get(request.database)
        if conn is None:
            raise startup.StartupRefused(
                m.fatal("3D000", f'connection "{request.database}" does not exist'),
                "unknown connection",
            )
        if gw.approvals is not None:
            self._granted = gw.approvals.granted(self.principal.subject, request.database)
        access = access_to(self.principal, conn, gw.config, self._granted)
        if access is None:
            raise startup.StartupRefused(
                m.fatal(
                    "28000",
                    f'user "{self.principal.subject}" has no access to connection '
                    f'"{request.database}"',
                ),
                "no role grants this connection",
            )
        self.connection = conn
        self.access = access
        self.rules = gw.policy.rules_for(request.database, access.roles)
        assert self.rules is not None  # access_to found a grant
        try:
            requested = params.requested_settings(request.params)
        except params.OptionsError as e:
            raise startup.StartupRefused(
                m.fatal("42501", f"startup options refused: {e}"), "startup options refused"
            ) from None
        verdict = self.rules.check_startup(requested)
        if verdict.action != "allow":
            raise startup.StartupRefused(
                m.fatal(
                    "42501",
                    f"startup parameter refused by hoopfast policy (rule {verdict.rule}): "
                    f"{verdict.message}",
                ),
                f"startup parameter refused ({verdict.rule})",
            )
        try:
            password = conn.password.resolve() if conn.password else None
        except ConfigurationError as e:
            log.error("session %s: %s", self.id, e)
            raise UpstreamError(
                "08004", "the gateway has no credential for this connection"
            ) from None
        forwarded = {k: v for k, v in request.params.items() if k not in _NOT_FORWARDED}
        # The analysis decodes statements in the client encoding, pinned here
        # (SET client_encoding is refused; RESET returns to this). Encodings it
        # cannot read were refused above; SQL_ASCII (no conversion at all)
        # becomes UTF8, which libpq and drivers follow from ParameterStatus.
        encoding = clean_encoding_name(requested.get("client_encoding", "UTF8"))
        self._codec = CLIENT_ENCODINGS[encoding]
        forwarded["client_encoding"] = (
            "UTF8" if self._codec == "utf-8" else requested["client_encoding"]
        )
        # Both lexers assume it (E'...' is the only string with backslash
        # escapes); SET of it is refused, and RESET returns to this value.
        forwarded["standard_conforming_strings"] = "on"
        if access.read_only:
            # Set after the client's own parameters (and after `options`, which
            # PostgreSQL applies first), so the client cannot override it here.
            forwarded["default_transaction_read_only"] = "on"
        try:
            async with asyncio.timeout(gw.settings.pg_upstream_connect_timeout):
                self.upstream = await upstream.connect(conn, forwarded, password)
        except TimeoutError:
            raise UpstreamError("08001", "timed out connecting to the upstream database") from None
        self._server_codec = _server_codec(self.upstream.parameters, self._codec)
        await self._start_masking(conn, access)
        self.application_name = request.params.get("application_name", "")
        self._start_recording(request.tls, request.params)
        self.pid, self.secret = gw.register(self)
        up = self.upstream
        self.writer.write(
            b"".join(
                [
                    m.authentication(m.AUTH_OK),
                    *up.parameter_messages,
                    *up.notices,
                    m.backend_key_data(self.pid, int.from_bytes(self.secret, "big")),
                    m.ready_for_query(b"I"),
                ]
            )
        )
        log.info(
            "session %s: %s connected to %s from %s (tls=%s)",
            self.id,
            self.principal.subject,
            self.connection_name,
            self.client_address,
            request.tls,
        )
        return True

    async def _start_masking(self, conn: Connection, access: Access) -> None:
        """Masking for this person on this connection, with the column
        catalog read from the upstream (reused by the connection's sessions
        for masking.catalog_ttl). Fails closed: no catalog, no session."""
        if conn.masking is None:
            return
        try:
            key = self.gateway.mask_key(conn)
        except ConfigurationError as e:
            log.error("session %s: %s", self.id, e)
            raise startup.StartupRefused(
                m.fatal("08004", "masking is misconfigured on this connection"),
                "masking key unavailable",
            ) from None
        masks = masks_for(conn.masking, access.roles, key, access.unmasked)
        if masks is None:
            return
        up = self.upstream
        assert up is not None
        max_message = self.gateway.settings.pg_max_message

        async def load() -> Catalog:
            columns = await upstream.fetch_rows(up, CATALOG_SQL, max_message)
            types = await upstream.fetch_rows(up, TYPES_SQL, max_message)
            return Catalog.from_rows(columns, types)

        catalog = await self.gateway.catalogs.get(
            self.connection_name, conn.masking.catalog_ttl, load
        )
        self._masker = ResultMasker(masks, catalog)

    def _start_recording(self, tls: bool, params: dict[str, str]) -> None:
        """Open this session's audit trail and its trace span; no trail, no
        session (fail closed) unless the gateway runs with recording off.
        ``params``: the client's startup parameters."""
        gw = self.gateway
        principal = self.principal
        assert principal is not None
        # Through the detectors, as every startup value (the client chooses
        # it: a token pasted there must not reach the trail or a span).
        application_name = gw.param_mask.mask_text(self.application_name)
        self._span = gw.tracing.start_session(
            self.id,
            principal.subject,
            self.connection_name,
            self.client_address,
            application_name or None,
        )
        gw.metrics.session_started(self.connection_name)
        gw.metrics.watch(self)
        self._counted = True
        recorder = gw.recorder
        if recorder is None and not self._span.recording:
            return
        if tls:
            ssl_object = self.writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                cipher = ssl_object.cipher()
                self.tls = {
                    "version": ssl_object.version() or "",
                    "cipher": cipher[0] if cipher else "",
                }
        trace_id, span_id = self._span.context_ids()
        try:
            if recorder is not None:
                self._recording = recorder.open_session(
                    self.id,
                    principal.subject,
                    self.connection_name,
                    {
                        "groups": list(principal.groups),
                        "token_id": principal.token_id,
                        "client_address": self.client_address,
                        "application_name": application_name,
                        # What the client sent at startup (options,
                        # DateStyle, ...): what the session ran under, but
                        # for what the gateway pins (docs/guardrails.md);
                        # values through the detectors, as parameters are
                        # (`options` can set any custom setting).
                        "startup": {
                            key: self.gateway.param_mask.mask_text(value)
                            for key, value in params.items()
                        },
                        "tls": self.tls,
                        "roles": list(self.access.roles) if self.access else [],
                        "trace_id": trace_id,
                        "span_id": span_id,
                    },
                )
        except RecordingUnavailable as e:
            if self.gateway.settings.recording_on_full == "refuse":
                raise startup.StartupRefused(
                    m.fatal("53000", f"the session cannot be recorded: {e}"),
                    "recording unavailable",
                ) from None
            log.critical("session %s: running UNRECORDED: %s", self.id, e)
            return
        settings = self.gateway.settings
        # The trail counts every statement for the metrics and the span's
        # totals (compiled: no Python call per statement); _statement_done
        # only adds the span's events, and only while it takes them.
        self._tally = core.Tally(self.gateway.metrics.buckets)
        self._trail = Trail(
            self._codec,
            trail.Caps(
                settings.record_result_rows,
                settings.record_result_bytes,
                settings.record_session_result_bytes,
            ),
            self.gateway.param_mask.mask_text,
            self._statement_done if self._span.recording else None,
            # The trail records each statement itself, before _statement_done
            # (but for one refused because the spool is full: it never ran,
            # and recording it would only grow the spool).
            self._recording.log if self._recording is not None else None,
            _RECORDING_FULL,
            self._tally,
        )
        self._trail.server_codec = self._server_codec

    def _statement_done(self, st: Statement) -> None:
        """A statement's answer is complete (its last message not yet
        forwarded; the trail recorded and counted it): an event on the
        session's span, until the span takes no more."""
        sqlstate = st.error["sqlstate"] if st.error else None
        more = self._span.statement(
            st.verdict.action,
            st.verdict.rule,
            st.rows,
            st.server_bytes,
            st.duration,
            sqlstate,
            None,
        )
        if not more and self._trail is not None:
            self._trail.done = None

    # -- what the metrics read (hoopfast.telemetry.metrics.Watched) ----------

    def metric_tally(self) -> core.Tally | None:
        return self._tally

    def bytes_uncounted(self) -> tuple[int, int]:
        """Bytes each side sent: the metrics' totals get them when the
        session ends, and read them here until then."""
        client = self._client_pump.bytes_in if self._client_pump is not None else 0
        server = self._server_pump.bytes_in if self._server_pump is not None else 0
        return client, server

    # -- phase 2 ------------------------------------------------------------

    async def _relay(self) -> None:
        assert self.upstream is not None
        settings = self.gateway.settings
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        # Stream writers sit on full (read/write) transports.
        client_transport = cast(asyncio.Transport, self.writer.transport)
        server_transport = cast(asyncio.Transport, self.upstream.writer.transport)
        high = settings.pg_write_high_water
        client_transport.set_write_buffer_limits(high=high, low=high // 4)
        server_transport.set_write_buffer_limits(high=high, low=high // 4)

        if (
            self._terminating
            or client_transport.is_closing()
            or self.reader.at_eof()
            or self.reader.exception() is not None
        ):
            # The client left (or the gateway began shutting down) while the
            # upstream was connecting: its connection_lost went to the stream
            # protocol, so a pump attached now would wait for it forever.
            self.end_reason = "client went away during upstream connect"
            return
        max_message = settings.pg_max_message
        self._guarded = settings.guardrails or self._masker is not None
        server_types = _SERVER_INTERCEPT
        if self._guarded:
            self._client_types = _CLIENT_INTERCEPT
        else:
            self._client_types = _CLIENT_INTERCEPT_UNGUARDED
        if self._masker is not None:
            self._client_types += resultmask.CLIENT_TYPES
            server_types += resultmask.SERVER_TYPES
        if self._trail is not None and not self._guarded:
            self._client_types = _CLIENT_INTERCEPT
        assert self.connection is not None
        if self._guarded and self._trail is None and self.connection.approvals is not None:
            # Where statements can be approved for one run, the server's
            # answers settle the Parses (_follow_parses), and the trail is
            # what follows them: an unrecorded session gets one that records
            # and keeps nothing.
            self._trail = Trail(
                self._codec, trail.Caps(0, 0, 0), self.gateway.param_mask.mask_text, None
            )
            self._trail.server_codec = self._server_codec
        self._server_types = server_types
        self._client_pump = Pump(
            Framer(max_message, self._client_types),
            self,
            FramingError,
            core.fingerprint if self._guarded else None,
        )
        self._client_pump.hold_limit = settings.pg_max_held_bytes
        self._route_client()
        self._server_pump = Pump(
            Framer(max_message, server_types, _SERVER_BATCH), self, FramingError
        )
        recorder = self.gateway.recorder
        if self._recording is not None and recorder is not None:
            # A statement's completion reaches the client after its record.
            self._server_pump.barrier = recorder.journal
        self._route_server()
        # Bytes the stream readers already buffered belong to the relay now.
        leftovers = [
            (self._client_pump, _take(self.reader)),
            (self._server_pump, _take(self.upstream.reader)),
        ]
        self._open_sides = 2
        self._client_pump.attach(client_transport, server_transport)
        self._server_pump.attach(server_transport, client_transport)
        for pump, data in leftovers:
            if data:
                pump.data_received(data)
        # Defensive: a stream reader pauses its transport when its buffer
        # passes its limit, and after the swap nothing would resume it. (Not
        # seen with uvloop's transports in tests/test_relay.py, which sends a
        # 300 KB burst before login completes; cheap to guarantee anyway.)
        for transport in (client_transport, server_transport):
            if not transport.is_closing() and not transport.is_reading():
                transport.resume_reading()
        self._schedule_expiry(loop)
        self._follow_grants()
        try:
            await self._done
        finally:
            if self._expiry is not None:
                self._expiry.cancel()

    def _schedule_expiry(self, loop: asyncio.AbstractEventLoop) -> None:
        """A session never outlives the token that opened it: it ends when the
        gateway would start refusing that token (exp + the identity leeway for
        clock skew), plus the configured grace, none by default."""
        assert self.principal is not None
        leeway = self.gateway.config.identity.leeway
        remaining = self.principal.expires_at + leeway - time.time()
        delay = max(0.0, remaining + self.gateway.settings.session_expiry_grace)
        self._expiry = loop.call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self.end_reason = "token expired"
        self._terminating = True
        self._fail_client(
            "28000",
            "terminating connection because the token expired",
            hint="Obtain a new token and reconnect.",
        )

    def pump_message(self, pump: Any, type_code: int, message: bytes) -> bytes | None:
        """An intercepted message; returns what to forward in its place (the
        pump writes it together with the rest of the chunk)."""
        if pump is self._client_pump:
            forward = self._client_message(type_code, message)
            if self._held_now:
                # Held (for review, or a Bind for its Parse's answer): the
                # trail and the masker see it when it is replayed.
                self._held_now = False
                return None
            undo, self._undo = self._undo, None
            if self._trail is not None:
                self._trail_client(type_code, message, undo)
            if forward and self._masker is not None:
                forward = self._masker.client_message(forward)
            return forward
        if type_code == m.ERROR_RESPONSE:
            if self._refusals:
                message = self._refusal_error(message)
            try:
                fields = dict(core.decode_fields(message))
            except ValueError as e:
                self.pump_violation(pump, e)
                return None
            if fields.get("V", fields.get("S")) in ("FATAL", "PANIC"):
                self._upstream_sent_fatal = True
                if self.end_reason == "unknown":
                    # (Its text through the detectors: it may quote values.)
                    text = self.gateway.param_mask.mask_text(fields.get("M", "")[:200])
                    self.end_reason = f"upstream ended the session: {fields.get('C', '')} {text}"
        elif type_code == m.NOTIFICATION_RESPONSE:
            message = self._notification(message)
        if self._masker is not None:
            try:
                masked = self._masker.server_message(type_code, message)
            except Unmaskable as e:
                self.end_reason = f"unmaskable result: {e}"
                self._terminating = True
                self._fail_client("0A000", f"the gateway cannot mask this result: {e}")
                return None
            except ValueError as e:  # a malformed DataRow or CopyData
                self.pump_violation(pump, e)
                return None
            if not masked:
                return masked
            message = masked
        if self._trail is not None:
            self._trail_server(type_code, message)
            waiting = self._waiting_for
            if waiting is not None and not self._trail.unsettled(waiting):
                self._waiting_for = None
                asyncio.get_running_loop().call_soon(self._replay, None)
        return message

    def _recording_refused(self) -> bool:
        recorder = self.gateway.recorder
        return (
            recorder is not None
            and recorder.full
            and self.gateway.settings.recording_on_full == "refuse"
        )

    def _trail_client(
        self, type_code: int, message: bytes, undo: Callable[[], None] | None = None
    ) -> None:
        """The client's message, with the verdict and text _client_message
        just judged (or found it could not judge); a Parse's ``undo``, see
        _bookkeep."""
        t = self._trail
        assert t is not None
        if type_code == m.QUERY or type_code == m.PARSE:
            sql = self._sql
            if sql is None:
                sql = _statement_text(message, type_code, self._codec)
            if type_code == m.QUERY:
                t.query(sql, self._verdict)
            else:
                end = message.find(b"\0", 5)
                t.parse(message[5:end] if end >= 0 else b"", sql, self._verdict, message, undo)
        elif type_code == m.FUNCTION_CALL:
            oid = int.from_bytes(message[5:9], "big") if len(message) >= 9 else 0
            t.function_call(oid, self._verdict)
        elif type_code == m.BIND:
            # A Bind the gateway refused (spool full, prepared before a reload).
            refused = self._verdict if self._verdict.action != "allow" else None
            t.client_message(type_code, message, refused)
        elif type_code != m.TERMINATE:
            t.client_message(type_code, message)

    def _trail_server(self, type_code: int, message: bytes) -> None:
        t = self._trail
        assert t is not None
        if self._masker is None or message[0] == type_code:
            t.server_message(type_code, message)
            return
        # The masker answered with other messages (COPY served from a
        # SELECT): the trail follows what the client sees.
        for code, part in _split_messages(message):
            t.server_message(code, part)

    def _client_message(self, type_code: int, message: bytes) -> bytes | None:
        if type_code == m.TERMINATE:
            self._terminating = True
            self.end_reason = "client terminated"
            return message
        self._message = (type_code, message)
        self._sql = None
        self._verdict = ALLOW if self._guarded else _UNGUARDED
        if type_code in _STATEMENTS and self._trail is not None and self._recording_refused():
            # (Bind too: a statement prepared earlier runs without a Parse.)
            if type_code == m.PARSE:
                end = message.find(b"\0", 5)
                return self._refuse(message[5:end] if end >= 0 else b"", _RECORDING_FULL)
            if type_code == m.BIND:
                return self._refuse(b"", _RECORDING_FULL, kind=m.BIND)
            return self._refuse(None, _RECORDING_FULL)
        if not self._guarded:
            return message
        if type_code == m.QUERY:
            return self._on_query(message)
        if type_code == m.PARSE:
            return self._on_parse(message)
        if type_code == m.FUNCTION_CALL:
            return self._on_function_call(message)
        if type_code == m.BIND:
            return self._on_bind(message)
        return message

    # -- guardrails -----------------------------------------------------------

    def _current_rules(self) -> Rules | None:
        """The rules under the gateway's current policy; None when a reload
        took this person's access away (the session is then ending)."""
        rules = self.rules
        assert rules is not None
        if rules.version != self.gateway.policy.version:
            self.policy_changed()
            if self._terminating:
                return None
            rules = self.rules
        return rules

    def _use_fast_path(self) -> None:
        """Let the client pump pass statements the rules already allowed
        without calling back here: only under the current policy, for UTF-8
        sessions (the pump reads the text as UTF-8), and not while the next
        unnamed Parse must be seen here (see policy_changed)."""
        rules = self.rules
        assert rules is not None
        usable = (
            self._masker is None  # the masker must see every Query
            and self._codec == "utf-8"
            and not (self._trail is not None and self._recording_refused())
            and not self._stale_unnamed
            and not self._following  # Parses must come here (_bookkeep)
            and rules.version == self.gateway.policy.version
        )
        self._client_pump.fast = rules.fast if usable else None

    def policy_changed(self, *, force: bool = False) -> None:
        """A reload (called for every session at once, and again lazily by
        a session that was still starting). A session whose person lost the
        grant ends now. If the rules for it changed, statements prepared
        under the old ones must not run unjudged: named ones the new rules
        refuse are revoked, and the unnamed statement (which the fast path
        may have passed without this session seeing it) counts as stale
        until the client parses a new one; Binds of either are refused
        (``_on_bind``)."""
        pump = self._client_pump
        if pump is None or self.rules is None or self.principal is None or self._terminating:
            return
        pump.fast = None
        policy = self.gateway.policy
        fresh = policy.rules_for(self.connection_name, self._roles())
        if fresh is None:
            self.end_reason = "access grant ended" if force else "access revoked by a policy reload"
            self._terminating = True
            self._fail_client("28000", f'access to connection "{self.connection_name}" was revoked')
            return
        conn = policy.config.connections[self.connection_name]
        assert self.connection is not None
        if conn.masking != self.connection.masking or (
            conn.masking is not None and fresh.roles != self.rules.roles
        ):
            # Simple and closed: a session never runs on with masking it was
            # not set up for (the catalog, the protocol tracking).
            self.end_reason = "masking rules changed by a policy reload"
            self._terminating = True
            self._fail_client(
                "57P01",
                "terminating connection because the masking rules changed",
                hint="Reconnect.",
            )
            return
        if not fresh.same_grants(self.rules):
            if self._trail is None and self._guarded:
                # Unrecorded, on a connection without approvals: nothing
                # follows the server's answers, so a Parse the server skips
                # (after an error, up to Sync) would lift a revocation below
                # and let a statement the new rules refuse run. Closed and
                # simple, as for masking: the session ends; a new one is
                # judged by the new rules from its first statement.
                self.end_reason = "grants changed by a policy reload"
                self._terminating = True
                self._fail_client(
                    "57P01",
                    "terminating connection because the access rules changed",
                    hint="Reconnect.",
                )
                return
            self._follow_parses()
            self._revoked |= {
                name
                for name, c in self._prepared.items()
                if fresh.check_classification(c).action != "allow"
            }
            self._stale_unnamed = True
            self._stale_forgotten = self._forgot
        self.rules = fresh
        self._route_client()

    def _route_client(self) -> None:
        """Which client messages come here, which go straight to the trail,
        and whether the fast path is on. Bind comes here only while some
        prepared statement must be judged again, or while the trail refuses
        statements (the common case pays nothing)."""
        watch = (
            self._following
            or self._stale_unnamed
            or self._stale_forgotten
            or bool(self._revoked or self._once or self._spent or self._sql_prepared)
            or (self._trail is not None and self._recording_refused())
        )
        owned = self._client_types + bytes([m.BIND]) if watch else self._client_types
        pump = self._client_pump
        t = self._trail
        if t is None:
            pump.framer.set_intercept(owned)
        else:
            observed = _without(trail.CLIENT_TYPES, owned)
            pump.framer.set_intercept(owned + observed)
            pump.observe(observed, t.client_run, t.fast_statement)
        if self._guarded:
            self._use_fast_path()

    def _route_server(self) -> None:
        """Which server messages come here and which go straight to the
        trail (what only the trail follows)."""
        owned = self._server_types + (_SETTLING if self._following else b"")
        pump = self._server_pump
        if self._trail is None:
            pump.framer.set_intercept(owned)
            return
        observed = _without(trail.SERVER_TYPES, owned)
        pump.framer.set_intercept(owned + observed)
        pump.observe(observed, self._trail.server_run)

    def _follow_parses(self) -> None:
        """From now on, follow the server's answers to Parse: something a
        Parse changes must be undone if the server does not carry it out
        (it fails, or is skipped after an earlier error up to Sync: a Query
        sent in between included). The trail follows every answer, so it
        knows; it calls the Parse's undo (_bookkeep), and the answers that
        settle Parses come here too, to release a Bind held for one
        (_on_bind). Until now nothing could be undone (no revocation,
        nothing approved for one run), so the session ran on the relay's
        fast path, which passes Parses without calling here. The fast path
        stays off after."""
        if self._following or self._trail is None or not self._guarded:
            return
        self._following = True
        self._route_server()
        self._route_client()

    def _wait_for_parse_of(self, name: bytes) -> bool:
        """Hold the message being handled (a Bind, or a Parse) while a Parse
        of ``name`` from an earlier Sync group is unanswered, until the
        server answers it: whether the statement a Bind binds is the one
        the gateway judged depends on that answer, and so does what a Parse
        changes (its undo restores what was before it: run after a later
        Parse of the name had changed the bookkeeping, it would undo that
        one's change too, an approval for one run among them)."""
        t = self._trail
        if not self._following or t is None or not t.unsettled(name):
            return False
        self._held_now = True
        self._holds += 1
        self._waiting_for = name
        self._client_pump.hold()
        return True

    def recording_full_changed(self) -> None:
        """The recorder started (or stopped) refusing: statements must (or
        may again) come here to be refused."""
        if self._client_pump is not None and self._trail is not None:
            self._route_client()

    def _statement_key(self, name: bytes) -> str:
        """A statement name from a protocol message (Parse, Bind) as the
        server keys it: converted to the server's encoding, then its first
        63 bytes (NAMEDATALEN - 1; the prepared statements' hash table
        compares no more), so names that agree that far are one statement,
        and the session's bookkeeping of approvals and revocations must
        treat them as one. (SQL names are cut by the scanner, at a character
        boundary: classify.statement_name.)"""
        key = core.name_key(name, self._codec, self._server_codec)
        return key.decode(self._server_codec or "utf-8", "surrogateescape")

    def _parse_name(self, message: bytes) -> str:
        """A Parse's statement name, as the server keys it (_statement_key)."""
        end = message.find(b"\0", 5)
        return self._statement_key(message[5 : end if end >= 0 else 5])

    def _on_bind(self, message: bytes) -> bytes | None:
        portal_end = message.find(b"\0", 5)
        end = message.find(b"\0", portal_end + 1) if portal_end >= 0 else -1
        if end < 0:
            return message  # malformed: the server refuses it
        name = message[portal_end + 1 : end]
        key = self._statement_key(name)
        if self._wait_for_parse_of(name):
            return b""
        if (
            (not name and self._stale_unnamed)
            or (name and key in self._revoked)
            or (name and self._stale_forgotten and key not in self._prepared)
        ):
            return self._refuse(b"", _PREPARED_BEFORE_RELOAD, kind=m.BIND)
        if key in self._sql_prepared:
            rules = self._current_rules()
            if rules is None:
                return None  # (the session is ending: nothing more goes out)
            refusal = self._judge_sql_prepared(key, rules)
            if refusal is not None:
                return refusal
        if key in self._spent:
            return self._refuse(b"", _APPROVED_ONCE, kind=m.BIND)
        if key in self._once:
            expected = self._once_values.pop(key, "")
            if expected:
                try:
                    values = hashlib.sha256(m.parse_bind(message).values_section).hexdigest()
                except ValueError:
                    values = ""
                if values != expected:
                    self._once.discard(key)
                    self._spent.add(key)
                    return self._refuse(b"", _OTHER_VALUES, kind=m.BIND)
            self._once.discard(key)
            self._spent.add(key)
        return message

    def _judge_sql_prepared(self, key: str, rules: Rules) -> bytes | None:
        """A Bind of a statement SQL PREPARE made: None (it runs) when an
        EXECUTE of it would be allowed without a review; else the refusal's
        stand-in (a Bind cannot be held for a review: EXECUTE is how such a
        statement is submitted)."""
        c = self._prepared.get(key)
        verdict = _FORGOTTEN if c is None else rules.check_classification(c)
        if verdict.action == "allow":
            return None
        if verdict.action == "review":
            verdict = Verdict(
                "deny",
                verdict.rule,
                "this statement was prepared with SQL PREPARE and needs approval; "
                "run it with EXECUTE to submit it",
                verdict.sqlstate,
            )
        return self._refuse(b"", verdict, kind=m.BIND)

    def _on_query(self, message: bytes) -> bytes | None:
        rules = self._current_rules()
        if rules is None:
            return None
        # The server executes the text up to the first NUL (and rejects the
        # message if anything follows it), so that is what is judged.
        end = message.find(b"\0", 5)
        if end < 0:
            return self._refuse(None, _MALFORMED)
        judged = self._judge(message[5:end], None, rules)
        return judged if isinstance(judged, bytes) else message

    def _on_parse(self, message: bytes) -> bytes | None:
        rules = self._current_rules()
        if rules is None:
            return None
        name_end = message.find(b"\0", 5)
        end = message.find(b"\0", name_end + 1) if name_end >= 0 else -1
        if end < 0:
            return self._refuse(b"", _MALFORMED)
        name = message[5:name_end]
        if self._wait_for_parse_of(name):
            return b""
        judged = self._judge(message[name_end + 1 : end], name, rules)
        if self._held_now:
            return judged if isinstance(judged, bytes) else message
        key = self._statement_key(name)
        approved = not isinstance(judged, bytes) and self._verdict.rule.startswith("review:")
        if name and not isinstance(judged, bytes):
            self._remember(key, judged)
        if (
            approved
            or (not name and self._stale_unnamed)
            or key in self._once
            or key in self._spent
            or key in self._revoked
            or key in self._sql_prepared
        ):
            # (Most Parses change none of this, and cost nothing more.)
            self._follow_parses()
            self._undo = self._bookkeep(key)
            # Allowed or refused (the stand-in fails, as a failed Parse
            # does), the unnamed statement from before the reload is gone,
            # if the server carries the Parse out (the trail undoes this
            # when it does not).
            if not name:
                self._stale_unnamed = False
            if not isinstance(judged, bytes):
                self._revoked.discard(key)  # (the server refuses an existing name)
                self._once.discard(key)
                self._spent.discard(key)
                self._sql_prepared.discard(key)
                if approved:
                    self._once.add(key)
                    self._once_values[key] = self._approved_values
            self._bookkept()
        return judged if isinstance(judged, bytes) else message

    def _bookkeep(self, key: str) -> Callable[[], None] | None:
        """How to restore what a Parse of ``key`` changes, should the server
        not carry it out (the trail calls it then, see _follow_parses);
        None when nothing follows the server's answers."""
        if not self._following:
            return None
        sets = (self._once, self._spent, self._revoked, self._sql_prepared)
        flags = [key in names for names in sets]
        stale = self._stale_unnamed

        def undo() -> None:
            for flag, names in zip(flags, sets, strict=True):
                if flag:
                    names.add(key)
                else:
                    names.discard(key)
            if not key:
                self._stale_unnamed = stale
            self._bookkept()

        return undo

    def _bookkept(self) -> None:
        """The bookkeeping changed: intercept what it needs."""
        self._route_client()

    def _on_function_call(self, message: bytes) -> bytes | None:
        rules = self._current_rules()
        if rules is None:
            return None
        if len(message) < 9:
            return self._refuse(None, _MALFORMED)
        oid = int.from_bytes(message[5:9], "big")
        verdict = rules.check_classification(function_call_classification(oid))
        self._verdict = verdict
        return message if verdict.action == "allow" else self._refuse(None, verdict)

    def _judge(self, text: bytes, parse_name: bytes | None, rules: Rules) -> Classification | bytes:
        """What the SQL ``text`` does, if policy allows it; else the stand-in
        to send in its place (see _refuse)."""
        try:
            sql = text.decode(self._codec)
        except UnicodeDecodeError:
            self._sql = text.decode(self._codec, "replace")
            return self._refuse(parse_name, _UNDECODABLE)
        self._sql = sql
        if self._cancelled is not None:  # (cancelled while analysed)
            cancelled, self._cancelled = self._cancelled, None
            return self._refuse(parse_name, cancelled)
        analysed = self._analysed
        if analysed is not None and analysed[0] == sql:
            # (Kept until the held message is released: replayed again
            # after a review, it is not analysed again.)
            decision = rules.check(sql, self._prepared, analysed[1])
        else:
            fingerprint = core.fingerprint(sql)
            if self._message[0] in (m.QUERY, m.PARSE) and rules.needs_analysis(fingerprint):
                return self._analyse_off_loop(sql, fingerprint[1])
            decision = rules.check(sql, self._prepared, fingerprint=fingerprint)
        verdict = decision.verdict
        if verdict.action == "review":
            outcome, self._review_outcome = self._review_outcome, None
            if outcome is None:
                return self._hold_for_review(sql, parse_name, verdict)
            verdict = outcome
        self._verdict = verdict
        if verdict.action != "allow":
            return self._refuse(parse_name, verdict)
        c = decision.classification
        if self._masker is not None:
            refusal = self._masker.masks.refusal(sql, c, self._masker.catalog)
            if refusal is not None and refusal[0] == "masking:copy" and parse_name is None:
                served = self._copy_as_select(sql, c, rules)
                if served is not None:
                    return served
            if refusal is not None:
                return self._refuse(parse_name, Verdict("deny", *refusal))
        if c.deallocates or c.prepares:
            for name in c.deallocates:
                # (Revoked names stay revoked: the DEALLOCATE may never run,
                # and only a Parse the server confirms replaces a name.)
                if name == "*":
                    self._prepared.clear()
                else:
                    self._prepared.pop(name, None)
            for name in c.prepares:
                self._remember(name, c)
                self._sql_prepared.add(name)
            if c.prepares:
                self._bookkept()
        return c

    def _analyse_off_loop(self, sql: str, statements: int) -> bytes:
        """Hold the client's messages while a statement the policy has no
        verdict for is analysed in a thread (hoopfast.policy.analysis), then
        handle it again with what it does: the event loop, which relays
        every session, goes on meanwhile."""
        self._held_now = True
        self._holds += 1
        self._client_pump.hold()

        async def analyse() -> None:
            who = self.principal.subject if self.principal is not None else ""
            c = await self.gateway.analyst.analyse(sql, statements, who)
            self._analysis = None
            self._resume_after_analysis()
            self._analysed = (sql, c)
            try:
                self._replay(None)
            except Exception as e:  # (as a failure inside the relay would)
                self._analysed = None
                log.exception("session %s: the analysed statement failed", self.id)
                self.end_reason = f"gateway error: {type(e).__name__}"
                self._terminating = True
                self._fail_client("XX000", "internal gateway error")

        self._analysis = asyncio.get_running_loop().create_task(analyse())
        return b""

    def _resume_after_analysis(self) -> None:
        """Read from the client again, if a large message behind the one
        held for analysis paused it (pump_violation)."""
        if self._paused_for_analysis:
            self._paused_for_analysis = False
            transport = self._client_pump.transport
            if not transport.is_closing():
                transport.resume_reading()

    # -- reviews (hoopfast.proxy.postgres.review) ------------------------------

    def _hold_for_review(self, sql: str, parse_name: bytes | None, verdict: Verdict) -> bytes:
        """Hold the statement for a second person's approval, or refuse it
        where approvals are not set up (fail closed)."""
        approvals = self.gateway.approvals
        assert self.connection is not None
        settings = self.gateway.config.connections[self.connection_name].approvals
        type_code = self._message[0]
        if approvals is not None and settings is not None:
            self._follow_parses()
        if (
            approvals is None
            or settings is None
            or not self._following  # (approvals configured after it started)
            or type_code not in (m.QUERY, m.PARSE)
        ):
            return self._refuse(parse_name, verdict)
        self._held_now = True
        self._holds += 1
        self._verdict = verdict
        self._client_pump.hold()
        self._review_hold = ReviewHold(self, approvals, settings, sql, verdict)
        return b""

    def release_review(self, outcome: Verdict, values: str = "") -> None:
        """The review decided (or could not be asked): replay the held
        message with ``outcome`` as its verdict, then what the client sent
        after it. ``values``: the digest of the values the approval binds
        (the first Bind of an approved Parse must carry them)."""
        if self._review_hold is not None:
            self._review_hold = None
            self._approved_values = values
            try:
                self._replay(outcome)
            finally:
                self._approved_values = ""

    def held_values(self) -> tuple[str, str]:
        """For a held Parse: the values of the first Bind of its statement
        that the client sent with it (see review.bound_values); ("", "")
        when there is none (it may come later: then no value is bound)."""
        type_code, message = self._message
        pump = self._client_pump
        if type_code != m.PARSE or pump is None or not pump.held:
            return "", ""
        name = self._parse_name(message)
        for code, held in core.held_messages(pump.held):
            if code == m.PARSE and self._parse_name(held) == name:
                break  # (a new statement under the name)
            if code != m.BIND:
                continue
            try:
                bind = m.parse_bind(held)
            except ValueError:
                continue
            if self._statement_key(bind.statement) == name:
                return bound_values(
                    bind,
                    self._codec,
                    self.gateway.param_mask.mask_text,
                    core.declared_types(message),
                )
        return "", ""

    def _replay(self, outcome: Verdict | None) -> None:
        """Handle the held message again (``outcome`` standing in for a
        review verdict), then what the client sent after it."""
        pump = self._client_pump
        if pump is None or self._terminating or pump.transport.is_closing():
            return
        type_code, message = self._message
        self._review_outcome = outcome
        holds = self._holds
        try:
            forward = self.pump_message(pump, type_code, message)
        finally:
            self._review_outcome = None
        if self._holds != holds:  # (held again: for review after its analysis)
            return
        self._analysed = None
        pump.release(forward)

    def cancel_review(self) -> bool:
        """A CancelRequest: True when it withdrew a held statement (waiting
        for approval, or for its analysis: it fails with 57014, as a
        statement the server cancels, and never runs)."""
        hold = self._review_hold
        if hold is not None and hold.cancel():
            return True
        analysis = self._analysis
        if analysis is None or analysis.done():
            return False
        analysis.cancel()  # (stops its thread)
        self._analysis = None
        self._analysed = None
        self._resume_after_analysis()
        self._cancelled = Verdict("deny", "cancelled", CANCELLED, "57014")
        asyncio.get_running_loop().call_soon(self._replay, None)
        return True

    def notice(self, text: str, *, hint: str = "", tries: int = 500) -> None:
        """A NoticeResponse to the client, between two server messages (the
        server's stream may be in the middle of one: then a little later)."""
        pump = self._server_pump
        client = self._client_pump.transport if self._client_pump is not None else None
        if pump is None or client is None or client.is_closing():
            return
        if pump.framer.at_boundary:
            # (Through the pump: after what it holds back for the recorder.)
            pump.write(m.error_response("NOTICE", "01000", text, hint=hint, kind=m.NOTICE_RESPONSE))
        elif tries > 0:
            asyncio.get_running_loop().call_later(
                0.01, lambda: self.notice(text, hint=hint, tries=tries - 1)
            )

    # -- access grants -----------------------------------------------------------

    def _roles(self) -> frozenset[str]:
        """The roles this person holds on the connection now: from their
        groups, plus those granted through approved access requests."""
        assert self.principal is not None
        own = roles_of(self.principal, self.gateway.policy.config)
        return own | grantable(self._granted)

    def _follow_grants(self) -> None:
        approvals = self.gateway.approvals
        if approvals is None or self.principal is None:
            return
        self._stop_listening = approvals.listen(
            self.principal.subject, self.connection_name, self._grants_changed
        )
        self._grants_changed()  # (any change since startup read them)

    def _time_grants(self) -> None:
        """Wake at the end of the earliest grant window: the role goes then,
        not at the next poll."""
        if self._grant_timer is not None:
            self._grant_timer.cancel()
            self._grant_timer = None
        if self._granted:
            delay = max(0.0, min(self._granted.values()) - time.time())
            self._grant_timer = asyncio.get_running_loop().call_later(
                delay + 0.001, self._grants_changed
            )

    def _grants_changed(self) -> None:
        approvals = self.gateway.approvals
        if approvals is None or self.principal is None or self._terminating:
            return
        fresh = approvals.granted(self.principal.subject, self.connection_name)
        if fresh == self._granted:
            self._time_grants()
            return
        was_unmasked = UNMASKED_ROLE in self._granted
        self._granted = fresh
        self._time_grants()
        assert self.connection is not None
        if was_unmasked != (UNMASKED_ROLE in fresh) and self.connection.masking is not None:
            # Masking is set up at startup (the catalog, the protocol
            # tracking): a session never runs on with masking it was not
            # set up for.
            self.end_reason = "unmasked access " + ("ended" if was_unmasked else "granted")
            self._terminating = True
            self._fail_client(
                "57P01",
                "terminating connection because unmasked access "
                + ("ended" if was_unmasked else "was granted"),
                hint="Reconnect.",
            )
            return
        log.info("session %s: granted roles now %s", self.id, ", ".join(sorted(fresh)) or "none")
        self.policy_changed(force=True)

    def _copy_as_select(self, sql: str, c: Classification, rules: Rules) -> bytes | None:
        """A COPY ... TO STDOUT of masked columns, sent as the equivalent
        SELECT whose masked rows the masker writes back as the COPY's
        (hoopfast.masking.copyout); None when it cannot be (then refused).
        The SELECT is judged on its own too: it must be one statement that
        only reads, allowed, whatever the COPY's text looked like."""
        assert self._masker is not None
        if c.statements != 1:
            return None
        try:
            copy = copyout.parse(sql)
            select = copy.select.encode(self._codec)
        except (copyout.NotTranslatable, UnicodeEncodeError):
            return None
        if not (copy.delimiter + copy.null + copy.quote + copy.escape).isascii():
            return None  # the lines are written byte for byte (latin-1)
        judged = rules.check(copy.select, self._prepared)
        if (
            judged.verdict.action != "allow"
            or judged.classification.statements != 1
            or judged.classification.classes != {"read"}
        ):
            return None
        self._masker.pending_copy = copy
        return m.build(m.QUERY, select + b"\0")

    def _remember(self, name: str, c: Classification) -> None:
        # If the server refuses a re-PREPARE (the name exists), it keeps the
        # old body: the union covers both.
        old = self._prepared.pop(name, None)
        self._prepared[name] = merge([old, c]) if old is not None else c
        if len(self._prepared) > _MAX_PREPARED:
            # Forgotten names make EXECUTE "unknown" (denied), never allowed,
            # and so a Bind of an SQL-prepared one (_on_bind).
            del self._prepared[next(iter(self._prepared))]
            self._forgot = True

    def _refuse(self, parse_name: bytes | None, verdict: Verdict, kind: int = m.PARSE) -> bytes:
        """Refuse a statement without sending it, keeping the protocol in step.

        The upstream gets a stand-in in its place: a Query (or a Parse, under
        the client's statement name) whose text is one random identifier,
        which PostgreSQL rejects as a syntax error naming it. So the error
        comes back exactly where the statement's own answer would have, the
        server aborts an open transaction and skips the rest of an extended
        query up to Sync just as for any error, and ReadyForQuery carries the
        true transaction status. The gateway swaps the stand-in's error for
        its own (_refusal_error). If an earlier error already put the server
        in skip mode, the stand-in is skipped and the client sees that error,
        as it would have without the gateway. Returns the stand-in."""
        token = b"hoopfast_refused_" + secrets.token_hex(12).encode()
        self._verdict = verdict
        self._refusals[token] = verdict
        while len(self._refusals) > _MAX_REFUSALS:
            self._refusals.popitem(last=False)
        if parse_name is None:
            stand_in = m.build(m.QUERY, token + b"\0")
        elif kind == m.BIND:
            # A Bind of a statement named by the token: "does not exist".
            stand_in = m.build(m.BIND, b"\0" + token + b"\0" + b"\0\0\0\0\0\0")
        else:
            stand_in = m.build(m.PARSE, parse_name + b"\0" + token + b"\0\0\0")
        self.refused += 1
        assert self.principal is not None
        log.warning(
            "session %s: %s on %s: statement %s (rule %s): %r",
            self.id,
            self.principal.subject,
            self.connection_name,
            "held for review" if verdict.action == "review" else "denied",
            verdict.rule,
            verdict.message,
        )
        return stand_in

    def _refusal_error(self, message: bytes) -> bytes:
        for token, verdict in self._refusals.items():
            if token in message:
                del self._refusals[token]
                return _refusal_message(verdict, self.rules)
        return message

    def _notification(self, message: bytes) -> bytes:
        """A NotificationResponse names the sending backend's pid upstream;
        clients know sessions by the gateway's pids (they compare them to
        skip their own notifications, or to tell who sent one), so a sender
        that is a session of this gateway is named by its gateway pid."""
        assert self.connection is not None
        if len(message) < 9:
            return message
        sender = int.from_bytes(message[5:9], "big", signed=True)
        pid = self.gateway.gateway_pid(self.connection, sender)
        if pid is None:
            return message
        return message[:5] + pid.to_bytes(4, "big", signed=True) + message[9:]

    def pump_violation(self, pump: Any, error: Exception) -> None:
        if pump is self._client_pump and isinstance(error, OverflowError) and self._analysis:
            # Held only while a statement is analysed (a large Bind sent
            # behind its Parse): the client waits, its socket's buffer full,
            # rather than losing its session. (A review's hold has a bound.)
            # (Every time: the upstream's back-pressure may have resumed it.)
            if not pump.transport.is_closing():
                self._paused_for_analysis = True
                pump.transport.pause_reading()
            return
        if pump is self._client_pump and isinstance(error, OverflowError):
            self.end_reason = f"client sent too much while held: {error}"
            self._fail_client("54000", f"too much data from the client: {error}")
        elif pump is self._client_pump:
            self.end_reason = f"client protocol violation: {error}"
            self._fail_client("08P01", f"invalid message from client: {error}")
        else:
            log.error("session %s: upstream protocol violation: %s", self.id, error)
            self.end_reason = f"upstream protocol violation: {error}"
            self._fail_client("08P01", "invalid message from the upstream database")

    def pump_unrecorded(self, pump: Any, reason: str) -> None:
        if self._terminating and self._client_pump.transport.is_closing():
            return
        self.end_reason = f"recording failed: {reason}"
        self._terminating = True
        self._fail_client("53000", f"the session cannot be recorded: {reason}")

    def pump_closed(self, pump: Any, error: Exception | None) -> None:
        self._open_sides -= 1
        if pump is self._server_pump and not self._terminating:
            if not self._upstream_sent_fatal:
                if self.end_reason == "unknown":
                    self.end_reason = "upstream closed"
                self._fail_client("08006", "the upstream database closed the connection")
        elif pump is self._client_pump and self.end_reason == "unknown":
            self.end_reason = "client closed" if error is None else f"client lost: {error}"
        for transport in (pump.peer, pump.transport):
            if not transport.is_closing():
                transport.close()
        if self._open_sides <= 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _fail_client(self, sqlstate: str, message: str, *, hint: str | None = None) -> None:
        """Tell the client why, if that can be done without cutting a message
        in half, and close both sides."""
        client = self._client_pump.transport
        framer = self._server_pump.framer
        barrier, recorder = self._server_pump.barrier, self.gateway.recorder
        if barrier is not None and barrier.pending and recorder is not None:
            # What the client was sent before this goes first (held back
            # until the recorder has it; dropped if it cannot).
            with contextlib.suppress(RecordingUnavailable):
                recorder.commit()
        if not client.is_closing() and (framer.at_boundary or framer.buffered):
            client.write(m.fatal(sqlstate, message, hint=hint))
        for transport in (client, self._server_pump.transport):
            if not transport.is_closing():
                transport.close()

    # -- phase 3 -----------------------------------------------------------

    def shutdown(self) -> None:
        """The gateway is stopping: end the session as PostgreSQL does on a
        fast shutdown."""
        self.end_reason = "gateway shutting down"
        self._terminating = True
        if self._client_pump is not None:
            self._fail_client("57P01", "terminating connection due to administrator command")
        else:
            self.writer.close()
            if self.upstream is not None:
                self.upstream.writer.close()

    async def _close(self) -> None:
        self.gateway.unregister(self)
        if self._trail is not None:
            # What was still waiting for its answer is recorded as it stands
            # (before the tally is folded in and the span ends).
            self._trail.abandon()
        if self._stop_listening is not None:
            self._stop_listening()
        if self._grant_timer is not None:
            self._grant_timer.cancel()
        if self._review_hold is not None:
            await self._review_hold.close()
        if self._analysis is not None:
            self._analysis.cancel()  # (its thread ends on its own time limit)
        if self._counted:
            # The metrics first (no call here can fail): a session must not
            # stay watched, its pumps and trail held by the registry.
            tally = self._tally
            metrics = self.gateway.metrics
            metrics.unwatch(self)
            metrics.moved(self.connection_name, *self.bytes_uncounted())
            if tally is not None:
                metrics.fold(self.connection_name, tally)
            metrics.session_ended(self.connection_name)
            totals = (
                SpanTotals(
                    sum(tally.statements.values()), tally.errors, tally.rows, tally.server_bytes
                )
                if tally is not None
                else None
            )
            self._span.end(self.end_reason, not _CLEAN_END.match(self.end_reason), totals)
        if self._recording is not None:
            self._recording.end(self.end_reason)
        if self.upstream is not None and not self.upstream.writer.is_closing():
            self.upstream.writer.close()
        if not self.writer.is_closing():
            self.writer.close()
        if self._client_pump is None:
            # Still the stream's protocol: wait for the close to complete. (After
            # the relay, the pumps saw connection_lost on both sides already.)
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(self.writer.wait_closed(), 5)
        if self.principal is not None:
            log.info(
                "session %s: %s on %s ended after %.3fs: %s (client sent %d bytes, server %d%s)",
                self.id,
                self.principal.subject,
                self.connection_name,
                time.monotonic() - self.started,
                self.end_reason,
                getattr(self._client_pump, "bytes_in", 0),
                getattr(self._server_pump, "bytes_in", 0),
                ""
                if self._masker is None
                else f"; {self._masker.masked_batches} result buffers masked",
            )
        else:
            log.info("session %s from %s ended: %s", self.id, self.client_address, self.end_reason)


_PREPARED_BEFORE_RELOAD = Verdict(
    "deny",
    "policy_changed",
    "the access policy changed after this statement was prepared; prepare it again",
)
_UNGUARDED = Verdict("allow", "guardrails_off")
#: End reasons that are not errors (for the session span's status).
_CLEAN_END = re.compile(r"client (terminated|closed)$")
_RECORDING_FULL = Verdict(
    "deny",
    "recording",
    "the audit trail cannot be written now (the recording spool is full: the state "
    "store is not taking it); statements are refused until it drains",
    "53000",
)
_APPROVED_ONCE = Verdict(
    "deny",
    "review:once",
    "this prepared statement was approved for one execution and has run; "
    "it needs a new approval to run again",
    hint="Prepare (and so submit) it again.",
)
_OTHER_VALUES = Verdict(
    "deny",
    "review:values",
    "the values bound differ from those approved with this statement",
    hint="Send the statement with the approved values, or ask for a new approval.",
)
_MAX_PREPARED = 10_000
_FORGOTTEN = Verdict(
    "deny",
    "unknown",
    "the gateway no longer knows what this prepared statement does; prepare it again",
)
_MAX_REFUSALS = 64
_MALFORMED = Verdict("deny", "protocol", "malformed message", "08P01")
_UNDECODABLE = Verdict(
    "deny", "encoding", "the statement is not valid in the client encoding", "22021"
)


def _refusal_message(verdict: Verdict, rules: Rules | None) -> bytes:
    roles = ", ".join(rules.roles) if rules is not None else ""
    sqlstate = verdict.sqlstate
    if verdict.rule == "syntax":
        return m.error_response(
            "ERROR",
            sqlstate,
            verdict.message,
            position=verdict.position,
        )
    detail = f"hoopfast policy rule: {verdict.rule} (roles: {roles})"
    if verdict.action == "review":
        if verdict.rule.startswith("review:"):
            # The review's own outcome (hoopfast.proxy.postgres.review).
            return m.error_response(
                "ERROR", sqlstate, verdict.message, detail=detail, hint=verdict.hint or None
            )
        return m.error_response(
            "ERROR",
            sqlstate,
            f"approval required: {verdict.message}",
            detail=detail,
            hint="This statement needs a second person's approval, and approvals are "
            "not configured for this connection.",
        )
    return m.error_response(
        "ERROR",
        sqlstate,
        f"permission denied by hoopfast policy: {verdict.message}",
        detail=detail,
        hint=verdict.hint or None,
    )


def _server_codec(parameters: dict[str, str], codec: str) -> str | None:
    """The codec of the server's encoding (its ParameterStatus) where the
    client's names convert to it before the server keys them: None where
    it is the client's codec, SQL_ASCII (which converts nothing), or one
    Python has no codec for (names are then keyed by their client bytes)."""
    name = clean_encoding_name(parameters.get("server_encoding", "UTF8"))
    server = CLIENT_ENCODINGS.get(name)
    return None if name == "sqlascii" or server is None or server == codec else server


def _without(types: bytes, taken: bytes) -> bytes:
    """``types`` less those in ``taken``."""
    return bytes(t for t in types if t not in taken)


def _take(reader: asyncio.StreamReader) -> bytes:
    buffer = m.stream_buffer(reader)
    data = bytes(buffer)
    buffer.clear()
    return data


def _statement_text(message: bytes, type_code: int, codec: str) -> str:
    """The SQL of a Query or Parse, for the trail when nothing judged it."""
    start = 5
    if type_code == m.PARSE:
        start = message.find(b"\0", 5) + 1
    end = message.find(b"\0", start)
    return message[start : end if end >= 0 else len(message)].decode(codec, "replace")


def _split_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The whole messages in ``data``, one by one."""
    pos = 0
    while pos + 5 <= len(data):
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        yield data[pos], data[pos:end]
        pos = end
