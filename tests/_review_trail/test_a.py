from __future__ import annotations
import psycopg, pytest
from psycopg import pq
from tests.gateway import RunningGateway
from tests._review_trail.helpers import *
from tests._review_trail.helpers import _person, _run, _asyncpg


def test_parse_existing_name_42P05(idle_gateway: RunningGateway) -> None:
    gw = idle_gateway
    who = _person()
    c = raw(gw, who)
    c.send(parse(b"s", b"SELECT 'original' AS v") + SYNC)
    print(c.read_until_ready())
    c.send(parse(b"s", b"SELECT 'replacement' AS v") + SYNC)
    print(c.read_until_ready())
    c.send(bind(b"", b"s") + execute() + SYNC)
    got = c.read_until_ready()
    print(got)
    c.send(TERMINATE)
    c.close()
    for e in events_of(gw, who):
        print(brief(e))
    assert False


def test_copy_in_extended_double_sync(idle_gateway: RunningGateway) -> None:
    gw = idle_gateway
    who = _person()
    with psycopg.connect(gw.conninfo(token=gw.token(who), user=who), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE ci (x int)")
        pg = conn.pgconn
        pg.send_query_params(b"COPY ci FROM STDIN", None)
        r = pg.get_result()
        print(r.status)
        pg.put_copy_data(b"1\n2\n3\n")
        pg.put_copy_end()
        while (r := pg.get_result()) is not None:
            print(r.status, r.command_status)
        for i in range(3):
            print(conn.execute(f"SELECT {i} AS q{i}").fetchall())
    for e in events_of(gw, who):
        print(brief(e))
    assert False


def test_query_after_extended_error_before_sync(idle_gateway: RunningGateway) -> None:
    gw = idle_gateway
    who = _person()
    c = raw(gw, who)
    c.send(parse(b"", b"SELECT 1/0") + bind() + execute())
    c.send(msg(b"H"))
    print(c.read_message(), c.read_message(), c.read_message())
    c.send(query(b"SELECT 'never ran' AS x") + SYNC)
    print(c.read_until_ready())
    c.send(query(b"SELECT 'after' AS y"))
    print(c.read_until_ready())
    c.send(query(b"SELECT 'after2' AS z"))
    print(c.read_until_ready())
    c.send(TERMINATE)
    c.close()
    for e in events_of(gw, who):
        print(brief(e))
    assert False
