"""Statement analysis off the event loop, with a time limit.

Classifying a statement the gateway has not seen (sqlglot, then
PostgreSQL's grammar through libpg_query: guard.analyse) usually takes a
millisecond, but its cost grows with the text and, for some shapes, much
faster: 200 bytes of nested ``array[`` took sqlglot 7.5 s at 16 levels and
hours at 23. On the event loop, which relays every session, that froze the
whole gateway. So a session hands a statement it has no verdict for to a
thread of its own (hoopfast.proxy.postgres.session holds the client's
messages meanwhile, as for a review) and the loop goes on relaying.

A thread, not a process: the analysis needs nothing but the text, and a
thread starts in tens of microseconds where a cache miss costs a
millisecond already. While it runs, the loop still gets the GIL at every
switch interval (5 ms). An analysis past the time limit is stopped (an
exception raised in its thread; sqlglot is compiled by mypyc, and the
exception lands when it next runs interpreted code, within milliseconds
measured on nested arrays, and is raised again should it be lost) and
the statement is unknown, which the policy refuses
unless ``unknown = "allow"``. At most ``CONCURRENT`` run at once (the
others wait their turn, their time limit starting when they start, one
per person in the queue), so a flood of such statements costs the loop
at most that many threads' share of the GIL. A session that ends stops
its analysis. What the time limit cannot stop is C code that holds the
GIL (a regular expression, for one): those are written not to backtrack.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Literal

from hoopfast.policy.classify import Classification
from hoopfast.policy.guard import analyse, unknown_classification

log = logging.getLogger("hoopfast.policy")

#: Analyses that run at once (each a thread).
CONCURRENT = 2
#: Seconds after a stop: an analysis still running is told again (and the
#: log says where it was). The stop lands in microseconds when the thread
#: next runs interpreted code; it is lost when it lands where CPython
#: prints an exception and goes on (a finalizer the cyclic collector ran in
#: the thread, say), and a CI run once saw a thread run on 30 s after it.
_RESTOP = 2.0


class _Stopped(BaseException):
    """Raised in an analysis thread past its time limit. A BaseException,
    so that no ``except Exception`` inside sqlglot swallows it."""


class Analyst:
    """Runs guard.analyse in threads of its own, ``timeout`` seconds each
    at most."""

    def __init__(self, timeout: float, concurrent: int = CONCURRENT) -> None:
        self.timeout = timeout
        self._slots = asyncio.Semaphore(concurrent)
        #: Per person: one analysis waiting or running at a time, so that
        #: the slots go round the people who wait (the semaphore wakes its
        #: waiters in order): one person's many sessions of slow statements
        #: make another's new statement wait for at most one turn each.
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}

    async def analyse(self, sql: str, statements: int, who: str = "") -> Classification:
        """``sql``'s classification (statements: the fingerprint lexer's
        count), or unknown when it took longer than the time limit;
        ``who``: the person it is analysed for (see _turns)."""
        turn, users = self._turns.get(who, (asyncio.Lock(), 0))
        self._turns[who] = (turn, users + 1)
        try:
            async with turn, self._slots:
                return await self._run(sql, statements)
        finally:
            turn, users = self._turns[who]
            if users == 1:
                del self._turns[who]  # (nobody of theirs waits)
            else:
                self._turns[who] = (turn, users - 1)

    async def _run(self, sql: str, statements: int) -> Classification:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Classification] = loop.create_future()
        job = _Job(sql, statements, functools.partial(_hand_over, loop, done))
        job.start()
        try:
            return await asyncio.wait_for(asyncio.shield(done), self.timeout)
        except asyncio.CancelledError:
            _stop(job)  # (the session ended: its analysis with it)
            raise
        except TimeoutError:
            _stop(job)
            log.warning(
                "statement analysis stopped after %.1f s (%d characters): refused as unknown",
                self.timeout,
                len(sql),
            )
            return unknown_classification(
                f"the gateway could not analyse this statement within {self.timeout:g} s"
            )


def _stop(job: _Job) -> None:
    """Stop ``job`` (from the loop), and again if that was lost."""
    job.stop()
    loop = asyncio.get_running_loop()
    loop.call_later(_RESTOP, _restop_until_over, loop, job)


def _hand_over(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Classification], c: Classification
) -> None:
    """From the analysis thread: ``c`` to ``future`` on its loop; nothing
    when the loop has closed meanwhile (the gateway stopped: nobody waits,
    and raising in the thread would log a bug that is not one)."""
    try:
        loop.call_soon_threadsafe(_settle, future, c)
    except RuntimeError:
        if not loop.is_closed():
            raise


def _settle(future: asyncio.Future[Classification], c: Classification) -> None:
    if not future.done():
        future.set_result(c)


#: PyThreadState_SetAsyncExc, looked up once: looking it up on ctypes'
#: library object runs Python code the first time (see _Job.run).
_SET_ASYNC_EXC = ctypes.pythonapi.PyThreadState_SetAsyncExc


class _Job(threading.Thread):
    """One analysis. ``stop`` raises _Stopped in it while it runs;
    ``restop`` raises it again when the first was lost (see _RESTOP).

    The exception must land inside ``run``'s try and never after it (in
    threading's bootstrap it would be unhandled, or leave the thread
    listed), and never be sent to a thread that has ended (a new one may
    have its ident). So the state is read and written under the lock: a
    stop is sent only while it is "running" or "stopping", and the thread
    ends that, on every way out of its try, by setting it to "over" and
    clearing whatever was sent and has not landed, both under the lock.
    That is written out in each handler, not called: CPython delivers a
    pending exception when a Python function starts (and after a call
    returns), which is where one would escape the handler."""

    def __init__(
        self, sql: str, statements: int, deliver: Callable[[Classification], object]
    ) -> None:
        super().__init__(name="statement-analysis", daemon=True)
        self._sql, self._statements, self._deliver = sql, statements, deliver
        self._lock = threading.Lock()
        self._state: Literal["starting", "running", "stopping", "over"] = "starting"

    def run(self) -> None:
        me = ctypes.c_ulong(threading.get_ident())  # (nothing is sent while "starting")
        try:
            with self._lock:
                if self._state != "starting":
                    return  # (stopped before it began: nobody waits)
                self._state = "running"
            c = analyse(self._sql, self._statements)
            with self._lock:
                self._state = "over"
                _SET_ASYNC_EXC(me, None)  # (a stop that crossed the end: too late)
            self._deliver(c)
        except _Stopped:
            with self._lock:
                self._state = "over"
                _SET_ASYNC_EXC(me, None)  # (a restop that crossed the stop)
        except BaseException as e:  # an analysis bug: unknown, never a crash
            with self._lock:
                self._state = "over"
                _SET_ASYNC_EXC(me, None)
            log.exception("statement analysis failed")
            self._deliver(unknown_classification(f"the analysis failed: {type(e).__name__}"))

    def stop(self) -> None:
        with self._lock:
            if self._state == "starting":
                self._state = "over"
            elif self._state == "running":
                self._state = "stopping"
                self._raise()

    def restop(self) -> bool:
        """Raise _Stopped again if the thread still runs the analysis it
        was told to stop; whether it did."""
        with self._lock:
            if self._state != "stopping" or not self.is_alive():
                return False
            frame = sys._current_frames().get(self.ident or 0)
            log.error(
                "a statement analysis was told to stop and still runs: told again (it was in %s)",
                _where(frame),
            )
            self._raise()
            return True

    def _raise(self) -> None:
        if self.ident is not None:
            _SET_ASYNC_EXC(ctypes.c_ulong(self.ident), ctypes.py_object(_Stopped))


def _where(frame: FrameType | None) -> str:
    """Where a thread's innermost Python frame is, for a log line."""
    if frame is None:
        return "no Python frame"
    return f"{frame.f_code.co_qualname} ({frame.f_code.co_filename}:{frame.f_lineno})"


def _restop_until_over(loop: asyncio.AbstractEventLoop, job: _Job) -> None:
    """Every _RESTOP seconds while ``job`` has not ended its analysis."""
    if job.restop():
        loop.call_later(_RESTOP, _restop_until_over, loop, job)
