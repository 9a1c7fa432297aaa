"""Statement classification for policy: what a SQL text would do, failing closed.

``classify(sql)`` tokenizes the whole text once with sqlglot's PostgreSQL
tokenizer, corrects the tokens where sqlglot's lexing differs from
PostgreSQL's (see *Value independence*), splits them into statements at ``;``
tokens (so semicolons inside strings, dollar quotes and comments never split),
and classifies every statement: statements without expressions (SET, BEGIN,
VACUUM, DEALLOCATE ...) from their keywords, the others by parsing them with
sqlglot's parser and walking the *whole* tree, cross-checked against the
tokens. The result is the union over all statements.

Classes (a statement can get several):

* ``read``: SELECT / set operations / VALUES / TABLE anywhere in a tree,
  ``COPY ... TO STDOUT``, SHOW, FETCH/MOVE/CLOSE, EXPLAIN without ANALYZE.
* ``write``: INSERT/UPDATE/DELETE/MERGE/TRUNCATE anywhere (also in CTEs),
  ``COPY ... FROM``, SELECT INTO and CREATE TABLE AS (with ``ddl``),
  REFRESH, NOTIFY, sequence/large-object writing builtins (setval, nextval,
  lo_unlink, ...).
* ``ddl``: CREATE/ALTER/DROP/COMMENT/SECURITY LABEL/IMPORT FOREIGN SCHEMA.
* ``dcl``: GRANT/REVOKE, CREATE/ALTER/DROP ROLE|USER|GROUP, USER MAPPING
  (with ``ddl``), ALTER DEFAULT PRIVILEGES, REASSIGN OWNED, DROP OWNED.
* ``role``: a change of identity: SET [SESSION|LOCAL] ROLE, SET SESSION
  AUTHORIZATION, ``SET role|session_authorization = ...``, a SET whose
  parameter cannot be determined, and any call of ``set_config()`` (its
  arguments may be computed). RESET ROLE, RESET SESSION AUTHORIZATION and
  DISCARD ALL return to the login identity (the gateway's upstream user),
  which can only drop privileges: they are ``session``, settings ``all``.
* ``session``: any SET/RESET, DISCARD, DEALLOCATE, LISTEN/UNLISTEN,
  ``set_config()``.
* ``file``: COPY to/from a server file or PROGRAM, and the server-file
  functions (pg_read_file, pg_ls_dir, lo_import, lo_export, ...).
* ``maintenance``: VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT.
* ``procedural``: DO, CALL, CREATE FUNCTION/PROCEDURE/LANGUAGE (bodies are not
  analysed), and functions that run SQL text or read tables named by a value
  (dblink*, query_to_xml, table_to_xml, ts_stat, crosstab, ...:
  ``PROCEDURAL_FUNCTIONS`` and ``PROCEDURAL_PREFIXES``).
* ``transaction``: BEGIN/START/COMMIT/END/ROLLBACK/ABORT/SAVEPOINT/RELEASE,
  PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED.
* ``lock``: SELECT ... FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE, LOCK TABLE.
* ``unknown``: anything not fully classified (tokenizer or parser error, a
  sqlglot ``Command`` fallback whose leading keyword is not known here, a
  statement whose tree does not match its leading keyword, an unknown
  statement keyword, a write/DDL keyword in a statement the tree said was
  harmless, a lexical construct whose meaning is unclear). Policy denies
  ``unknown`` by default.

Other fields:

* ``relations``: every table reference, CTE names included (over-reporting
  is the safe side for deny lists). Table functions (``FROM dblink(...)``)
  are functions, not relations.
* ``functions``: every function called; qualified calls are reported both
  qualified and bare (``pg_catalog.x`` and ``x``).
* ``settings``: run-time parameters a session-level SET/RESET (or BEGIN/START
  TRANSACTION/SET TRANSACTION/SET SESSION CHARACTERISTICS) changes, names
  ASCII-lowercased, quoted or not (PostgreSQL compares parameter names
  case-insensitively, so ``SET "ROLE"`` sets ``role``), dotted names joined
  with ``.``. Special forms map to their parameter: SET NAMES ->
  ``client_encoding``, SET TIME ZONE -> ``timezone``, SET SCHEMA ->
  ``search_path``, SET ROLE -> ``role``, SET SESSION AUTHORIZATION ->
  ``session_authorization``, SET XML OPTION -> ``xmloption``; a READ WRITE
  transaction mode -> ``transaction_read_only`` (plus
  ``default_transaction_read_only`` for SESSION CHARACTERISTICS), ISOLATION
  LEVEL -> ``transaction_isolation``, [NOT] DEFERRABLE ->
  ``transaction_deferrable``. ``set_config()`` and a SET whose target cannot
  be determined -> ``*``; RESET ALL, DISCARD ALL, RESET ROLE and RESET
  SESSION AUTHORIZATION -> ``all`` (back to the values of the startup
  packet, which the gateway pins).
* ``prepares``: names created by SQL ``PREPARE name AS stmt`` (the statement
  gets stmt's classes).
* ``executes``: names run by ``EXECUTE name [(args)]``, also inside
  ``EXPLAIN [ANALYZE]`` and ``CREATE TABLE ... AS EXECUTE``. EXECUTE's own
  classes are those of its argument expressions (classified as ``SELECT
  args``; ``read`` only when they contain a query), so the session layer
  must add the classes it recorded for each name (the extended-protocol
  Parse message must be classified the same way). A plain EXPLAIN EXECUTE
  lists the name too (conservative; its arguments are evaluated).
* ``deallocates``: names dropped by ``DEALLOCATE [PREPARE] name``; ``*`` for
  DEALLOCATE ALL and DISCARD ALL.

Decisions:

* ``EXPLAIN ANALYZE stmt`` executes *stmt*: it gets stmt's classes.
  ``EXPLAIN stmt`` without ANALYZE only plans: ``read`` (relations and
  functions of stmt are still reported, and stmt must itself classify, or the
  result is ``unknown``). ``ANALYZE`` followed by any literal (``ANALYZE 0``,
  ``ANALYZE 'off'``) or a quoted identifier counts as on; only the keywords
  FALSE/OFF/NO turn it off. The option name may be a quoted identifier
  (``EXPLAIN ("analyze")``), as PostgreSQL allows.
* ``DECLARE c CURSOR FOR query`` gets the query's classes; FETCH/MOVE/CLOSE
  are ``read``.
* Identifiers are normalised as PostgreSQL does: unquoted -> ASCII-lowercased,
  quoted -> exact, ``U&"..."`` (with optional UESCAPE) decoded.

Value independence: the gateway caches classifications by
:func:`hoopfast.core.fingerprint`, which replaces literal values by
placeholders of their kind, so the classification never depends on a literal
value: before parsing, every string constant (``'...'``, ``E'...'``,
``U&'...'`` with its UESCAPE, ``$tag$...$tag$``, pieces joined by PostgreSQL's
newline quote continuation) becomes one placeholder string token, ``N'...'``,
``B'...'`` and ``X'...'`` a placeholder of their own kind, and every number
(re-lexed with PostgreSQL's rules: ``.5``, ``1_000``, ``0x1F``, ``1e10``) one
placeholder number token. Where sqlglot lexes differently from PostgreSQL the
tokens are corrected (an ``E'...'`` string continued on the next line keeps
its backslash escapes) or the text is ``unknown`` (a number followed by
identifier characters). Names (relations, functions, prepared statements,
parameters) are taken only from identifiers and keywords, never from
literals; a literal where a name must be makes the statement ``unknown``.

Known gaps: what a function, procedure, DO block, trigger, rule, operator or
cast does inside is invisible (a "read" SELECT can call a user function that
writes, or that runs ``SET ROLE``; functions are found by call syntax only,
not through attribute notation ``t.f``); functions sqlglot knows by another
name are reported under sqlglot's name unless listed in
``SENSITIVE_FUNCTIONS`` (found from the tokens as written); ``EXECUTE`` needs
session tracking; unquoted columns named like write keywords (``SELECT insert
FROM t``) are classified ``unknown`` (quote them); the lexing assumes
``standard_conforming_strings = on`` and a UTF-8 client encoding (the gateway
must pin both); the semicolons of a ``BEGIN ATOMIC ... END`` function body
split it here (the pieces are classified too: over-reporting).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlglot import Token, TokenType, exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

__all__ = [
    "CLASSES",
    "FILE_FUNCTIONS",
    "PROCEDURAL_FUNCTIONS",
    "PROCEDURAL_PREFIXES",
    "ROLE_FUNCTIONS",
    "SENSITIVE_FUNCTIONS",
    "WRITE_FUNCTIONS",
    "Classification",
    "classify",
    "function_classes",
]

# sqlglot logs a warning for every statement it falls back to parsing as a
# generic Command (CREATE ROLE, DROP OWNED ...). The classifier handles those
# fallbacks itself, and one log line per classified statement would flood the
# gateway's log (and cost time), so only sqlglot's errors are kept.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

CLASSES = frozenset(
    {
        "read",
        "write",
        "ddl",
        "dcl",
        "role",
        "session",
        "file",
        "maintenance",
        "procedural",
        "transaction",
        "lock",
        "unknown",
    }
)

FILE_FUNCTIONS = frozenset(
    {
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "lo_import",
        "lo_export",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalmapdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_replslotdir",
        "pg_ls_summariesdir",
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
    }
)
#: Functions that change run-time parameters (role, session_authorization ...).
ROLE_FUNCTIONS = frozenset({"set_config"})
WRITE_FUNCTIONS = frozenset(
    {
        "nextval",
        "setval",
        "lo_create",
        "lo_creat",
        "lo_unlink",
        "lo_put",
        "lo_from_bytea",
        "lo_truncate",
        "lo_truncate64",
        "lowrite",
        "pg_notify",
    }
)
#: Functions that run SQL text passed as a value, or read whole tables (or
#: cursors) named by a value: what they do is invisible here.
PROCEDURAL_FUNCTIONS = frozenset(
    {
        # SQL/XML mapping functions (query text, cursor or table named by value)
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        # full text search over a query's result
        "ts_stat",
        "ts_rewrite",
        # tablefunc: query text / table named by value
        "connectby",
        "normal_rand_query",
        # extensions that run SQL text
        "pg_background_launch",
        "schedule_in_database",
        "alter_job",
        "create_immv",
        "citus_run_local_command",
    }
)
#: Name prefixes of function families that run SQL text: dblink, dblink_exec,
#: dblink_open ...; tablefunc's crosstab*; pgRouting's pgr_* (edge queries as
#: text); Citus' run_command_on_*.
PROCEDURAL_PREFIXES = ("dblink", "crosstab", "pgr_", "run_command_on_")
# Names whose presence is cross-checked at token level (``name(``), in case the
# tree hides a call (or sqlglot knows the function under another name): the
# class-bearing functions plus common deny-list entries.
SENSITIVE_FUNCTIONS = (
    FILE_FUNCTIONS
    | ROLE_FUNCTIONS
    | WRITE_FUNCTIONS
    | PROCEDURAL_FUNCTIONS
    | frozenset(
        {
            "dblink",
            "dblink_exec",
            "dblink_connect",
            "dblink_connect_u",
            "dblink_open",
            "dblink_fetch",
            "dblink_send_query",
            "dblink_get_result",
            "crosstab",
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_reload_conf",
            "pg_rotate_logfile",
            "pg_promote",
        }
    )
)

_DIALECT = Dialect.get_or_raise("postgres")

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")

_LITERAL_TOKENS = frozenset(
    {
        TokenType.STRING,
        TokenType.NATIONAL_STRING,
        TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.UNICODE_STRING,
        TokenType.BIT_STRING,
        TokenType.HEX_STRING,
        TokenType.BYTE_STRING,
        TokenType.IDENTIFIER,
        TokenType.NUMBER,
    }
)
# Literal token type -> (placeholder type, placeholder text). All of PostgreSQL's
# character-string constants are one kind, as in the fingerprint.
_PLACEHOLDERS: dict[TokenType, tuple[TokenType, str]] = {
    TokenType.STRING: (TokenType.STRING, "_"),
    TokenType.BYTE_STRING: (TokenType.STRING, "_"),  # E'...'
    TokenType.UNICODE_STRING: (TokenType.STRING, "_"),  # U&'...'
    TokenType.HEREDOC_STRING: (TokenType.STRING, "_"),  # $tag$...$tag$
    TokenType.RAW_STRING: (TokenType.STRING, "_"),
    TokenType.NATIONAL_STRING: (TokenType.NATIONAL_STRING, "_"),
    TokenType.BIT_STRING: (TokenType.BIT_STRING, "0"),
    TokenType.HEX_STRING: (TokenType.HEX_STRING, "0"),
}
# Quoted constants that PostgreSQL continues with a '...' on a following line.
_CONTINUABLE = frozenset(_PLACEHOLDERS) - {TokenType.HEREDOC_STRING, TokenType.RAW_STRING}
# Tokens that may start a number (sqlglot lexes 0x1F as a hex string, .5 as . 5).
_NUMBER_STARTS = frozenset(
    {TokenType.NUMBER, TokenType.HEX_STRING, TokenType.BIT_STRING, TokenType.DOT}
)
# scan.l: {whitespace_with_newline} between two quoted pieces. Written so
# that no text can be matched two ways: a nested quantifier here
# (`(?:[ ...]+|...)*`) backtracked exponentially when the match failed
# (a newline, 40 spaces, then `/**/`: hours of the event loop, in C, where
# no time limit reaches).
_CONTINUATION_RE = re.compile(r"[ \t\f\v]*(?:--[^\n\r]*)?[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*[\n\r])*")
_DEC = r"[0-9](?:_?[0-9])*"
_NUMBER_RE = re.compile(
    rf"0[xX](?:_?[0-9A-Fa-f])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+"
    rf"|(?:{_DEC}(?:\.(?:{_DEC})?)?|\.{_DEC})(?:[eE][-+]?{_DEC})?"
)
_COMMAND_TOKENS = frozenset(_DIALECT.tokenizer_class.COMMANDS)
_COMMAND_PREFIXES = frozenset(_DIALECT.tokenizer_class.COMMAND_PREFIX_TOKENS)

_QUERY_ROOTS: tuple[type[exp.Expr], ...] = (
    exp.Select,
    exp.SetOperation,
    exp.Subquery,
    exp.Values,
)
_DML_ROOTS: tuple[type[exp.Expr], ...] = (exp.Insert, exp.Update, exp.Delete, exp.Merge)

# Leading keyword -> root node types the tree must have (else: unknown).
_TREE_HEADS: dict[str, tuple[type[exp.Expr], ...]] = {
    "SELECT": _QUERY_ROOTS,
    "VALUES": _QUERY_ROOTS,
    "TABLE": _QUERY_ROOTS,
    "(": _QUERY_ROOTS,
    "WITH": _QUERY_ROOTS + _DML_ROOTS,
    "INSERT": (exp.Insert,),
    "UPDATE": (exp.Update,),
    "DELETE": (exp.Delete,),
    "MERGE": (exp.Merge,),
    "TRUNCATE": (exp.TruncateTable,),
    "COPY": (exp.Copy,),
    "CREATE": (exp.Create,),
    "ALTER": (exp.Alter,),
    "DROP": (exp.Drop,),
    "COMMENT": (exp.Comment,),
    "GRANT": (exp.Grant,),
    "REVOKE": (exp.Revoke,),
}

# Leading keyword -> classes, decided by the keyword alone: PostgreSQL's
# grammar gives these statements no expressions (the tree, if any, is not
# needed; sqlglot often parses them as Command or even as an expression).
_KEYWORD_HEADS: dict[str, frozenset[str]] = {
    "BEGIN": frozenset({"transaction"}),
    "START": frozenset({"transaction"}),
    "COMMIT": frozenset({"transaction"}),
    "END": frozenset({"transaction"}),
    "ROLLBACK": frozenset({"transaction"}),
    "ABORT": frozenset({"transaction"}),
    "SAVEPOINT": frozenset({"transaction"}),
    "RELEASE": frozenset({"transaction"}),
    "CHECKPOINT": frozenset({"maintenance"}),
    "VACUUM": frozenset({"maintenance"}),
    "ANALYZE": frozenset({"maintenance"}),
    "ANALYSE": frozenset({"maintenance"}),
    "CLUSTER": frozenset({"maintenance"}),
    "REINDEX": frozenset({"maintenance"}),
    "DO": frozenset({"procedural"}),
    "LISTEN": frozenset({"session"}),
    "UNLISTEN": frozenset({"session"}),
    "SHOW": frozenset({"read"}),
    "FETCH": frozenset({"read"}),
    "MOVE": frozenset({"read"}),
    "CLOSE": frozenset({"read"}),
    "NOTIFY": frozenset({"write"}),
    "REFRESH": frozenset({"write"}),
    "SECURITY": frozenset({"ddl"}),
    "IMPORT": frozenset({"ddl"}),
    "REASSIGN": frozenset({"dcl"}),
}

# Heads whose statement is classified from the text after the keyword.
_REST_HEADS = frozenset({"EXPLAIN", "PREPARE", "DECLARE", "EXECUTE", "CALL", "LOCK"})

# When sqlglot falls back to Command for these heads, the keyword decides.
_COMMAND_FALLBACK: dict[str, frozenset[str]] = {
    "CREATE": frozenset({"ddl"}),
    "ALTER": frozenset({"ddl"}),
    "DROP": frozenset({"ddl"}),
    "COMMENT": frozenset({"ddl"}),
    "GRANT": frozenset({"dcl"}),
    "REVOKE": frozenset({"dcl"}),
}

_ROLE_WORDS = frozenset({"ROLE", "USER", "GROUP"})
_PROC_WORDS = frozenset({"FUNCTION", "PROCEDURE", "LANGUAGE"})
_CREATE_MODIFIERS = frozenset({"OR", "REPLACE", "TRUSTED", "PROCEDURAL"})
_QUERY_WORDS = frozenset({"SELECT", "VALUES", "TABLE", "WITH"})

# Keywords that, anywhere in a statement, mean it must have been seen as
# write/ddl/dcl; otherwise the tree missed something -> unknown.
_CROSSCHECK_WORDS = frozenset(
    {
        "INSERT",
        "DELETE",
        "MERGE",
        "TRUNCATE",
        "DROP",
        "CREATE",
        "ALTER",
        "GRANT",
        "REVOKE",
        "COPY",
        "INTO",
        "EXECUTE",
    }
)
_MUTATING = frozenset({"write", "ddl", "dcl"})
_LOCK_NEXT = frozenset({"UPDATE", "SHARE", "NO", "KEY"})

# SET/RESET forms that are not ``name TO value``.
_SPECIAL_SETTINGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("TIME", "ZONE"): ("timezone",),
    ("SESSION", "AUTHORIZATION"): ("session_authorization",),
    ("XML", "OPTION"): ("xmloption",),
    ("TRANSACTION", "SNAPSHOT"): ("transaction_snapshot",),
}
_SPECIAL_SETTING_WORDS: dict[str, tuple[str, ...]] = {
    "NAMES": ("client_encoding",),
    "SCHEMA": ("search_path",),
    "ROLE": ("role",),
    "CATALOG": ("*",),
}
_ROLE_SETTINGS = frozenset({"role", "session_authorization", "*"})
# guc.c map_old_guc_names: old names still accepted by SET.
_GUC_ALIASES = {
    "sort_mem": "work_mem",
    "vacuum_mem": "maintenance_work_mem",
    "ssl_ecdh_curve": "ssl_groups",
}

_MAX_DEPTH = 4
_EMPTY: frozenset[str] = frozenset()
_DIGITS = "0123456789"
_DIGITS_1 = frozenset(_DIGITS)


@dataclass(frozen=True, slots=True)
class Classification:
    """What a SQL text does. Every field is the union over all statements."""

    classes: frozenset[str]
    relations: frozenset[str]
    functions: frozenset[str]
    statements: int
    reason: str | None = None
    #: Run-time parameters changed (lowercased; ``*`` = cannot tell which).
    settings: frozenset[str] = _EMPTY
    #: Names created by SQL PREPARE.
    prepares: frozenset[str] = _EMPTY
    #: Names run by EXECUTE (the session resolves them).
    executes: frozenset[str] = _EMPTY
    #: Names dropped by DEALLOCATE (``*``: all of them).
    deallocates: frozenset[str] = _EMPTY
    #: True when a literal value decided part of this (the parameter named by
    #: ``set_config('name', ...)``): then texts with one fingerprint can
    #: differ, and the result must not be cached by fingerprint.
    value_dependent: bool = False
    #: PostgreSQL's grammar rejects the text: (its message, 1-based position
    #: or 0). Set by the cross-check (hoopfast.policy.crosscheck), never by
    #: classify().
    syntax_error: tuple[str, int] | None = None
    #: A COPY ... TO STDOUT (its rows leave as CopyData, not DataRows).
    copies_out: bool = False

    @property
    def unknown(self) -> bool:
        return "unknown" in self.classes

    @property
    def locks_rows(self) -> bool:
        return "lock" in self.classes


class _Unknown(Exception):
    """Raised inside the classifier to fail closed with a reason."""


class _Acc:
    __slots__ = (
        "arg_classes",
        "classes",
        "copies_out",
        "deallocates",
        "executes",
        "functions",
        "prepares",
        "reason",
        "relations",
        "settings",
        "value_dependent",
    )

    def __init__(self) -> None:
        self.classes: set[str] = set()
        self.relations: set[str] = set()
        self.functions: set[str] = set()
        self.settings: set[str] = set()
        self.prepares: set[str] = set()
        self.executes: set[str] = set()
        self.deallocates: set[str] = set()
        # Classes of EXECUTE arguments (evaluated even by a plain EXPLAIN).
        self.arg_classes: set[str] = set()
        self.reason: str | None = None
        self.value_dependent = False
        self.copies_out = False

    def unknown(self, reason: str) -> None:
        self.classes.add("unknown")
        if self.reason is None:
            self.reason = reason

    def add_function(self, name: str) -> None:
        self.functions.add(name)
        bare = name.rsplit(".", 1)[-1]
        self.functions.add(bare)
        if bare in FILE_FUNCTIONS:
            self.classes.add("file")
        if bare in ROLE_FUNCTIONS:
            self.classes |= {"role", "session"}
            self.settings.add("*")
            # Texts with set_config are never cached by fingerprint, readable
            # name or not: set_config(E'jit', ...) must not decide for
            # set_config('jit', ...) under the same key, nor the reverse.
            self.value_dependent = True
        if bare in WRITE_FUNCTIONS:
            self.classes.add("write")
        if bare in PROCEDURAL_FUNCTIONS or bare.startswith(PROCEDURAL_PREFIXES):
            self.classes.add("procedural")

    def add_setting(self, name: str) -> None:
        self.classes.add("session")
        self.settings.add(name)
        alias = _GUC_ALIASES.get(name)
        if alias is not None:
            self.settings.add(alias)
        if name in _ROLE_SETTINGS:
            self.classes.add("role")


def function_classes(name: str) -> frozenset[str]:
    """The classes calling function ``name`` ("f" or "schema.f") implies."""
    acc = _Acc()
    acc.add_function(name)
    return frozenset(acc.classes)


def classify(sql: str) -> Classification:
    """Classify every statement of ``sql``; never raises, fails closed."""
    acc = _Acc()
    statements = 0
    try:
        statements = _classify_text(sql, acc, 0)
    except (ParseError, TokenError) as e:
        acc.classes = {"unknown"}
        acc.reason = acc.reason or f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    except _Unknown as e:
        acc.classes = {"unknown"}
        acc.reason = acc.reason or str(e)
    except Exception as e:  # RecursionError, sqlglot internals: fail closed
        acc.classes = {"unknown"}
        acc.reason = acc.reason or f"classifier error: {type(e).__name__}"
    return Classification(
        classes=frozenset(acc.classes),
        relations=frozenset(acc.relations),
        functions=frozenset(acc.functions),
        statements=statements,
        reason=acc.reason if "unknown" in acc.classes else None,
        settings=frozenset(acc.settings),
        prepares=frozenset(acc.prepares),
        executes=frozenset(acc.executes),
        deallocates=frozenset(acc.deallocates),
        value_dependent=acc.value_dependent,
        copies_out=acc.copies_out,
    )


# -- tokens -----------------------------------------------------------------


def _normalise(text: str, quoted: bool) -> str:
    return text if quoted else text.translate(_ASCII_LOWER)


def _decode_unicode_escapes(body: str, escape: str) -> str:
    """Decode the body of a PostgreSQL ``U&"..."`` identifier."""
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c != escape:
            out.append(c)
            i += 1
            continue
        if i + 1 < n and body[i + 1] == escape:
            out.append(escape)
            i += 2
        elif i + 7 <= n and body[i + 1] == "+" and _is_hex(body[i + 2 : i + 8]):
            out.append(_codepoint(int(body[i + 2 : i + 8], 16)))
            i += 8
        elif i + 5 <= n and _is_hex(body[i + 1 : i + 5]):
            out.append(_codepoint(int(body[i + 1 : i + 5], 16)))
            i += 5
        else:
            raise _Unknown("invalid Unicode escape in U& identifier")
    text = "".join(out)
    try:  # combine surrogate pairs, reject lone surrogates
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError:
        raise _Unknown("invalid surrogate in U& identifier") from None


def _is_hex(s: str) -> bool:
    return len(s) in (4, 6) and all(ch in "0123456789abcdefABCDEF" for ch in s)


def _codepoint(cp: int) -> str:
    if cp == 0 or cp > 0x10FFFF:
        raise _Unknown("invalid code point in U& identifier")
    return chr(cp)


def _tokenize(sql: str) -> list[Token]:
    # The trailing space works around a sqlglot tokenizer error on a text
    # ending in an empty string constant after a parameter (``$1, ''``).
    return _rewrite(sql, _DIALECT.tokenize(sql + " "))


def _tokenize_from(sql: str, pos: int) -> list[Token]:
    """sqlglot's tokens of ``sql[pos:]``, positioned in ``sql``."""
    tokens = _DIALECT.tokenize(sql[pos:] + " ")
    if tokens and tokens[0].token_type in _COMMAND_TOKENS:
        # sqlglot would fold the rest into one string token: not a statement start
        raise _Unknown("unexpected command keyword after a string constant")
    return [
        Token(t.token_type, t.text, t.line, t.col, t.start + pos, t.end + pos, t.comments)
        for t in tokens
    ]


def _e_string_end(sql: str, start: int) -> int:
    """Index of the quote closing the E'...' piece whose opening quote is at start."""
    k = start + 1
    n = len(sql)
    while k < n:
        c = sql[k]
        if c == "\\":
            k += 2
        elif c == "'":
            if k + 1 < n and sql[k + 1] == "'":
                k += 2
            else:
                return k
        else:
            k += 1
    raise _Unknown("unterminated string constant")


def _is_ident_char(c: str) -> bool:
    return not c.isascii() or c.isalnum() or c in "_$"


#: Marks the text of a literal whose value _rewrite kept.
_KEPT = "\x00kept:"


def _is_set_config_name(sql: str, tokens: list[Token], i: int, out: list[Token]) -> bool:
    """tokens[i] is a plain '...' constant, whole (no continuation), right
    after ``set_config(``."""
    tok = tokens[i]
    return (
        tok.token_type == TokenType.STRING
        and len(out) >= 2
        and out[-1].token_type == TokenType.L_PAREN
        and out[-2].token_type != TokenType.IDENTIFIER
        and out[-2].text.lower() == "set_config"
        and sql[tok.start : tok.start + 1] == "'"
        and "\n" not in sql[tok.end + 1 : tokens[i + 1].start if i + 1 < len(tokens) else None]
        and "\x00" not in tok.text
    )


def _rewrite(sql: str, tokens: list[Token]) -> list[Token]:
    """Make sqlglot's tokens PostgreSQL's, with every literal a placeholder.

    * ``U`` ``&`` ``"..."`` [UESCAPE 'c'] -> one decoded identifier token;
    * a string constant (with its continuation pieces and UESCAPE) -> one
      placeholder string token of its kind;
    * a number as PostgreSQL lexes it -> one placeholder number token.
    """
    out: list[Token] = []
    i = 0
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        tt = tok.token_type
        if tt in _NUMBER_STARTS and (
            sql[tok.start] in _DIGITS
            or (tt == TokenType.DOT and sql[tok.start + 1 : tok.start + 2] in _DIGITS_1)
        ):
            if out and out[-1].token_type == TokenType.PARAMETER and out[-1].end + 1 == tok.start:
                out.append(tok)  # $1: a parameter number, kept as is
                i += 1
                continue
            m = _NUMBER_RE.match(sql, tok.start)
            if m is None:  # pragma: no cover - the checks above guarantee a digit
                raise _Unknown("malformed number")
            end = m.end()
            if end < len(sql) and (_is_ident_char(sql[end]) or sql[end] == "."):
                raise _Unknown("trailing junk after numeric literal")
            j = i
            while j < n and tokens[j].start < end:
                j += 1
            if tokens[j - 1].end != end - 1:
                raise _Unknown("number does not end on a token boundary")
            out.append(
                Token(TokenType.NUMBER, "1", tok.line, tok.col, tok.start, end - 1, tok.comments)
            )
            i = j
            continue
        placeholder = _PLACEHOLDERS.get(tt)
        if placeholder is not None and _is_set_config_name(sql, tokens, i, out):
            # The one literal whose value is kept: the parameter name of
            # set_config (see _set_config_name).
            out.append(
                Token(TokenType.STRING, _KEPT + tok.text, tok.line, tok.col, tok.start, tok.end)
            )
            i += 1
            continue
        if placeholder is not None:
            end = tok.end
            j = i + 1
            if tt in _CONTINUABLE:
                escapes = tt == TokenType.BYTE_STRING
                while (
                    j < n
                    and tokens[j].token_type == TokenType.STRING
                    and sql[tokens[j].start] == "'"
                    and _CONTINUATION_RE.fullmatch(sql, end + 1, tokens[j].start)
                ):
                    piece = tokens[j]
                    if escapes:  # E'...' continues with backslash escapes
                        real_end = _e_string_end(sql, piece.start)
                        if real_end != piece.end:
                            fixed = Token(
                                TokenType.STRING, "_", piece.line, piece.col, piece.start, real_end
                            )
                            tokens = [*tokens[:j], fixed, *_tokenize_from(sql, real_end + 1)]
                            n = len(tokens)
                    end = tokens[j].end
                    j += 1
            if (
                tt == TokenType.UNICODE_STRING
                and j + 1 < n
                and _word(tokens[j]) == "UESCAPE"
                and tokens[j + 1].token_type == TokenType.STRING
            ):
                end = tokens[j + 1].end
                j += 2
            out.append(
                Token(
                    placeholder[0], placeholder[1], tok.line, tok.col, tok.start, end, tok.comments
                )
            )
            i = j
            continue
        if (
            tt == TokenType.VAR
            and tok.text in ("U", "u")
            and i + 2 < n
            and tokens[i + 1].token_type == TokenType.AMP
            and tokens[i + 1].start == tok.end + 1
            and tokens[i + 2].token_type == TokenType.IDENTIFIER
            and tokens[i + 2].start == tokens[i + 1].end + 1
        ):
            ident = tokens[i + 2]
            escape = "\\"
            j = i + 3
            if (
                j + 1 < n
                and tokens[j].text.upper() == "UESCAPE"
                and tokens[j + 1].token_type == TokenType.STRING
            ):
                escape = tokens[j + 1].text
                if len(escape) != 1 or escape in "0123456789abcdefABCDEF+'\" \t\r\n":
                    raise _Unknown("invalid UESCAPE character")
                j += 2
            decoded = _decode_unicode_escapes(ident.text, escape)
            out.append(
                Token(
                    TokenType.IDENTIFIER,
                    decoded,
                    tok.line,
                    tok.col,
                    tok.start,
                    tokens[j - 1].end,
                    list(tok.comments) + list(ident.comments),
                )
            )
            i = j
            continue
        out.append(tok)
        i += 1
    return out


def _split(tokens: list[Token], length: int) -> list[tuple[list[Token], int]]:
    """Statements and the index of the last character of each (before its ``;``).

    The end comes from the ``;`` token, not from the statement's last token: a
    string token sqlglot folded a command's text into can end short of it.
    """
    chunks: list[tuple[list[Token], int]] = []
    current: list[Token] = []
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            if current:
                chunks.append((current, tok.start - 1))
            current = []
        else:
            current.append(tok)
    if current:
        chunks.append((current, length - 1))
    return chunks


def _word(tok: Token) -> str:
    """Upper-cased keyword text of a token, '' for literals and quoted identifiers."""
    if tok.token_type in _LITERAL_TOKENS:
        return ""
    text = tok.text
    return text.upper() if text.isascii() else text.translate(_ASCII_UPPER)


def _name(tok: Token) -> str:
    """A name (identifier or unreserved keyword) as PostgreSQL folds it."""
    if tok.token_type == TokenType.IDENTIFIER:
        return tok.text
    if tok.token_type in _LITERAL_TOKENS or not _NAME_RE.match(tok.text):
        raise _Unknown("a literal or symbol where a name must be")
    return tok.text.translate(_ASCII_LOWER)


#: PostgreSQL keeps the first NAMEDATALEN - 1 bytes of a name.
NAME_BYTES = 63


def statement_name(name: str) -> str:
    """A prepared statement's name in SQL (PREPARE, EXECUTE, DEALLOCATE) as
    the server keys it: an identifier past 63 bytes is cut at a character
    boundary (the scanner's truncate_identifier; UTF-8 assumed), so
    ``PREPARE <70 letters>`` makes, and a protocol Bind of its first 63
    letters runs, one statement (the session's bookkeeping must see one)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= NAME_BYTES:
        return name
    cut = NAME_BYTES
    while cut > 0 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1  # (not inside a character)
    return raw[:cut].decode("utf-8", "surrogateescape")


_NAME_RE = re.compile(r"^[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*$")


# -- statements -------------------------------------------------------------


def _classify_text(sql: str, acc: _Acc, depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise _Unknown("statement nesting too deep")
    chunks = _split(_tokenize(sql), len(sql))
    for chunk, end in chunks:
        _classify_statement(sql, chunk, end, acc, depth)
    return len(chunks)


def _inner(sql: str, chunk: Sequence[Token], start: int, depth: int, what: str) -> _Acc:
    """Classify the statement text starting at ``chunk[start]`` (EXPLAIN, PREPARE...)."""
    if start >= len(chunk):
        raise _Unknown(f"{what} without a statement")
    inner = _Acc()
    text = sql[chunk[start].start :]  # one statement's text: the rest is this statement
    if _classify_text(text, inner, depth + 1) != 1:
        raise _Unknown(f"{what} must contain exactly one statement")
    return inner


def _merge(acc: _Acc, inner: _Acc, classes: set[str] | frozenset[str] | None = None) -> None:
    acc.classes |= inner.classes if classes is None else classes
    acc.relations |= inner.relations
    acc.functions |= inner.functions
    acc.settings |= inner.settings
    acc.prepares |= inner.prepares
    acc.executes |= inner.executes
    acc.deallocates |= inner.deallocates
    acc.arg_classes |= inner.arg_classes
    acc.value_dependent = acc.value_dependent or inner.value_dependent
    acc.copies_out = acc.copies_out or inner.copies_out
    if "unknown" in inner.classes:
        acc.unknown(inner.reason or "inner statement unknown")


def _classify_statement(sql: str, chunk: list[Token], end: int, acc: _Acc, depth: int) -> None:
    head = _word(chunk[0])

    if head == "SELECT" and _settings_lookup_set_config(sql, chunk, acc):
        return
    if head in _REST_HEADS:
        # sqlglot's tokenizer folds the rest of some of these statements into
        # one string token; re-tokenize the text after the keyword.
        text = sql[chunk[0].end + 1 : end + 1]
        _classify_rest(head, text, _tokenize(text), acc, depth)
        return
    if chunk[0].token_type in _COMMAND_TOKENS and len(chunk) > 1:
        # sqlglot folded the rest of the statement into one string token
        chunk = [chunk[0], *_tokenize(sql[chunk[0].end + 1 : end + 1])]
    if head == "SET":
        _set(chunk, acc)
        return
    if head == "RESET":
        _reset(chunk, acc)
        return
    if head == "DEALLOCATE":
        _deallocate(chunk, acc)
        return
    if head == "DISCARD":
        _discard(chunk, acc)
        return
    if head in _KEYWORD_HEADS:
        acc.classes |= _KEYWORD_HEADS[head]
        if head in ("BEGIN", "START"):
            _transaction_modes(chunk, acc, default=False)
        if head in ("COMMIT", "ROLLBACK") and len(chunk) > 1 and _word(chunk[1]) == "PREPARED":
            # Finishes a prepared transaction, someone else's writes included:
            # PostgreSQL allows it in a read-only session.
            acc.classes.add("write")
        return
    allowed = _TREE_HEADS.get(head)
    if allowed is None:
        acc.unknown(f"unknown statement type: {head or 'a literal'}")
        return
    if head in ("CREATE", "ALTER", "DROP") and _by_keywords(sql, head, chunk, acc, depth):
        return

    if head == "COPY":
        chunk = _copy_with(chunk)
    chunk = _drop_array_type_brackets(_drop_negative_scales(chunk))
    parsed = _DIALECT.parser().parse(chunk, sql)
    if len(parsed) != 1 or parsed[0] is None:
        raise _Unknown("parser did not return exactly one statement")
    tree = parsed[0]

    stmt = _Acc()
    if isinstance(tree, exp.Command):
        stmt.classes |= _COMMAND_FALLBACK.get(head, _EMPTY)
        if not stmt.classes:
            stmt.unknown(f"unsupported {head} statement")
    elif not isinstance(tree, allowed):
        stmt.unknown(f"{head} statement parsed as {type(tree).__name__}")
    else:
        _walk(tree, stmt)
    if head == "COPY" and not (isinstance(tree, exp.Copy) and tree.args.get("kind")):
        stmt.copies_out = True  # whatever the parse, only COPY ... FROM is not out
    _crosscheck(chunk, stmt)
    _merge(acc, stmt)


def _drop_negative_scales(chunk: list[Token]) -> list[Token]:
    """``numeric(2, -3)``: PostgreSQL 15+ allows a negative scale, sqlglot's
    type parser does not. A type modifier never changes what a statement
    does: leave the minus out of the parse."""
    out: list[Token] = []
    for i, tok in enumerate(chunk):
        if (
            tok.token_type == TokenType.DASH
            and 3 <= i < len(chunk) - 1
            and chunk[i - 1].token_type == TokenType.COMMA
            and chunk[i - 2].token_type == TokenType.NUMBER
            and chunk[i - 3].token_type == TokenType.L_PAREN
            and i >= 4
            and _word(chunk[i - 4]) in ("NUMERIC", "DECIMAL")
            and chunk[i + 1].token_type == TokenType.NUMBER
        ):
            continue
        out.append(tok)
    return out


def _drop_array_type_brackets(chunk: list[Token]) -> list[Token]:
    """``$1::oid[]``: sqlglot reads ``[]`` after a type it does not know
    (oid, regclass, name...) as an empty subscript and fails. An empty ``[]``
    not after ARRAY can only be an array type's suffix, which never changes
    what a statement does: leave it out of the parse."""
    out: list[Token] = []
    i = 0
    n = len(chunk)
    while i < n:
        tok = chunk[i]
        if (
            tok.token_type == TokenType.L_BRACKET
            and i + 1 < n
            and chunk[i + 1].token_type == TokenType.R_BRACKET
            and out
            and out[-1].token_type != TokenType.ARRAY
        ):
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def _copy_with(chunk: list[Token]) -> list[Token]:
    """PostgreSQL's ``COPY t FROM STDIN (FORMAT csv)``: the WITH before the
    option list is optional, sqlglot requires it; put it in."""
    depth = 0
    for i in range(1, len(chunk) - 2):
        tt = chunk[i].token_type
        if tt == TokenType.L_PAREN:
            depth += 1
        elif tt == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and _word(chunk[i]) in ("FROM", "TO"):
            j = i + 2 if _word(chunk[i + 1]) == "PROGRAM" else i + 1
            if j + 1 < len(chunk) and chunk[j + 1].token_type == TokenType.L_PAREN:
                paren = chunk[j + 1]
                with_token = Token(
                    TokenType.WITH, "WITH", paren.line, paren.col, paren.start, paren.start - 1
                )
                return [*chunk[: j + 1], with_token, *chunk[j + 1 :]]
            break
    return chunk


def _by_keywords(sql: str, head: str, chunk: list[Token], acc: _Acc, depth: int) -> bool:
    """CREATE/ALTER/DROP forms decided from their keywords; False: parse the tree."""
    rest = [w for w in (_word(t) for t in chunk[1:8]) if w not in _CREATE_MODIFIERS]
    nxt = rest[0] if rest else ""
    nxt2 = rest[1] if len(rest) > 1 else ""
    if nxt == "USER" and nxt2 == "MAPPING":
        acc.classes |= {"ddl", "dcl"}
        return True
    if nxt in _ROLE_WORDS or (head == "ALTER" and nxt == "DEFAULT") or nxt == "OWNED":
        acc.classes.add("dcl")
        if head == "ALTER" and nxt in _ROLE_WORDS:
            _stored_settings(chunk, acc)
        return True
    if head == "ALTER" and nxt == "DATABASE":
        acc.classes.add("ddl")
        _stored_settings(chunk, acc)
        return True
    if head == "ALTER" and nxt == "SYSTEM":
        acc.unknown("ALTER SYSTEM")
        return True
    if head == "CREATE" and nxt in _PROC_WORDS:
        stmt = _Acc()
        stmt.classes |= {"ddl", "procedural"}
        if nxt != "LANGUAGE":
            at = next(i for i, t in enumerate(chunk) if _word(t) == nxt) + 1
            name, _ = _dotted_name(chunk, at)
            if name:
                stmt.add_function(name)
        _crosscheck(chunk, stmt)
        _merge(acc, stmt)
        return True
    if head == "CREATE":
        for k in range(2, len(chunk) - 1):
            if _word(chunk[k]) == "AS" and _word(chunk[k + 1]) == "EXECUTE":
                _create_as_execute(sql, chunk, k, acc, depth)
                return True
    return False


def _stored_settings(chunk: list[Token], acc: _Acc) -> None:
    """ALTER ROLE|USER|GROUP|DATABASE ... SET name ... | RESET name|ALL:
    settings stored for every later session of that role or database, so
    they are judged as if set now (``ALTER ROLE app SET role = admin`` is a
    role change). RESET ALL could drop any stored setting: ``*``."""
    for i, tok in enumerate(chunk):
        w = _word(tok)
        if w not in ("SET", "RESET") or i + 1 >= len(chunk):
            continue
        if w == "RESET" and _word(chunk[i + 1]) == "ALL":
            acc.add_setting("*")
            continue
        name, _ = _dotted_name(chunk, i + 1)
        acc.add_setting(name.lower() if name else "*")


def _create_as_execute(sql: str, chunk: list[Token], as_at: int, acc: _Acc, depth: int) -> None:
    """CREATE TABLE t AS EXECUTE name [(args)] [WITH [NO] DATA]: runs the prepared body."""
    acc.classes |= {"ddl", "write"}
    for i in range(1, as_at):
        if _word(chunk[i]) == "TABLE":
            j = i + 1
            if [_word(t) for t in chunk[j : j + 3]] == ["IF", "NOT", "EXISTS"]:
                j += 3
            name, _ = _dotted_name(chunk, j)
            if name:
                acc.relations.add(name)
            break
    toks = chunk[as_at + 2 :]
    if len(toks) >= 2 and _word(toks[-1]) == "DATA":
        toks = toks[:-3] if _word(toks[-2]) == "NO" else toks[:-2]
    _execute(sql, toks, acc, depth)


def _dotted_name(chunk: Sequence[Token], at: int) -> tuple[str, int]:
    """``a.b.c`` starting at ``chunk[at]``: (name, index after it); ('', at) if none."""
    parts: list[str] = []
    i = at
    while i < len(chunk):
        try:
            parts.append(_name(chunk[i]))
        except _Unknown:
            break
        i += 1
        if i < len(chunk) and chunk[i].token_type == TokenType.DOT:
            i += 1
            continue
        break
    return ".".join(parts), i


def _classify_rest(head: str, text: str, rest: list[Token], acc: _Acc, depth: int) -> None:
    first = _word(rest[0]) if rest else ""
    if head == "EXPLAIN":
        _explain(text, rest, acc, depth)
    elif head == "PREPARE":
        if first == "TRANSACTION":
            acc.classes.add("transaction")
            return
        if not rest:
            raise _Unknown("PREPARE without a name")
        acc.prepares.add(statement_name(_name(rest[0])))
        as_at = _find_top_level(rest, "AS", 1)
        _merge(acc, _inner(text, rest, as_at + 1, depth, "PREPARE"))
    elif head == "DECLARE":
        for_at = _find_top_level(rest, "FOR", 0)
        _merge(acc, _inner(text, rest, for_at + 1, depth, "DECLARE"))
    elif head == "EXECUTE":
        _execute(text, rest, acc, depth)
    elif head == "CALL":
        # Re-parse the call as an expression so argument expressions are walked.
        if not rest:
            raise _Unknown("CALL without a procedure")
        inner = _Acc()
        if _classify_text("SELECT " + text, inner, depth + 1) != 1:
            raise _Unknown("CALL must contain one call")
        _merge(acc, inner, _without_read(inner, rest) | {"procedural"})
    else:  # LOCK
        words = [_word(t) for t in rest]
        # ACCESS SHARE (what pg_dump takes) only keeps the table from being
        # dropped or altered meanwhile: a read, allowed in read-only sessions.
        access_share = any(
            words[k : k + 4] == ["IN", "ACCESS", "SHARE", "MODE"] for k in range(len(words))
        )
        acc.classes.add("read" if access_share else "lock")
        _lock_relations(rest, acc)


def _without_read(inner: _Acc, tokens: Sequence[Token]) -> set[str]:
    """Classes of an expression list classified as ``SELECT exprs``: ``read``
    only when the expressions hold a query."""
    if any(_word(t) in _QUERY_WORDS for t in tokens):
        return set(inner.classes)
    return inner.classes - {"read"}


def _execute(sql: str, toks: Sequence[Token], acc: _Acc, depth: int) -> None:
    """``name [(args)]`` after EXECUTE: the name, and the classes of the arguments."""
    if not toks:
        raise _Unknown("EXECUTE without a name")
    acc.executes.add(statement_name(_name(toks[0])))
    if len(toks) == 1:
        return
    if (
        toks[1].token_type != TokenType.L_PAREN
        or toks[-1].token_type != TokenType.R_PAREN
        or len(toks) < 4
        or _matching_paren(toks, 1) != len(toks) - 1
    ):
        raise _Unknown("unexpected text after the EXECUTE name")
    args = toks[2:-1]
    inner = _Acc()
    if _classify_text("SELECT " + sql[args[0].start : args[-1].end + 1], inner, depth + 1) != 1:
        raise _Unknown("EXECUTE arguments must be one expression list")
    classes = _without_read(inner, args)
    _merge(acc, inner, classes)
    acc.arg_classes |= classes


def _matching_paren(toks: Sequence[Token], at: int) -> int:
    depth = 0
    for i in range(at, len(toks)):
        tt = toks[i].token_type
        if tt == TokenType.L_PAREN:
            depth += 1
        elif tt == TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _find_top_level(chunk: Sequence[Token], word: str, start: int) -> int:
    depth = 0
    for i in range(start, len(chunk)):
        tt = chunk[i].token_type
        if tt == TokenType.L_PAREN:
            depth += 1
        elif tt == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and _word(chunk[i]) == word:
            return i
    raise _Unknown(f"expected {word}")


def _explain(sql: str, chunk: list[Token], acc: _Acc, depth: int) -> None:
    i = 0
    n = len(chunk)
    analyze = False
    if n and chunk[0].token_type == TokenType.L_PAREN:
        # ( option [value] [, ...] ): the option name may be a keyword or any
        # identifier, quoted ones included ("analyze"). A value counts as off
        # only if it is the keyword FALSE/OFF/NO: a literal's value never
        # matters (0 and 1 share a fingerprint), so ANALYZE 0 is on.
        j = 1
        option_start = True
        while j < n and chunk[j].token_type != TokenType.R_PAREN:
            tok = chunk[j]
            if tok.token_type == TokenType.COMMA:
                option_start = True
            elif option_start:
                option_start = False
                if (
                    tok.token_type == TokenType.IDENTIFIER or tok.token_type not in _LITERAL_TOKENS
                ) and tok.text.translate(_ASCII_LOWER) in ("analyze", "analyse"):
                    values = []
                    k = j + 1
                    while k < n and chunk[k].token_type not in (TokenType.COMMA, TokenType.R_PAREN):
                        values.append(chunk[k])
                        k += 1
                    off = len(values) == 1 and _word(values[0]) in ("FALSE", "OFF", "NO")
                    analyze = analyze or not off
            j += 1
        if j >= n:
            raise _Unknown("unterminated EXPLAIN option list")
        i = j + 1
    else:
        while i < n and _word(chunk[i]) in ("ANALYZE", "ANALYSE", "VERBOSE"):
            analyze = analyze or _word(chunk[i]) != "VERBOSE"
            i += 1
    inner = _inner(sql, chunk, i, depth, "EXPLAIN")
    if analyze or "unknown" in inner.classes:
        _merge(acc, inner)
    else:
        # Only plans, but EXECUTE's arguments are evaluated all the same.
        _merge(acc, inner, {"read"} | inner.arg_classes)


def _lock_relations(chunk: Sequence[Token], acc: _Acc) -> None:
    parts: list[str] = []
    for tok in chunk:
        w = _word(tok)
        if w in ("TABLE", "ONLY", "*", "."):
            continue
        if w in (",", "IN", "NOWAIT"):
            if parts:
                acc.relations.add(".".join(parts))
            parts = []
            if w != ",":
                break
            continue
        parts.append(_name(tok))
    if parts:
        acc.relations.add(".".join(parts))


# -- SET / RESET / transaction modes / DEALLOCATE / DISCARD ------------------


def _set(chunk: list[Token], acc: _Acc) -> None:
    acc.classes.add("session")
    words = [_word(t) for t in chunk[1:4]]
    i = 1
    if (
        words
        and words[0] in ("LOCAL", "SESSION")
        and words[1:2]
        not in (
            ["AUTHORIZATION"],
            ["CHARACTERISTICS"],
        )
    ):
        i = 2
    w = _word(chunk[i]) if i < len(chunk) else ""
    w2 = _word(chunk[i + 1]) if i + 1 < len(chunk) else ""
    if (w, w2) == ("SESSION", "CHARACTERISTICS"):
        _transaction_modes(chunk, acc, default=True)
        return
    if w == "TRANSACTION" and w2 != "SNAPSHOT":
        _transaction_modes(chunk, acc, default=False)
        return
    if w == "CONSTRAINTS":
        return  # SET CONSTRAINTS ...: this transaction's constraint timing
    after = _word(chunk[i + 2]) if i + 2 < len(chunk) else ""
    if ((w, w2) == ("ROLE", "NONE") and i + 2 == len(chunk)) or (
        (w, w2, after) == ("SESSION", "AUTHORIZATION", "DEFAULT") and i + 3 == len(chunk)
    ):
        # Back to the login identity, as RESET ROLE (see _reset).
        acc.settings.add("all")
        return
    special = _SPECIAL_SETTINGS.get((w, w2)) or _SPECIAL_SETTING_WORDS.get(w)
    if special is not None and w2 not in ("TO", "=", "."):
        for name in special:
            acc.add_setting(name)
        return
    _generic_setting(chunk, i, acc, ("TO", "=", "FROM"))


def _generic_setting(chunk: list[Token], i: int, acc: _Acc, follow: tuple[str, ...]) -> None:
    """``var_name`` (``a.b``) at chunk[i], followed by one of ``follow`` (or the end)."""
    name, j = _dotted_name(chunk, i)
    if (
        name
        and (j == len(chunk) if not follow else j < len(chunk))
        and (not follow or _word(chunk[j]) in follow or chunk[j].token_type == TokenType.EQ)
    ):
        lowered = name.translate(_ASCII_LOWER)
        if (
            lowered == "standard_conforming_strings"
            and j + 2 == len(chunk)
            and chunk[j + 1].token_type not in _LITERAL_TOKENS
            and _word(chunk[j + 1]) in ("ON", "TRUE", "YES")
        ):
            return  # the value the gateway pins (a keyword, so in the fingerprint): no change
        acc.add_setting(lowered)
    else:
        acc.add_setting("*")


def _reset(chunk: list[Token], acc: _Acc) -> None:
    acc.classes.add("session")
    w = _word(chunk[1]) if len(chunk) > 1 else ""
    w2 = _word(chunk[2]) if len(chunk) > 2 else ""
    if w == "ALL" and len(chunk) == 2:
        acc.add_setting("all")
    elif (w == "ROLE" and len(chunk) == 2) or (
        (w, w2) == ("SESSION", "AUTHORIZATION") and len(chunk) == 3
    ):
        # Back to the login identity (the gateway's own upstream user): it
        # can only drop privileges, so it is plain ``session``, as poolers
        # and drivers resetting a connection need.
        acc.settings.add("all")
    elif (w, w2) == ("TRANSACTION", "ISOLATION"):
        acc.add_setting("transaction_isolation")
    elif (w, w2) in _SPECIAL_SETTINGS:
        for name in _SPECIAL_SETTINGS[(w, w2)]:
            acc.add_setting(name)
    else:
        _generic_setting(chunk, 1, acc, ())


def _transaction_modes(chunk: list[Token], acc: _Acc, *, default: bool) -> None:
    """Settings changed by transaction modes (BEGIN, SET TRANSACTION ...)."""
    prefixes = ("", "default_") if default else ("",)
    prev = ""
    for tok in chunk:
        w = _word(tok)
        found = ""
        if prev == "READ" and w == "WRITE":
            found = "transaction_read_only"
        elif w == "ISOLATION":
            found = "transaction_isolation"
        elif w == "DEFERRABLE":
            found = "transaction_deferrable"
        if found:
            for p in prefixes:
                acc.settings.add(p + found)
            if default or chunk[0].token_type == TokenType.SET:
                acc.classes.add("session")
        prev = w


def _deallocate(chunk: list[Token], acc: _Acc) -> None:
    acc.classes.add("session")
    i = 2 if len(chunk) > 2 and _word(chunk[1]) == "PREPARE" else 1
    if len(chunk) != i + 1:
        raise _Unknown("DEALLOCATE takes one name")
    acc.deallocates.add("*" if _word(chunk[i]) == "ALL" else statement_name(_name(chunk[i])))


def _discard(chunk: list[Token], acc: _Acc) -> None:
    acc.classes.add("session")
    w = _word(chunk[1]) if len(chunk) == 2 else ""
    if w == "ALL":
        # = CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; ...
        # The SET SESSION AUTHORIZATION DEFAULT in it returns to the login
        # identity: see RESET ROLE in _reset.
        acc.deallocates.add("*")
        acc.add_setting("all")
    elif w not in ("PLANS", "SEQUENCES", "TEMP", "TEMPORARY"):
        raise _Unknown("unknown DISCARD form")


# -- trees ------------------------------------------------------------------


def _ident_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Identifier):
        return _normalise(node.this, bool(node.args.get("quoted")))
    if isinstance(node, exp.Literal):
        raise _Unknown("a literal where a name must be")
    return _normalise(node.name, False)


# Node type -> what the walk does with it, first match wins (cached per type:
# one dict look-up per node instead of a chain of isinstance checks).
_NODE_KINDS: tuple[tuple[type[exp.Expr] | tuple[type[exp.Expr], ...], str], ...] = (
    (exp.Command, "command"),
    (exp.Select, "read"),
    (exp.Into, "into"),
    (exp.SetOperation, "read"),
    (exp.Values, "values"),
    (exp.Lock, "lock"),
    ((exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.TruncateTable), "write"),
    (exp.Copy, "copy"),
    (exp.Create, "create"),
    ((exp.Alter, exp.Drop, exp.Comment), "ddl"),
    ((exp.Grant, exp.Revoke), "dcl"),
    (exp.Set, "set"),
    ((exp.Transaction, exp.Commit, exp.Rollback), "transaction"),
    (exp.Analyze, "maintenance"),
    (exp.Table, "table"),
    (exp.Anonymous, "anonymous"),
    (exp.Connector, ""),  # AND / OR are Func subclasses in sqlglot, not functions
    (exp.Func, "func"),
)
_NODE_KIND_CACHE: dict[type[exp.Expr], str] = {}


def _node_kind(cls: type[exp.Expr]) -> str:
    kind = next((k for types, k in _NODE_KINDS if issubclass(cls, types)), "")
    _NODE_KIND_CACHE[cls] = kind
    return kind


def _walk(tree: exp.Expr, acc: _Acc) -> None:
    cache = _NODE_KIND_CACHE
    for node in tree.walk():
        kind = cache.get(type(node))
        if kind is None:
            kind = _node_kind(type(node))
        if not kind:
            continue
        if kind == "table":
            _table(node, acc)  # type: ignore[arg-type]
        elif kind == "anonymous":
            _anonymous(node, acc)  # type: ignore[arg-type]
        elif kind == "func":
            acc.add_function(node.sql_name().lower())  # type: ignore[attr-defined]
        elif kind == "read" or (kind == "values" and node is tree):
            acc.classes.add("read")
        elif kind in ("write", "ddl", "dcl", "lock", "transaction", "maintenance"):
            acc.classes.add(kind)
        elif kind == "into":
            acc.classes |= {"write", "ddl"}
        elif kind == "copy":
            _copy(node, acc)  # type: ignore[arg-type]
        elif kind == "create":
            _create(node, acc)  # type: ignore[arg-type]
        elif kind == "set":
            acc.add_setting("*")
        elif kind == "command":
            acc.unknown("unsupported syntax inside a statement")


def _copy(node: exp.Copy, acc: _Acc) -> None:
    acc.classes.add("write" if node.args.get("kind") else "read")
    files = node.args.get("files") or []
    if not files:
        acc.unknown("COPY without a source/target")
    for f in files:
        if not (
            isinstance(f, exp.Identifier)
            and not f.args.get("quoted")
            and f.name.upper() in ("STDIN", "STDOUT")
        ):
            acc.classes.add("file")


def _create(node: exp.Create, acc: _Acc) -> None:
    acc.classes.add("ddl")
    kind = str(node.args.get("kind") or "").upper()
    if kind in ("FUNCTION", "PROCEDURE"):
        acc.classes.add("procedural")
    elif kind in ("ROLE", "USER", "GROUP"):
        acc.classes.add("dcl")
    elif kind == "TABLE" and isinstance(node.args.get("expression"), exp.Query):
        acc.classes.add("write")


def _table(node: exp.Table, acc: _Acc) -> None:
    if isinstance(node.this, exp.Func):
        return  # table function: reported via the function walk
    if isinstance(node.parent, exp.UserDefinedFunction):
        acc.add_function(".".join(_ident_name(p) for p in node.parts))
        return
    parts = [_ident_name(p) for p in node.parts]
    if parts:
        acc.relations.add(".".join(parts))


def _anonymous(node: exp.Anonymous, acc: _Acc) -> None:
    this = node.this
    name = _ident_name(this) if isinstance(this, exp.Expr) else _normalise(str(this), False)
    parent = node.parent
    if isinstance(parent, exp.Dot) and parent.expression is node:
        quals: list[str] = []
        left = parent.this
        while isinstance(left, exp.Dot):
            quals.insert(0, _ident_name(left.expression))
            left = left.this
        if isinstance(left, (exp.Identifier, exp.Column, exp.Var)):
            quals.insert(0, _ident_name(left))
        if quals:
            if quals == ["pg_catalog"] and name == "set_config" and _set_config_name(node, acc):
                acc.functions.add("pg_catalog.set_config")
                return  # pg_dump: SELECT pg_catalog.set_config('search_path', '', false)
            acc.add_function(".".join([*quals, name]))
            return
    if name == "set_config" and _set_config_name(node, acc):
        return
    acc.add_function(name)


#: ``SELECT set_config(name, 'v', false) FROM pg_settings WHERE name = 'x'``:
#: what pg_dump (15.8+, 16.4+, 17+) sends to set restrict_nonsystem_relation_kind
#: only where the server has it. "S" stands for a plain '...' constant.
_SETTINGS_LOOKUP = tuple(
    tuple(f"SELECT {q}SET_CONFIG ( NAME , S , ? ) FROM {q}PG_SETTINGS WHERE NAME = S".split(" "))
    for q in ("", "PG_CATALOG . ")
)


def _settings_lookup_set_config(sql: str, chunk: list[Token], acc: _Acc) -> bool:
    """That exact statement shape changes one parameter, the one named by the
    last constant: judge it as ``SET`` of it (value-dependent, never cached)."""
    for shape in _SETTINGS_LOOKUP:
        if len(chunk) != len(shape):
            continue
        for tok, want in zip(chunk, shape, strict=True):
            if want == "S":
                if tok.token_type != TokenType.STRING or sql[tok.start : tok.start + 1] != "'":
                    break
            elif want == "?":
                if _word(tok) not in ("TRUE", "FALSE"):
                    break
            elif _word(tok) != want:
                break
        else:
            last = chunk[-1]
            name = sql[last.start + 1 : last.end]
            if "'" in name or not name:
                return False  # '' doubling or empty: not a plain parameter name
            acc.classes |= {"read", "session"}
            acc.functions |= {"set_config"}
            acc.relations.add("pg_settings")
            acc.add_setting(name.lower())
            acc.value_dependent = True
            return True
    return False


def _set_config_name(node: exp.Anonymous, acc: _Acc) -> bool:
    """``set_config('name', ...)`` with the name as a plain string constant
    (kept by _rewrite) changes that parameter only: judge it as ``SET name``.
    Drivers do this (asyncpg turns jit off for its type introspection)."""
    args = node.expressions
    first = args[0] if args else None
    if not (isinstance(first, exp.Literal) and first.is_string and first.this.startswith(_KEPT)):
        return False
    acc.functions |= (
        {"set_config", _ident_name(node.this)}
        if isinstance(node.this, exp.Expr)
        else {"set_config"}
    )
    acc.add_setting(first.this[len(_KEPT) :].lower())
    acc.value_dependent = True
    return True


def _crosscheck(chunk: Sequence[Token], acc: _Acc) -> None:
    """What the tokens say, in case the tree missed it.

    * a write/DDL keyword in a statement the tree said does not mutate ->
      unknown;
    * ``FOR [NO KEY] UPDATE`` / ``FOR [KEY] SHARE`` -> lock;
    * a sensitive ``name(`` the tree did not report -> that function;
    * a command keyword after BEGIN (sqlglot folds the rest of such a
      statement into one string token, hiding it) -> unknown.
    """
    mutating = bool(acc.classes & _MUTATING)
    prev = ""
    prev_type = chunk[0].token_type
    n = len(chunk)
    for i in range(1, n):
        tok = chunk[i]
        tt = tok.token_type
        w = _word(tok)
        if tt in _COMMAND_TOKENS and prev_type in _COMMAND_PREFIXES:
            acc.unknown(f"{w} after {prev} hides the rest of the statement")
        if prev == "FOR" and w in _LOCK_NEXT:
            acc.classes.add("lock")
        elif not mutating and (w in _CROSSCHECK_WORDS or (w == "UPDATE" and prev != "KEY")):
            acc.unknown(f"keyword {w} not accounted for by the parse tree")
        if (
            tt == TokenType.L_PAREN
            and (prev_type == TokenType.IDENTIFIER or prev_type not in _LITERAL_TOKENS)
            and _NAME_RE.match(chunk[i - 1].text)
        ):
            name = _normalise(chunk[i - 1].text, prev_type == TokenType.IDENTIFIER)
            if (
                name in SENSITIVE_FUNCTIONS or name.startswith(PROCEDURAL_PREFIXES)
            ) and name not in acc.functions:
                acc.add_function(name)
        prev = w
        prev_type = tt
