from __future__ import annotations
import struct, time, json
from typing import Any
from tests.test_recording import sealed_session, trail, statements, _person, _run, _asyncpg, psql
from tests.rawclient import RawClient


def msg(code: bytes, payload: bytes = b"") -> bytes:
    return code + struct.pack("!i", len(payload) + 4) + payload


def parse(name: bytes, sql: bytes, types=()) -> bytes:
    return msg(
        b"P",
        name
        + b"\0"
        + sql
        + b"\0"
        + struct.pack("!H", len(types))
        + b"".join(struct.pack("!I", t) for t in types),
    )


def bind(portal=b"", name=b"", values=(), formats=(), results=()) -> bytes:
    body = portal + b"\0" + name + b"\0"
    body += struct.pack(f"!H{len(formats)}H", len(formats), *formats)
    body += struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    body += struct.pack(f"!H{len(results)}H", len(results), *results)
    return msg(b"B", body)


def execute(portal=b"", max_rows=0) -> bytes:
    return msg(b"E", portal + b"\0" + struct.pack("!I", max_rows))


def describe(kind: bytes, name=b"") -> bytes:
    return msg(b"D", kind + name + b"\0")


def query(sql: bytes) -> bytes:
    return msg(b"Q", sql + b"\0")


SYNC = msg(b"S")
TERMINATE = msg(b"X")


def raw(gw, who) -> RawClient:
    c = RawClient(gw.host, gw.port, ca_file=gw.certs.ca_file, timeout=20)
    c.startup("main", gw.token(who), user=who)
    return c


def events_of(gw, who):
    return statements(trail(gw, sealed_session(gw, who)))


def all_events(gw, who):
    return trail(gw, sealed_session(gw, who))


def brief(e):
    return {
        k: e.get(k) for k in ("text", "params", "verdict", "rows", "tags", "error", "rows_exact")
    } | {"res": [r["rows"] for r in e["results"]]}
