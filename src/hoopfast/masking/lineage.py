"""Which source columns each output column of a query is computed from.

PostgreSQL's RowDescription names the source of a plain column reference
only; ``upper(email)``, ``substr(card, 1, 8)`` or a column of a subquery
or CTE arrive with no source. Read with sqlglot, the query says more: the
column rules then cover those fields too (``rules.Masks``).

The answer over-approximates and never under-approximates on what it
returns: an unqualified column counts for every table of its scope, an
unresolvable one for every table in the statement. Lineage only ever adds
masking, so a wrong extra source costs a masked value, never an exposed one.
It gives up (None) on what it cannot line up with the RowDescription by
position: ``*``, several statements, anything but a query. A whole-row
reference (``row_to_json(c)``, ``(c).address``) stands for every column of
its table.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.scope import Scope, build_scope

#: (schema or "", table, column) a value is computed from.
Source = tuple[str, str, str]

#: The column of a Source that could be any column of its table.
ANY_COLUMN = "*"

_MAX_DEPTH = 8


def output_sources(sql: str) -> list[frozenset[Source]] | None:
    """Per output column, in order, the columns it is computed from; None
    when that cannot be told by position."""
    try:
        trees = sqlglot.parse(sql, read="postgres")
    except (SqlglotError, RecursionError, ValueError):
        return None
    if len(trees) != 1 or not isinstance(trees[0], exp.Query):
        return None
    tree = trees[0]
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
    every_table = frozenset(
        _table_source(t) for t in tree.find_all(exp.Table) if isinstance(t.this, exp.Identifier)
    )  # tables, not table functions
    return _outputs(root, scope_of, every_table, 0)


def _outputs(
    scope: Scope, scope_of: dict[int, Scope], every_table: frozenset[tuple[str, str]], depth: int
) -> list[frozenset[Source]] | None:
    if depth > _MAX_DEPTH:
        return None
    if scope.set_operation_scopes:
        sides = [_outputs(s, scope_of, every_table, depth + 1) for s in scope.set_operation_scopes]
        if any(s is None for s in sides) or len({len(s) for s in sides if s is not None}) != 1:
            return None
        return [frozenset().union(*column) for column in zip(*sides, strict=True)]
    selects = getattr(scope.expression, "selects", None)
    if not selects:
        return None
    out = []
    for projection in selects:
        if projection.find(exp.Star) is not None or (
            isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
        ):
            return None
        out.append(_projection(projection, scope, scope_of, every_table, depth))
    return out


def _projection(
    projection: exp.Expr,
    scope: Scope,
    scope_of: dict[int, Scope],
    every_table: frozenset[tuple[str, str]],
    depth: int,
) -> frozenset[Source]:
    found: set[Source] = set()
    for column in projection.find_all(exp.Column):
        found |= _resolve(column, scope_of.get(id(column), scope), scope_of, every_table, depth)
    return frozenset(found)


def _resolve(
    column: exp.Column,
    scope: Scope,
    scope_of: dict[int, Scope],
    every_table: frozenset[tuple[str, str]],
    depth: int,
) -> set[Source]:
    name = column.name
    qualifier = column.table
    if qualifier:
        candidates: list[exp.Table | Scope] = []
        s: Scope | None = scope
        while s is not None and not candidates:  # correlated: the nearest scope naming it
            if qualifier in s.sources:
                candidates = [s.sources[qualifier]]
            s = s.parent
    elif name in scope.sources:
        # A whole-row reference (row_to_json(c), (c).address, c::text): it
        # carries every column of that source.
        source = scope.sources[name]
        if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
            return {(*_table_source(source), ANY_COLUMN)}
        # A subquery's or a table function's row: what it reads, at most.
        return {(schema, table, ANY_COLUMN) for schema, table in every_table}
    else:
        candidates = list(scope.sources.values())
    if not candidates:
        return {(schema, table, name) for schema, table in every_table}
    found: set[Source] = set()
    for source in candidates:
        if isinstance(source, exp.Table) and not isinstance(source.this, exp.Identifier):
            # A table function's column: computed from its arguments.
            found |= {(schema, table, ANY_COLUMN) for schema, table in every_table}
        elif isinstance(source, exp.Table):
            found.add((*_table_source(source), name))
        elif isinstance(source, Scope):
            inner = _outputs_named(source, name, scope_of, every_table, depth + 1)
            # Not found by name (a star, a column alias list, a LATERAL
            # subquery): any column of any table.
            found |= inner or {(schema, table, ANY_COLUMN) for schema, table in every_table}
    return found


def _outputs_named(
    scope: Scope,
    name: str,
    scope_of: dict[int, Scope],
    every_table: frozenset[tuple[str, str]],
    depth: int,
) -> set[Source]:
    """Sources of the output column ``name`` of a subquery or CTE."""
    scopes = scope.set_operation_scopes or [scope]
    found: set[Source] = set()
    if depth > _MAX_DEPTH:
        return found
    for s in scopes:
        for projection in getattr(s.expression, "selects", None) or []:
            if projection.alias_or_name == name or projection.find(exp.Star) is not None:
                found |= _projection(projection, s, scope_of, every_table, depth)
    return found


def _table_source(table: exp.Table) -> tuple[str, str]:
    return (table.db or "", table.name)
