"""A minimal blocking PostgreSQL client for tests that need control real
drivers do not give: reading slowly, sending torn or malformed messages."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

from hoopfast.core import encode_startup
from hoopfast.proxy.postgres import messages as m


class RawClient:
    def __init__(self, host: str, port: int, *, ca_file: Path | None, timeout: float = 10) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        if ca_file is not None:
            sock.sendall(m.ssl_request())
            assert sock.recv(1) == b"S"
            context = ssl.create_default_context(cafile=str(ca_file))
            sock = context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self._buffer = b""

    def startup(self, connection: str, token: str, user: str = "alice") -> dict[str, str]:
        """Log in; return the ParameterStatus values."""
        self.sock.sendall(encode_startup({"user": user, "database": connection}))
        kind, body = self.read_message()
        assert kind == "R" and struct.unpack("!I", body[:4])[0] == m.AUTH_CLEARTEXT, (kind, body)
        self.sock.sendall(m.build(m.PASSWORD_MESSAGE, token.encode() + b"\0"))
        params: dict[str, str] = {}
        while True:
            kind, body = self.read_message()
            if kind == "E":
                raise AssertionError(f"login failed: {body!r}")
            if kind == "S":
                name, value, _ = body.split(b"\0")
                params[name.decode()] = value.decode()
            if kind == "Z":
                return params

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def query(self, sql: str) -> None:
        self.sock.sendall(m.build(ord("Q"), sql.encode() + b"\0"))

    def recv_some(self, n: int = 65536) -> int:
        """Receive up to ``n`` bytes into the buffer (for tests that read
        slowly); 0 at end of stream."""
        chunk = self.sock.recv(n)
        self._buffer += chunk
        return len(chunk)

    def _fill(self, n: int) -> None:
        while len(self._buffer) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed by the gateway")
            self._buffer += chunk

    def read_message(self) -> tuple[str, bytes]:
        self._fill(5)
        length = struct.unpack_from("!I", self._buffer, 1)[0]
        self._fill(1 + length)
        kind, body = chr(self._buffer[0]), self._buffer[5 : 1 + length]
        self._buffer = self._buffer[1 + length :]
        return kind, body

    def read_until_ready(self) -> list[tuple[str, bytes]]:
        out = []
        while True:
            kind, body = self.read_message()
            out.append((kind, body))
            if kind == "Z":
                return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_fields(body: bytes) -> dict[str, str]:
    return {p[:1].decode(): p[1:].decode() for p in body.split(b"\0") if p}
