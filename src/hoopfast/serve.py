"""Running the gateway: the event loop, the listener, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoopfast.approvals import Approvals
from hoopfast.approvals.notify import NO_NOTIFIER, Notifier, WebhookNotifier
from hoopfast.config import GatewayConfig, load_config
from hoopfast.errors import ConfigurationError
from hoopfast.identity.tokens import TokenValidator
from hoopfast.proxy.postgres.server import PgGateway
from hoopfast.recording.chain import Signer
from hoopfast.recording.recorder import Recorder, RecorderOptions
from hoopfast.settings import Settings, parse_hostport
from hoopfast.store import Store, StoreError, open_store
from hoopfast.telemetry import Metrics, Tracing

log = logging.getLogger("hoopfast")


def install_event_loop() -> None:
    """uvloop, as the architecture requires; it is a hard dependency."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@dataclass
class Runtime:
    """Everything one gateway process runs, started in dependency order
    (store, recorder, listener, API) and stopped in reverse."""

    gateway: PgGateway
    store: Store
    recorder: Recorder | None
    approvals: Approvals
    api: Any = None

    async def close(self) -> None:
        await self.gateway.close()
        if self.api is not None:
            await self.api.close()
        await self.approvals.close()
        if self.recorder is not None:
            await self.recorder.close()
        await self.store.close()
        self.gateway.tracing.shutdown()


async def start_runtime(
    settings: Settings,
    config: GatewayConfig,
    validator: TokenValidator,
    before_listening: Callable[[], None] | None = None,
) -> Runtime:
    try:
        store = open_store(settings.store, settings.state_dir)
    except ValueError as e:
        raise ConfigurationError(f"HOOPFAST_STORE: {e}") from None
    try:
        await store.open()
    except StoreError as e:
        raise ConfigurationError(f"cannot open the state store: {e}") from None
    try:
        tracing = Tracing.from_env()
    except ValueError as e:
        await store.close()
        raise ConfigurationError(f"OpenTelemetry settings: {e}") from None
    metrics = Metrics()
    recorder = None
    approvals: Approvals | None = None
    runtime: Runtime | None = None
    try:
        if settings.recording:
            key_file = settings.recording_key_file or settings.state_dir / "recording-key.pem"
            try:
                signer = Signer.load_or_create(key_file)
            except (OSError, ValueError) as e:
                raise ConfigurationError(f"recording key {key_file}: {e}") from None
            try:
                recorder = Recorder(
                    store,
                    settings.spool_dir or settings.state_dir / "spool",
                    signer,
                    RecorderOptions(
                        fsync=settings.spool_fsync,
                        fsync_interval=settings.spool_fsync_interval,
                        max_bytes=settings.spool_max_bytes,
                        segment_bytes=settings.spool_segment_bytes,
                        flush_interval=settings.store_flush_interval,
                        on_full=settings.recording_on_full,
                        on_store_error=metrics.recording_store_error,
                    ),
                )
            except OSError as e:  # (SpoolError: in use by another gateway, ...)
                raise ConfigurationError(f"recording spool: {e}") from None
            await recorder.start()
            spool = recorder.spool
            metrics.read_spool_bytes = lambda: spool.pending_bytes
        gateway = PgGateway(settings, config, validator)
        approvals = Approvals(
            store,
            lambda: gateway.config,
            _notifier(config),
            poll_interval=settings.approvals_poll_interval,
        )
        await approvals.start()
        gateway.recorder = recorder
        gateway.approvals = approvals
        gateway.metrics = metrics
        gateway.tracing = tracing
        runtime = Runtime(gateway, store, recorder, approvals)
        if before_listening is not None:
            before_listening()
        # The API first: a port it cannot bind stops the start before any
        # client is accepted.
        if settings.api_listen != "off":
            from hoopfast.api.app import create_app
            from hoopfast.api.server import start_api

            host, port = parse_hostport(settings.api_listen)
            app = create_app(store, validator, lambda: gateway.config, metrics.render, approvals)
            runtime.api = await start_api(
                app,
                host,
                port,
                ssl_certfile=settings.tls_cert_file,
                ssl_keyfile=settings.tls_key_file,
            )
        await gateway.start()
    except BaseException:
        if runtime is not None and runtime.api is not None:
            await runtime.api.close()
        if approvals is not None:
            await approvals.close()
        if recorder is not None:
            await recorder.close()
        await store.close()
        tracing.shutdown()
        raise
    return runtime


def _notifier(config: GatewayConfig) -> Notifier:
    webhook = config.notifications.webhook
    return NO_NOTIFIER if webhook is None else WebhookNotifier(webhook)


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop_on_signals() -> None:
        # Just before anything listens: a SIGTERM from then on (an
        # orchestrator stopping a gateway that has just started) stops it
        # cleanly once started, rather than killing it (its sessions then
        # sealed as crashed at the next start); a CI run sent one in that
        # window. Not earlier: a start that hangs (a store that does not
        # answer) is still ended by one.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    config = load_config(settings.config)
    validator = TokenValidator(config.identity)
    runtime = await start_runtime(settings, config, validator, stop_on_signals)
    gateway = runtime.gateway
    if not settings.recording:
        log.critical(
            "HOOPFAST_RECORDING is off: sessions are NOT RECORDED "
            "(this setting exists to measure the recorder's cost, not for use)"
        )
    if not settings.guardrails:
        log.critical(
            "HOOPFAST_GUARDRAILS is off: statements reach the databases UNCHECKED "
            "(this setting exists to measure the guardrails' cost, not for use)"
        )
    host, _ = settings.pg_listen_address
    log.info("listening for PostgreSQL clients on %s:%d", host, gateway.port)
    if runtime.api is not None:
        log.info(
            "admin API on %s port %d", settings.api_listen.rpartition(":")[0], runtime.api.port
        )
    loop.add_signal_handler(signal.SIGHUP, gateway.reload_file, settings.config)
    watcher = (
        asyncio.create_task(watch_config(settings.config, gateway, settings.config_poll_interval))
        if settings.config_poll_interval > 0
        else None
    )
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await runtime.close()
        validator.close()


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def watch_config(path: Path, gateway: PgGateway, interval: float) -> None:
    """Reload when the file changes (mtime, size or inode: editors and
    config-management tools often replace the file rather than rewrite it).
    Polling, not inotify: it works the same on every file system, including
    the mounted volumes Kubernetes uses for ConfigMaps."""
    seen = _signature(path)
    while True:
        await asyncio.sleep(interval)
        current = _signature(path)
        if current != seen and current is not None:
            seen = current
            gateway.reload_file(path)
