"""Running the gateway: the event loop, the listener, signals."""

from __future__ import annotations

import asyncio
import logging
import signal

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
    host, _ = settings.pg_listen_address
    log.info("listening for PostgreSQL clients on %s:%d", host, gateway.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await gateway.close()
        validator.close()
