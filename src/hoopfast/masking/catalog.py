"""Where a result column comes from.

A RowDescription names each field's source as (table OID, attribute number);
the rules name columns as schema.table.column. The catalog maps one to the
other. It is read from the upstream (one query over pg_attribute) on the
first session of a connection and reused for ``masking.catalog_ttl``; a
RowDescription that names a table the snapshot does not know (created since)
marks it stale, so the next session reads it again, and that field is
matched by its name only (:mod:`.rules`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: Every column of every relation a query can read (tables, views,
#: materialized views, foreign and partitioned tables), outside the system
#: schemas. Qualified throughout: the session's search_path is the client's.
CATALOG_SQL = """\
SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname,
       CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attnum > 0 AND NOT a.attisdropped
  AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
ORDER BY c.oid, a.attnum"""

#: Type names -> OIDs, for rules by type (user types: ``TYPES_SQL``).
TYPES_SQL = "SELECT oid, typname FROM pg_catalog.pg_type WHERE typtype IN ('b', 'e', 'r', 'm')"

Row = list[bytes | None]

#: OIDs below this are the system's (FirstNormalObjectId).
_FIRST_NORMAL_OID = 16384


@dataclass(frozen=True)
class Column:
    schema: str
    table: str
    name: str
    #: The type (a domain's base type, as RowDescription reports it); 0
    #: where unknown. Not part of a column's identity.
    type_oid: int = field(default=0, compare=False)


@dataclass
class Catalog:
    #: (table OID, attnum) -> column.
    columns: dict[tuple[int, int], Column]
    #: Table OID -> its columns in attnum order.
    tables: dict[int, list[Column]]
    #: Type name -> OID.
    types: dict[str, int]
    loaded_at: float = field(default_factory=time.monotonic)
    stale: bool = False

    @classmethod
    def from_rows(cls, columns: list[Row], types: list[Row]) -> Catalog:
        by_key: dict[tuple[int, int], Column] = {}
        tables: dict[int, list[Column]] = {}
        for oid, attnum, schema, table, name, type_oid in columns:
            # NOT NULL catalog columns
            assert oid and attnum and schema and table and name and type_oid
            col = Column(schema.decode(), table.decode(), name.decode(), int(type_oid))
            by_key[int(oid), int(attnum)] = col
            tables.setdefault(int(oid), []).append(col)
        type_oids = {name.decode(): int(oid) for oid, name in types if oid and name}
        return cls(by_key, tables, type_oids)

    def column(self, table_oid: int, attnum: int) -> Column | None:
        """The source column of a result field; None for a computed field or
        a table the snapshot does not know (then the snapshot is stale)."""
        if not table_oid:
            return None
        col = self.columns.get((table_oid, attnum))
        if col is None and table_oid >= _FIRST_NORMAL_OID and table_oid not in self.tables:
            self.stale = True  # a system catalog (psql's \d) is never in it
        return col

    def tables_named(self, name: str) -> list[list[Column]]:
        """Columns of every table called ``name`` ("table" or
        "schema.table"); an unqualified name may be in any schema."""
        schema, _, table = name.rpartition(".")
        return [
            cols
            for cols in self.tables.values()
            if cols[0].table == table and (not schema or cols[0].schema == schema)
        ]


Loader = Callable[[], Awaitable[Catalog]]


class CatalogCache:
    """One catalog per connection, shared by its sessions; one load at a
    time per connection."""

    def __init__(self) -> None:
        self._catalogs: dict[str, Catalog] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, connection: str, ttl: float, load: Loader) -> Catalog:
        lock = self._locks.setdefault(connection, asyncio.Lock())
        async with lock:
            current = self._catalogs.get(connection)
            if current is None or current.stale or time.monotonic() - current.loaded_at > ttl:
                current = self._catalogs[connection] = await load()
            return current

    def clear(self) -> None:
        self._catalogs.clear()
