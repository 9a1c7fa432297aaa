"""The embedded state store: one SQLite file in WAL mode.

sqlite3 calls block, so every one of them runs on a single dedicated worker
thread, which owns the connection: calls are serialised for free, the event
loop never waits on the disk, and no connection crosses threads. Each
blocking function is a complete unit (its own transaction, rolled back on
error), so a caller cancelled while it runs leaves nothing half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hoopfast.store import migrations
from hoopfast.store.base import StoreError
from hoopfast.store.blocks import BLOCK_COLUMNS, build_blocks, new_counts, session_runs
from hoopfast.store.records import EventRecord, Seal
from hoopfast.store.sql import SqlStore, session_starts

__all__ = ["SqliteStore"]

_T = TypeVar("_T")

#: How long a writer waits for another process's write lock (milliseconds).
_BUSY_TIMEOUT_MS = 5000


class SqliteStore(SqlStore):
    backend = "sqlite"
    param = "?"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # -- plumbing --------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._executor is None:
            raise RuntimeError("the SQLite store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """On the worker thread: run ``fn``, turning failures into StoreError."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            return fn(self._conn)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"the SQLite store at {self.path} is unavailable: {e}") from e

    def _connect(self) -> sqlite3.Connection:
        parent = self.path.parent
        if not parent.is_dir():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
        # Created here rather than by SQLite, which would use 0644: recordings
        # are audit data. The -wal and -shm files inherit the database's mode.
        # Only when it does not exist yet: closing *any* descriptor of a
        # SQLite file drops every POSIX lock this process holds on it, so
        # opening and closing an existing database under another connection
        # of the same process (tests run several gateways on one store)
        # would let writers collide and corrupt it.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        # isolation_level=None: transactions are begun and ended explicitly.
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            # Only a new file takes it (before WAL and the first table): block
            # bodies are large, and 64 KiB pages write them to the WAL and
            # back to the file with a sixteenth of the system calls of 4 KiB
            # ones (the writer thread's system time per event halved).
            conn.execute("PRAGMA page_size=65536")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys=OFF")
        except BaseException:
            conn.close()
            raise
        return conn

    def _shutdown(self) -> None:
        """On the worker thread: close the connection (it belongs to it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="hoopfast-sqlite")
        try:
            await self._run(_migrate)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._shutdown)
        finally:
            executor.shutdown(wait=False)

    async def schema_version(self) -> int:
        return await self._run(_read_version)

    # -- recordings: written ---------------------------------------------------

    async def write_recording(self, events: Sequence[EventRecord], seals: Sequence[Seal]) -> None:
        if events or seals:
            await self._run(lambda conn: _write_recording(conn, events, seals))

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._run(lambda conn: conn.execute(sql, params).fetchall())

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        def write(conn: sqlite3.Connection) -> int:
            try:
                return _in_transaction(conn, lambda: conn.execute(sql, params).rowcount)
            except UnicodeEncodeError as e:
                # A lone surrogate has no UTF-8: a StoreError (via _call), as
                # PostgreSQL's refusal of a NUL is, not a crash.
                raise sqlite3.DataError(str(e)) from None

        return await self._run(write)


# -- on the worker thread ------------------------------------------------------


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL (it persists in the file). The switch needs the file to
    itself and SQLite reports "locked" at once, without the busy handler, when
    another process opens the same new file at the same moment: so wait here,
    as the busy timeout would."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` inside BEGIN IMMEDIATE ... COMMIT. IMMEDIATE takes the write
    lock up front, so another process's writer makes us wait (busy_timeout)
    instead of failing half way with SQLITE_BUSY."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def _read_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute(migrations.READ_VERSION_SQL).fetchone()[0]
    return version


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the pending steps, each in its own transaction; the version is
    read again under the lock, so a concurrent opener's work is not redone."""

    def step() -> bool:
        conn.execute(migrations.VERSION_TABLE_SQL["sqlite"])
        todo = migrations.pending(_read_version(conn))
        if not todo:
            return False
        for statement in todo[0].sqlite:
            conn.execute(statement)
        conn.execute(migrations.RECORD_VERSION_SQL["sqlite"], (todo[0].version, time.time()))
        return True

    while _in_transaction(conn, step):
        pass


#: A session's last stored seq: its last block's (by the primary key, one
#: probe; max(last_seq) would read all its blocks). Blocks of a session
#: never overlap (build_blocks), so no other block ends later.
_LAST_SEQ = "SELECT last_seq FROM event_blocks WHERE session_id = ? ORDER BY first_seq DESC LIMIT 1"
# ON CONFLICT DO NOTHING, not OR IGNORE: it skips a stored block only, where
# OR IGNORE would also skip a row that breaks a NOT NULL constraint.
_INSERT_BLOCK = (
    f"INSERT INTO event_blocks ({BLOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)


def _write_recording(
    conn: sqlite3.Connection, events: Sequence[EventRecord], seals: Sequence[Seal]
) -> None:
    # The costly part before the transaction, which holds the write lock.
    runs = session_runs(events)
    starts = session_starts(events)

    def write() -> None:
        # Under the write lock: what each session has stored decides which
        # events are new (a redelivered batch adds nothing), and only the
        # blocks inserted are counted.
        stored = {sid: _last_seq(conn, sid) for sid in runs}
        inserted = [
            block
            for block in build_blocks(runs, stored)
            if conn.execute(_INSERT_BLOCK, block.values()).rowcount == 1
        ]
        # Sessions are opened before they are counted: a batch may hold both.
        conn.executemany(
            "INSERT OR IGNORE INTO sessions"
            " (session_id, subject, connection, client_address, started_at)"
            " VALUES (?, ?, ?, ?, ?)",
            starts,
        )
        conn.executemany(
            "UPDATE sessions SET stored_events = stored_events + ?, statements = statements + ?"
            " WHERE session_id = ?",
            [(n, statements, sid) for sid, (n, statements) in new_counts(inserted).items()],
        )
        conn.executemany(
            "UPDATE sessions SET ended_at = ?, end_reason = ?, events = ?, last_hash = ?,"
            " key_id = ?, signature = ? WHERE session_id = ? AND signature IS NULL",
            [
                (
                    s.ended_at,
                    s.end_reason,
                    s.events,
                    s.last_hash,
                    s.key_id,
                    s.signature,
                    s.session_id,
                )
                for s in seals
            ],
        )

    try:
        _in_transaction(conn, write)
    except UnicodeEncodeError as e:
        # A lone surrogate has no UTF-8: a StoreError (via _call), as in _write.
        raise sqlite3.DataError(str(e)) from None


def _last_seq(conn: sqlite3.Connection, session_id: str) -> int | None:
    row = conn.execute(_LAST_SEQ, (session_id,)).fetchone()
    return None if row is None else int(row[0])
