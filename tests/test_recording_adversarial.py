"""Adversarial tests of the recorder's spool-to-store path (hoopfast.recording)
and of the event blocks (hoopfast.store.blocks): crashes, store outages and
races between the data path and the flusher, against the real Recorder,
Spool and SqliteStore.

Where a test needs the data path to run *while* the flusher awaits the
store, a SqliteStore subclass runs a callback at the start of
write_recording: on a real gateway that is any statement that completes
while a batch is in the store's worker thread. Each test here fails on the
code it was written against (0b3c8d0); see the docstrings. Two of them
(test_one_unstorable_event..., test_close_during_a_flush...) show faults
older than the blocks and the open-segment flusher.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from hoopfast.recording import chain
from hoopfast.recording import recorder as rec
from hoopfast.recording.chain import Signer, verify_session
from hoopfast.store import StoreError
from hoopfast.store.records import EventRecord, Seal, SessionRow
from hoopfast.store.sqlite import SqliteStore


class HookedStore(SqliteStore):
    """A real SQLite store; ``before_write``, when set, runs once at the start
    of the next write_recording (the data path running while the flusher
    awaits the store)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.before_write: Callable[[], None] | None = None

    async def write_recording(self, events: Sequence[EventRecord], seals: Sequence[Seal]) -> None:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()
        await super().write_recording(events, seals)


def _recorder(store: SqliteStore, tmp_path: Path, **options: Any) -> rec.Recorder:
    options = {"fsync": "off", "flush_interval": 3600, **options}
    return rec.Recorder(
        store,
        tmp_path / "spool",
        Signer.load_or_create(tmp_path / "key.pem"),
        rec.RecorderOptions(**options),
    )


def _crash(recorder: rec.Recorder) -> None:
    """A kill -9: the process is gone, its descriptors closed by the kernel,
    nothing flushed or removed."""
    spool = recorder.spool
    for fd in [*spool._unsettled, spool._fd]:
        os.close(fd)
    spool._unsettled, spool._fd = [], -1
    spool.unlock()  # (its flock with it)


async def _trail(store: SqliteStore, session_id: str) -> tuple[SessionRow, list[EventRecord], Any]:
    row = await store.session(session_id)
    assert row is not None, f"no session {session_id} in the store"
    events = await store.session_events(session_id)
    return row, events, verify_session(session_id, events, row.seal, await store.signing_keys())


def test_a_segment_rotated_while_an_older_one_is_stored_is_not_skipped(tmp_path: Path) -> None:
    """_flush takes a snapshot of the closed segments, stores them, then
    stores the *current* segment from memory. A segment rotated while the
    snapshot is being stored (the data path filled it meanwhile) is neither
    in the snapshot nor current: the segment after it reaches the store
    first, the session's last stored seq jumps past it, and on the next
    flush the store's seq cut (build_blocks) drops all of its events as
    "already stored"; the segment is then removed. Acknowledged statements
    are lost and the sealed trail no longer verifies."""

    async def scenario() -> None:
        store = HookedStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path, segment_bytes=4096)
        session = recorder.open_session("s1", "alice", "main", {"client_address": "x"})
        ran = 0

        def statement() -> None:
            nonlocal ran
            session.statement("allow", {"text": f"SELECT {ran}", "pad": "x" * 200})
            recorder.commit()  # (each in a loop iteration of its own)
            ran += 1

        while not recorder.spool.closed_segments():
            statement()  # segment 1 fills and is rotated

        def data_path() -> None:
            # While the flusher stores segment 1: segment 2 fills and is
            # rotated, and segment 3 (current) gets a few statements.
            closed = len(recorder.spool.closed_segments())
            while len(recorder.spool.closed_segments()) == closed:
                statement()
            for _ in range(3):
                statement()

        store.before_write = data_path
        await recorder._flush()  # segment 1, then segment 3's events from memory
        await recorder._flush()  # segment 2
        session.end("client closed")
        await recorder.close()  # no background task: the spool is closed
        # Whatever the spool still holds is replayed by the next process.
        second = _recorder(store, tmp_path, segment_bytes=4096)
        await second.start()
        await second.close()
        row, events, problem = await _trail(store, "s1")
        await store.close()
        assert [e.seq for e in events] == list(range(ran + 2)), problem
        assert row.statements == ran
        assert problem is None

    asyncio.run(scenario())


def test_restart_does_not_count_bytes_the_store_already_took(tmp_path: Path) -> None:
    """A new Spool counts every byte of the segments it finds as pending,
    including the open segment's part the previous process had already
    stored and acknowledged (up to segment_bytes). With a bound below the
    segment size (what 0b3c8d0 set out to allow) the restarted recorder is
    "full" with a healthy store and nothing left to store: with
    on_full="continue" the recovery of the crashed session (its end and its
    seal) is dropped, so the session is never sealed; with "refuse" new
    sessions are refused until the first flush.

    (Asserted once start() has returned, when the gateway starts serving.)"""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        options: dict[str, Any] = {
            "max_bytes": 1 << 16,
            "segment_bytes": 16 << 20,
            "on_full": "continue",
        }
        first = _recorder(store, tmp_path, **options)
        session = first.open_session("s1", "alice", "main", {"client_address": "x"})
        for i in range(400):  # ~200 KB in all, three times the bound
            session.statement("allow", {"text": f"SELECT {i}", "pad": "x" * 300})
            if i % 50 == 49:
                await first._flush()
        await first._flush()
        assert not first.full and first.dropped == 0  # the store keeps up
        _crash(first)
        second = _recorder(store, tmp_path, **options)
        await second.start()  # recovers s1 (its end and seal); the gateway then serves
        full_after_start, dropped = second.full, second.dropped
        await second.close()
        row, events, problem = await _trail(store, "s1")
        await store.close()
        assert (full_after_start, dropped, row.seal is not None) == (False, 0, True), (
            second.spool.pending_bytes,
            len(events),
            problem,
        )

    asyncio.run(scenario())


def test_the_open_segments_checkpoint_does_not_keep_the_spool_full(tmp_path: Path) -> None:
    """A rotation starts the new segment with a checkpoint of every open
    session's chain head (~150 bytes each). The checkpoint is appended to
    the spool (pending_bytes grows) but is not one of the records kept in
    memory, so _store_current never acknowledges it: while that segment is
    the current one, its checkpoint counts as "not taken by the store". With
    enough open sessions it alone exceeds the bound and the gateway refuses
    every statement with a healthy store and nothing left to store (and
    the segment that would clear it is never filled, statements being
    refused)."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path, max_bytes=1 << 16, segment_bytes=1 << 19)
        sessions = []
        for i in range(700):
            sid = f"session-{i:04d}-" + "0" * 40
            sessions.append(recorder.open_session(sid, "alice", "main", {"client_address": "x"}))
            if i % 50 == 49:
                await recorder._flush()
        i = 0
        while not recorder.spool.closed_segments():
            sessions[i % 700].statement("allow", {"text": f"SELECT {i}", "pad": "x" * 300})
            recorder.commit()
            i += 1
            if i % 50 == 0:
                await recorder._flush()
        await recorder._flush()  # everything written so far is in the store
        assert not recorder.spool.closed_segments()
        pending, full = recorder.spool.pending_bytes, recorder.full
        for s in sessions:
            s.end("client closed")
        await recorder.close()
        await store.close()
        assert (full, pending) == (False, 0)

    asyncio.run(scenario())


def test_the_store_never_gets_ahead_of_what_the_spool_has_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync="batch" the store now takes the open segment's records from
    memory before they are fsynced (the old flusher rotated, i.e. fsynced,
    a segment before storing it). A power cut then loses the spool's tail
    that the store already has: on restart the recovered chain head is
    behind the store's, the recovery's session_end is cut by the store as
    "already stored" while its seal (counting the events the spool knew) is
    applied, and the sealed trail fails verification (it looks tampered)
    instead of merely missing the last statements. Simulated: every fsync
    is noted (the file's size then), and the power cut cuts the segment
    back to its size at its last fsync."""
    real_fsync = os.fsync
    synced: dict[int, int] = {}  # inode -> size at its last fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        st = os.fstat(fd)
        synced[st.st_ino] = st.st_size

    monkeypatch.setattr(os, "fsync", fsync)

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        options: dict[str, Any] = {"fsync": "batch", "fsync_interval": 3600}
        first = _recorder(store, tmp_path, **options)
        session = first.open_session("s1", "alice", "main", {"client_address": "x"})
        for i in range(3):
            session.statement("allow", {"text": f"SELECT {i}"})
        first.spool.sync()  # a batch fsync
        for i in range(3, 6):
            session.statement("allow", {"text": f"SELECT {i}"})
        await first._flush()  # the store takes all of it, from memory
        segment = first.spool.current
        _crash(first)
        # The power cut: what was not fsynced is gone.
        os.truncate(segment, synced.get(segment.stat().st_ino, 0))
        second = _recorder(store, tmp_path, **options)
        await second.start()
        await second.close()
        _, _, problem = await _trail(store, "s1")
        await store.close()
        assert problem is None

    asyncio.run(scenario())


def test_a_failed_fsync_of_a_rotated_segment_stops_recording_visibly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spool.settle (fsync + close of rotated segments, now in the flusher)
    raises OSError out of _flush, which _run does not catch (only
    StoreError): the flusher task dies silently. Nothing reaches the store
    any more while `broken` and `store_error` stay empty and statements go
    on until the spool fills ("the state store has not taken it", though it
    is healthy); Recorder.close() then re-raises the OSError and never
    closes the spool (its descriptors leak, serve's Runtime.close stops
    before closing the store). A failed batch fsync, by contrast, sets
    `broken` (fail closed)."""
    real_fsync = os.fsync
    failures = [OSError(errno.EIO, "Input/output error")]

    def fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path, segment_bytes=4096, flush_interval=0.02)
        await recorder.start()
        session = recorder.open_session("s1", "alice", "main", {"client_address": "x"})
        monkeypatch.setattr(os, "fsync", fsync)
        i = 0
        while not recorder.spool.closed_segments():
            session.statement("allow", {"text": f"SELECT {i}", "pad": "x" * 200})
            recorder.commit()
            i += 1
        for _ in range(100):  # the flusher settles the rotated segment
            await asyncio.sleep(0.02)
            if not failures and (recorder.broken or recorder._task.done()):  # type: ignore[union-attr]
                break
        broken = recorder.broken
        session.end("client closed")
        close_error = None
        try:
            await recorder.close()
        except OSError as e:
            close_error = e
        await store.close()
        assert (bool(broken), close_error) == (True, None)

    asyncio.run(scenario())


class LimitedStore(SqliteStore):
    """A real SQLite store whose longest string is 1 MiB instead of SQLite's
    default 10^9 bytes: the same refusal ("string or blob too big") at a
    size a test can write quickly."""

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1 << 20)
        return conn


def test_one_unstorable_event_does_not_stop_everyone_elses_trail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON makes a control character six characters (\\u0001) and the trail
    a binary parameter two (hex): with the default pg_max_message of 1 GiB,
    one client's statement could make an event larger than the store takes
    (SQLite's 10^9 bytes, PostgreSQL's 1 GB per value); write_recording
    would then fail on every retry, forever, and every other session's
    events queue behind it until the spool is full and the gateway refuses
    all statements. An event past chain.MAX_EVENT_BYTES is cut down instead
    (its text's start, length and hash kept). Scaled down here: the store's
    limit with SQLITE_LIMIT_LENGTH, the event's with MAX_EVENT_BYTES."""
    monkeypatch.setattr(chain, "MAX_EVENT_BYTES", 256 << 10)

    async def scenario() -> None:
        store = LimitedStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path)
        mallory = recorder.open_session("m1", "mallory", "main", {"client_address": "x"})
        mallory.statement("error", {"text": "\x01" * 200_000, "params": []})
        alice = recorder.open_session("a1", "alice", "main", {"client_address": "y"})
        for i in range(3):
            alice.statement("allow", {"text": f"SELECT {i}"})
        alice.end("client closed")
        errors = 0
        for _ in range(5):
            try:
                await recorder._flush()
            except StoreError:
                errors += 1
        stored = await store.session_events("a1")
        (cut,) = [e for e in await store.session_events("m1") if e.kind == "statement"]
        await recorder.close()
        await store.close()
        assert len(stored) == 5, f"alice's trail not stored after {errors} failed flushes"
        data = json.loads(cut.data)
        assert data["text"] == "\x01" * ((256 << 10) // 8)
        assert data["oversized"]["text_chars"] == 200_000
        assert data["oversized"]["text_sha256"] == hashlib.sha256(b"\x01" * 200_000).hexdigest()

    asyncio.run(scenario())


def test_close_during_a_flush_still_moves_everything_to_the_store(tmp_path: Path) -> None:
    """Recorder.close() sets _closing and waits for the flusher; a flush
    already in flight when it is called (it took its records before the
    last statements and the session's end) completes, and _run then returns
    because _closing is set, without the closing flush. The end, the seal and
    the statements written meanwhile stay in the spool although the store
    is healthy: a clean stop leaves the trail unsealed in the store (it is
    completed only if the same spool directory is started again: not so for
    an ephemeral container volume or a decommissioned host). Pre-existing
    in _run, but the flusher now runs a flush nearly every flush_interval."""

    async def scenario() -> None:
        store = HookedStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path, flush_interval=0.01)
        await recorder.start()
        session = recorder.open_session("s1", "alice", "main", {"client_address": "x"})
        for i in range(3):
            session.statement("allow", {"text": f"SELECT {i}"})
        closing: list[asyncio.Task[None]] = []

        def data_path() -> None:
            # While the flusher stores the first statements: the client's
            # last statements, its end, and the gateway shutting down.
            for i in range(3, 6):
                session.statement("allow", {"text": f"SELECT {i}"})
            session.end("client closed")
            closing.append(asyncio.get_running_loop().create_task(recorder.close()))

        store.before_write = data_path
        for _ in range(200):
            await asyncio.sleep(0.01)
            if closing:
                break
        await closing[0]
        left = sorted(p.name for p in (tmp_path / "spool").glob("*.spool"))
        row = await store.session("s1")
        await store.close()
        assert row is not None
        assert (row.statements, row.seal is not None, left) == (6, True, [])

    asyncio.run(scenario())


def test_statements_racing_the_flusher_all_reach_the_store(tmp_path: Path) -> None:
    """No hook: the real background flusher and a data path that yields to
    the event loop now and then, with small segments (rotations while the
    flusher awaits the store happen by themselves). Every statement must be
    in the store after close(), the chain gapless, the spool empty. Fails
    now by both bugs above: segments rotated during a flush are cut by the
    store's seq cut (hundreds of statements lost), and close() returns
    after an in-flight flush with segments left."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path, segment_bytes=4096, flush_interval=0.01)
        await recorder.start()
        session = recorder.open_session("s1", "alice", "main", {"client_address": "x"})
        for i in range(2000):
            session.statement("allow", {"text": f"SELECT {i}", "pad": "x" * 200})
            if i % 100 == 0:
                await asyncio.sleep(0.005)
        session.end("client closed")
        await recorder.close()
        left = len(list((tmp_path / "spool").glob("*.spool")))
        row, events, problem = await _trail(store, "s1")
        await store.close()
        assert (row.statements, len(events), left) == (2000, 2002, 0), problem
        assert problem is None

    asyncio.run(scenario())


class FlakyStore(SqliteStore):
    """A real SQLite store that refuses recordings while ``failing``."""

    failing = True
    refusals = 0

    async def write_recording(self, events: Sequence[EventRecord], seals: Sequence[Seal]) -> None:
        if self.failing:
            self.refusals += 1
            raise StoreError("the store is down (test)")
        await super().write_recording(events, seals)


def test_close_during_a_retry_back_off_still_makes_the_last_attempt(tmp_path: Path) -> None:
    """After failures the flusher backs off for longer and longer; close()
    cuts the back-off short, so a store that is back by then gets the whole
    trail although close() waits less than the back-off."""

    async def scenario() -> None:
        store = FlakyStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path, flush_interval=0.5)
        await recorder.start()
        session = recorder.open_session("s1", "alice", "main", {"client_address": "x"})
        for i in range(3):
            session.statement("allow", {"text": f"SELECT {i}"})
        session.end("client closed")
        while store.refusals < 3:  # at start, then after 0.5 s and 1 s more: now 2 s
            await asyncio.sleep(0.05)
        store.failing = False
        await recorder.close(timeout=1.0)
        row, events, problem = await _trail(store, "s1")
        await store.close()
        assert (len(events), row.seal is not None, problem) == (5, True, None)

    asyncio.run(scenario())


# -- found by the review of the journal (one spool write per loop iteration) --


def _break_spool(recorder: rec.Recorder) -> None:
    """The spool's descriptor turned read-only: the real write(2) fails."""
    fd = os.open(recorder.spool.current, os.O_RDONLY)
    os.dup2(fd, recorder.spool._fd)
    os.close(fd)


def test_a_broken_spool_drops_nothing_under_on_full_continue(tmp_path: Path) -> None:
    """on_full "continue" runs statements unrecorded when the spool is
    *full*; a spool that cannot be written is not full, it is broken: its
    statements fail (the journal keeps them, and the commit fails them)."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path, on_full="continue")
        await recorder.start()
        session = recorder.open_session("s1", "alice", "main", {})
        recorder.commit()
        _break_spool(recorder)
        session.statement("allow", {"text": "SELECT 1"})
        with pytest.raises(rec.RecordingUnavailable):
            recorder.commit()
        session.statement("allow", {"text": "DELETE FROM payroll"})
        pending, dropped = recorder.journal.pending, recorder.dropped
        with pytest.raises(rec.RecordingUnavailable):
            recorder.commit()
        recorder._task.cancel()  # type: ignore[union-attr]
        await store.close()
        assert (pending, dropped) == (True, 0)

    asyncio.run(scenario())


def test_a_checkpoint_that_cannot_be_written_tells_the_sessions(tmp_path: Path) -> None:
    """The flusher's rotation writes the new segment's checkpoint; when that
    fails, recording stops *and* the watchers hear of it (the sessions turn
    their fast path off and refuse statements)."""

    async def scenario() -> tuple[str, list[bool]]:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path)
        await recorder.start()
        told: list[bool] = []
        recorder.full_watchers.append(told.append)
        session = recorder.open_session("s1", "alice", "main", {})
        session.statement("allow", {"text": "SELECT 1"})
        recorder.commit()
        real = recorder.spool.write

        def no_space(frames: list[bytes]) -> None:
            if frames:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(frames)

        recorder.spool.write = no_space  # type: ignore[method-assign]
        recorder._rotate()  # as the flusher does
        recorder._task.cancel()  # type: ignore[union-attr]
        await store.close()
        return recorder.broken, told

    broken, told = asyncio.run(scenario())
    assert broken and told == [True]


def test_a_segment_that_cannot_be_opened_keeps_the_spool_on_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening the next segment fails (no descriptors left under a flood of
    connections): recording stops, and the spool's descriptor is neither
    closed nor reused, so no record is ever written into another file."""
    from hoopfast.recording import spool as spool_module

    async def scenario() -> tuple[str, int, list[int]]:
        store = SqliteStore(tmp_path / "store.db")
        await store.open()
        recorder = _recorder(store, tmp_path, segment_bytes=2000)
        await recorder.start()
        session = recorder.open_session("s1", "alice", "main", {})
        real_open = os.open

        def emfile(path: Any, *args: Any, **kwargs: Any) -> int:
            if str(path).endswith(".spool"):
                raise OSError(errno.EMFILE, "Too many open files")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(spool_module.os, "open", emfile)
        session.statement("allow", {"text": "SELECT 1", "pad": "x" * 3000})  # fills it
        recorder.commit()
        monkeypatch.setattr(spool_module.os, "open", real_open)
        fd, unsettled = recorder.spool._fd, list(recorder.spool._unsettled)
        recorder._task.cancel()  # type: ignore[union-attr]
        await store.close()
        return recorder.broken, fd, unsettled

    broken, fd, unsettled = asyncio.run(scenario())
    assert "cannot open a new spool segment" in broken
    assert fd not in unsettled


def test_short_spool_writes_are_continued_and_a_zero_write_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write(2) may write less than asked (a signal, past 2 GiB): the spool
    writes the rest, and the records read back whole; a write of nothing
    (no space) is a SpoolError, not a loop."""
    from hoopfast import core
    from hoopfast.recording import spool as spool_module

    real_write = os.write
    calls: list[int] = []

    def short_write(fd: int, data: Any) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data)[:7])

    spool = spool_module.Spool(tmp_path, 1 << 20)
    frames = [core.frame(b"first record"), core.frame(b"second")]
    monkeypatch.setattr(spool_module.os, "write", short_write)
    spool.write(frames)
    assert len(calls) > 2 and spool.current_size == sum(map(len, frames))
    monkeypatch.setattr(spool_module.os, "write", lambda fd, data: 0)
    with pytest.raises(spool_module.SpoolError, match="no space left"):
        spool.write([core.frame(b"third")])
    monkeypatch.setattr(spool_module.os, "write", real_write)
    spool.close()
    assert list(spool_module.read_segment(spool.current)) == [b"first record", b"second"]
