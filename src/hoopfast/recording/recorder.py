"""The recorder: takes events from the data path without blocking it, keeps
them in the local spool, and moves them to the state store in batches.

The data path records a statement when its answer is complete (the trail
hands it to the session's ``SessionLog``, hoopfast.core) and *before* the
gateway forwards the message that completes it: the event goes into the
journal, the relay holds that message back while the journal holds
anything, and at the end of the loop iteration ``commit`` writes the
journal to the spool (one ``write`` for all sessions) and then lets the
held messages go. So an acknowledged statement is always in the spool (the
fsync policy decides when it is on disk). A background task moves closed
spool segments to the store and deletes them once stored. If the store is
down the spool grows; past its bound ``full`` is set and the session refuses
new statements (settings.recording_on_full). On start, segments left by a
previous process (a crash, a kill -9) are replayed into the store, and the
sessions they leave open are ended and sealed ("gateway stopped").

Each segment starts with a checkpoint of the sessions open at that moment
(their chain heads), so the spool alone always knows which sessions a crash
left unsealed, even when their earlier events are long in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hoopfast import core
from hoopfast.recording.chain import Signer, session_log
from hoopfast.recording.spool import Spool, read_segment
from hoopfast.store import Store, StoreError
from hoopfast.store.records import SESSION_END, SESSION_START, STATEMENT, EventRecord, Seal

log = logging.getLogger("hoopfast.recording")

#: Events handed to the store per transaction.
_BATCH = 2000
#: Spooled bytes the recorder also keeps in memory for the store.
_MEMORY_BYTES = 64 << 20
_CRASH_REASON = "gateway stopped unexpectedly (recovered from the spool)"


class RecordingUnavailable(Exception):
    """The trail cannot be written: the statement must not run."""


@dataclass
class RecorderOptions:
    fsync: Literal["always", "batch", "off"] = "batch"
    fsync_interval: float = 0.2
    max_bytes: int = 1 << 30
    segment_bytes: int = 16 << 20
    flush_interval: float = 0.2
    #: Past max_bytes: "refuse" (sessions refuse statements; what is in
    #: flight is still written) or "continue" (events are dropped, counted).
    on_full: Literal["refuse", "continue"] = "refuse"
    on_store_error: Callable[[], None] | None = None


@dataclass
class _Kept:
    records: list[EventRecord | Seal] = field(default_factory=list)
    size: int = 0


@dataclass
class _Replayed:
    subject: str
    connection: str
    count: int
    last_hash: str
    sealed: bool = False
    statements: int = 0
    last_at: float = 0.0


# Spool records. An event is b"e", its two hashes and its data, as is: the
# data is canonical JSON already and holds every other field, so the data
# path encodes each event once. Seals and checkpoints are small JSON lists.
_HASH = 64


def _encode_seal(s: Seal) -> bytes:
    return b"s" + _json(
        [s.session_id, s.events, s.last_hash, s.ended_at, s.end_reason, s.key_id, s.signature]
    )


def _encode_checkpoint(heads: list[list[Any]]) -> bytes:
    return b"c" + _json(heads)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _decode(payload: bytes) -> EventRecord | Seal | list[list[Any]]:
    kind = payload[:1]
    if kind == b"e":
        prev_hash = payload[1 : 1 + _HASH].decode()
        hash_ = payload[1 + _HASH : 1 + 2 * _HASH].decode()
        data = payload[1 + 2 * _HASH :].decode()
        d = json.loads(data)
        return EventRecord(
            d["session"],
            d["seq"],
            d["at"],
            d["kind"],
            d["subject"],
            d["connection"],
            d["verdict"],
            data,
            prev_hash,
            hash_,
        )
    if kind == b"s":
        return Seal(*json.loads(payload[1:]))
    if kind == b"c":
        return list(json.loads(payload[1:]))
    raise ValueError(f"unknown spool record {kind!r}")


def _segment_items(path: Path) -> Iterator[EventRecord | Seal | list[list[Any]]]:
    """A segment's records, decoded (an unreadable one is logged, skipped)."""
    for payload in read_segment(path):
        try:
            yield _decode(payload)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            log.error("spool %s: unreadable record skipped: %s", path.name, e)


def _load_segment(path: Path) -> list[EventRecord | Seal]:
    """A closed segment's events and seals (checkpoints skipped), read from
    disk: after a restart, or when it was too big to keep in memory."""
    records: list[EventRecord | Seal] = []
    for item in _segment_items(path):
        if not isinstance(item, list):
            records.append(item)
    return records


class Recorder:
    def __init__(
        self, store: Store, spool_dir: Path, signer: Signer, options: RecorderOptions
    ) -> None:
        self.store = store
        self.signer = signer
        self.options = options
        self.spool = Spool(spool_dir, options.segment_bytes)
        #: The chain heads of the sessions open in this process.
        self._open: dict[str, Any] = {}
        #: Events recorded and not yet written, and the writes to clients
        #: held back behind them (see commit); the relay's barrier.
        self.journal = core.Journal(self._commit_at_end_of_iteration)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._key_stored = False
        self._wake = asyncio.Event()
        self._closing = False
        #: Set by close(): cuts a retry's back-off short.
        self._stop = asyncio.Event()
        #: The store's last error, or "" while it takes batches.
        self.store_error = ""
        #: Set when a spool write failed: nothing more can be recorded.
        self.broken = ""
        # Records appended since the last rotation, checkpoints aside: a
        # segment holding only a checkpoint is not worth rotating.
        self._unrotated = 0
        # What this process wrote to each segment not yet stored, so the
        # flusher need not read and decode it back (bounded: past the bound
        # a segment is read from disk, as after a restart).
        self._memory: dict[Path, _Kept] = {}
        #: _memory's entry for the segment _remember last kept records of.
        self._kept: _Kept | None = None
        self._kept_segment: Path | None = None
        self._memory_bytes = 0
        self._on_disk_only: set[Path] = set()
        #: Called with the new value whenever ``full`` changes: sessions let
        #: statements pass without calling Python (the relay's fast path)
        #: only while the spool takes them.
        self.full_watchers: list[Callable[[bool], None]] = []
        self._was_full = False

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        """Replay what a previous process left, then start moving segments
        to the store. Sessions the spool shows open are sealed as ended."""
        replayed = self._scan()
        # Best effort, before anything new is written: the earlier process's
        # segments go to the store now, so that the part of its open segment
        # the store already had stops counting against the spool's bound.
        try:
            await self._flush()
        except StoreError as e:
            log.error("recording: the store refused the spool left by the last run: %s", e)
        for session_id, r in replayed.items():
            if r.sealed:
                continue
            chain = session_log(self.journal, session_id, r.subject, r.connection)
            chain.count, chain.last_hash = r.count, r.last_hash
            at = max(r.last_at, 0.0) or time.time()
            # Never dropped (on_full "continue"): a session left unsealed.
            chain.append(
                SESSION_END,
                time.time(),
                "",
                {"reason": _CRASH_REASON, "statements": r.statements, "ended_at": at},
                True,
            )
            seal = self.signer.seal(session_id, chain.count, chain.last_hash, at, _CRASH_REASON)
            self._write_seal(seal, essential=True)
            log.warning("session %s: recovered from the spool and sealed", session_id)
        self._loop = asyncio.get_running_loop()
        # (The commit scheduled without a Python call: this runs once per
        # loop iteration in which anything was recorded.)
        self.journal.on_first = functools.partial(self._loop.call_soon, self._commit_soon)
        self._task = self._loop.create_task(self._run(), name="recorder")

    def _scan(self) -> dict[str, _Replayed]:
        """Chain heads of every session in the spool left by an earlier
        process (checkpoints, then events and seals in order)."""
        sessions: dict[str, _Replayed] = {}
        for segment in self.spool.closed_segments():
            for item in _segment_items(segment):
                if isinstance(item, list):
                    for sid, subject, connection, count, last_hash, statements in item:
                        if sid not in sessions:
                            sessions[sid] = _Replayed(
                                subject, connection, count, last_hash, statements=statements
                            )
                elif isinstance(item, EventRecord):
                    r = sessions.get(item.session_id)
                    if r is None:
                        r = sessions[item.session_id] = _Replayed(
                            item.subject, item.connection, 0, ""
                        )
                    if item.seq >= r.count:
                        r.count, r.last_hash, r.last_at = item.seq + 1, item.hash, item.at
                        if item.kind == STATEMENT:
                            r.statements += 1
                else:
                    r = sessions.get(item.session_id)
                    if r is not None:
                        r.sealed = True
        return {sid: r for sid, r in sessions.items() if r.count > 0}

    async def close(self, timeout: float = 5.0) -> None:
        """Stop after one last attempt to move everything to the store;
        what the store did not take stays in the spool for the next start."""
        self._closing = True
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        with contextlib.suppress(RecordingUnavailable):
            self.commit()
        self.spool.close()

    # -- the data path ----------------------------------------------------

    @property
    def full(self) -> bool:
        """Past the spool's bound (or unable to write it): statements must
        not run unrecorded."""
        return bool(self.broken) or self.spool.pending_bytes > self.options.max_bytes

    def open_session(
        self, session_id: str, subject: str, connection: str, body: dict[str, Any]
    ) -> SessionRecording:
        """Record a session's start; raises RecordingUnavailable when the
        trail cannot be written (the session must not start)."""
        if self.full:
            raise RecordingUnavailable(self._why_full())
        chain = session_log(self.journal, session_id, subject, connection)
        self._open[session_id] = chain
        chain.append(SESSION_START, time.time(), "", body)
        return SessionRecording(self, chain)

    @property
    def dropped(self) -> int:
        """Events not recorded because the spool was full (on_full "continue")."""
        return int(self.journal.dropped)

    def _why_full(self) -> str:
        if self.broken:
            return f"the recording spool cannot be written ({self.broken})"
        return "the recording spool is full because the state store has not taken it" + (
            f" ({self.store_error})" if self.store_error else ""
        )

    def _write_seal(self, seal: Seal, *, essential: bool = False) -> None:
        # essential: written even past the bound with on_full "continue"
        # (a crashed session's recovered end and seal).
        self.journal.add(core.frame(_encode_seal(seal)), seal, essential)

    def _commit_at_end_of_iteration(self) -> None:
        """The journal became pending (something was recorded, or a write
        held back): one write for everything recorded in this loop
        iteration, at its end; the relay holds back what would acknowledge
        it until then (hoopfast.core._pump). (Before start(); then the
        journal schedules the commit itself.)"""
        asyncio.get_running_loop().call_soon(self._commit_soon)

    def _break(self, reason: str) -> None:
        """Recording stops: nothing more can be written to the spool."""
        self.broken = reason
        log.critical("recording stopped: %s", reason)
        self._report_size()

    def commit(self, rotate: bool = True) -> None:
        """Write what was recorded since the last commit (one write), then
        release what the relay held back behind it, and close the segment
        if that filled it (``rotate``). Raises RecordingUnavailable when it
        cannot be written: the statements it holds were not recorded, so
        what was held back is dropped and its sessions end
        (``pump.owner.pump_unrecorded``)."""
        frames, records = self.journal.take()
        deferred = self.journal.take_deferred()
        try:
            if self.broken:
                raise OSError(self.broken)
            self.spool.write(frames)
            if self.options.fsync == "always" and frames:
                self.spool.sync()
        except BaseException as e:
            if not self.broken:
                self._break(str(e) or type(e).__name__)
            reason = self._why_full()
            self.journal.release(deferred, False)
            for pump, _ in deferred:
                pump.owner.pump_unrecorded(pump, reason)
            if not isinstance(e, OSError):
                raise
            raise RecordingUnavailable(reason) from None
        self._unrotated += len(frames)
        if frames:
            self._remember(frames, records)
        self.journal.release(deferred, True)
        if rotate and frames and self.spool.current_size >= self.options.segment_bytes:
            self._rotate()
        self._report_size()

    def _commit_soon(self) -> None:
        if self.journal.pending:
            # (try, not contextlib.suppress: this runs once per loop
            # iteration, and a context manager costs more than the check.)
            try:  # noqa: SIM105
                self.commit()
            except RecordingUnavailable:
                pass  # (sessions were told: pump_unrecorded)

    def _remember(self, frames: list[bytes], records: list[EventRecord | Seal]) -> None:
        """Keep what a commit wrote for the store, as one batch: this runs
        once per loop iteration."""
        segment = self.spool.current
        kept = self._kept
        if segment is not self._kept_segment:
            # (Once per segment: hashing a Path runs Python code.)
            kept = self._kept = self._memory.get(segment)
            self._kept_segment = segment
        if kept is None:
            if segment in self._on_disk_only:
                return
            kept = self._kept = self._memory[segment] = _Kept()
        size = sum(map(len, frames))
        if self._memory_bytes + size > _MEMORY_BYTES:
            # Much is waiting (the store is slow or down): this segment will
            # be read back from disk when its turn comes.
            self._memory_bytes -= kept.size
            del self._memory[segment]
            self._on_disk_only.add(segment)
            self._kept = None
            return
        kept.records.extend(records)
        kept.size += size
        self._memory_bytes += size

    def _rotate(self) -> None:
        with contextlib.suppress(RecordingUnavailable):
            self.commit(rotate=False)  # (on failure recording stops; closed anyway)
        try:
            self.spool.rotate()
        except OSError as e:
            if not self.broken:
                self._break(f"cannot open a new spool segment: {e.strerror}")
            return
        self._unrotated = 0
        heads = [
            [sid, s.subject, s.connection, s.count, s.last_hash, s.statements]
            for sid, s in self._open.items()
        ]
        if heads and not self.broken:
            # Written now, before the closed segment can be stored and removed.
            checkpoint = core.frame(_encode_checkpoint(heads))
            try:
                self.spool.write([checkpoint])
            except OSError as e:
                self._break(str(e))
            else:
                # For a restart only, never for the store: not pending.
                self.spool.acknowledge(self.spool.current, len(checkpoint))
        self._wake.set()

    # -- moving the spool to the store -------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        backoff = opts.flush_interval
        last_sync = last_flush = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=min(opts.flush_interval, opts.fsync_interval)
                )
            woken = self._wake.is_set()
            self._wake.clear()
            now = loop.time()
            if (
                opts.fsync == "batch"
                and (self.spool.dirty or self.journal.pending)
                and now - last_sync >= opts.fsync_interval
            ):
                last_sync = now
                await self._fsync(self.spool.sync)
            if not (woken or self._closing or now - last_flush >= opts.flush_interval):
                continue
            last_flush = now
            # Only a flush that began after close() was called is the last:
            # one already running took its records before the session ends
            # and seals that a clean stop writes.
            final = self._closing
            try:
                await self._flush()
            except StoreError as e:
                if self.store_error != str(e):
                    log.error("recording: the store refused a batch; spooling locally: %s", e)
                self.store_error = str(e)
                if opts.on_store_error is not None:
                    opts.on_store_error()
                if final:
                    return
                if not self._closing:
                    # Until close() (whose wait is as long as the longest
                    # back-off), so that the last attempt is still made.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), backoff)
                    backoff = min(backoff * 2, 5.0)
                continue
            if self.store_error:
                log.warning("recording: the store takes batches again")
            self.store_error = ""
            backoff = opts.flush_interval
            if final:
                return

    async def _flush(self) -> None:
        # What the journal holds goes first: into the spool and memory.
        with contextlib.suppress(RecordingUnavailable):
            self.commit()
        if not self._key_stored:
            await self.store.add_signing_key(self.signer.signing_key())
            self._key_stored = True
        current = self.spool.current
        # The current segment is closed only when full, at a clean stop (which
        # leaves nothing behind), or when it is not kept in memory (much
        # waited for the store) and nothing older waits: otherwise its new
        # records are stored from memory below and the file stays open, for
        # a rotation costs the event loop a file created and one removed.
        # Never while recording is broken: the segment that failed is then
        # the only record of the sessions its lost events ended (their end
        # and seal were in the failed write), and the next start, which
        # replays it, seals them. Stored and removed now, they would stay
        # unsealed for good (the new segment's checkpoint cannot be written).
        if (
            self._unrotated
            and not self.broken
            and (
                self._closing
                or (current in self._on_disk_only and not self.spool.closed_segments())
            )
        ):
            self._rotate()
        # Until none is left: the data path may close another segment while
        # one is stored, and it must reach the store before anything newer
        # (a session's events are stored in seq order; see Store).
        while closed := self.spool.closed_segments():
            # fsync (and close) what rotate closed.
            await self._fsync(self.spool.settle)
            for segment in closed:
                await self._store_segment(segment)
        await self._store_current()

    async def _fsync(self, sync: Callable[[], None]) -> bool:
        """Run a spool fsync (``Spool.sync`` or ``Spool.settle``) off the
        loop, of what is committed by then. A failure stops recording,
        visibly: False."""
        try:
            self.commit()
        except RecordingUnavailable:
            return False
        try:
            await asyncio.get_running_loop().run_in_executor(None, sync)
        except OSError as e:
            self._break(f"fsync failed: {e.strerror}")
            return False
        return True

    def _report_size(self) -> None:
        """After every change to the spool's size or state: the watchers of
        ``full`` when it changed (the metrics read the size when scraped)."""
        full = self.full
        # (A broken spool drops nothing: its statements fail, they are not
        # run unrecorded.)
        self.journal.dropping = full and not self.broken and self.options.on_full == "continue"
        if full != self._was_full:
            self._was_full = full
            for watcher in self.full_watchers:
                watcher(full)

    async def _store_segment(self, segment: Path) -> None:
        """A closed segment into the store, then off the disk."""
        kept = self._memory.pop(segment, None)
        if kept is not None:
            self._memory_bytes -= kept.size
            records = kept.records
        else:
            # Off the loop: a segment may hold megabytes to decode.
            loop = asyncio.get_running_loop()
            records = await loop.run_in_executor(None, _load_segment, segment)
        try:
            await self._store(records)
        except BaseException:
            if kept is not None:  # not stored: keep it for the next try
                self._memory[segment] = kept
                self._memory_bytes += kept.size
            raise
        self.spool.remove(segment)
        self._on_disk_only.discard(segment)
        self._report_size()

    async def _store_current(self) -> None:
        """Store what the current segment gained since the last flush, from
        memory. The segment file stays until it is rotated and all of it is
        stored; after a crash it is replayed whole, and the store ignores
        what it already has (writes are idempotent)."""
        segment = self.spool.current
        kept = self._memory.get(segment)
        if kept is None or not kept.records:
            return
        if self.options.fsync != "off" and (self.spool.dirty or self.journal.pending):
            # The store must not get ahead of the spool on disk: after a
            # power cut the spool's chain heads seal the crashed sessions,
            # and a store holding later events would contradict the seal.
            if not await self._fsync(self.spool.sync):
                return
            if self.spool.current != segment:
                # Rotated meanwhile: the closed segment goes first, next flush.
                return
        try:
            # (What was recorded during the fsync: written, at least.)
            self.commit()
        except RecordingUnavailable:
            return
        records, size = kept.records, kept.size
        kept.records, kept.size = [], 0
        self._memory_bytes -= size
        try:
            await self._store(records)
        except BaseException:
            # Not stored: back in front of what came meanwhile (the segment
            # may have been rotated since; if it was left to the disk, it
            # will be read from there whole).
            if self._memory.get(segment) is kept:
                kept.records[:0] = records
                kept.size += size
                self._memory_bytes += size
            raise
        self.spool.acknowledge(segment, size)
        self._report_size()

    async def _store(self, records: list[EventRecord | Seal]) -> None:
        """One segment's records into the store, in batches; seals last (a
        seal closes its session's row only after its events are in)."""
        events = [r for r in records if isinstance(r, EventRecord)]
        seals = [r for r in records if isinstance(r, Seal)]
        batches = [events[i : i + _BATCH] for i in range(0, len(events), _BATCH)] or [[]]
        for batch in batches[:-1]:
            await self.store.write_recording(batch, [])
        await self.store.write_recording(batches[-1], seals)


class SessionRecording:
    """One session's trail: statement events, then the end and the seal."""

    __slots__ = ("_recorder", "ended", "log")

    def __init__(self, recorder: Recorder, log: Any) -> None:
        self._recorder = recorder
        #: The session's chain (hoopfast.core.SessionLog): the trail hands
        #: it each finished statement.
        self.log = log
        self.ended = False

    @property
    def session_id(self) -> str:
        return str(self.log.session_id)

    @property
    def statements(self) -> int:
        return int(self.log.statements)

    def statement(self, verdict: str, body: dict[str, Any]) -> None:
        """A statement's event from a dict (the trail records through the
        log itself)."""
        log_ = self.log
        log_.statements += 1
        log_.append(STATEMENT, time.time(), verdict, body)

    def end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        chain = self.log
        r = self._recorder
        r._open.pop(chain.session_id, None)
        now = time.time()
        chain.append(
            SESSION_END,
            now,
            "",
            {"reason": reason, "statements": chain.statements, "ended_at": now},
        )
        r._write_seal(r.signer.seal(chain.session_id, chain.count, chain.last_hash, now, reason))
