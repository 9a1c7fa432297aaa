"""Which source columns each output column of a query is computed from.

PostgreSQL's RowDescription names the source of a plain column reference
only; ``upper(email)``, ``substr(card, 1, 8)`` or a column of a subquery
or CTE arrive with no source. Read with sqlglot, the query says more: the
column rules then cover those fields too (``rules.Masks``).

The answer over-approximates and never under-approximates:

- an unqualified column counts for every table of its scope, and one that
  resolves nowhere for every table in the text;
- a whole-row reference (``row_to_json(c)``, ``(c).address``, ``c.*`` in a
  function), a column of a table with a column alias list, of a table
  function or of a subquery column it cannot find by name stands for any
  column of the tables involved (:data:`ANY_COLUMN`);
- when the output cannot be lined up with the RowDescription by position
  (``*`` in the select list, several statements, RETURNING, VALUES, a
  data-modifying CTE), every computed field counts as computed from any
  column of every table in the text (:func:`sources`);
- when the text cannot be read at all, :func:`sources` says so (None) and
  the caller masks computed fields as if they came from any masked column.

Lineage only ever adds masking, so a wrong extra source costs a masked
value, never an exposed one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.scope import Scope, build_scope

#: (schema or "", table, column) a value is computed from.
Source = tuple[str, str, str]

#: The column of a Source that could be any column of its table.
ANY_COLUMN = "*"

_MAX_DEPTH = 8

#: sqlglot does not decode U&"..." identifiers: such texts are not read.
_UNICODE_IDENTIFIER = re.compile(r'[uU]&"')


@dataclass(frozen=True)
class Lineage:
    #: Per output column, in order, what it is computed from; None when the
    #: output cannot be lined up by position.
    columns: list[frozenset[Source]] | None
    #: Any column of every table the text names (the fallback for fields
    #: ``columns`` cannot place).
    everything: frozenset[Source]


def _parse(sql: str) -> list[exp.Expr] | None:
    """The statements of ``sql`` with identifiers folded as PostgreSQL folds
    them; None when sqlglot cannot read the text (or it has ``U&"..."``
    identifiers, which sqlglot does not decode)."""
    if _UNICODE_IDENTIFIER.search(sql):
        return None
    try:
        trees = [t for t in sqlglot.parse(sql, read="postgres") if t is not None]
        return [normalize_identifiers(t, dialect="postgres") for t in trees]
    except (SqlglotError, RecursionError, ValueError):
        return None


def sources(sql: str) -> Lineage | None:
    """The lineage of ``sql``; None when it cannot be read."""
    trees = _parse(sql)
    if not trees:
        return None
    # A name may be a CTE in one place and a table in another: every name
    # counts as a table here (over-approximation), and a Table source named
    # like a CTE (a data-modifying one stays a Table to sqlglot) as any of them.
    ctes = frozenset(c.alias for tree in trees for c in tree.find_all(exp.CTE))
    tables = frozenset(
        _table_source(t)
        for tree in trees
        for t in tree.find_all(exp.Table)
        if isinstance(t.this, exp.Identifier)  # tables, not table functions
    )
    everything = frozenset((schema, table, ANY_COLUMN) for schema, table in tables)
    columns = None
    if len(trees) == 1 and isinstance(trees[0], exp.Query):
        columns = _query_columns(trees[0], tables, ctes)
    return Lineage(columns, everything)


def _query_columns(
    tree: exp.Query, tables: frozenset[tuple[str, str]], ctes: frozenset[str]
) -> list[frozenset[Source]] | None:
    try:
        root = build_scope(tree)
    except (SqlglotError, RecursionError, ValueError, KeyError):
        return None
    if root is None:
        return None
    scope_of: dict[int, Scope] = {}
    for scope in root.traverse():  # inner scopes first: a column belongs to the innermost
        for column in scope.columns:
            scope_of.setdefault(id(column), scope)
    return _Walk(scope_of, tables, ctes).outputs(root, 0)


class _Walk:
    def __init__(
        self, scope_of: dict[int, Scope], tables: frozenset[tuple[str, str]], ctes: frozenset[str]
    ) -> None:
        self.scope_of = scope_of
        self.ctes = ctes
        self.anything = {(schema, table, ANY_COLUMN) for schema, table in tables}

    def outputs(self, scope: Scope, depth: int) -> list[frozenset[Source]] | None:
        if depth > _MAX_DEPTH:
            return None
        if scope.set_operation_scopes:
            sides = [self.outputs(s, depth + 1) for s in scope.set_operation_scopes]
            if any(s is None for s in sides) or len({len(s) for s in sides if s is not None}) != 1:
                return None
            return [frozenset().union(*column) for column in zip(*sides, strict=True)]
        selects = getattr(scope.expression, "selects", None)
        if not selects:
            return None
        out = []
        for projection in selects:
            if _is_star(projection):
                return None  # its columns cannot be counted here
            out.append(self.projection(projection, scope, depth))
        return out

    def projection(self, projection: exp.Expr, scope: Scope, depth: int) -> frozenset[Source]:
        found: set[Source] = set()
        for column in projection.find_all(exp.Column):
            found |= self.resolve(column, self.scope_of.get(id(column), scope), depth)
        return frozenset(found)

    def resolve(self, column: exp.Column, scope: Scope, depth: int) -> set[Source]:
        name = column.name
        qualifier = column.table
        if isinstance(column.this, exp.Star):  # c.* inside a function: c's whole row
            return self.whole_row(qualifier, scope) if qualifier else set(self.anything)
        if qualifier:
            source = _visible(qualifier, scope)
            candidates = [] if source is None else [source]
        elif _visible(name, scope) is not None and name not in _columns_of_scope(scope):
            return self.whole_row(name, scope)  # row_to_json(c), (c).f, c::text
        else:
            candidates = list(scope.sources.values())
        if not candidates:
            return set(self.anything)
        found: set[Source] = set()
        for source in candidates:
            if isinstance(source, exp.Table):
                if not _is_plain_table(source, self.ctes):
                    # A table function's or a CTE's column: any of the tables, at most.
                    found |= self.anything
                if not isinstance(source.this, exp.Identifier):
                    continue
                if _renames_columns(source):  # AS c(i, n, ...): any column
                    found.add((*_table_source(source), ANY_COLUMN))
                else:
                    found.add((*_table_source(source), name))
            elif isinstance(source, Scope):
                inner = self.named(source, name, depth + 1)
                # Not found by name (a *, a column alias list, LATERAL): any
                # column of the tables involved.
                found |= inner or self.anything
            else:
                found |= self.anything
        return found

    def whole_row(self, name: str, scope: Scope) -> set[Source]:
        source = _visible(name, scope)
        if isinstance(source, exp.Table) and _is_plain_table(source, self.ctes):
            return {(*_table_source(source), ANY_COLUMN)}
        if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
            return {(*_table_source(source), ANY_COLUMN)} | self.anything
        # A subquery's, a CTE's or a table function's row: what it reads, at most.
        return set(self.anything)

    def named(self, scope: Scope, name: str, depth: int) -> set[Source]:
        """Sources of the output column ``name`` of a subquery or CTE."""
        found: set[Source] = set()
        if depth > _MAX_DEPTH:
            return set(self.anything)
        for s in scope.set_operation_scopes or [scope]:
            for projection in getattr(s.expression, "selects", None) or []:
                if _is_star(projection):
                    return set(self.anything)
                if projection.alias_or_name == name:
                    found |= self.projection(projection, s, depth)
        return found


def _visible(name: str, scope: Scope) -> exp.Table | Scope | None:
    """The source ``name`` refers to in ``scope`` or an enclosing one."""
    s: Scope | None = scope
    while s is not None:
        if name in s.sources:
            source = s.sources[name]
            return source if isinstance(source, exp.Table | Scope) else None
        s = s.parent
    return None


def _columns_of_scope(scope: Scope) -> set[str]:
    """Output names of the subqueries a scope reads (a column of one of them
    named like a source is a column, not a whole row)."""
    names: set[str] = set()
    for source in scope.sources.values():
        if isinstance(source, Scope):
            for projection in getattr(source.expression, "selects", None) or []:
                names.add(projection.alias_or_name)
    return names


def _is_star(projection: exp.Expr) -> bool:
    return isinstance(projection, exp.Star) or (
        isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
    )


def _is_plain_table(table: exp.Table, ctes: frozenset[str]) -> bool:
    """A table (or view) of the database: not a table function, not a CTE."""
    return isinstance(table.this, exp.Identifier) and (bool(table.db) or table.name not in ctes)


def _renames_columns(table: exp.Table) -> bool:
    alias = table.args.get("alias")
    return bool(alias is not None and alias.args.get("columns"))


def _table_source(table: exp.Table) -> tuple[str, str]:
    return (table.db or "", table.name)


def moved(sql: str) -> frozenset[Source] | None:
    """The columns whose values a statement can carry somewhere else: every
    column it references outside WHERE/HAVING/JOIN conditions (which only
    filter) and outside the columns an UPDATE assigns; a ``*`` or a
    whole-row reference stands for any column of every table. None when
    the text cannot be read. Over-approximates, like everything here."""
    trees = _parse(sql)
    if trees is None or any(isinstance(t, exp.Command) for t in trees):
        return None  # not parsed (PREPARE, EXECUTE, ...): cannot tell
    found: set[Source] = set()
    for tree in trees:
        named: dict[str, tuple[str, str]] = {}
        anything: set[Source] = set()
        for t in tree.find_all(exp.Table):
            if isinstance(t.this, exp.Identifier):  # a CTE's name counts as a table too
                named[t.alias_or_name] = _table_source(t)
                anything.add((*_table_source(t), ANY_COLUMN))
        assigned = {
            id(eq.this)
            for update in tree.find_all(exp.Update)
            for eq in update.expressions
            if isinstance(eq, exp.EQ)
        }
        if any(True for _ in tree.find_all(exp.Star)):
            found |= anything
        for column in tree.find_all(exp.Column):
            if id(column) in assigned or column.find_ancestor(exp.Where, exp.Having, exp.Join):
                continue
            table = named.get(column.table) if column.table else None
            if table is not None:
                found.add((*table, column.name))
            elif not column.table and column.name in named:
                found.add((*named[column.name], ANY_COLUMN))  # a whole row
            else:
                found |= {(schema, t, column.name) for schema, t, _ in anything}
                if column.table:
                    found |= anything  # a CTE's or a subquery's column
    return frozenset(found)


_IDENT = r'(?:"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*))'
_DECLARE = re.compile(
    rf"\s*DECLARE\s+{_IDENT}\s+(?:[A-Z]+\s+)*?CURSOR\s+(?:(?:WITH|WITHOUT)\s+HOLD\s+)?FOR\s+(.*)",
    re.IGNORECASE | re.DOTALL,
)
_PREPARE = re.compile(rf"\s*PREPARE\s+{_IDENT}\s*(?:\([^)]*\)\s*)?AS\s+(.*)", re.I | re.DOTALL)
_FETCH = re.compile(rf"\s*(?:FETCH|MOVE)\b.*?{_IDENT}\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_EXECUTE = re.compile(rf"\s*EXECUTE\s+{_IDENT}\s*(?:\(.*\))?\s*;?\s*$", re.I | re.DOTALL)
_CLOSE = re.compile(rf"\s*(CLOSE|DEALLOCATE)\s+(?:PREPARE\s+)?(?:ALL\b|{_IDENT})\s*;?\s*$", re.I)
_DISCARD = re.compile(r"\s*DISCARD\s+(ALL|PLANS)\s*;?\s*$", re.I)
#: Statements that define or drop a cursor or prepared statement, anywhere in
#: a text (a text that has one where named_statement does not read it makes
#: every remembered name unknown).
NAMING = re.compile(r"\b(?:DECLARE|PREPARE|CLOSE|DEALLOCATE|DISCARD)\b", re.I)
_LEADING = re.compile(r"(?:\s+|;|--[^\n]*(?:\n|$)|/\*(?:[^*]|\*(?!/))*\*/)*")
_KEYWORD = re.compile(r"\s*([A-Za-z]+)")


def _ident(match: re.Match[str]) -> str:
    return _ident_groups(match.group(1), match.group(2))


def _ident_groups(quoted: str | None, bare: str | None) -> str:
    if quoted is not None:
        return quoted.replace('""', '"')
    return bare.lower() if bare is not None else ""


def named_statement(sql: str) -> tuple[str, str, str | None] | None:
    """What a statement does with a name, read for the lineage: ("cursor",
    name, query) for DECLARE, ("prepared", name, statement) for PREPARE,
    ("fetch", cursor, None) for FETCH/MOVE, ("execute", name, None) for
    EXECUTE, ("close" | "deallocate", name or "", None) for CLOSE and
    DEALLOCATE ("" for ALL), ("discard", "", None) for DISCARD ALL/PLANS;
    None for anything else. Leading comments are skipped."""
    sql = sql[_LEADING.match(sql).end() :]  # type: ignore[union-attr]  # always matches
    match = _DISCARD.match(sql)
    if match:
        return "discard", "", None
    match = _CLOSE.match(sql)
    if match:
        name = _ident_groups(match.group(2), match.group(3))
        return match.group(1).lower(), name, None
    for pattern, kind in ((_DECLARE, "cursor"), (_PREPARE, "prepared")):
        match = pattern.match(sql)
        if match:
            return kind, _ident(match), match.group(3)
    for pattern, kind in ((_FETCH, "fetch"), (_EXECUTE, "execute")):
        match = pattern.match(sql)
        if match:
            return kind, _ident(match), None
    return None


def first_keyword(sql: str) -> str:
    match = _KEYWORD.match(sql)
    return match.group(1).upper() if match else ""
