"""The policy engine on its own: rules, the verdict cache, the cross-check.
(Through the real gateway: tests/test_guardrails.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from hoopfast.config import GatewayConfig
from hoopfast.policy.classify import classify
from hoopfast.policy.crosscheck import crosscheck
from hoopfast.policy.guard import Policy, Rules, function_call_classification
from tests.impls import IMPLS


def make_rules(grants: dict[str, dict[str, Any]], roles: tuple[str, ...] | None = None) -> Rules:
    config = GatewayConfig.model_validate(
        {
            "identity": {"issuer": "i", "audience": "a", "jwks_file": "/nonexistent"},
            "roles": {name: {"groups": [name]} for name in grants},
            "connections": {"db": {"host": "h", "database": "d", "user": "u", "grants": grants}},
        }
    )
    rules = Policy(config).rules_for("db", roles or tuple(grants))
    assert rules is not None
    return rules


def action(rules: Rules, sql: str, prepared: dict[str, Any] | None = None) -> str:
    verdict = rules.check(sql, prepared).verdict
    return verdict.action if verdict.action == "allow" else f"{verdict.action}:{verdict.rule}"


def test_one_verdict_per_fingerprint_is_cached() -> None:
    rules = make_rules({"r": {"read_only": True}})
    for aid in range(50):
        assert action(rules, f"SELECT abalance FROM a WHERE aid = {aid}") == "allow"
    assert rules.cached == 1
    assert action(rules, "DELETE FROM a WHERE aid = 1") == "deny:read_only"
    assert rules.cached == 2


def test_set_config_is_judged_by_its_parameter_and_never_cached() -> None:
    """The one literal the classifier reads: asyncpg's jit switch must work,
    set_config('role', ...) must not ride on its cached verdict."""
    rules = make_rules({"r": {}})
    for first, second in [("jit", "role"), ("role", "jit")]:
        verdicts = [
            action(rules, f"SELECT set_config('{name}', 'off', false)") for name in (first, second)
        ]
        expected = {"jit": "allow", "role": "deny:class:role"}
        assert verdicts == [expected[first], expected[second]]
    # Not a plain constant: the parameter could be anything, a pinned one included.
    assert action(rules, "SELECT set_config(E'jit', 'off', false)").startswith("deny:")
    ro = make_rules({"r": {"read_only": True}})
    assert (
        action(ro, "SELECT set_config('default_transaction_read_only', 'off', false)")
        == "deny:read_only"
    )


def test_patterns_see_literals_on_every_statement() -> None:
    rules = make_rules({"r": {"deny_patterns": [r"(?i)secret_word"]}})
    assert action(rules, "SELECT 'fine'") == "allow"
    assert action(rules, "SELECT 'SECRET_WORD'") == "deny:pattern:0"  # same fingerprint
    assert action(rules, "SELECT 'fine'") == "allow"


def test_grants_add_up_most_permissive_wins() -> None:
    grants = {"ro": {"read_only": True}, "writer": {"review": ["write"]}}
    both = make_rules(grants)
    assert not both.read_only
    assert action(both, "INSERT INTO t VALUES (1)") == "review:class:write"
    assert action(make_rules(grants, ("ro",)), "INSERT INTO t VALUES (1)") == "deny:read_only"
    # A pattern denies only if every granting role's rules deny.
    patterns = {"a": {"deny_patterns": ["x"]}, "b": {}}
    assert action(make_rules(patterns), "SELECT 'x'") == "allow"
    assert action(make_rules(patterns, ("a",)), "SELECT 'x'") == "deny:pattern:0"


@pytest.mark.parametrize(
    ("entry", "sql", "denied"),
    [
        ("public.payroll", "SELECT * FROM payroll", True),
        ("public.payroll", "SELECT * FROM public.payroll", True),
        ("public.payroll", "SELECT * FROM app.public.payroll", True),
        ("public.payroll", "SELECT * FROM other.payroll", False),
        ("payroll", "SELECT * FROM other.payroll", True),
        ("payroll", 'SELECT * FROM "PAYROLL"', False),
        ("Payroll", 'SELECT * FROM "Payroll"', True),
        ("Payroll", "SELECT * FROM Payroll", False),  # folds to payroll
    ],
)
def test_denied_table_names(entry: str, sql: str, denied: bool) -> None:
    rules = make_rules({"r": {"deny_tables": [entry]}})
    assert action(rules, sql).startswith("deny:table") is denied


def test_denied_tables_also_deny_procedural_code() -> None:
    rules = make_rules({"r": {"deny_tables": ["payroll"]}})
    assert action(rules, "DO $$ BEGIN PERFORM 1; END $$") == "deny:procedural"
    assert action(rules, "SELECT query_to_xml('select 1', true, false, '')") == "deny:procedural"
    # Not allowed by default at all (it can do what any class does)...
    assert action(make_rules({"r": {}}), "DO $$ BEGIN PERFORM 1; END $$") == (
        "deny:class:procedural"
    )
    # ...but a grant may allow it.
    everything = ["read", "write", "ddl", "session", "procedural", "transaction"]
    assert action(make_rules({"r": {"allow": everything}}), "CALL p()") == "allow"


def test_execute_is_judged_by_the_prepared_body() -> None:
    rules = make_rules({"r": {"read_only": True}})
    body = classify("PREPARE p AS SELECT 1")
    assert action(rules, "EXECUTE p", {"p": body}) == "allow"
    assert action(rules, "EXECUTE p", {"p": classify("PREPARE p AS DELETE FROM t")}) == (
        "deny:read_only"
    )
    assert action(rules, "EXECUTE q", {"p": body}) == "deny:unknown"
    assert action(rules, "EXECUTE p(nextval('s'))", {"p": body}) == "deny:read_only"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"application_name": "x", "search_path": "public"}, "allow"),
        ({"role": "postgres"}, "deny:class:role"),
        ({"session_authorization": "postgres"}, "deny:class:role"),
        ({"client_encoding": "SJIS"}, "deny:client_encoding"),
        ({"client_encoding": "'utf-8'"}, "allow"),
        ({"client_encoding": "LATIN1"}, "allow"),
        ({"client_encoding": "GB18030"}, "deny:client_encoding"),
        ({"standard_conforming_strings": "off"}, "deny:standard_conforming_strings"),
        ({"local_preload_libraries": "x"}, "deny:class:file"),
    ],
)
def test_startup_settings(settings: dict[str, str], expected: str) -> None:
    verdict = make_rules({"r": {}}).check_startup(settings)
    assert (verdict.action if verdict.action == "allow" else f"deny:{verdict.rule}") == expected


def test_read_only_startup_settings() -> None:
    rules = make_rules({"r": {"read_only": True}})
    assert rules.check_startup({"default_transaction_read_only": "off"}).rule == "read_only"


def test_syntax_errors_are_refused_as_postgresql_would() -> None:
    verdict = make_rules({"r": {"unknown": "allow"}}).check("SELECT 1; SELEC 2").verdict
    assert (verdict.action, verdict.sqlstate, verdict.position) == ("deny", "42601", 11)
    assert verdict.message == 'syntax error at or near "SELEC"'


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        # sqlglot reads the body's ';' as statement ends; PostgreSQL does not.
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            "statement count",
        ),
    ],
)
def test_crosscheck_fails_closed_where_the_parsers_disagree(sql: str, reason: str) -> None:
    c = crosscheck(sql, classify(sql))
    assert c.unknown and reason in (c.reason or "")


def test_crosscheck_adds_what_postgresql_sees() -> None:
    sql = "SELECT * FROM t"
    c = crosscheck(sql, classify(sql))
    assert c.relations >= {"t"} and not c.unknown


def test_fast_path_functions_by_oid() -> None:
    rules = make_rules({"r": {"read_only": True}})
    assert rules.check_classification(function_call_classification(954)).action == "allow"
    assert rules.check_classification(function_call_classification(955)).rule == "read_only"
    assert rules.check_classification(function_call_classification(2171)).rule == "unknown"


def test_no_grant_no_rules() -> None:
    config = GatewayConfig.model_validate(
        {
            "identity": {"issuer": "i", "audience": "a", "jwks_file": "/x"},
            "roles": {"r": {"groups": ["g"]}},
            "connections": {"db": {"host": "h", "database": "d", "user": "u"}},
        }
    )
    assert Policy(config).rules_for("db", ("r",)) is None
    assert Policy(config).rules_for("nope", ("r",)) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_pattern_set_both_implementations(impl: Any) -> None:
    patterns = impl.PatternSet([r"(?i)\bpg_sleep\s*\(", "secret_word", r"\d{16}"])
    assert len(patterns) == 3
    assert patterns.first_match("SELECT 1") is None
    assert patterns.first_match("select PG_SLEEP (1), 'secret_word'") == 0
    assert patterns.first_match("select 'secret_word 4111111111111111'") == 1
    assert patterns.first_match("select 'é' || '4111111111111111'") == 2
    with pytest.raises(ValueError):
        impl.PatternSet(["("])


def test_patterns_use_the_compiled_syntax() -> None:
    """Backreferences and look-around would let one statement run a pattern
    for exponential time; the compiled engine has neither, and the config
    is validated with it."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"deny_patterns[\s\S]*\[0\] is not a valid"):
        make_rules({"r": {"deny_patterns": [r"(a+)+\1"]}})


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # pg_dump's statement: judged as SET of the one parameter it names.
        (
            "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
            "WHERE name = 'restrict_nonsystem_relation_kind'",
            "allow",
        ),
        ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'", "deny"),
        (
            "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role' OR true",
            "deny",
        ),
        ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = E'role'", "deny"),
        ("SELECT pg_catalog.set_config('search_path', '', false)", "allow"),
    ],
)
def test_set_config_forms_read_only_clients_send(sql: str, expected: str) -> None:
    rules = make_rules({"r": {"read_only": True}})
    assert rules.check(sql).verdict.action == expected


def test_an_analysis_failure_is_not_cached_for_the_fingerprint() -> None:
    """A text the classifier fails on (here sqlglot's tokenizer, on an E''
    string continued on the next line) is refused, but must not get every
    text of the same shape refused, for everyone, from then on."""
    rules = make_rules({"r": {}})
    odd = "SELECT E''\n'\\''"
    assert action(rules, odd) == "deny:unknown"
    assert action(rules, "SELECT 'plain'") == "allow"
    # The fingerprint lexer reads it as PostgreSQL does (one string constant),
    # so once the plain spelling is judged, the odd one shares its verdict.
    assert action(rules, odd) == "allow"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # Found by running psycopg's own test suite through the gateway.
        ("SET standard_conforming_strings TO on", "allow"),  # the pinned value: no change
        ("SET standard_conforming_strings TO off", "deny:standard_conforming_strings"),
        ("SET standard_conforming_strings TO 'on'", "deny:standard_conforming_strings"),
        ("select null::numeric(2,-3)", "allow"),  # negative scale, PostgreSQL 15+
        ("SELECT set_config($1, $2, false)", "deny:setting"),  # the name is a bound parameter
        ("SET client_encoding TO 'LATIN1'", "deny:client_encoding"),
    ],
)
def test_statements_real_clients_send(sql: str, expected: str) -> None:
    assert action(make_rules({"r": {}}), sql) == expected
