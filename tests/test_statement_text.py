"""What the trail and approvers show of a statement's text: its secrets
replaced (hoopfast.masking.statement_text), the rest as sent."""

from __future__ import annotations

import pytest

from hoopfast.masking.statement_text import shown_statement_text

JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImRldi1rZXktMSIsInR5cCI6IkpXVCJ9"
    ".eyJpc3MiOiJodHRwczovL2Rldi5leGFtcGxlIiwic3ViIjoiYWxpY2UifQ"
    ".4xAleQx0Zr9nV3kq8bLw2TgYpHs7cM1dEuJf6oNaRiK5WvXz"
)
R = "[REDACTED:password]"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("ALTER ROLE app PASSWORD 'S3cr''t'", f"ALTER ROLE app PASSWORD '{R}'"),
        (
            "create user bob with encrypted password 'x' valid until 'infinity'",
            f"create user bob with encrypted password '{R}' valid until 'infinity'",
        ),
        ("ALTER USER x PASSWORD E'a\\'b' LOGIN", f"ALTER USER x PASSWORD '{R}' LOGIN"),
        ("ALTER ROLE a PASSWORD $t$p'w$t$ LOGIN", f"ALTER ROLE a PASSWORD '{R}' LOGIN"),
        ("ALTER ROLE a PASSWORD NULL", "ALTER ROLE a PASSWORD NULL"),
        (
            "SELECT dblink_connect('host=db password=Pw7 dbname=x')",
            f"SELECT dblink_connect('host=db password={R} dbname=x')",
        ),
        (
            "SELECT dblink_connect('host=db password=''a b'' dbname=x')",
            f"SELECT dblink_connect('host=db password={R} dbname=x')",
        ),
        (
            "SELECT dblink('postgresql://u:Secr3t@h:5432/db', 'select 1')",
            f"SELECT dblink('postgresql://u:{R}@h:5432/db', 'select 1')",
        ),
        (f"SET app.token = '{JWT}'", "SET app.token = '[REDACTED:jwt]'"),
        # Nothing to replace: the same text (personal data is not masked here).
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", None),
        ("SELECT 'my password' || 'x', 'bob@example.com'", None),
        ("SELECT 'https://example.com/a:b@c'", None),
    ],
)
def test_shown_statement_text(text: str, shown: str | None) -> None:
    assert shown_statement_text(text) == (text if shown is None else shown)
