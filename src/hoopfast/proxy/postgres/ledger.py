"""Which Parse messages the server has really carried out.

The session keeps bookkeeping per prepared-statement name that decides
whether a Bind of it may run (a statement approved for one run, one
revoked by a policy change). A Parse changes that bookkeeping, but only if
the server carries it out: the server skips every message after an error
until the next Sync, and refuses a Parse of a name that exists. So the
session changes the bookkeeping when it forwards the Parse (a Bind in the
same Sync group runs only if the Parse did) and records here how to undo
it; the server's answers then settle it:

* ParseComplete: the oldest Parse not yet answered was carried out;
* ErrorResponse: every Parse not yet answered up to the next Sync failed or
  was skipped: undone, newest first;
* ReadyForQuery: the oldest Sync group is over.

A Bind in a *later* Sync group than an unanswered Parse of its name cannot
be judged yet (the server will have settled the Parse by the time it runs
the Bind, the gateway has not): the session holds it until it is
(:meth:`Ledger.unsettled`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Parse:
    key: str
    group: int
    undo: Callable[[], None] | None


_SYNC = object()


class Ledger:
    def __init__(self) -> None:
        #: Parses and Sync markers in the order the server will answer them.
        self._pending: deque[_Parse | object] = deque()
        #: The Sync group the next client message belongs to.
        self.group = 0

    @classmethod
    def following(cls, pending: list[bytes | None]) -> Ledger:
        """A ledger started mid-session: ``pending`` is what the server has
        yet to answer (hoopfast.core.Trail.pending: Parse names, None for
        each Sync). Those Parses changed nothing to undo: the session had
        no bookkeeping until now."""
        ledger = cls()
        for name in pending:
            if name is None:
                ledger.sync()
            else:
                ledger.parse(name.decode("utf-8", "surrogateescape"), None)
        return ledger

    def __bool__(self) -> bool:
        return bool(self._pending)

    def parse(self, key: str, undo: Callable[[], None] | None) -> None:
        """A Parse of ``key`` went to the server; ``undo`` reverses what the
        session changed for it."""
        self._pending.append(_Parse(key, self.group, undo))

    def sync(self) -> None:
        """A Sync (or a simple Query, which ends with ReadyForQuery too)
        went to the server."""
        self._pending.append(_SYNC)
        self.group += 1

    def parse_complete(self) -> None:
        for i, item in enumerate(self._pending):
            if isinstance(item, _Parse):
                del self._pending[i]
                return

    def error(self) -> None:
        failed: list[_Parse] = []
        for item in self._pending:
            if item is _SYNC:
                break
            assert isinstance(item, _Parse)
            failed.append(item)
        for item in reversed(failed):
            self._pending.remove(item)
            if item.undo is not None:
                item.undo()

    def ready(self) -> None:
        # Anything before the marker was answered (or the server skipped it
        # and said so with an error): drop what remains, then the marker.
        while self._pending:
            item = self._pending.popleft()
            if item is _SYNC:
                return
            assert isinstance(item, _Parse)
            if item.undo is not None:
                item.undo()

    def unsettled(self, key: str) -> bool:
        """Whether a Parse of ``key`` from an earlier Sync group than the
        current one is still unanswered."""
        return any(
            isinstance(item, _Parse) and item.key == key and item.group < self.group
            for item in self._pending
        )
