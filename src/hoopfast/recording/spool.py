"""The recorder's local append-only spool: what the data path recorded,
on disk before the client sees the statement's result, until the store has
taken it.

Segment files ``<number>.spool`` in one directory, written in order. Each
record is framed as a 4-byte big-endian length, a 4-byte CRC-32 and the
payload (JSON). A record cut short by a crash fails its length or CRC
check and ends the segment's replay: it was never acknowledged, because
the write that would have finished it is what precedes the acknowledgement.
The writer appends to the newest segment only, a loop iteration's
records in one write; the flusher takes the closed
ones (``rotate`` closes the current one), hands their records to the store
and deletes a segment once the store has all of it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

#: A record's frame: length and CRC-32 (hoopfast.core.frame writes it).
_HEADER = struct.Struct(">II")
_SUFFIX = ".spool"
#: Held (flock) by the one process that writes the spool.
_LOCK = "lock"


class SpoolError(OSError):
    """The spool cannot be written (disk full, permissions)."""


class Spool:
    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = _lock(directory / _LOCK)
        try:
            self._start()
        except BaseException:
            self.unlock()  # (the process may go on: the gateway did not start)
            raise

    def _start(self) -> None:
        existing = self.segments()
        self._number = int(existing[-1].stem) + 1 if existing else 1
        #: Bytes in all segments (what the store has not acknowledged yet).
        self.pending_bytes = sum(p.stat().st_size for p in existing)
        #: Segments closed and not yet removed, oldest first (kept here, not
        #: listed from the directory: the flusher asks several times a second).
        self._closed = existing
        #: Descriptors of closed segments not yet fsynced (see rotate).
        self._unsettled: list[int] = []
        #: Bytes of a segment the store already has (see acknowledge).
        self._acknowledged: dict[Path, int] = {}
        self._fd = -1
        self._size = 0
        #: Bytes written since the last fsync.
        self.dirty = False
        self._open_segment()

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{_SUFFIX}"

    def _open_segment(self) -> None:
        path = self._path(self._number)
        # Opened before anything changes: when it fails (no descriptors
        # left, no space), the spool still writes to the segment it had.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        #: The segment being written (the recorder asks per record).
        self.current = path
        self._fd = fd
        self._size = 0

    def segments(self) -> list[Path]:
        """Every segment, oldest first (the current one last)."""
        return sorted(self.directory.glob("*" + _SUFFIX))

    @property
    def current_size(self) -> int:
        return self._size

    def write(self, frames: list[bytes]) -> None:
        """Framed records (hoopfast.core.frame), in one write: after it
        returns, a kill of the process loses none of them (the page cache
        holds them); a power cut may, until ``sync``. The recorder writes
        a loop iteration's records at once: a system call per statement was
        a tenth of a recording gateway's CPU."""
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        written = self._write_once(data)
        if written < len(data):
            # A write may be short (past 2 GiB, or cut by a signal): the rest.
            rest = memoryview(data)[written:]
            while rest:
                rest = rest[self._write_once(rest) :]

    def _write_once(self, data: bytes | memoryview) -> int:
        try:
            written = os.write(self._fd, data)
        except OSError as e:
            # (A torn tail fails its CRC on replay.)
            raise SpoolError(e.errno, f"cannot write the recording spool: {e.strerror}") from None
        if written == 0:
            raise SpoolError(28, "cannot write the recording spool: no space left")
        self.dirty = True
        self._size += written
        self.pending_bytes += written
        return written

    def sync(self) -> None:
        """fsync the current segment (callable from a worker thread)."""
        self.dirty = False
        os.fsync(self._fd)

    def rotate(self) -> None:
        """Close the current segment (if it holds anything) so the flusher may
        take it; later records go to a new one. The closed segment is fsynced
        by ``settle``, off the event loop (an fsync on a busy disk takes
        milliseconds), before the flusher hands it to the store."""
        if self._size == 0:
            return
        fd, closed = self._fd, self.current
        self._number += 1
        try:
            self._open_segment()
        except OSError:
            self._number -= 1
            raise
        self._unsettled.append(fd)
        self._closed.append(closed)

    def settle(self) -> None:
        """fsync and close the segments rotate closed: each is complete on
        disk before the store takes it (callable from a worker thread; a
        failure is raised once, and the descriptor is closed anyway)."""
        failed: OSError | None = None
        while self._unsettled:
            fd = self._unsettled.pop(0)
            try:
                os.fsync(fd)
            except OSError as e:
                failed = failed or e
            finally:
                os.close(fd)
        if failed is not None:
            raise failed

    def closed_segments(self) -> list[Path]:
        return list(self._closed)

    def acknowledge(self, segment: Path, size: int) -> None:
        """``size`` bytes of ``segment`` (not removed yet: it is still being
        written) are in the store: they no longer count as pending, so the
        spool's bound measures what the store has not taken."""
        self._acknowledged[segment] = self._acknowledged.get(segment, 0) + size
        self.pending_bytes = max(0, self.pending_bytes - size)

    def remove(self, segment: Path) -> None:
        size = segment.stat().st_size - self._acknowledged.pop(segment, 0)
        segment.unlink()
        self._closed.remove(segment)
        self.pending_bytes = max(0, self.pending_bytes - size)

    def close(self) -> None:
        try:
            self.settle()
        finally:
            try:
                if self._fd >= 0:
                    try:
                        os.fsync(self._fd)
                    finally:
                        os.close(self._fd)
                        self._fd = -1
                    if self._size == 0:
                        self.current.unlink(missing_ok=True)
            finally:
                self.unlock()

    def unlock(self) -> None:
        """Let another process take the spool (the kernel does it too when
        this one dies)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _lock(path: Path) -> int:
    """Take the spool for this process, or raise SpoolError naming the
    process that has it. Two writers would interleave segments, and the
    second replays the first's live sessions at start and seals them as
    crashed (a restart that overlaps the old process, two gateways given
    one state directory). flock, not a pid file: the kernel drops it with
    the process, however it ends."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.read(fd, 32).decode("ascii", "replace").strip()
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SpoolError(e.errno, f"cannot lock the recording spool: {e.strerror}") from None
        raise SpoolError(
            errno.EBUSY,
            f"the recording spool {path.parent} is in use by another gateway process"
            + (f" (pid {holder})" if holder.isdigit() else "")
            + ": give each gateway its own state directory or HOOPFAST_SPOOL_DIR",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def read_segment(path: Path) -> Iterator[bytes]:
    """The payloads of a segment's intact records, in order; stops at the
    first torn or corrupt record (the crash point)."""
    data = path.read_bytes()
    pos = 0
    end = len(data)
    while pos + _HEADER.size <= end:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        if start + length > end:
            return
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            return
        yield payload
        pos = start + length
