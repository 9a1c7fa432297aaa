"""A second, independent reading of every new statement: PostgreSQL's own
grammar (libpg_query, through ``hoopfast_core.pg_parse``), checked against
the sqlglot classifier.

sqlglot is a transpiler: lenient, many dialects, its own tree. PostgreSQL's
grammar is the one the server uses. Where the two disagree, the gateway
fails closed:

* PostgreSQL's grammar rejects the text, or counts a different number of
  statements: ``unknown``;
* PostgreSQL sees a class the classifier does not (a DML statement or table
  in a DML position -> ``write``; DDL, privileges, procedural code,
  maintenance, locks, server files): ``unknown``;
* tables, functions and settings either reader finds are all reported (the
  union), so deny lists see everything either parser saw.

It runs once per new fingerprint (a verdict-cache miss), where it adds
roughly 15-60 us to a classification of 50-1000 us; a cache hit never runs
it. libpg_query implements one PostgreSQL version's grammar (17 for
pg_query 6): syntax newer than that is ``unknown``, which is the safe side.
"""

from __future__ import annotations

from dataclasses import replace

from hoopfast_core import pg_parse

from hoopfast.policy.classify import Classification, function_classes

#: Statement node -> the class the classifier must also report.
_KIND_CLASS: dict[str, str] = {
    "InsertStmt": "write",
    "UpdateStmt": "write",
    "DeleteStmt": "write",
    "MergeStmt": "write",
    "TruncateStmt": "write",
    "RefreshMatViewStmt": "write",
    "NotifyStmt": "write",
    "CreateTableAsStmt": "write",
    "DoStmt": "procedural",
    "CallStmt": "procedural",
    "CreateFunctionStmt": "procedural",
    "GrantStmt": "dcl",
    "GrantRoleStmt": "dcl",
    "CreateRoleStmt": "dcl",
    "AlterRoleStmt": "dcl",
    "AlterRoleSetStmt": "dcl",
    "DropRoleStmt": "dcl",
    "AlterDefaultPrivilegesStmt": "dcl",
    "ReassignOwnedStmt": "dcl",
    "DropOwnedStmt": "dcl",
    "VacuumStmt": "maintenance",
    "ClusterStmt": "maintenance",
    "ReindexStmt": "maintenance",
    "CheckPointStmt": "maintenance",
    "LockStmt": "lock",
    "LoadStmt": "file",
    "TransactionStmt": "transaction",
}
#: Prefixes of node names that define or change schema objects.
_DDL_PREFIXES = ("Create", "Alter", "Drop", "Define", "Rename", "Comment", "SecLabel", "Import")
_DDL_KINDS = frozenset({"IndexStmt", "ViewStmt", "RuleStmt", "CompositeTypeStmt"})
#: Statements whose DML-position tables are definitions, not executed now,
#: or (COPY) whose direction is in the flags instead.
_DEFINES_DML = frozenset(
    {"RuleStmt", "CreateFunctionStmt", "CreateTrigStmt", "ViewStmt", "CopyStmt"}
)
#: Statements that bind a function to syntax (an operator, a cast, a
#: trigger, an aggregate...), so that a later statement calls it without
#: naming it: procedural, whatever the classifier says.
_BINDS_FUNCTIONS = frozenset(
    {
        "DefineStmt",
        "CreateCastStmt",
        "CreateTrigStmt",
        "CreateEventTrigStmt",
        "CreateTransformStmt",
        "CreateConversionStmt",
        "CreateOpClassStmt",
        "AlterOperatorStmt",
        "CreatePlangStmt",
    }
)
#: Which reported classes satisfy an expected one.
_SATISFIES: dict[str, frozenset[str]] = {
    "ddl": frozenset({"ddl", "dcl", "procedural"}),
    "dcl": frozenset({"dcl"}),
}


def _expected(kind: str, flags: list[str], tables: list[tuple[str, str]]) -> set[str]:
    if kind == "ExplainStmt" and "analyze" not in flags:
        return set()  # plans only; whatever it plans does not run
    expected: set[str] = set()
    cls = _KIND_CLASS.get(kind)
    if kind == "LockStmt" and "access_share" in flags:
        cls = None  # a read (see classify: LOCK ... IN ACCESS SHARE MODE)
    if cls is not None:
        expected.add(cls)
    elif kind in _DDL_KINDS or kind.startswith(_DDL_PREFIXES):
        expected.add("ddl")
    if "into" in flags:
        expected.add("write")
    if "locking" in flags:
        expected.add("lock")
    if "copy_from" in flags:
        expected.add("write")
    if "copy_file" in flags:
        expected.add("file")
    if kind not in _DEFINES_DML and any(ctx == "dml" for _, ctx in tables):
        expected.add("write")
    return expected


def _settings(flags: list[str]) -> set[str]:
    names: set[str] = set()
    for flag in flags:
        if flag == "reset_all":  # incl. RESET ROLE & co. (pgparse.rs setting_flag)
            names.add("all")
        elif flag.startswith(("set:", "reset:")):
            names.add(flag.split(":", 1)[1] or "*")
    return names


def _unknown(c: Classification, reason: str) -> Classification:
    return replace(c, classes=c.classes | {"unknown"}, reason=reason)


def crosscheck(sql: str, c: Classification) -> Classification:
    """``c`` (the classifier's reading of ``sql``) checked against
    PostgreSQL's grammar: unknown where they disagree, with the union of
    what both saw."""
    try:
        statements = pg_parse(sql)
    except OverflowError as e:
        # Too deep to parse safely (a chain of tens of thousands of terms):
        # not checked, so unknown (PostgreSQL refuses such chains anyway).
        return _unknown(c, str(e))
    except ValueError as e:
        # Nothing that PostgreSQL cannot parse can run: the client gets the
        # syntax error (42601) it would get from the server.
        message, position = e.args if len(e.args) == 2 else (str(e), 0)
        message = str(message)[:300]
        return replace(
            c,
            classes=c.classes | {"unknown"},
            reason=message,
            syntax_error=(message, int(position)),
        )
    if c.unknown:
        return c
    if len(statements) != c.statements:
        return _unknown(
            c, f"the parsers disagree on the statement count ({c.statements} vs {len(statements)})"
        )
    relations: set[str] = set()
    functions: set[str] = set()
    settings: set[str] = set()
    extra_classes: set[str] = set()
    for kind, flags, tables, funcs in statements:
        for cls in sorted(_expected(kind, flags, tables)):
            if not (c.classes & _SATISFIES.get(cls, frozenset({cls}))):
                return _unknown(
                    c, f"PostgreSQL's grammar reads a {kind} as {cls}; the classifier did not"
                )
        if kind in _BINDS_FUNCTIONS:
            extra_classes.add("procedural")
        relations.update(name for name, _ in tables)
        for name in funcs:
            functions.add(name)
            functions.add(name.rsplit(".", 1)[-1])
        settings |= _settings(flags)
    new_functions = functions - c.functions
    for name in new_functions:
        extra_classes |= function_classes(name)
    if (
        relations <= c.relations
        and not new_functions
        and settings <= c.settings
        and extra_classes <= c.classes
    ):
        return c
    return replace(
        c,
        classes=c.classes | extra_classes,
        relations=c.relations | relations,
        functions=c.functions | functions,
        settings=c.settings | settings,
    )
