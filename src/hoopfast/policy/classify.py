"""Statement classification for policy: what a SQL text would do, failing closed.

``classify(sql)`` tokenizes the whole text once with sqlglot's PostgreSQL
tokenizer, splits it into statements at ``;`` tokens (so semicolons inside
strings, dollar quotes and comments never split), parses every statement with
sqlglot's parser (exactly what ``sqlglot.parse`` does, one chunk at a time, so
each tree is paired with its own tokens) and walks the *whole* tree of every
statement. The result is the union over all statements.

Rules (a statement can get several classes):

* ``read``: SELECT / set operations / VALUES / TABLE anywhere in a tree,
  ``COPY ... TO STDOUT``, SHOW, FETCH/MOVE/CLOSE, EXPLAIN without ANALYZE.
* ``write``: INSERT/UPDATE/DELETE/MERGE/TRUNCATE anywhere (also in CTEs),
  ``COPY ... FROM``, SELECT INTO and CREATE TABLE AS (with ``ddl``),
  REFRESH, NOTIFY, sequence/large-object writing builtins (setval, nextval,
  lo_unlink, ...).
* ``ddl``: CREATE/ALTER/DROP/COMMENT/SECURITY LABEL/IMPORT FOREIGN SCHEMA.
* ``dcl``: GRANT/REVOKE, CREATE/ALTER/DROP ROLE|USER|GROUP, ALTER DEFAULT
  PRIVILEGES, REASSIGN OWNED, DROP OWNED.
* ``session``: any SET/RESET (SET ROLE, SET SESSION AUTHORIZATION,
  default_transaction_read_only, ...), DISCARD, DEALLOCATE, LISTEN/UNLISTEN,
  ``set_config()``.
* ``file``: COPY to/from a server file or PROGRAM, and the server-file
  functions (pg_read_file, pg_ls_dir, lo_import, lo_export, ...).
* ``maintenance``: VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT.
* ``procedural``: DO, CALL, CREATE FUNCTION/PROCEDURE/LANGUAGE (bodies are not
  analysed).
* ``transaction``: BEGIN/START/COMMIT/END/ROLLBACK/ABORT/SAVEPOINT/RELEASE,
  PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED.
* ``lock``: SELECT ... FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE, LOCK TABLE.
* ``unknown``: anything not fully classified (tokenizer or parser error, a
  sqlglot ``Command`` fallback whose leading keyword is not known here, a
  statement whose tree does not match its leading keyword, an unknown
  statement keyword, ``EXECUTE``, a write/DDL keyword in a statement the tree
  said was harmless). Policy denies ``unknown`` by default.

Decisions:

* ``EXPLAIN ANALYZE stmt`` executes *stmt*: it gets stmt's classes.
  ``EXPLAIN stmt`` without ANALYZE only plans: ``read`` (relations and
  functions of stmt are still reported, and stmt must itself classify, or the
  result is ``unknown``).
* ``PREPARE name AS stmt`` gets stmt's classes. ``EXECUTE name`` is
  ``unknown``: the body is not visible here, so the session layer must remember
  what each PREPAREd name was classified as (and the extended-protocol Parse
  message must be classified the same way).
* ``DECLARE c CURSOR FOR query`` gets the query's classes; FETCH/MOVE/CLOSE
  are ``read``.
* Relations include every table reference, CTE names included (over-reporting
  is the safe side for deny lists). Table functions (``FROM dblink(...)``) are
  functions, not relations.
* Identifiers are normalised as PostgreSQL does: unquoted -> ASCII-lowercased,
  quoted -> exact, ``U&"..."`` (with optional UESCAPE) decoded. Qualified
  function calls are reported both qualified and bare (``pg_catalog.x`` and
  ``x``).

Known gaps: what a function, procedure, DO block, trigger or rule does inside
is invisible (a "read" SELECT can call a user function that writes);
``EXECUTE`` needs session tracking; unquoted columns named like write keywords
(``SELECT insert FROM t``) are classified ``unknown`` (quote them).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlglot import Token, TokenType, exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

__all__ = ["CLASSES", "Classification", "classify"]

CLASSES = frozenset(
    {
        "read",
        "write",
        "ddl",
        "dcl",
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
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
    }
)
SESSION_FUNCTIONS = frozenset({"set_config"})
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
# Names whose presence is cross-checked at token level (``name(``), in case the
# tree hides a call: the class-bearing functions plus common deny-list entries.
SENSITIVE_FUNCTIONS = (
    FILE_FUNCTIONS
    | SESSION_FUNCTIONS
    | WRITE_FUNCTIONS
    | frozenset(
        {
            "dblink",
            "dblink_exec",
            "dblink_connect",
            "dblink_send_query",
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
    "SET": (exp.Set,),
    "BEGIN": (exp.Transaction,),
    "COMMIT": (exp.Commit,),
    "ROLLBACK": (exp.Rollback,),
    "ANALYZE": (exp.Analyze,),
    "ANALYSE": (exp.Analyze,),
}

# Leading keyword -> classes, decided by the keyword alone (the tree, if any,
# is ignored: sqlglot often parses these as Command or even as an expression).
_KEYWORD_HEADS: dict[str, frozenset[str]] = {
    "START": frozenset({"transaction"}),
    "END": frozenset({"transaction"}),
    "ABORT": frozenset({"transaction"}),
    "SAVEPOINT": frozenset({"transaction"}),
    "RELEASE": frozenset({"transaction"}),
    "CHECKPOINT": frozenset({"maintenance"}),
    "VACUUM": frozenset({"maintenance"}),
    "CLUSTER": frozenset({"maintenance"}),
    "REINDEX": frozenset({"maintenance"}),
    "DO": frozenset({"procedural"}),
    "RESET": frozenset({"session"}),
    "DISCARD": frozenset({"session"}),
    "DEALLOCATE": frozenset({"session"}),
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
    "SET": frozenset({"session"}),
    "BEGIN": frozenset({"transaction"}),
    "COMMIT": frozenset({"transaction"}),
    "ROLLBACK": frozenset({"transaction"}),
}

_ROLE_WORDS = frozenset({"ROLE", "USER", "GROUP"})
_PROC_WORDS = frozenset({"FUNCTION", "PROCEDURE", "LANGUAGE"})
_CREATE_MODIFIERS = frozenset({"OR", "REPLACE", "TRUSTED", "PROCEDURAL"})

# Keywords that, anywhere in a statement, mean it must have been seen as
# write/ddl/dcl; otherwise the tree missed something -> unknown.
_CROSSCHECK_WORDS = frozenset(
    {"INSERT", "DELETE", "MERGE", "TRUNCATE", "DROP", "CREATE", "ALTER", "GRANT", "REVOKE", "COPY"}
)
_MUTATING = frozenset({"write", "ddl", "dcl"})

_MAX_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Classification:
    """What a SQL text does. ``classes`` is the union over all statements."""

    classes: frozenset[str]
    relations: frozenset[str]
    functions: frozenset[str]
    statements: int
    reason: str | None = None

    @property
    def unknown(self) -> bool:
        return "unknown" in self.classes

    @property
    def locks_rows(self) -> bool:
        return "lock" in self.classes


class _Unknown(Exception):
    """Raised inside the classifier to fail closed with a reason."""


class _Acc:
    __slots__ = ("classes", "functions", "reason", "relations")

    def __init__(self) -> None:
        self.classes: set[str] = set()
        self.relations: set[str] = set()
        self.functions: set[str] = set()
        self.reason: str | None = None

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
        if bare in SESSION_FUNCTIONS:
            self.classes.add("session")
        if bare in WRITE_FUNCTIONS:
            self.classes.add("write")


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


def _rewrite_unicode_identifiers(tokens: list[Token]) -> list[Token]:
    """Fold ``U`` ``&`` ``"..."`` [UESCAPE 'c'] into one decoded identifier token."""
    out: list[Token] = []
    i = 0
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        if (
            tok.text in ("U", "u")
            and tok.token_type == TokenType.VAR
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


def _split(tokens: list[Token]) -> list[list[Token]]:
    chunks: list[list[Token]] = [[]]
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            chunks.append([])
        else:
            chunks[-1].append(tok)
    return [c for c in chunks if c]


def _word(tok: Token) -> str:
    """Upper-cased keyword text of a token, '' for literals and quoted identifiers."""
    if tok.token_type in _LITERAL_TOKENS:
        return ""
    return tok.text.upper()


# -- statements -------------------------------------------------------------


def _classify_text(sql: str, acc: _Acc, depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise _Unknown("statement nesting too deep")
    tokens = _rewrite_unicode_identifiers(_DIALECT.tokenize(sql))
    chunks = _split(tokens)
    for chunk in chunks:
        _classify_statement(sql, chunk, acc, depth)
    return len(chunks)


def _inner(sql: str, chunk: Sequence[Token], start: int, depth: int, what: str) -> _Acc:
    """Classify the statement text starting at ``chunk[start]`` (EXPLAIN, PREPARE...)."""
    if start >= len(chunk):
        raise _Unknown(f"{what} without a statement")
    inner = _Acc()
    text = sql[chunk[start].start : chunk[-1].end + 1]
    if _classify_text(text, inner, depth + 1) != 1:
        raise _Unknown(f"{what} must contain exactly one statement")
    return inner


def _merge(acc: _Acc, inner: _Acc, classes: set[str] | frozenset[str] | None = None) -> None:
    acc.classes |= inner.classes if classes is None else classes
    acc.relations |= inner.relations
    acc.functions |= inner.functions
    if "unknown" in inner.classes:
        acc.unknown(inner.reason or "inner statement unknown")


def _classify_statement(sql: str, chunk: list[Token], acc: _Acc, depth: int) -> None:
    words = [_word(t) for t in chunk[:4]]
    head = words[0]

    if head in _REST_HEADS:
        # sqlglot's tokenizer folds the rest of these statements into one string
        # token; re-tokenize the text after the keyword.
        text = sql[chunk[0].end + 1 : chunk[-1].end + 1]
        rest = _rewrite_unicode_identifiers(_DIALECT.tokenize(text))
        _classify_rest(head, text, rest, acc, depth)
        return
    if head in _KEYWORD_HEADS:
        acc.classes |= _KEYWORD_HEADS[head]
        return
    allowed = _TREE_HEADS.get(head)
    if allowed is None:
        acc.unknown(f"unknown statement type: {head or chunk[0].text!r}")
        return

    parsed = _DIALECT.parser().parse(chunk, sql)
    if len(parsed) != 1 or parsed[0] is None:
        raise _Unknown("parser did not return exactly one statement")
    tree = parsed[0]

    if isinstance(tree, exp.Command):
        fallback = _COMMAND_FALLBACK.get(head)
        if fallback is None:
            acc.unknown(f"unsupported {head} statement")
            return
        _command_fallback(head, words, acc, fallback)
        return
    if not isinstance(tree, allowed):
        acc.unknown(f"{head} statement parsed as {type(tree).__name__}")
        return

    stmt = _Acc()
    _walk(tree, stmt)
    if not (stmt.classes & _MUTATING):
        _crosscheck(chunk, stmt)
    _crosscheck_functions(chunk, stmt)
    _merge(acc, stmt)


def _classify_rest(head: str, text: str, rest: list[Token], acc: _Acc, depth: int) -> None:
    first = _word(rest[0]) if rest else ""
    if head == "EXPLAIN":
        _explain(text, rest, acc, depth)
    elif head == "PREPARE":
        if first == "TRANSACTION":
            acc.classes.add("transaction")
            return
        as_at = _find_top_level(rest, "AS", 0)
        _merge(acc, _inner(text, rest, as_at + 1, depth, "PREPARE"))
    elif head == "DECLARE":
        for_at = _find_top_level(rest, "FOR", 0)
        _merge(acc, _inner(text, rest, for_at + 1, depth, "DECLARE"))
    elif head == "EXECUTE":
        acc.unknown("EXECUTE of a prepared statement: its body is not visible here")
    elif head == "CALL":
        # Re-parse the call as an expression so argument expressions are walked.
        if not rest:
            raise _Unknown("CALL without a procedure")
        inner = _Acc()
        if _classify_text("SELECT " + text, inner, depth + 1) != 1:
            raise _Unknown("CALL must contain one call")
        _merge(acc, inner, (inner.classes - {"read"}) | {"procedural"})
    else:  # LOCK
        acc.classes.add("lock")
        _lock_relations(rest, acc)


def _command_fallback(head: str, words: list[str], acc: _Acc, fallback: frozenset[str]) -> None:
    rest = [w for w in words[1:] if w not in _CREATE_MODIFIERS]
    nxt = rest[0] if rest else ""
    if head in ("CREATE", "ALTER", "DROP"):
        if nxt in _ROLE_WORDS or (head == "ALTER" and nxt == "DEFAULT") or nxt == "OWNED":
            acc.classes.add("dcl")
            return
        if head == "ALTER" and nxt == "SYSTEM":
            acc.unknown("ALTER SYSTEM")
            return
        if head == "CREATE" and nxt in _PROC_WORDS:
            acc.classes |= {"ddl", "procedural"}
            return
    acc.classes |= fallback


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
    analyze = False
    if i < len(chunk) and chunk[i].token_type == TokenType.L_PAREN:
        j = i + 1
        while j < len(chunk) and chunk[j].token_type != TokenType.R_PAREN:
            if _word(chunk[j]) in ("ANALYZE", "ANALYSE"):
                nxt = _word(chunk[j + 1]) if j + 1 < len(chunk) else ""
                value = chunk[j + 1].text.upper() if j + 1 < len(chunk) else ""
                if nxt in (",", ")") or value not in ("FALSE", "OFF", "0", "NO"):
                    analyze = True
            j += 1
        i = j + 1
    else:
        while i < len(chunk) and _word(chunk[i]) in ("ANALYZE", "ANALYSE", "VERBOSE"):
            analyze = analyze or _word(chunk[i]) != "VERBOSE"
            i += 1
    inner = _inner(sql, chunk, i, depth, "EXPLAIN")
    if analyze or "unknown" in inner.classes:
        _merge(acc, inner)
    else:
        _merge(acc, inner, {"read"})


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
        parts.append(_normalise(tok.text, tok.token_type == TokenType.IDENTIFIER))
    if parts:
        acc.relations.add(".".join(parts))


# -- trees ------------------------------------------------------------------


def _ident_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Identifier):
        return _normalise(node.this, bool(node.args.get("quoted")))
    return _normalise(node.name, False)


def _walk(tree: exp.Expr, acc: _Acc) -> None:
    for node in tree.walk():
        if isinstance(node, exp.Command):
            acc.unknown("unsupported syntax inside a statement")
        elif isinstance(node, exp.Select):
            acc.classes.add("read")
            if node.args.get("into"):
                acc.classes |= {"write", "ddl"}
        elif isinstance(node, exp.SetOperation) or (isinstance(node, exp.Values) and node is tree):
            acc.classes.add("read")
        elif isinstance(node, exp.Lock):
            acc.classes.add("lock")
        elif isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.TruncateTable)):
            acc.classes.add("write")
        elif isinstance(node, exp.Copy):
            _copy(node, acc)
        elif isinstance(node, exp.Create):
            _create(node, acc)
        elif isinstance(node, (exp.Alter, exp.Drop, exp.Comment)):
            acc.classes.add("ddl")
        elif isinstance(node, (exp.Grant, exp.Revoke)):
            acc.classes.add("dcl")
        elif isinstance(node, exp.Set):
            acc.classes.add("session")
        elif isinstance(node, (exp.Transaction, exp.Commit, exp.Rollback)):
            acc.classes.add("transaction")
        elif isinstance(node, exp.Analyze):
            acc.classes.add("maintenance")
        elif isinstance(node, exp.Table):
            _table(node, acc)
        elif isinstance(node, exp.Anonymous):
            _anonymous(node, acc)
        elif isinstance(node, exp.Func):
            acc.add_function(node.sql_name().lower())


def _copy(node: exp.Copy, acc: _Acc) -> None:
    acc.classes.add("write" if node.args.get("kind") else "read")
    files = node.args.get("files") or []
    if not files:
        acc.unknown("COPY without a source/target")
    for f in files:
        if not (isinstance(f, exp.Identifier) and f.name.upper() in ("STDIN", "STDOUT")):
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
            acc.add_function(".".join([*quals, name]))
            return
    acc.add_function(name)


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def _crosscheck(chunk: Sequence[Token], acc: _Acc) -> None:
    """The tree says read-only: no write/DDL keyword may appear in the tokens."""
    prev = ""
    for tok in chunk[1:]:
        w = _word(tok)
        if w in _CROSSCHECK_WORDS or (w == "UPDATE" and prev not in ("FOR", "KEY")):
            acc.unknown(f"keyword {w} not accounted for by the parse tree")
            return
        prev = w


def _crosscheck_functions(chunk: Sequence[Token], acc: _Acc) -> None:
    """``name(`` at token level for sensitive names the tree did not report."""
    for tok, nxt in itertools.pairwise(chunk):
        if nxt.token_type != TokenType.L_PAREN:
            continue
        if tok.token_type != TokenType.IDENTIFIER and (
            tok.token_type in _LITERAL_TOKENS or not _NAME_RE.match(tok.text)
        ):
            continue
        name = _normalise(tok.text, tok.token_type == TokenType.IDENTIFIER)
        if name in SENSITIVE_FUNCTIONS and name not in acc.functions:
            acc.add_function(name)
