"""Building many objects at once (a whole session's events for the API):
CPython's cyclic collector runs a collection every 700 new container
objects, and a full one each time the survivors grow by a quarter, scanning
every object in the process. Building 100,000 events that way spent two of
its three seconds collecting, holding the GIL the event loop needs. The
objects built here hold no cycles (records, models, their dicts and
lists), so reference counting frees them: the collector can pause."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for the block (it is process-wide: another
    thread's block ending first turns it back on, which costs time, never
    memory)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
