"""hoopfast.policy.analysis: statements analysed in threads, with a time
limit, a stop when the session ends, and turns shared fairly between people.
The analysis itself is replaced here by Python that is slow on demand."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hoopfast.policy import analysis
from hoopfast.policy.classify import Classification
from hoopfast.policy.guard import analyse, unknown_classification


def _busy(sql: str, statements: int) -> Classification:
    """Python bytecode until stopped ("slow ..."), or at once."""
    if sql.startswith("slow"):
        seconds = float(sql.split()[1])
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
    return unknown_classification(f"analysed {sql}")


@pytest.fixture
def busy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(analysis, "analyse", _busy)
    yield
    deadline = time.monotonic() + 5
    while _threads():
        assert time.monotonic() < deadline, "an analysis thread outlived its test"
        time.sleep(0.02)


def _threads() -> int:
    return sum(t.name == "statement-analysis" for t in threading.enumerate())


def test_a_real_analysis_in_a_thread_equals_one_in_place() -> None:
    sql = "SELECT a FROM t WHERE b = 1"

    async def run() -> Classification:
        return await analysis.Analyst(10).analyse(sql, 1, "alice")

    assert asyncio.run(run()) == analyse(sql, 1)


def test_past_its_time_limit_an_analysis_is_stopped_and_unknown(busy: None) -> None:
    async def run() -> tuple[Classification, float]:
        started = time.monotonic()
        c = await analysis.Analyst(0.2).analyse("slow 30", 1, "alice")
        return c, time.monotonic() - started

    c, took = asyncio.run(run())
    assert c.unknown and "could not analyse this statement within 0.2 s" in (c.reason or "")
    assert took < 1.5  # (and the fixture sees its thread end)


def _swallows_its_first_stop(sql: str, statements: int) -> Classification:
    """Busy until stopped twice: the first stop is lost, as one that lands
    in a finalizer the cyclic collector runs in the thread ("Exception
    ignored in ...")."""
    end = time.monotonic() + 10  # (should the stops fail: not for the rest of the run)
    try:
        while time.monotonic() < end:
            pass
    except analysis._Stopped:
        pass
    while time.monotonic() < end:
        pass
    return unknown_classification("never stopped")


def test_a_stop_that_was_lost_is_sent_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(analysis, "analyse", _swallows_its_first_stop)
    monkeypatch.setattr(analysis, "_RESTOP", 0.3)
    errors: list[BaseException] = []
    hook, threading.excepthook = threading.excepthook, lambda a: errors.append(a.exc_value)

    async def run() -> Classification:
        c = await analysis.Analyst(0.2).analyse("spin", 1, "alice")
        deadline = time.monotonic() + 5
        while _threads() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # (the loop sends the stop again)
        return c

    try:
        c = asyncio.run(run())
    finally:
        threading.excepthook = hook
    assert c.unknown and _threads() == 0 and errors == []
    told = [r.getMessage() for r in caplog.records if "still runs" in r.getMessage()]
    assert len(told) == 1 and "_swallows_its_first_stop" in told[0], told


@pytest.fixture
def excepthook() -> Iterator[list[BaseException]]:
    """What reaches threading.excepthook: a _Stopped that escaped ``run``."""
    errors: list[BaseException] = []
    hook, threading.excepthook = threading.excepthook, lambda a: errors.append(a.exc_value)
    yield errors
    threading.excepthook = hook


def _told_again(caplog: pytest.LogCaptureFixture) -> int:
    return sum("still runs" in r.getMessage() for r in caplog.records)


def test_a_stop_that_lands_as_the_analysis_fails_in_c_stays_in_the_thread(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    excepthook: list[BaseException],
) -> None:
    """The stop arrives while the analysis waits in C (no bytecode runs),
    which then raises: the stop lands as the handler begins. It escaped
    ``run`` there (the handler began with a call), its state stayed
    "stopping", and the restops went on forever, to whatever thread got
    its ident next (found by a review)."""
    a, b = socket.socketpair()

    def fails_in_c(sql: str, statements: int) -> Classification:
        a.settimeout(0.4)
        a.recv(1)  # (the GIL released; then TimeoutError, from C)
        raise AssertionError("unreachable")

    monkeypatch.setattr(analysis, "analyse", fails_in_c)
    monkeypatch.setattr(analysis, "_RESTOP", 0.25)

    async def run() -> Classification:
        c = await analysis.Analyst(0.1).analyse("x", 1, "alice")
        await asyncio.sleep(1.0)  # (four restop intervals)
        return c

    try:
        c = asyncio.run(run())
    finally:
        a.close()
        b.close()
    assert c.unknown and _threads() == 0
    assert excepthook == [] and _told_again(caplog) <= 1  # (once, before it failed)


def test_a_restop_that_crosses_the_stop_stays_in_the_thread(
    monkeypatch: pytest.MonkeyPatch, excepthook: list[BaseException]
) -> None:
    """The first stop lands late (the analysis was in C), while the restop
    holds the lock, logging: the thread waits for it in its handler, and
    the restop's exception, sent meanwhile, must not land after the
    handler (found by a review)."""

    def in_c(sql: str, statements: int) -> Classification:
        time.sleep(0.6)  # (C: the stop waits until it returns)
        return unknown_classification("late")

    class SlowSink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "still runs" in record.getMessage():
                time.sleep(0.3)  # (from 0.4 s to 0.7 s, holding the job's lock)

    sink = SlowSink()
    logger = logging.getLogger("hoopfast.policy")
    logger.addHandler(sink)
    monkeypatch.setattr(analysis, "analyse", in_c)
    monkeypatch.setattr(analysis, "_RESTOP", 0.3)

    async def run() -> None:
        await analysis.Analyst(0.1).analyse("x", 1, "alice")
        await asyncio.sleep(1.2)

    try:
        asyncio.run(run())
    finally:
        logger.removeHandler(sink)
    assert excepthook == [] and _threads() == 0


def test_a_session_that_ends_stops_its_analysis(busy: None) -> None:
    async def run() -> None:
        task = asyncio.ensure_future(analysis.Analyst(60).analyse("slow 30", 1, "alice"))
        await asyncio.sleep(0.2)
        assert _threads() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_one_persons_slow_statements_take_one_turn_at_a_time(busy: None) -> None:
    """Mallory's four slow statements and Alice's quick one, two slots:
    Alice waits for at most one of Mallory's, not for all four."""

    async def run() -> dict[str, float]:
        analyst = analysis.Analyst(5, concurrent=1)
        started = time.monotonic()
        done: dict[str, float] = {}

        async def one(name: str, sql: str, who: str) -> None:
            await analyst.analyse(sql, 1, who)
            done[name] = time.monotonic() - started

        slow = [asyncio.ensure_future(one(f"m{i}", "slow 0.3", "mallory")) for i in range(4)]
        await asyncio.sleep(0.05)
        await one("alice", "quick", "alice")
        await asyncio.gather(*slow)
        return done

    done = asyncio.run(run())
    assert done["alice"] < 0.5, done  # behind one of Mallory's, not four
    assert max(done[f"m{i}"] for i in range(4)) > 1.1


def test_an_analysis_that_ends_after_its_loop_closed_ends_quietly(busy: None) -> None:
    """The gateway stopped (its loop closed) while a statement was analysed:
    the result has nobody to go to, and the thread ends without raising
    (it raised, logging "statement analysis failed" for no bug, and
    again, unhandled)."""
    errors: list[BaseException] = []
    hook, threading.excepthook = threading.excepthook, lambda a: errors.append(a.exc_value)
    try:
        loop = asyncio.new_event_loop()
        done: asyncio.Future[Classification] = loop.create_future()
        job = analysis._Job("slow 0.2", 1, lambda c: analysis._hand_over(loop, done, c))
        job.start()
        loop.close()
        job.join(5)
        assert not job.is_alive() and errors == [] and not done.done()
    finally:
        threading.excepthook = hook
