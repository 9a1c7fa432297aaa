import time
import psycopg
from psycopg import errors as e
def scenario(conn):
    received = 0
    t0 = time.monotonic(); tc = None
    try:
        with conn.cursor().copy("COPY (SELECT g, repeat('c', 200) FROM generate_series(1, 100000000) g) TO STDOUT") as copy:
            for chunk in copy:
                received += len(chunk)
                if received > 1_000_000 and tc is None:
                    tc = time.monotonic()
                    conn.cancel_safe()
                    tc2 = time.monotonic()
    except e.QueryCanceled:
        pass
    t1 = time.monotonic()
    return received, tc - t0, tc2 - tc, t1 - tc2
def test_x(idle_gateway, cluster, roles):
    for name, dsn in [("gw", idle_gateway.conninfo()), ("direct", cluster.dsn(*roles.scram, dbname="app")), ("gw", idle_gateway.conninfo()), ("gwmd5", idle_gateway.conninfo("md5"))]:
        with psycopg.connect(dsn, autocommit=True) as c:
            print(name, scenario(c))
