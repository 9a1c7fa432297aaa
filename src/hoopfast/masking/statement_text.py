"""What the audit trail and approvers are shown of a statement's text.

The text is recorded as received, but for secrets: "the upstream
credential and the client's token never appear in a recording". SQL can
carry them in its text: a role's password (``CREATE ROLE ... PASSWORD
'...'``, ``ALTER USER ... PASSWORD '...'``, which psql's ``\\password``
sends too), a connection string inside a literal (``dblink_connect('...
password=...')``, a ``postgresql://user:password@host`` URI), or a token or
key pasted into a value (``SET app.token = 'eyJ...'``). Those are replaced
by ``[REDACTED:password]`` or the detector's token; everything else stays as
the client sent it. Personal data in literals is not masked here (the
bound parameters are, by every detector): the statement text is what an
auditor needs to read.

The cost is on the data path, once per distinct text of a session (the
session log keeps the last few): two substring tests and the compiled
engine's secret detectors, ~0.2 µs for a short statement.
"""

from __future__ import annotations

import re

from hoopfast import core

#: The detectors for secrets (hoopfast.core._mask): keys and tokens, not
#: personal data.
SECRET_DETECTORS = (
    "pem_private_key",
    "jwt",
    "azure_storage_key",
    "aws_access_key",
    "gcp_api_key",
    "secret",
)
PASSWORD = "[REDACTED:password]"

# A role's password: PASSWORD followed by a string constant (standard,
# escape, Unicode-escape or dollar-quoted).
_ROLE_PASSWORD = re.compile(
    r"""(\bpassword\s+)(
        '(?:[^']|'')*'
        | [eE]'(?:[^'\\]|\\.|'')*'
        | [uU]&'(?:[^']|'')*'
        | \$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$.*?\$(?P=tag)?\$
    )""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
# libpq's keyword/value form inside a literal: password=value or
# password='value' (quotes doubled or backslash-escaped in the SQL).
_CONNINFO_PASSWORD = re.compile(
    r"""(\bpassword\s*=\s*)(
        (?P<q>''|\\'|')(?:(?!(?P=q)).)*(?P=q)
        | [^\s'"]+
    )""",
    re.IGNORECASE | re.VERBOSE,
)
# A URI's user:password@ (postgresql://, mysql://, https://, ...).
_URI_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)([^\s@'\"/]+)(@)")


class StatementText:
    """``shown(text)``: the text with its secrets replaced."""

    def __init__(self) -> None:
        # The redact strategy does not use the key.
        self._plan = core.MaskPlan([], b"\0" * 32, list(SECRET_DETECTORS))

    def __call__(self, text: str) -> str:
        if "password" in text.lower():
            text = _ROLE_PASSWORD.sub(lambda m: f"{m[1]}'{PASSWORD}'", text)
            text = _CONNINFO_PASSWORD.sub(lambda m: m[1] + PASSWORD, text)
        if "://" in text:
            text = _URI_PASSWORD.sub(lambda m: m[1] + PASSWORD + m[3], text)
        return str(self._plan.mask_text(text))


#: The one the trail and the approvals use (it holds no per-session state).
shown_statement_text = StatementText()
