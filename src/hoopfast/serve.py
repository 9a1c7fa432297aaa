"""Running the gateway: the event loop, the listener, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from hoopfast.config import load_config
from hoopfast.identity.tokens import TokenValidator
from hoopfast.proxy.postgres.server import PgGateway
from hoopfast.settings import Settings

log = logging.getLogger("hoopfast")


def install_event_loop() -> None:
    """uvloop, as the architecture requires; it is a hard dependency."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    config = load_config(settings.config)
    validator = TokenValidator(config.identity)
    gateway = PgGateway(settings, config, validator)
    await gateway.start()
    if not settings.guardrails:
        log.critical(
            "HOOPFAST_GUARDRAILS is off: statements reach the databases UNCHECKED "
            "(this setting exists to measure the guardrails' cost, not for use)"
        )
    host, _ = settings.pg_listen_address
    log.info("listening for PostgreSQL clients on %s:%d", host, gateway.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
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
        await gateway.close()
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
