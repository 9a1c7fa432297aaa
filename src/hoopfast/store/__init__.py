"""The state store: one interface (:class:`Store`), two backends."""

from __future__ import annotations

from pathlib import Path

from hoopfast.store.base import EventCursor, Store, StoreError

__all__ = ["EventCursor", "Store", "StoreError", "open_store"]


def open_store(url: str, state_dir: Path) -> Store:
    """The store a URL names (not yet opened): ``sqlite:///path/to.db``,
    ``sqlite:`` (state_dir/hoopfast.db), or ``postgresql://...`` (libpq
    URI). The URL may carry a password; it never appears in an error."""
    if url == "sqlite:" or url.startswith("sqlite:"):
        from hoopfast.store.sqlite import SqliteStore

        path = url.removeprefix("sqlite:").removeprefix("//")
        return SqliteStore(Path(path) if path else state_dir / "hoopfast.db")
    if url.startswith(("postgresql://", "postgres://")):
        from hoopfast.store.postgres import PostgresStore

        return PostgresStore(url)
    scheme = url.split(":", 1)[0] if ":" in url else "(none)"
    raise ValueError(f"unsupported store URL scheme {scheme!r}: use sqlite: or postgresql://")
