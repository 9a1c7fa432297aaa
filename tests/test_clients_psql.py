"""psql, unmodified, through the gateway: the same script run through the
gateway and directly must print the same thing (stdout and stderr) and exit
with the same status."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hoopfast.devcluster import DevCluster
from tests.conftest import Roles
from tests.gateway import RunningGateway

PSQL = "/usr/bin/psql"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGCLIENTENCODING="UTF8", PGCONNECT_TIMEOUT="10", PSQLRC=os.devnull, LC_ALL="C")
    return env


def psql(
    conninfo: str, *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PSQL, "-X", "-A", "-t", *args, conninfo],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=60,
    )


class Both:
    """psql through the gateway and directly."""

    def __init__(self, gw: RunningGateway, cluster: DevCluster, roles: Roles) -> None:
        self.gw = gw
        self.direct_dsn = cluster.dsn(*roles.scram, dbname="app")

    def run(
        self, *args: str, stdin: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        got = psql(self.gw.conninfo(), *args, stdin=stdin, cwd=cwd)
        expected = psql(self.direct_dsn, *args, stdin=stdin, cwd=cwd)
        assert (got.returncode, got.stdout, got.stderr) == (
            expected.returncode,
            expected.stdout,
            expected.stderr,
        )
        return got


@pytest.fixture
def both(idle_gateway: RunningGateway, cluster: DevCluster, roles: Roles) -> Both:
    return Both(idle_gateway, cluster, roles)


SCRIPT = r"""
SELECT 1 AS one, 'two' AS two;
CREATE TEMP TABLE items (id int PRIMARY KEY, name text, price numeric, tags text[], data jsonb);
INSERT INTO items
SELECT g, 'item ' || g, g * 1.25, ARRAY['t' || g % 3, NULL], jsonb_build_object('g', g)
FROM generate_series(1, 500) g;
SELECT count(*), sum(price), max(name) FROM items;
SELECT * FROM items WHERE id % 100 = 0 ORDER BY id;
UPDATE items SET price = price * 2 WHERE id <= 10;
SELECT 1/0;
SELECT 'continued after the error';
BEGIN;
DELETE FROM items WHERE id > 250;
SELECT * FROM no_such_table;
SELECT 'in aborted transaction';
ROLLBACK;
SELECT count(*) FROM items;
COPY items (id, name) FROM stdin;
1001	copied one
1002	copied\ttwo
\.
SELECT id, name FROM items WHERE id > 1000 ORDER BY id;
DO $$ BEGIN RAISE NOTICE 'notice from DO %', 7; END $$;
SELECT now() IS NOT NULL AS has_now \gset
\echo has_now is :has_now
SELECT 'a' AS x, 1 AS y \gdesc
SELECT aid, bid FROM pgbench_accounts WHERE aid <= 3 ORDER BY aid \crosstabview
SET application_name = 'psql via gate';
SHOW application_name;
\d pgbench_branches
SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
"""


def test_script_output_identical(both: Both, tmp_path: Path) -> None:
    script = tmp_path / "script.sql"
    script.write_text(SCRIPT)
    out = both.run("-f", str(script))
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0] == "1|two"
    assert "continued after the error" in lines
    assert "in aborted transaction" not in out.stdout
    assert "1001|copied one" in lines and "1002|copied\ttwo" in lines
    assert "has_now is t" in lines
    assert "psql via gate" in lines
    assert lines[-1] == f"20000|{__import__('hashlib').md5(b'20000').hexdigest()}"
    assert "ERROR:  division by zero" in out.stderr
    assert 'ERROR:  relation "no_such_table" does not exist' in out.stderr
    assert "current transaction is aborted" in out.stderr
    assert "NOTICE:  notice from DO 7" in out.stderr


def test_on_error_stop(both: Both) -> None:
    out = both.run(
        "-v",
        "ON_ERROR_STOP=1",
        stdin="SELECT 'before';\nSELECT 1/0;\nSELECT 'after';\n",
    )
    assert out.returncode == 3
    assert out.stdout == "before\n"
    assert "division by zero" in out.stderr

    out = both.run(stdin="\\set ON_ERROR_STOP on\nSELECT 'x';\nSELEC syntax;\nSELECT 'never';\n")
    assert out.returncode == 3 and out.stdout == "x\n" and "syntax error" in out.stderr


def test_dash_c_with_multiple_statements(both: Both) -> None:
    out = both.run(
        "-c",
        "SELECT 1; SELECT 2; CREATE TEMP TABLE z (i int); INSERT INTO z VALUES (1), (2);"
        " SELECT count(*) FROM z",
    )
    assert out.returncode == 0
    # psql sends one -c string as a single simple Query and prints every result.
    assert out.stdout.splitlines() == ["1", "2", "CREATE TABLE", "INSERT 0 2", "2"]

    commands = ["-c", "SELECT 'first'", "-c", "SELECT 1/0; SELECT 'never'", "-c", "SELECT 'third'"]
    out = both.run(*commands)
    assert out.returncode == 0
    assert out.stdout.splitlines() == ["first", "third"]
    assert out.stderr == "ERROR:  division by zero\n"
    out = both.run("-v", "ON_ERROR_STOP=1", *commands)
    assert out.returncode == 1
    assert out.stdout.splitlines() == ["first"]


def test_copy_in_and_out(both: Both, tmp_path: Path) -> None:
    rows = "".join(f'{i},"name, {i}",{i * 3}.5\n' for i in range(100_000))
    (tmp_path / "in.csv").write_text(rows)
    script = (
        "CREATE TEMP TABLE c (i int, s text, n numeric);\n"
        "\\copy c FROM 'in.csv' WITH (FORMAT csv)\n"
        "SELECT count(*), sum(n) FROM c;\n"
        "\\copy (SELECT * FROM c ORDER BY i) TO 'out.csv' WITH (FORMAT csv)\n"
        "\\copy (SELECT i, s FROM c WHERE i < 1000 ORDER BY i) TO 'out.txt'\n"
        "\\copy (SELECT * FROM c ORDER BY i) TO 'out.bin' WITH (FORMAT binary)\n"
        "\\copy c FROM 'out.bin' WITH (FORMAT binary)\n"
        "SELECT count(*) FROM c;\n"
        "\\copy c FROM 'in.csv'\n"
        "SELECT 'after failed copy';\n"
    )
    (tmp_path / "copy.sql").write_text(script)

    def outputs() -> dict[str, bytes]:
        return {name: (tmp_path / name).read_bytes() for name in ("out.csv", "out.txt", "out.bin")}

    got = psql(both.gw.conninfo(), "-f", "copy.sql", cwd=tmp_path)
    via_files = outputs()
    expected = psql(both.direct_dsn, "-f", "copy.sql", cwd=tmp_path)
    assert (got.returncode, got.stdout, got.stderr) == (
        expected.returncode,
        expected.stdout,
        expected.stderr,
    )
    assert via_files == outputs()
    assert via_files["out.csv"] == rows.encode()
    assert got.stdout.splitlines() == [
        "CREATE TABLE",
        "COPY 100000",
        f"100000|{sum(i * 3 + 0.5 for i in range(100_000)):.1f}",
        "COPY 100000",
        "COPY 1000",
        "COPY 100000",
        "COPY 100000",
        "200000",
        "after failed copy",
    ]
    assert "invalid input syntax for type integer" in got.stderr


def test_large_output_identical(both: Both) -> None:
    out = both.run(
        "-c", "SELECT g, repeat('x', g % 100), g::float8 / 3 FROM generate_series(1, 200000) g"
    )
    assert out.stdout.count("\n") == 200000


def test_sigint_cancels_running_query(idle_gateway: RunningGateway) -> None:
    """psql sends a CancelRequest (to the gateway) on Ctrl-C."""
    proc = subprocess.Popen(
        [PSQL, "-X", "-A", "-t", "-c", "SELECT pg_sleep(10)", idle_gateway.conninfo()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        time.sleep(0.8)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 3
    assert "canceling statement due to user request" in stderr
    assert proc.returncode == 1 and stdout == ""


def test_interactive_session_via_stdin(both: Both) -> None:
    """Backslash commands that go to the catalog (\\dt, \\df), variables."""
    out = both.run(
        "-v",
        "n=5",
        stdin="\\dt pgbench_*\nSELECT :n * 2;\n\\df pg_sleep\n\\dn public\n",
    )
    assert "|pgbench_accounts|table|app" in out.stdout
    assert "10\n" in out.stdout


def test_large_objects_use_the_function_call_protocol(both: Both, tmp_path: Path) -> None:
    """\\lo_import / \\lo_export go through libpq's lo_* API, which sends
    FunctionCall ('F') messages, not queries."""
    blob = bytes(range(256)) * 4096 + b"tail"
    (tmp_path / "blob.bin").write_bytes(blob)
    script = (
        "BEGIN;\n"
        "\\lo_import blob.bin\n"
        "SELECT :LASTOID > 0 AS imported;\n"
        "SELECT length(lo_get(:LASTOID));\n"
        "\\lo_export :LASTOID out.bin\n"
        "\\lo_unlink :LASTOID\n"
        "COMMIT;\n"
    )
    (tmp_path / "lo.sql").write_text(script)
    got = psql(both.gw.conninfo(), "-f", "lo.sql", cwd=tmp_path)
    via_export = (tmp_path / "out.bin").read_bytes()
    (tmp_path / "out.bin").unlink()
    expected = psql(both.direct_dsn, "-f", "lo.sql", cwd=tmp_path)
    # Only the large object's OID may differ.
    assert re.sub(r"\d{4,}", "OID", got.stdout) == re.sub(r"\d{4,}", "OID", expected.stdout)
    assert (got.returncode, got.stderr) == (expected.returncode, expected.stderr) == (0, "")
    assert via_export == blob == (tmp_path / "out.bin").read_bytes()
    assert "t\n" in got.stdout and f"{len(blob)}\n" in got.stdout


def test_verbose_errors_and_single_transaction(both: Both) -> None:
    out = both.run(
        "-v",
        "VERBOSITY=verbose",
        stdin=(
            "CREATE TEMP TABLE v (i int CHECK (i > 0));\n"
            "INSERT INTO v VALUES (-1);\n"
            "\\errverbose\n"
            "SELECT 'next';\n"
        ),
    )
    assert "23514" in out.stderr and "v_i_check" in out.stderr
    assert "LOCATION:" in out.stderr

    out = both.run(
        "-1",
        "-v",
        "ON_ERROR_STOP=1",
        stdin=(
            "CREATE TABLE single_tx_probe (i int);\n"
            "INSERT INTO single_tx_probe VALUES (1);\n"
            "SELECT 1/0;\n"
        ),
    )
    assert out.returncode == 3
    # Rolled back as a whole, so the table does not exist.
    out = both.run("-c", "SELECT to_regclass('single_tx_probe') IS NULL")
    assert out.stdout == "t\n"


def test_connection_from_environment_variables(idle_gateway: RunningGateway) -> None:
    """How people usually run psql: PGHOST, PGPASSWORD (the token), ..."""
    env = _env()
    env.update(
        PGHOST=idle_gateway.host,
        PGPORT=str(idle_gateway.port),
        PGUSER="alice",
        PGDATABASE="main",
        PGPASSWORD=idle_gateway.token(),
        PGSSLMODE="verify-full",
        PGSSLROOTCERT=str(idle_gateway.certs.ca_file),
        PGAPPNAME="from-env",
    )
    proc = subprocess.run(
        [PSQL, "-X", "-A", "-t", "-c", "SELECT current_user, current_setting('application_name')"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "app|from-env\n", "")
