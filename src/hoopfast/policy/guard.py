"""Statement guardrails: the verdict (allow, deny, review) for a SQL text sent
by a person holding some roles on one connection.

The verdict is not recomputed per query. Classifying a statement costs tens to
hundreds of microseconds, a point SELECT about thirty, so each
:class:`Rules` (one per connection and role set, under one policy version)
keeps a bounded cache from the statement's fingerprint to its decision. The
fingerprint (:func:`hoopfast.core.fingerprint`) keeps everything that can
change what a statement does and replaces only literal values, and the
classifier never looks at literal values, so every text under one key gets the
same decision. The exceptions are not cached under the key alone:

* ``deny_patterns`` see the raw text (literals included), so they run on every
  statement, after the cache;
* ``EXECUTE name`` depends on what the session prepared under that name, so
  the session resolves it (:meth:`Rules.check` takes the session's map);
* ``set_config('name', ...)``, the one literal the classifier reads, is marked
  ``value_dependent`` and never cached.

Decisions that leave nothing to do per statement (allowed, no patterns,
nothing to track) also go into :attr:`Rules.fast`, which the relay pump looks
up itself, without calling Python (:mod:`hoopfast.core._pump`).

Grants add up: a person whose roles grant a connection several ways gets the
most permissive verdict any one of them gives (allow > review > deny).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from hoopfast import core
from hoopfast.config import Connection, GatewayConfig, Grant
from hoopfast.policy.classify import Classification, classify
from hoopfast.policy.crosscheck import crosscheck

Action = Literal["allow", "deny", "review"]


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    #: Which rule decided: "class:write", "read_only", "table:public.payroll",
    #: "function:dblink", "pattern:0", "unknown", "client_encoding", ...
    rule: str = ""
    #: For the person: why, in words.
    message: str = ""
    #: The SQLSTATE of the refusal.
    sqlstate: str = "42501"
    #: For a syntax error: where, as in ErrorResponse's P field (0: nowhere).
    position: int = 0
    #: What the person can do about it (ErrorResponse's H field).
    hint: str = ""


ALLOW = Verdict("allow")

#: Settings whose change is a change of identity or privilege.
_ROLE_SETTINGS = frozenset({"role", "session_authorization", "*"})
#: Settings that load code from the server's file system.
_FILE_SETTINGS = frozenset(
    {"local_preload_libraries", "session_preload_libraries", "dynamic_library_path"}
)
#: Settings that would let a read-only session write.
_READ_WRITE_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only", "*"})
#: Classes a read-only grant never allows: each can change something (a DO
#: block or procedure can even turn default_transaction_read_only off).
_READ_ONLY_DENIED = frozenset(
    {"write", "ddl", "dcl", "file", "maintenance", "lock", "procedural", "role"}
)
#: Client encodings the analysis can read, with the Python codec that
#: decodes them (PostgreSQL's names, cleaned). Every one is ASCII-safe: a byte
#: below 0x80 is always that ASCII character, so quotes, semicolons and
#: comments are where the lexers see them. Not here, so refused: SJIS,
#: SHIFT_JIS_2004, BIG5, GBK, UHC, JOHAB and GB18030, where the second byte of
#: a character can be a quote or backslash (PostgreSQL refuses them as server
#: encodings for that reason), and encodings Python cannot decode (EUC_TW,
#: MULE_INTERNAL). SQL_ASCII is pinned to UTF8 (see the session).
CLIENT_ENCODINGS: dict[str, str] = {
    "utf8": "utf-8",
    "unicode": "utf-8",
    "sqlascii": "utf-8",
    **{f"latin{n}": f"iso8859-{i}" for n, i in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 9)]},
    **{f"latin{n}": f"iso8859-{i}" for n, i in [(6, 10), (7, 13), (8, 14), (9, 15), (10, 16)]},
    **{f"iso8859{i}": f"iso8859-{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)},
    **{f"win{n}": f"cp{n}" for n in (866, 874, 1250, 1251, 1252, 1253, 1254, 1255, 1256, 1257)},
    "win1258": "cp1258",
    "koi8r": "koi8_r",
    "koi8": "koi8_r",
    "koi8u": "koi8_u",
    "eucjp": "euc_jp",
    "euckr": "euc_kr",
    "euccn": "gb2312",
    "eucjis2004": "euc_jis_2004",
}


def clean_encoding_name(name: str) -> str:
    """As PostgreSQL's clean_encoding_name: lowercase, letters and digits
    only ("'UTF-8'", as asyncpg sends it, is utf8)."""
    return "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum())


_EMPTY: frozenset[str] = frozenset()
#: Classes that can reshape the schema around a denied table.
RESHAPING = frozenset({"ddl", "dcl", "maintenance"})
#: Catalog views that sample column values.
STATISTICS_VIEWS = frozenset({"pg_stats", "pg_stats_ext", "pg_stats_ext_exprs"})


def classes_of(c: Classification) -> frozenset[str]:
    """The classifier's classes plus those implied by the settings changed."""
    extra: set[str] = set()
    if c.settings & _ROLE_SETTINGS:
        extra.add("role")
    if c.settings & _FILE_SETTINGS:
        extra.add("file")
    return c.classes | extra if extra else c.classes


def merge(parts: Iterable[Classification]) -> Classification:
    """One classification covering all of ``parts`` (for EXECUTE, which runs
    a body prepared earlier)."""
    items = list(parts)
    reasons = [p.reason for p in items if p.reason]
    return Classification(
        classes=frozenset().union(*(p.classes for p in items)),
        relations=frozenset().union(*(p.relations for p in items)),
        functions=frozenset().union(*(p.functions for p in items)),
        statements=sum(p.statements for p in items),
        reason=reasons[0] if reasons else None,
        settings=frozenset().union(*(p.settings for p in items)),
        prepares=frozenset().union(*(p.prepares for p in items)),
        executes=frozenset(),
        deallocates=frozenset().union(*(p.deallocates for p in items)),
        value_dependent=any(p.value_dependent for p in items),
        copies_out=any(p.copies_out for p in items),
    )


def unknown_classification(reason: str) -> Classification:
    return Classification(
        classes=frozenset({"unknown"}),
        relations=_EMPTY,
        functions=_EMPTY,
        statements=1,
        reason=reason,
    )


#: The fast-path functions libpq's large-object API calls (lo_open, loread,
#: ...), by OID. Built-in OIDs are fixed in pg_proc.dat and below 10000, so
#: a user's function can never have one; any other OID is ``unknown``.
_FAST_PATH: dict[int, tuple[str, str]] = {
    715: ("lo_create", "write"),
    952: ("lo_open", "read"),
    953: ("lo_close", "read"),
    954: ("loread", "read"),
    955: ("lowrite", "write"),
    956: ("lo_lseek", "read"),
    957: ("lo_creat", "write"),
    958: ("lo_tell", "read"),
    964: ("lo_unlink", "write"),
    1004: ("lo_truncate", "write"),
    3170: ("lo_lseek64", "read"),
    3171: ("lo_tell64", "read"),
    3172: ("lo_truncate64", "write"),
}


def function_call_classification(oid: int) -> Classification:
    """What a FunctionCall message (fast path) for ``oid`` does."""
    known = _FAST_PATH.get(oid)
    if known is None:
        return unknown_classification(
            f"a fast-path call of function OID {oid}, which is not a large-object function"
        )
    name, cls = known
    return Classification(
        classes=frozenset({cls}),
        relations=_EMPTY,
        functions=frozenset({name, f"pg_catalog.{name}"}),
        statements=1,
    )


class _GrantRules:
    """One grant, compiled."""

    def __init__(self, role: str, grant: Grant) -> None:
        self.role = role
        self.read_only = grant.read_only
        self.allow = frozenset(grant.allow)
        self.deny = frozenset(grant.deny)
        self.review = frozenset(grant.review)
        self.unknown = grant.unknown
        self.deny_tables = frozenset(grant.deny_tables)
        # A bare table reference may resolve (search_path) to any schema, so
        # "public.payroll" also denies an unqualified "payroll".
        self.deny_table_names = frozenset(t.rsplit(".", 1)[-1] for t in grant.deny_tables)
        self.deny_schemas = frozenset(grant.deny_schemas)
        self.deny_functions = frozenset(grant.deny_functions)
        # As for tables: "pg_catalog.f" also denies a bare f(...).
        self.deny_function_names = frozenset(f.rsplit(".", 1)[-1] for f in grant.deny_functions)
        self.patterns = core.PatternSet(grant.deny_patterns) if grant.deny_patterns else None

    def match_patterns(self, verdict: Verdict, sql: str) -> Verdict:
        """Patterns see the raw text, literals included, so they run per
        statement rather than being cached by fingerprint (all of a grant's
        patterns in one pass: hoopfast_core.PatternSet)."""
        if verdict.action == "deny" or self.patterns is None:
            return verdict
        hit = self.patterns.first_match(sql)
        if hit is None:
            return verdict
        return Verdict("deny", f"pattern:{hit}", "the statement matches a denied pattern")

    def decide(self, c: Classification) -> Verdict:
        if c.syntax_error is not None:
            message, position = c.syntax_error
            return Verdict("deny", "syntax", message, "42601", position)
        classes = classes_of(c)
        if "unknown" in classes:
            why = c.reason or "the statement could not be fully analysed"
            if self.unknown == "allow":
                return ALLOW
            return Verdict(self.unknown, "unknown", f"statement not understood: {why}")
        if self.read_only:
            hit = sorted(classes & _READ_ONLY_DENIED)
            if hit:
                return Verdict("deny", "read_only", f"read-only access: {hit[0]} not allowed")
            if c.settings & _READ_WRITE_SETTINGS:
                return Verdict(
                    "deny", "read_only", "read-only access: the session cannot be made read-write"
                )
        settings = c.settings
        if "*" in settings:
            # A parameter the analysis cannot name could be any of the pinned ones.
            return Verdict(
                "deny",
                "setting",
                "the statement changes a run-time parameter the gateway cannot name "
                "(set_config() with a bound parameter or an expression as the name); "
                "write the parameter name as a constant",
            )
        if "standard_conforming_strings" in settings:
            # Both lexers read backslashes in '...' as PostgreSQL does with
            # this on; off, 'a\\' would hide a quote from them.
            return Verdict(
                "deny",
                "standard_conforming_strings",
                "standard_conforming_strings is fixed on by the gateway",
            )
        if "client_encoding" in settings:
            return Verdict(
                "deny",
                "client_encoding",
                "client_encoding is fixed for the session by the gateway "
                "(choose it when connecting)",
            )
        if self.deny_schemas and "search_path" in settings:
            return Verdict(
                "deny", "schema", "search_path cannot be changed where schemas are denied"
            )
        if self.deny_tables or self.deny_schemas:
            if "procedural" in classes:
                # A DO block, procedure or query_to_xml() runs SQL the
                # gateway cannot see, which could name any table.
                return Verdict(
                    "deny",
                    "procedural",
                    "procedural code is not allowed where tables or schemas are denied",
                )
            hit = sorted(classes & RESHAPING)
            if hit:
                # DDL can rename, move or wrap a denied table (a view, a rule,
                # SET SCHEMA, ALTER SCHEMA RENAME...) in ways no parser
                # reports as a name.
                return Verdict(
                    "deny",
                    f"class:{hit[0]}",
                    f"{hit[0]} statements are not allowed where tables or schemas are denied",
                )
        verdict = self._objects(c)
        if verdict is not None:
            return verdict
        review: list[str] = []
        for cls in sorted(classes):
            if cls in self.deny or (cls not in self.allow and cls not in self.review):
                return Verdict("deny", f"class:{cls}", f"{cls} statements are not allowed")
            if cls in self.review:
                review.append(cls)
        if review:
            return Verdict(
                "review",
                f"class:{review[0]}",
                f"{review[0]} statements need a second person's approval",
            )
        return ALLOW

    def _objects(self, c: Classification) -> Verdict | None:
        for rel in sorted(c.relations):
            parts = rel.split(".")
            if (
                rel in self.deny_tables
                or ".".join(parts[-2:]) in self.deny_tables
                or (parts[-1] in self.deny_table_names and len(parts) == 1)
                or parts[-1] in self.deny_tables
            ):
                return Verdict("deny", f"table:{rel}", f"table {rel} is not allowed")
            if len(parts) >= 2 and parts[-2] in self.deny_schemas:
                return Verdict("deny", f"schema:{parts[-2]}", f"schema {parts[-2]} is not allowed")
            if (
                (self.deny_tables or self.deny_schemas)
                and parts[-1] in STATISTICS_VIEWS
                and (len(parts) == 1 or parts[-2] == "pg_catalog")
            ):
                # Their most_common_vals and histograms are samples of
                # every table's values.
                return Verdict(
                    "deny",
                    f"table:{rel}",
                    f"{rel} shows values of denied tables",
                )
        for fn in sorted(c.functions):
            parts = fn.split(".")
            if (
                fn in self.deny_functions
                or parts[-1] in self.deny_functions
                or (len(parts) == 1 and fn in self.deny_function_names)
            ):
                return Verdict("deny", f"function:{fn}", f"function {fn} is not allowed")
            if len(parts) >= 2 and parts[-2] in self.deny_schemas:
                return Verdict("deny", f"schema:{parts[-2]}", f"schema {parts[-2]} is not allowed")
        return None


_RANK = {"deny": 0, "review": 1, "allow": 2}


def _best(verdicts: Iterable[Verdict]) -> Verdict:
    best: Verdict | None = None
    for verdict in verdicts:
        if best is None or _RANK[verdict.action] > _RANK[best.action]:
            best = verdict
    assert best is not None
    return best


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    classification: Classification
    #: Each grant's verdict, in grant order (patterns are applied per grant).
    per_grant: tuple[Verdict, ...] = ()


class Rules:
    """The verdicts for one role set on one connection under one policy."""

    def __init__(
        self,
        version: int,
        connection: str,
        grants: list[tuple[str, Grant]],
        cache_size: int,
        classifications: ClassificationCache,
    ) -> None:
        self.version = version
        self.connection = connection
        self.roles = tuple(role for role, _ in grants)
        self._grant_configs = grants
        self._grants = [_GrantRules(role, g) for role, g in grants]
        self.read_only = all(g.read_only for g in self._grants)
        self._cache: OrderedDict[bytes, Decision] = OrderedDict()
        #: Fingerprints whose text may pass exactly as sent, whatever the
        #: session: allowed, no patterns to run, nothing for the session to
        #: track. The relay pumps look these up without leaving compiled
        #: code (hoopfast.core._pump); read-only for them.
        self.fast: dict[bytes, Verdict] = {}
        self._cache_size = cache_size
        self._classifications = classifications
        self._patterns = any(g.patterns for g in self._grants)

    def needs_analysis(self, fingerprint: tuple[bytes, int]) -> bool:
        """Whether ``check`` would analyse a text of this fingerprint
        (core.fingerprint): no verdict or classification of its shape is
        cached, so the caller may analyse it off the event loop first
        (hoopfast.policy.analysis) and hand ``check`` the result."""
        key = fingerprint[0]
        return key not in self._cache and not self._classifications.has(key)

    def check(
        self,
        sql: str,
        prepared: Mapping[str, Classification] | None = None,
        analysed: Classification | None = None,
        fingerprint: tuple[bytes, int] | None = None,
    ) -> Decision:
        """The decision for a whole Query (or Parse) text; ``analysed``: its
        classification, already made (guard.analyse), if not cached;
        ``fingerprint``: core.fingerprint(sql), if already made."""
        key, statements = fingerprint or core.fingerprint(sql)
        decision = self._cache.get(key)
        if decision is None:
            c = self._classifications.get(key, sql, statements, analysed)
            decision = self._decide(c)
            if not (c.executes or c.value_dependent or c.unknown):
                self._cache[key] = decision
                if (
                    decision.verdict.action == "allow"
                    and not self._patterns
                    and not (c.prepares or c.deallocates)
                ):
                    self.fast[key] = decision.verdict
                if len(self._cache) > self._cache_size:
                    old, _ = self._cache.popitem(last=False)
                    self.fast.pop(old, None)
        c = decision.classification
        if c.executes:
            bodies = [c]
            for name in sorted(c.executes):
                body = (prepared or {}).get(name)
                if body is None:
                    body = unknown_classification(
                        f"EXECUTE of {name!r}, which this session did not prepare"
                    )
                bodies.append(body)
            decision = self._decide(merge(bodies), keep=c)
        if self._patterns:
            if len(self._grants) == 1:
                verdict = self._grants[0].match_patterns(decision.verdict, sql)
            else:
                verdict = _best(
                    g.match_patterns(v, sql)
                    for g, v in zip(self._grants, decision.per_grant, strict=True)
                )
            if verdict is not decision.verdict:
                return Decision(verdict, c, decision.per_grant)
        return decision

    def check_startup(self, settings: Mapping[str, str]) -> Verdict:
        """The verdict for run-time parameters set in the startup packet
        (directly or through ``options``): the same rules as SET."""
        for name, value in settings.items():
            if (
                name.lower() == "client_encoding"
                and clean_encoding_name(value) not in CLIENT_ENCODINGS
            ):
                return Verdict(
                    "deny",
                    "client_encoding",
                    f"client_encoding {value!r} is not supported by the gateway "
                    "(a character can hide a quote in it); use UTF8",
                )
        names = frozenset(name.lower() for name in settings) - {"client_encoding"}
        c = Classification(
            classes=_EMPTY,
            relations=_EMPTY,
            functions=_EMPTY,
            statements=0,
            settings=names,
        )
        return self._decide(c).verdict

    def same_grants(self, other: Rules) -> bool:
        """Both judge every statement alike (a reload that did not touch
        these grants)."""
        return self._grant_configs == other._grant_configs

    def check_classification(self, c: Classification) -> Verdict:
        """The verdict for something already classified (not cached)."""
        return self._decide(c).verdict

    def _decide(self, c: Classification, keep: Classification | None = None) -> Decision:
        per_grant = tuple(g.decide(c) for g in self._grants)
        return Decision(_best(per_grant), keep or c, per_grant)

    @property
    def cached(self) -> int:
        return len(self._cache)


def analyse(sql: str, statements: int) -> Classification:
    """What ``sql`` does: the classifier's reading checked against
    PostgreSQL's grammar (crosscheck). ``statements`` is the fingerprint
    lexer's count: a second, independent reading of where statements end
    (PostgreSQL's lexical rules, hand-written in rust/). If sqlglot's
    tokenizer splits the text differently, one of them misreads a quote,
    comment or dollar-quote, and a statement could be hiding: fail closed.
    Thread-safe: hoopfast.policy.analysis runs it off the event loop."""
    c = crosscheck(sql, classify(sql))
    if c.statements != statements and not c.unknown:
        c = unknown_classification(
            f"statement boundaries are ambiguous ({c.statements} vs {statements})"
        )
    return c


class ClassificationCache:
    """fingerprint -> Classification, shared by every Rules of a policy (the
    classification does not depend on roles or policy)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[bytes, Classification] = OrderedDict()

    def has(self, key: bytes) -> bool:
        return key in self._items

    def get(
        self, key: bytes, sql: str, statements: int, analysed: Classification | None = None
    ) -> Classification:
        """The classification of ``sql`` (fingerprint ``key``): cached, or
        ``analysed`` (analyse's result, made off the event loop), or made
        now by analyse."""
        c = self._items.get(key)
        if c is None:
            c = analysed if analysed is not None else analyse(sql, statements)
            if c.value_dependent or c.unknown:
                # An unknown result says "the analysis failed on this text",
                # not "texts of this shape are unknown": one odd spelling of a
                # literal (a tokenizer corner case) must not get every text
                # with the same fingerprint refused, for everyone.
                return c
            self._items[key] = c
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        return c


class Policy:
    """The statement policy of one configuration version. Immutable: a reload
    makes a new Policy, and sessions move to it at their next statement."""

    def __init__(
        self,
        config: GatewayConfig,
        version: int = 1,
        *,
        cache_size: int = 10_000,
        classifications: ClassificationCache | None = None,
    ) -> None:
        self.config = config
        self.version = version
        self._cache_size = cache_size
        self.classifications = classifications or ClassificationCache(cache_size)
        self._rules: dict[tuple[str, tuple[str, ...]], Rules | None] = {}

    def rules_for(self, connection: str, roles: Iterable[str]) -> Rules | None:
        """The rules for these roles on ``connection``; None when no role
        grants it (any more)."""
        granted = tuple(sorted(roles))
        key = (connection, granted)
        if key not in self._rules:
            conn: Connection | None = self.config.connections.get(connection)
            grants = [(r, conn.grants[r]) for r in granted if r in conn.grants] if conn else []
            self._rules[key] = (
                Rules(self.version, connection, grants, self._cache_size, self.classifications)
                if grants
                else None
            )
        return self._rules[key]
