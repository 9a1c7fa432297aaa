"""Serving the admin API with uvicorn on the gateway's own (uvloop) loop.

uvicorn's usual entry points own the process: they create the loop, set up
logging and catch SIGINT/SIGTERM. Inside the gateway none of that is
theirs to do, so the listening socket is made here (port 0 works, and the
bound port is known before the first request), logging is left alone, and
signal capture is switched off: the gateway's own handlers stop the API
through :meth:`ApiServer.close`. That also makes it safe on a loop running
in a non-main thread, as in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

__all__ = ["ApiServer", "start_api"]

log = logging.getLogger(__name__)

#: How long close() lets running requests (a long export) finish.
GRACEFUL_SECONDS = 5


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that never touches signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], port: int) -> None:
        self._server = server
        self._task = task
        #: The port actually bound (useful with port 0).
        self.port = port

    async def close(self) -> None:
        """Stop accepting, let running requests finish for a few seconds,
        then cut them off."""
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), GRACEFUL_SECONDS + 5)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _listen(host: str, port: int) -> socket.socket:
    """One listening socket on ``host``: "" or "0.0.0.0" is every IPv4
    address, "::" every IPv6 and (dual-stack) IPv4 address."""
    infos = socket.getaddrinfo(
        host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Dual-stack whatever the system default (net.ipv6.bindv6only).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_api(
    app: FastAPI,
    host: str,
    port: int,
    *,
    ssl_certfile: Path | str | None = None,
    ssl_keyfile: Path | str | None = None,
) -> ApiServer:
    """Listen on host:port (0: any free port) and serve ``app`` on the
    running loop until :meth:`ApiServer.close`. Raises OSError when the
    address cannot be bound."""
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        lifespan="off",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
    server = _EmbeddedServer(config)
    try:
        config.load()  # TLS files and the app are checked here, before serving
    except BaseException:
        sock.close()
        raise
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="admin-api")
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises what stopped it
            raise RuntimeError("the admin API stopped while starting")
        await asyncio.sleep(0.005)
    scheme = "https" if config.is_ssl else "http"
    log.info("admin API listening on %s://%s:%d", scheme, host, bound)
    return ApiServer(server, task, bound)
