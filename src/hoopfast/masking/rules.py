"""The masking rules of one person on one connection, compiled per
RowDescription into a :class:`hoopfast.core.MaskPlan`.

Which rule covers a result field:

1. the first rule (in file order, among those for the person's roles) whose
   column glob matches the field's source column, read from the catalog by
   (table OID, attnum), so ``SELECT email AS e`` is still the email column;
   a computed field (no source) is matched by its output name against
   one-part globs, and so is a field whose table the catalog does not know;
2. else the first rule whose ``types`` name the field's type;
3. else, for a text or json field, the connection's ``detectors``.

The engine only produces values the client's type decoder parses: a text
strategy on a field it cannot apply to (a non-text type) becomes the rule's
``fallback`` (null or the type's default). Text, varchar, bpchar, name and
json have the same bytes in binary format as in text format, so binary
results (asyncpg) of those types are masked like text; binary jsonb is a
version byte and then its text, which the engine masks as json.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from hoopfast import core
from hoopfast.config import DETECTORS, Masking, MaskRule
from hoopfast.core._mask import TEXT_TYPES, strategy_applies
from hoopfast.core.abc import ColumnRule, FieldDescription
from hoopfast.core.abc import MaskPlan as MaskPlanType
from hoopfast.masking import lineage
from hoopfast.masking.catalog import Catalog, Column
from hoopfast.masking.lineage import ANY_COLUMN, Source
from hoopfast.policy.classify import Classification
from hoopfast.policy.guard import RESHAPING, STATISTICS_VIEWS

log = logging.getLogger("hoopfast.masking")

_TEXT = 25
_XML = 142
_JSON = 114

#: Built-in type names rules may use without a catalog lookup (and aliases
#: as people write them).
BUILTIN_TYPES: dict[str, int] = {
    "bool": 16, "boolean": 16, "bytea": 17, "name": 19, "int8": 20, "bigint": 20,
    "int2": 21, "smallint": 21, "int4": 23, "integer": 23, "int": 23, "text": 25,
    "oid": 26, "json": 114, "xml": 142, "float4": 700, "real": 700, "float8": 701,
    "double precision": 701, "money": 790, "macaddr": 829, "inet": 869, "cidr": 650,
    "bpchar": 1042, "char": 1042, "character": 1042, "varchar": 1043,
    "character varying": 1043, "date": 1082, "time": 1083, "timestamp": 1114,
    "timestamptz": 1184, "interval": 1186, "timetz": 1266, "numeric": 1700,
    "decimal": 1700, "uuid": 2950, "jsonb": 3802, "macaddr8": 774,
}  # fmt: skip


def _matches(glob: tuple[str, ...], column: Column) -> bool:
    names = (column.schema, column.table, column.name)[-len(glob) :]
    if column.name == ANY_COLUMN:  # lineage: some column of this table
        names, glob = names[:-1], glob[:-1]
    return all(fnmatchcase(n, g) for n, g in zip(names, glob, strict=True))


@dataclass(frozen=True)
class _Rule:
    index: int
    rule: MaskRule
    globs: tuple[tuple[str, ...], ...]
    detectors: tuple[str, ...]


#: A compiled RowDescription: (plan, fields, column rules, positions of
#: fields lineage may still cover).
_Entry = tuple[
    MaskPlanType | None, list[FieldDescription], list[ColumnRule | None], tuple[int, ...]
]


class Masks:
    """Masking for one person on one connection."""

    def __init__(self, masking: Masking, roles: tuple[str, ...], key: bytes) -> None:
        self.key = key
        self._rules = [
            _Rule(
                i,
                r,
                tuple(tuple(g.split(".")) for g in r.columns),
                tuple(r.detectors or DETECTORS),
            )
            for i, r in enumerate(masking.rules)
            if not r.roles or set(r.roles) & set(roles)
        ]
        self.detectors: list[str] = list(masking.detectors)
        #: Errors and notices can quote any value (``SELECT email::int``):
        #: every detector runs over their texts.
        self.text_plan = every_detector(key)
        #: COPY output gets what a text column no rule covers gets.
        self.copy_plan = core.MaskPlan([], key, self.detectors) if self.detectors else None
        self._plans: dict[bytes, _Entry] = {}
        self._lineage_plans: dict[tuple[bytes, bytes], MaskPlanType | None] = {}

    @property
    def has_column_rules(self) -> bool:
        return bool(self._rules)

    def masked_tables(self, names: frozenset[str], catalog: Catalog) -> list[str]:
        """Of the relations a statement names, those with a column some rule
        covers, by a column glob or by its type (COPY out of them is
        refused)."""
        return [
            name
            for name in sorted(names)
            if any(
                self._covers(r, c, catalog)
                for cols in catalog.tables_named(name)
                for c in cols
                for r in self._rules
            )
        ]

    def refusal(self, sql: str, c: Classification, catalog: Catalog) -> tuple[str, str] | None:
        """(rule, message) when a statement would take masked values where
        masking cannot follow them, to be refused; None when it may run.
        Only connections with column rules refuse anything here."""
        if not self._rules:
            return None
        if "procedural" in c.classes:
            # Also query_to_xml, ts_stat & co.: SQL given as a string, which
            # the classifier counts as procedural and masking cannot follow.
            return (
                "masking:procedural",
                "procedural code (DO, CREATE FUNCTION, CALL, functions that run SQL "
                "text) is refused on a masked connection: it can read masked columns "
                "and hand the values out unmasked",
            )
        reshaping = sorted(c.classes & RESHAPING)
        if reshaping:
            # ALTER ... TYPE, RENAME (of a column, table or schema), SET
            # SCHEMA: the rules name columns, tables, schemas and types, and
            # a changed shape falls out of them.
            return (
                f"masking:{reshaping[0]}",
                f"{reshaping[0]} statements are refused on a masked connection: they "
                "could reshape the schema out of the masking rules",
            )
        stats = sorted(r for r in c.relations if r.rsplit(".", 1)[-1] in STATISTICS_VIEWS)
        if stats:
            return (
                f"masking:table:{stats[0]}",
                f"{stats[0]} shows samples of column values, masked ones included",
            )
        masked = self.masked_tables(c.relations, catalog)
        if not masked:
            return None
        if c.copies_out:
            return (
                "masking:copy",
                f"COPY out of {', '.join(masked)} is refused: it has masked columns "
                "(read them with SELECT, which masks them)",
            )
        # A write, or a setting (set_config, whose value the server may even
        # report back in a ParameterStatus), would keep what it reads.
        stores = "write" in c.classes or bool(c.settings)
        if stores:
            moved = lineage.moved(sql)
            if moved is None or self._rule_for_sources(moved, catalog) is not None:
                return (
                    "masking:write",
                    f"the statement would store masked values of {', '.join(masked)} "
                    "where no rule covers them (a write or a setting that reads masked "
                    "columns)",
                )
        return None

    @staticmethod
    def _covers(rule: _Rule, column: Column, catalog: Catalog) -> bool:
        return any(_matches(g, column) for g in rule.globs) or any(
            _type_oid(t, catalog) == column.type_oid for t in rule.rule.types
        )

    def plan_for(
        self, row_description: bytes, catalog: Catalog, sql: str | None = None
    ) -> MaskPlanType | None:
        """The plan for the DataRows under this RowDescription; None when
        nothing in it is masked. ``sql`` is the statement the rows answer
        (None: not known), for the lineage of computed fields. Cached per
        RowDescription, and per statement fingerprint where lineage adds
        something."""
        entry = self._plans.get(row_description)
        if entry is None:
            fields = core.decode_row_description(row_description)
            chosen = [self._chosen(f, catalog) for f in fields]
            columns = [self._column_rule(r, f) for (r, _), f in zip(chosen, fields, strict=True)]
            # Fields with no source column and no rule: lineage may find one.
            open_ = tuple(i for i, (r, sourced) in enumerate(chosen) if r is None and not sourced)
            entry = (self._compile(columns), fields, columns, open_ if self._rules else ())
            self._remember(self._plans, row_description, entry)
        plan, fields, columns, open_ = entry
        if not open_:
            return plan
        key = (row_description, core.fingerprint(sql)[0] if sql is not None else b"")
        try:
            return self._lineage_plans[key]
        except KeyError:
            pass
        found = lineage.sources(sql) if sql is not None else None
        columns = list(columns)
        for i in open_:
            if (
                found is not None
                and found.columns is not None
                and len(found.columns) == len(fields)
            ):
                rule = self._rule_for_sources(found.columns[i], catalog)
            elif found is not None and found.everything:
                rule = self._rule_for_sources(found.everything, catalog)
            elif (
                found is not None
                and sql is not None
                and lineage.first_keyword(sql) in _NO_DATA_STATEMENTS
                and core.fingerprint(sql)[1] == 1  # that statement alone
            ):
                rule = None
            else:
                # Unknown statement, unreadable text, or rows from a name the
                # gateway did not see defined: the field may come from any
                # masked column.
                rule = self._rules[0]
            if rule is not None:
                columns[i] = self._column_rule(rule, fields[i])
        plan = self._compile(columns)
        self._remember(self._lineage_plans, key, plan)
        return plan

    def _compile(self, columns: list[ColumnRule | None]) -> MaskPlanType | None:
        if all(c is None for c in columns):
            return None
        try:
            return core.MaskPlan(columns, self.key, None)
        except ValueError as e:  # a bug here must not unmask: null what had a rule
            log.error("masking plan refused (%s); nulling the masked columns", e)
            return core.MaskPlan(
                [None if c is None else ("null", 0, 0, [], 0, 0) for c in columns], self.key, None
            )

    @staticmethod
    def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= _MAX_PLANS:
            cache.clear()
        cache[key] = value

    def _chosen(self, field: FieldDescription, catalog: Catalog) -> tuple[_Rule | None, bool]:
        """The rule covering a field by its source column (or, with none,
        its name), else by its type; and whether the catalog knows the
        field's source column."""
        name, table_oid, attnum, type_oid = field[:4]
        source = catalog.column(table_oid, attnum)
        if source is None:
            # Computed, or a table the catalog does not know yet: by name.
            by_name = Column("", "", name.decode("utf-8", "replace"))
            for r in self._rules:
                if any(len(g) == 1 and _matches(g, by_name) for g in r.globs):
                    return r, False
        else:
            for r in self._rules:
                if any(_matches(g, source) for g in r.globs):
                    return r, True
        for r in self._rules:
            if any(_type_oid(t, catalog) == type_oid for t in r.rule.types):
                return r, source is not None
        return None, source is not None

    def _rule_for_sources(self, sources: frozenset[Source], catalog: Catalog) -> _Rule | None:
        """The first rule covering any column a computed field reads, by a
        column glob or by the column's type."""
        columns = [c for s in sources for c in _candidates(s, catalog)]
        for r in self._rules:
            if any(self._covers(r, c, catalog) for c in columns):
                return r
        return None

    def _column_rule(self, chosen: _Rule | None, field: FieldDescription) -> ColumnRule | None:
        type_oid, fmt = field[3], field[6]
        if type_oid == _XML:
            # xml's text and binary forms are its text: mask it as text (the
            # engine knows no xml), so detectors see table_to_xml's output.
            type_oid = _TEXT
        fmt = _engine_format(type_oid, fmt)
        if chosen is None:
            if self.detectors and strategy_applies("detect", fmt, type_oid):
                return ("detect", fmt, type_oid, self.detectors, 0, 0)
            return None
        rule = chosen.rule
        strategy = rule.strategy
        if not strategy_applies(strategy, fmt, type_oid):
            strategy = rule.fallback
        return (strategy, fmt, type_oid, list(chosen.detectors), rule.keep_first, rule.keep_last)


def _candidates(source: Source, catalog: Catalog) -> list[Column]:
    """The catalog columns a lineage source can be: an unqualified table may
    be in any schema, and "any column" of a table the catalog knows is each
    of its columns. A table it does not know stays as given (then "any
    column" matches every rule on that table name, and every one-part glob)."""
    schema, table, name = source
    tables = [cols for cols in catalog.tables_named(f"{schema}.{table}" if schema else table)]
    if not tables:
        return [Column(schema, table, name)]
    if name == ANY_COLUMN:
        return [c for cols in tables for c in cols]
    # The catalog's own column where it has one: it carries the type, for
    # rules by type (host(ip) follows an inet rule).
    return [
        next((c for c in cols if c.name == name), Column(cols[0].schema, table, name))
        for cols in tables
    ]


_MAX_PLANS = 1024
#: Statements whose rows describe the database, not its data.
_NO_DATA_STATEMENTS = frozenset({"EXPLAIN", "SHOW"})


def _engine_format(type_oid: int, fmt: int) -> int:
    """Binary text and json values are the text bytes: mask them as text."""
    return 0 if type_oid in TEXT_TYPES or type_oid == _JSON else fmt


def _type_oid(name: str, catalog: Catalog) -> int:
    oid = BUILTIN_TYPES.get(name.lower())
    if oid is None:
        oid = catalog.types.get(name, -1)
    return oid


def every_detector(key: bytes) -> FreeText:
    """Every detector over free text: for texts that may quote any value
    (errors, notices, the parameters the audit trail records)."""
    return FreeText(core.MaskPlan([], key, list(DETECTORS)))


#: A \uXXXX escape (JSON's, which PostgreSQL's json type keeps as sent).
_UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


class FreeText:
    """A detectors-only plan's ``mask_text``, which escapes cannot defeat: a
    text with \\uXXXX escapes (``{"to": "a\\u0040example.com"}``, a json
    parameter) is read with them decoded too, and if that finds what the
    text as sent hid, it is shown decoded, masked. (Decoded only then: a
    value is shown as sent wherever the escapes hide nothing.)"""

    __slots__ = ("_plan",)

    def __init__(self, plan: MaskPlanType) -> None:
        self._plan = plan

    def mask_text(self, text: str) -> str:
        masked = self._plan.mask_text(text)
        if "\\u" not in masked:
            return masked
        # (Decoded after masking: what the text as sent shows stays masked.)
        decoded = _decode_escapes(masked)
        if decoded == masked:
            return masked
        revealed = self._plan.mask_text(decoded)
        return masked if revealed == decoded else revealed


def _decode_escapes(text: str) -> str:
    """``text`` with its \\uXXXX escapes decoded (a UTF-16 pair of them as
    one character; a lone surrogate as U+FFFD)."""
    out = _UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return out.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def masks_for(
    masking: Masking | None, roles: tuple[str, ...], key: bytes, unmasked: bool
) -> Masks | None:
    """The masking of a session, or None when nothing is masked. ``unmasked``
    is the approval flow's hook (a time-boxed grant by a second person); no
    configuration sets it."""
    if masking is None or unmasked:
        return None
    masks = Masks(masking, roles, key)
    if not masks.has_column_rules and not masks.detectors:
        return None
    return masks
