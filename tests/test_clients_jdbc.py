"""The PostgreSQL JDBC driver (pgjdbc), unmodified, through the masking
gateway. pgjdbc switches to a named server-side statement after
``prepareThreshold`` executions and from then on sends Bind/Execute with no
Describe; with ``binaryTransfer`` it asks for binary results (int4, date) once
it knows the columns, and with a negative threshold it first describes the
statement in a round trip of its own (Parse, Describe statement, Sync) and
binds binary from the first run; with a fetch size it reads a portal in
batches (Execute with max rows, PortalSuspended), and binds the named
statement to a new portal with no Describe the second time. The rows must be
masked on every one of those paths.

The Java side is tests/jdbc/MaskingCheck.java, compiled once per session
with javac against the Debian package's jar (``make system-deps`` installs
both)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway import RunningGateway
from tests.test_masking import (  # noqa: F401  (fixtures used by name)
    ANN_CARD,
    ANN_EMAIL,
    ANN_SSN,
    gw,
    masked_config,
    monkeypatch_module,
)

SOURCE = Path(__file__).parent / "jdbc" / "MaskingCheck.java"
JAR_CANDIDATES = ["/usr/share/java/postgresql.jar", "/usr/share/java/postgresql-*.jar"]
RAW_EMAIL = "ann.lee@example.com"
BO_EMAIL = "b*@example.org"
NULL = "\\N"


def _java_tool(name: str) -> str | None:
    """``java``/``javac`` from JAVA_HOME, the PATH, or Debian's JVM directory."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / name, os.X_OK):
        return str(Path(home) / "bin" / name)
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/jvm/*/bin/{name}"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _pgjdbc_jar() -> str | None:
    explicit = os.environ.get("HOOPFAST_PGJDBC_JAR")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for pattern in JAR_CANDIDATES:
        for candidate in sorted(glob.glob(pattern)):
            if Path(candidate).is_file():
                return candidate
    return None


JAVA, JAVAC, JAR = _java_tool("java"), _java_tool("javac"), _pgjdbc_jar()

pytestmark = pytest.mark.skipif(
    not (JAVA and JAVAC and JAR),
    reason=(
        f"needs a JDK and the PostgreSQL JDBC driver (java={JAVA}, javac={JAVAC}, jar={JAR}):"
        " `make system-deps` installs default-jdk-headless and libpostgresql-jdbc-java"
    ),
)


@pytest.fixture(scope="session")
def jdbc_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert JAVAC and JAR
    out = tmp_path_factory.mktemp("jdbc-classes")
    done = subprocess.run(
        [JAVAC, "-encoding", "UTF-8", "-cp", JAR, "-d", str(out), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"javac failed:\n{done.stdout}\n{done.stderr}"
    return out


def _jdbc_url(running: RunningGateway, connection: str) -> str:
    options = {
        "sslmode": "verify-full",
        # A PEM file of CA certificates: pgjdbc's default LibPQFactory reads it.
        "sslrootcert": str(running.certs.ca_file),
        # No client certificate (pgjdbc would otherwise look in ~/.postgresql).
        "sslcert": "",
        "sslkey": "",
        # Server-side prepared statements from the first execution on.
        "prepareThreshold": "1",
        "preferQueryMode": "extended",
        "connectTimeout": "10",
        # A hang surfaces as an error in the output rather than a timeout.
        "socketTimeout": "30",
        "ApplicationName": "hoopfast-jdbc-test",
    }
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"jdbc:postgresql://{running.host}:{running.port}/{connection}?{query}"


def _run(running: RunningGateway, classes: Path) -> subprocess.CompletedProcess[str]:
    assert JAVA and JAR
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "JAVA_TOOL"))}
    # The token is the password: in the environment, not on the command line.
    env.update(
        HOOPFAST_JDBC_USER="alice",
        HOOPFAST_JDBC_PASSWORD=running.token("alice"),
        LC_ALL="C.UTF-8",
        TZ="UTC",
    )
    return subprocess.run(
        [
            JAVA,
            "-Duser.timezone=UTC",
            "-Dfile.encoding=UTF-8",
            "-cp",
            os.pathsep.join([JAR, str(classes)]),
            "MaskingCheck",
            _jdbc_url(running, "masked"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _records(stdout: str) -> dict[str, list[list[str]]]:
    records: dict[str, list[list[str]]] = {}
    for line in stdout.splitlines():
        kind, *fields = line.split("\t")
        records.setdefault(kind, []).append(fields)
    return records


def test_jdbc_masks_prepared_binary_fetch_and_errors(
    gw: RunningGateway,  # noqa: F811  (the fixture imported above)
    jdbc_classes: Path,
) -> None:
    done = _run(gw, jdbc_classes)
    report = f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert RAW_EMAIL not in done.stdout, report
    assert "123-45-6789" not in done.stdout, report
    assert "4111 1111 1111 1111" not in done.stdout, report
    records = _records(done.stdout)
    assert "FAIL" not in records, report
    assert done.returncode == 0, report
    assert done.stdout.splitlines()[-1] == "DONE", report

    # Ten runs of one PreparedStatement (named from the first, then Bind/
    # Execute only), and an eleventh from pgjdbc's statement cache.
    rows = records.get("row", [])
    assert [r[0] for r in rows] == [str(i) for i in range(1, 12)], report
    for _, email, card, ssn, name in rows:
        assert (email, card, ssn, name) == (ANN_EMAIL, ANN_CARD, ANN_SSN, "Ann Lee"), report

    # binaryTransfer: text on the first run, then binary int4 and date; and
    # forced binary: a describe-only round trip, then binary from the first run.
    for kind in ("binrow", "forced"):
        binrows = records.get(kind, [])
        assert [r[0] for r in binrows] == ["1", "2", "3"], report
        for _, email, card, ssn, name, id_, born in binrows:
            assert (email, card, ssn, name, id_) == (ANN_EMAIL, ANN_CARD, ANN_SSN, "Ann Lee", "1")
            assert born == "1970-01-01", report  # the date rule's fallback, in binary

    # Fetch size 1 in a transaction: a portal read one row per Execute, twice.
    fetched = [r[0] for r in records.get("fetch", [])]
    assert fetched == [ANN_EMAIL, BO_EMAIL, NULL] * 2, report
    scrolled = [r[0] for r in records.get("scroll", [])]
    assert scrolled == [NULL, BO_EMAIL, ANN_EMAIL], report

    # The error quotes the masked value, never the raw one.
    [[sqlstate, message, primary]] = records.get("error", [[]])
    assert sqlstate == "22P02", report
    assert RAW_EMAIL not in message and RAW_EMAIL not in primary
    assert primary == 'invalid input syntax for type integer: "[REDACTED]"', report
    assert records.get("after") == [[BO_EMAIL]], report

    gw.wait_idle()
