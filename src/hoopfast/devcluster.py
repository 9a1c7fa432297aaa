"""Throwaway PostgreSQL clusters (and a PgBouncer) for demos, tests and benchmarks.

Nothing here is meant for production: the cluster runs with ``fsync=off`` and is
deleted on :meth:`DevCluster.stop`.  Typical use::

    with DevCluster(tmp_path / "pg") as pg:
        pg.add_role("alice", "secret", "md5")
        pg.create_database("app", owner="alice")
        conninfo = pg.dsn("alice", "secret", "app")          # TLS, verify-full

Design notes
------------
* **Root.**  PostgreSQL (and PgBouncer) refuse to run as root.  When the
  effective uid is 0 every server-side process (``initdb``, ``pg_ctl``,
  ``postgres``, ``pgbouncer``) is started as an unprivileged system user
  (``postgres`` by default, override with ``HOOPFAST_PG_USER``) via
  ``subprocess``'s ``user=``/``group=``/``extra_groups=`` arguments.  The
  directories that server writes to (data dir, socket dir, pgbouncer dir) are
  created by us and ``chown``-ed to that user.  The *ancestors* of ``base_dir``
  must be traversable by that user, and pytest's ``/tmp/pytest-of-root`` is
  ``0700``: we therefore add only the "search" bit for others (``o+x``) to each
  ancestor that the user could not otherwise traverse.  ``o+x`` does not allow
  listing a directory, so file names in it remain private; it is the smallest
  change that works and it is idempotent.
* **Sockets.**  A Unix socket path is limited to ~107 bytes; if ``base_dir`` is
  deep (long pytest test names) the socket directory is a short ``mkdtemp``
  under ``/tmp`` instead, removed on :meth:`DevCluster.stop`.
* **Startup time.**  ``initdb --no-sync --no-instructions`` plus ``pg_ctl -w``
  take well under a second on a laptop; TLS material uses EC P-256 keys, which
  are generated in microseconds (RSA-2048 would cost ~100 ms per key).
* **pg_hba.conf** is owned by this module and rewritten in full on each change:
  ``local`` trust for the superuser only, one block per role added with
  :meth:`DevCluster.add_role`, and a final ``host all all 127.0.0.1/32
  scram-sha-256`` catch-all.  After ``pg_reload_conf()`` we wait until a fresh
  backend reports a newer ``pg_conf_load_time()``, which proves the postmaster
  has reloaded pg_hba.conf before we return (no race with the next connect).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from hoopfast.conninfo import make_conninfo
from hoopfast.devtls import generate_tls_material

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql as _sql

__all__ = [
    "AuthMethod",
    "DevCluster",
    "DevClusterError",
    "PgBouncer",
    "find_pg_bindir",
    "free_port",
]

AuthMethod = Literal["scram-sha-256", "md5", "password"]

#: Loopback address every server listens on.
LOCALHOST = "127.0.0.1"

# Maximum length of sun_path on Linux is 108 including the NUL byte.
_MAX_SOCKET_PATH = 107
_ROLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


class DevClusterError(RuntimeError):
    """A throwaway cluster (or PgBouncer) could not be set up."""


# --------------------------------------------------------------------------- helpers


_handed_out_ports: set[int] = set()


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on *host* that is currently free.

    The kernel picks an ephemeral port (never 5432 in practice); ports already
    returned by this process are skipped, so two clusters started back to back
    cannot be handed the same number.  There is an unavoidable window between
    this call and the server binding the port: servers started here retry with
    a new port when the bind fails.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out_ports and port != 5432:
            _handed_out_ports.add(port)
            return port
    raise DevClusterError("could not find a free TCP port")


def _has_server_binaries(d: Path) -> bool:
    return (d / "initdb").is_file() and (d / "postgres").is_file()


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,)
    name = Path(path).parent.name
    return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)


def find_pg_bindir() -> Path:
    """Locate the PostgreSQL server binaries (``initdb``, ``postgres``, ``pg_ctl``).

    Order: ``$HOOPFAST_PG_BINDIR``; ``pg_config --bindir`` if that directory has
    the server binaries (on Debian it usually only has client tools); the
    highest-versioned ``/usr/lib/postgresql/*/bin``.
    """
    env = os.environ.get("HOOPFAST_PG_BINDIR")
    if env:
        d = Path(env)
        if not _has_server_binaries(d):
            raise DevClusterError(f"HOOPFAST_PG_BINDIR={env} has no initdb/postgres")
        return d
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out and _has_server_binaries(Path(out)):
                return Path(out)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for c in candidates:
        if _has_server_binaries(Path(c)):
            return Path(c)
    raise DevClusterError(
        "PostgreSQL server binaries not found: set HOOPFAST_PG_BINDIR to a directory "
        "containing initdb and postgres (e.g. /usr/lib/postgresql/15/bin)"
    )


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged identity server processes run as (only when we are root)."""

    uid: int
    gid: int
    home: str

    @classmethod
    def detect(cls) -> _RunAs | None:
        if os.geteuid() != 0:
            return None
        name = os.environ.get("HOOPFAST_PG_USER", "postgres")
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise DevClusterError(
                f"running as root, but PostgreSQL refuses to run as root and the user "
                f"{name!r} does not exist; create it or set HOOPFAST_PG_USER"
            ) from None
        if pw.pw_uid == 0:
            raise DevClusterError(f"HOOPFAST_PG_USER={name!r} is root")
        return cls(pw.pw_uid, pw.pw_gid, pw.pw_dir)

    def can_traverse(self, st: os.stat_result) -> bool:
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid == self.gid:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)

    def grant_traverse(self, path: Path) -> None:
        """Add ``o+x`` to *path* and its ancestors where this user lacks search permission."""
        for p in [path, *path.parents]:
            st = p.stat()
            if not self.can_traverse(st):
                os.chmod(p, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)

    def chown(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)


def _server_env(run_as: _RunAs | None) -> dict[str, str]:
    """A clean environment for server processes: no PG* variables, C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    if run_as is not None:
        env["HOME"] = run_as.home
    return env


def _run(
    argv: Sequence[str | Path],
    *,
    run_as: _RunAs | None,
    cwd: Path,
    timeout: float = 60.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a server-side tool, as the unprivileged user when we are root."""
    kwargs: dict[str, Any] = {}
    if run_as is not None:
        kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=[])
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_server_env(run_as),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise DevClusterError(
            f"{Path(str(argv[0])).name} failed (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}".rstrip()
        )
    return proc


def _write(path: Path, text: str, *, mode: int = 0o644, owner: _RunAs | None = None) -> None:
    """Write *text* to *path* with *mode*, owned by *owner* (when root)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    if owner is not None:
        owner.chown(path)


def _mkdir(path: Path, *, mode: int = 0o700, owner: _RunAs | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        owner.chown(path)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _hba_word(name: str) -> str:
    # Quoted so a role named e.g. "all" or with upper case is matched literally.
    return '"' + name.replace('"', '""') + '"'


def _port_in_use(log_text: str) -> bool:
    return "could not bind" in log_text or "Address already in use" in log_text


# --------------------------------------------------------------------------- TLS


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class _RoleRule:
    name: str
    method: AuthMethod
    hostssl_only: bool
    hostnossl_only: bool

    def lines(self) -> list[str]:
        who = f"all {_hba_word(self.name)} {LOCALHOST}/32"
        if self.hostssl_only:
            return [f"hostnossl {who} reject", f"hostssl   {who} {self.method}"]
        if self.hostnossl_only:
            return [f"hostssl   {who} reject", f"hostnossl {who} {self.method}"]
        return [f"host      {who} {self.method}"]


class DevCluster:
    """A private PostgreSQL cluster on 127.0.0.1 for the lifetime of a test/demo.

    Layout under *base_dir* (created if missing)::

        data/            PGDATA (owned by the postgres user when root);
                         postgresql.log, server.crt, server.key live here
        run/             Unix socket directory (or a short /tmp/hfpg-* dir)
        tls/ca.crt       CA that signed the server certificate (``ca_file``)
        tls/ca.key       its key, should a test want to sign more certificates

    :meth:`stop` deletes everything it created (unless ``keep=True`` or
    ``HOOPFAST_KEEP_CLUSTER=1``).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        tls: bool = True,
        superuser: str = "postgres",
        bindir: Path | None = None,
        keep: bool | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._base_dir = Path(base_dir).absolute()
        self._explicit_port = port is not None
        self._port = port if port is not None else free_port()
        self._tls = tls
        self._superuser = superuser
        self._password = secrets.token_urlsafe(18)
        self._bindir = bindir
        self._keep = keep if keep is not None else os.environ.get("HOOPFAST_KEEP_CLUSTER") == "1"
        self._start_timeout = start_timeout
        self._run_as: _RunAs | None = None
        self._data_dir = self._base_dir / "data"
        self._tls_dir = self._base_dir / "tls"
        self._socket_dir = self._base_dir / "run"
        self._tmp_socket_dir = False
        self._created_base = False
        self._role_rules: list[_RoleRule] = []
        self._extra_hba: list[str] = []
        self._running = False
        self._initialized = False

    # ---------------------------------------------------------------- properties

    @property
    def host(self) -> str:
        """TCP host the server listens on (always ``127.0.0.1``)."""
        return LOCALHOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def socket_dir(self) -> Path:
        return self._socket_dir

    @property
    def log_file(self) -> Path:
        return self._data_dir / "postgresql.log"

    @property
    def ca_file(self) -> Path:
        """PEM file of the CA that signed the server certificate (``sslrootcert``)."""
        if not self._tls:
            raise DevClusterError("cluster was created with tls=False")
        return self._tls_dir / "ca.crt"

    @property
    def ca_key_file(self) -> Path:
        if not self._tls:
            raise DevClusterError("cluster was created with tls=False")
        return self._tls_dir / "ca.key"

    @property
    def superuser(self) -> str:
        return self._superuser

    @property
    def superuser_password(self) -> str:
        return self._password

    @property
    def running(self) -> bool:
        return self._running

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_pg_bindir()
        return self._bindir

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """initdb (first time only), configure and start the server; wait until ready."""
        if self._running:
            return self
        try:
            self._start()
        except BaseException:
            # Don't leave a half-built cluster (or a stray postmaster) behind.
            self._kill_postmaster()
            if not self._keep:
                self._cleanup()
            raise
        self._running = True
        atexit.register(self.stop)
        return self

    def _start(self) -> None:
        if not self._initialized:
            self._init()
        attempts = 1 if self._explicit_port else 5
        for attempt in range(attempts):
            self._write_conf()
            proc = self._pg_ctl(
                "start",
                "-w",
                "-t",
                str(int(self._start_timeout)),
                "-l",
                self.log_file,
                check=False,
                timeout=self._start_timeout + 10,
            )
            if proc.returncode == 0:
                break
            log = _tail(self.log_file)
            if attempt + 1 < attempts and _port_in_use(log):
                self._port = free_port()  # lost the race for the port: try another
                continue
            raise DevClusterError(
                f"PostgreSQL failed to start on port {self._port} "
                f"(pg_ctl exit {proc.returncode}): {proc.stdout}{proc.stderr}\n"
                f"--- tail of {self.log_file} ---\n{log}"
            )

    def stop(self) -> None:
        """Stop immediately (``pg_ctl stop -m immediate``) and delete the cluster.

        Safe to call more than once and on a cluster that never started.
        """
        atexit.unregister(self.stop)
        if self._running:
            self._running = False
            proc = self._pg_ctl(
                "stop", "-m", "immediate", "-w", "-t", "10", check=False, timeout=20
            )
            if proc.returncode != 0:
                self._kill_postmaster()
        if self._keep:
            return
        self._cleanup()

    def restart(self) -> None:
        """Crash-stop and start the server again, keeping data and configuration.

        Handy for testing how a client copes with the server going away.
        """
        if self._running:
            self._running = False
            self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "10", check=False, timeout=20)
        self.start()

    def _kill_postmaster(self) -> None:
        pidfile = self._data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    def _cleanup(self) -> None:
        if self._tmp_socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._created_base:
            shutil.rmtree(self._base_dir, ignore_errors=True)
        else:
            for d in (self._data_dir, self._tls_dir, self._base_dir / "run"):
                shutil.rmtree(d, ignore_errors=True)
        self._initialized = False

    # ---------------------------------------------------------------- setup

    def _pg_ctl(
        self, *args: str | Path, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            [self.bindir / "pg_ctl", "-D", self._data_dir, "-s", *args],
            run_as=self._run_as,
            cwd=self._base_dir,
            timeout=timeout,
            check=check,
        )

    def _init(self) -> None:
        self._run_as = _RunAs.detect()
        run_as = self._run_as
        if not self._base_dir.exists():
            self._created_base = True
        _mkdir(self._base_dir, mode=0o755)
        if run_as is not None:
            run_as.grant_traverse(self._base_dir)
        if self._data_dir.exists() and any(self._data_dir.iterdir()):
            raise DevClusterError(f"{self._data_dir} exists and is not empty")

        # Socket dir: keep it under base_dir unless the path would be too long.
        if len(str(self._socket_dir)) + len("/.s.PGSQL.65535.lock") > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="hfpg-", dir="/tmp"))
            self._tmp_socket_dir = True
        _mkdir(self._socket_dir, mode=0o755, owner=run_as)
        _mkdir(self._data_dir, mode=0o700, owner=run_as)

        # initdb reads the superuser password from a file; it is deleted right away.
        pwfile = self._base_dir / ".pwfile"
        _write(pwfile, self._password + "\n", mode=0o600, owner=run_as)
        try:
            _run(
                [
                    self.bindir / "initdb",
                    "-D",
                    self._data_dir,
                    "-U",
                    self._superuser,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                run_as=run_as,
                cwd=self._base_dir,
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)

        if self._tls:
            material = generate_tls_material()
            _mkdir(self._tls_dir, mode=0o755)
            _write(self._tls_dir / "ca.crt", material.ca_cert_pem.decode(), mode=0o644)
            _write(self._tls_dir / "ca.key", material.ca_key_pem.decode(), mode=0o600)
            _write(
                self._data_dir / "server.crt",
                material.server_cert_pem.decode(),
                mode=0o644,
                owner=run_as,
            )
            # PostgreSQL insists: key owned by the server user and mode 0600.
            _write(
                self._data_dir / "server.key",
                material.server_key_pem.decode(),
                mode=0o600,
                owner=run_as,
            )

        with open(self._data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# settings of hoopfast.devcluster\ninclude 'hoopfast.conf'\n")
        self._write_hba()
        self._initialized = True

    def _write_conf(self) -> None:
        settings: dict[str, str] = {
            "listen_addresses": f"'{LOCALHOST}'",
            "port": str(self._port),
            "unix_socket_directories": f"'{self._socket_dir}'",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "huge_pages": "off",
            # Throwaway data: trade durability for speed.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "password_encryption": "'scram-sha-256'",
            # stderr goes to postgresql.log in the data dir (pg_ctl -l).
            "logging_collector": "off",
            "log_destination": "'stderr'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "log_min_messages": "warning",
            "ssl": "on" if self._tls else "off",
        }
        if self._tls:
            settings |= {"ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"}
        text = "".join(f"{k} = {v}\n" for k, v in settings.items())
        _write(self._data_dir / "hoopfast.conf", text, mode=0o600, owner=self._run_as)

    def _write_hba(self) -> None:
        lines = [
            "# Managed by hoopfast.devcluster; rewritten on every change.",
            "# TYPE   DATABASE USER ADDRESS METHOD",
            f"local     all {_hba_word(self._superuser)} trust",
            "local     all all scram-sha-256",
        ]
        for rule in self._role_rules:
            lines.extend(rule.lines())
        lines.extend(self._extra_hba)
        lines.append(f"host      all all {LOCALHOST}/32 scram-sha-256")
        _write(
            self._data_dir / "pg_hba.conf", "\n".join(lines) + "\n", mode=0o600, owner=self._run_as
        )

    def reload(self) -> None:
        """Reload configuration and wait until the postmaster has applied it."""
        self._require_running()
        before = self.execute("SELECT pg_conf_load_time()")[0][0]
        self.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # A new backend inherits the postmaster's reload time: once it moved,
            # pg_hba.conf has been re-read as well.
            if self.execute("SELECT pg_conf_load_time()")[0][0] > before:
                return
            time.sleep(0.01)
        raise DevClusterError(f"configuration reload not observed\n{_tail(self.log_file)}")

    # ---------------------------------------------------------------- SQL helpers

    def _require_running(self) -> None:
        if not self._running:
            raise DevClusterError("cluster is not running (call start())")

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser autocommit connection over the Unix socket (trust auth)."""
        import psycopg

        self._require_running()
        return psycopg.connect(
            host=str(self._socket_dir),
            port=self._port,
            user=self._superuser,
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
        )

    def execute(
        self,
        sql: str | _sql.SQL | _sql.Composed,
        dbname: str = "postgres",
        params: Sequence[Any] | Mapping[str, Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run *sql* as superuser (autocommit); return the rows, if any."""
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def create_database(self, name: str, owner: str | None = None) -> None:
        from psycopg import sql

        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner is not None:
            stmt = sql.SQL("{} OWNER {}").format(stmt, sql.Identifier(owner))
        self.execute(stmt)

    def add_role(
        self,
        name: str,
        password: str,
        auth: AuthMethod = "scram-sha-256",
        *,
        superuser: bool = False,
        hostssl_only: bool = False,
        hostnossl_only: bool = False,
        extra: str = "",
    ) -> None:
        """Create a login role and make pg_hba.conf require *auth* for it over TCP.

        * ``md5``: the password is stored as an MD5 hash (``password_encryption``
          is set to md5 for the CREATE ROLE), so the server really does MD5.
        * ``password``: cleartext password exchange (stored hash is SCRAM).
        * ``hostssl_only`` / ``hostnossl_only``: the role is rejected on a
          non-TLS / TLS connection respectively.
        * ``extra``: raw role options appended to CREATE ROLE (e.g. ``CREATEDB``).
        """
        from psycopg import sql

        if auth not in ("scram-sha-256", "md5", "password"):
            raise ValueError(f"unsupported auth method {auth!r}")
        if hostssl_only and hostnossl_only:
            raise ValueError("hostssl_only and hostnossl_only are exclusive")
        if hostssl_only and not self._tls:
            raise ValueError("hostssl_only needs a cluster with tls=True")
        encryption = "md5" if auth == "md5" else "scram-sha-256"
        with self.connect() as conn:
            conn.execute(sql.SQL("SET password_encryption = {}").format(sql.Literal(encryption)))
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN {} {} PASSWORD {}").format(
                    sql.Identifier(name),
                    sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
                    sql.SQL(extra),  # caller-supplied raw SQL, trusted (tests)
                    sql.Literal(password),
                )
            )
        self._role_rules.append(_RoleRule(name, auth, hostssl_only, hostnossl_only))
        self._write_hba()
        self.reload()

    def add_hba_line(self, line: str) -> None:
        """Insert a raw pg_hba.conf line before the final catch-all and reload."""
        self._extra_hba.append(line)
        self._write_hba()
        self.reload()

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        *,
        sslmode: str | None = None,
        host: str | None = None,
        port: int | None = None,
        **extra: str | int,
    ) -> str:
        """A libpq conninfo string for a TCP connection to this cluster.

        Defaults: the superuser and its password; ``sslmode=verify-full`` with
        ``sslrootcert=ca_file`` when TLS is on (the certificate covers both
        ``127.0.0.1`` and ``localhost``), ``disable`` otherwise.  *host*/*port*
        override the target, e.g. to go through a proxy.
        """
        if user is None:
            user = self._superuser
            password = self._password if password is None else password
        if sslmode is None:
            sslmode = "verify-full" if self._tls else "disable"
        params: dict[str, str | int | None] = {
            "host": host or self.host,
            "port": port or self._port,
            "user": user,
            "password": password,
            "dbname": dbname,
            "sslmode": sslmode,
            "sslrootcert": str(self.ca_file) if self._tls else None,
        }
        params.update(extra)
        return make_conninfo(params)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<DevCluster {self.host}:{self._port} {state} at {self._base_dir}>"


# --------------------------------------------------------------------------- pgbouncer


def find_pgbouncer() -> Path:
    """``$HOOPFAST_PGBOUNCER``, then ``pgbouncer`` on PATH, then /usr/sbin/pgbouncer."""
    env = os.environ.get("HOOPFAST_PGBOUNCER")
    for cand in (env, shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if cand and os.access(cand, os.X_OK):
            return Path(cand)
    raise DevClusterError("pgbouncer not found (install it or set HOOPFAST_PGBOUNCER)")


class PgBouncer:
    """PgBouncer in front of a :class:`DevCluster`, listening on 127.0.0.1 (TCP only).

    Every database name is forwarded to the cluster (``* =`` fallback entry);
    PgBouncer logs into the server over TCP with the same user and password the
    client used.  *users* maps user names to plaintext passwords (default: the
    cluster superuser); with ``secrets="authid"`` the auth file holds the SCRAM
    secrets copied from ``pg_authid`` instead, which PgBouncer can pass through
    to the server only for clients that authenticate with SCRAM themselves.
    """

    def __init__(
        self,
        cluster: DevCluster,
        base_dir: Path,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        auth_type: Literal["scram-sha-256", "md5", "plain"] = "scram-sha-256",
        secrets: Literal["plain", "authid"] = "plain",
        pool_mode: Literal["session", "transaction", "statement"] = "session",
        max_client_conn: int = 500,
        default_pool_size: int = 100,
        extra_settings: Mapping[str, str] | None = None,
        binary: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self._cluster = cluster
        self._dir = Path(base_dir).absolute()
        self._explicit_port = port is not None
        self._port = port if port is not None else free_port()
        self._users = (
            dict(users) if users is not None else {cluster.superuser: cluster.superuser_password}
        )
        self._auth_type = auth_type
        self._secrets = secrets
        self._pool_mode = pool_mode
        self._max_client_conn = max_client_conn
        self._default_pool_size = default_pool_size
        self._extra = dict(extra_settings or {})
        self._binary = binary
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._created_dir = False

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def log_file(self) -> Path:
        return self._dir / "pgbouncer.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        **extra: str | int,
    ) -> str:
        """libpq conninfo for a (non-TLS) client connection through PgBouncer."""
        if user is None:
            user = self._cluster.superuser
            password = self._users.get(user) if password is None else password
        params: dict[str, str | int | None] = {
            "host": self.host,
            "port": self._port,
            "user": user,
            "password": password,
            "dbname": dbname,
            "sslmode": "disable",
        }
        params.update(extra)
        return make_conninfo(params)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _userlist(self) -> str:
        entries: dict[str, str] = dict(self._users)
        if self._secrets == "authid":
            rows = self._cluster.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
                params=[list(self._users)],
            )
            entries = {name: secret for name, secret in rows if secret}
        return "".join(
            '"{}" "{}"\n'.format(u.replace('"', '""'), p.replace('"', '""'))
            for u, p in entries.items()
        )

    def _ini(self) -> str:
        c = self._cluster
        settings: dict[str, str] = {
            "listen_addr": LOCALHOST,
            "listen_port": str(self._port),
            "unix_socket_dir": "",  # TCP only
            "auth_type": self._auth_type,
            "auth_file": str(self._dir / "userlist.txt"),
            "pool_mode": self._pool_mode,
            "max_client_conn": str(self._max_client_conn),
            "default_pool_size": str(self._default_pool_size),
            "max_db_connections": "0",
            "listen_backlog": "4096",
            "logfile": str(self.log_file),
            "pidfile": str(self._dir / "pgbouncer.pid"),
            "admin_users": c.superuser,
            "stats_users": c.superuser,
            "ignore_startup_parameters": "extra_float_digits",
            "server_tls_sslmode": "disable",
            "client_tls_sslmode": "disable",
            "log_connections": "0",
            "log_disconnections": "0",
        }
        settings.update(self._extra)
        body = "".join(f"{k} = {v}\n" for k, v in settings.items())
        return f"[databases]\n* = host={c.host} port={c.port}\n\n[pgbouncer]\n" + body

    def start(self) -> Self:
        if self.running:
            return self
        run_as = _RunAs.detect()  # pgbouncer also refuses to run as root
        binary = self._binary or find_pgbouncer()
        if not self._dir.exists():
            self._created_dir = True
        _mkdir(self._dir, mode=0o700, owner=run_as)
        if run_as is not None:
            run_as.grant_traverse(self._dir)
        _write(self._dir / "userlist.txt", self._userlist(), mode=0o600, owner=run_as)
        kwargs: dict[str, Any] = {}
        if run_as is not None:
            kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=[])

        attempts = 1 if self._explicit_port else 5
        for attempt in range(attempts):
            ini = self._dir / "pgbouncer.ini"
            _write(ini, self._ini(), mode=0o600, owner=run_as)
            with open(self._dir / "stderr.log", "ab") as err:
                self._proc = subprocess.Popen(
                    [str(binary), str(ini)],
                    cwd=self._dir,
                    env=_server_env(run_as),
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,
                    **kwargs,
                )
            err_text = self._wait_ready()
            if err_text is None:
                atexit.register(self.stop)
                return self
            if attempt + 1 < attempts and _port_in_use(err_text):
                self._port = free_port()
                continue
            raise DevClusterError(f"pgbouncer failed to start on port {self._port}:\n{err_text}")
        raise AssertionError("unreachable")

    def _wait_ready(self) -> str | None:
        """Poll until the port accepts connections; return the log tail on failure."""
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex((LOCALHOST, self._port)) == 0:
                    return None
            time.sleep(0.02)
        self._terminate()
        return f"{_tail(self.log_file)}\n{_tail(self._dir / 'stderr.log')}"

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # immediate shutdown
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        """Stop PgBouncer and remove its directory (if it was created here)."""
        atexit.unregister(self.stop)
        self._terminate()
        if self._created_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._created_dir = False

    def __repr__(self) -> str:
        return f"<PgBouncer {self.host}:{self._port} -> {self._cluster!r}>"
