"""The TOML configuration: identity and upstream connections.

The whole file is validated at once (``hoopfast check-config``) and every
error is reported with its location. Secrets are *referenced* (an environment
variable or a file), never inlined: a config file is something people paste
into tickets.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from hoopfast.errors import ConfigurationError

ConnectionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """'15m', '30s', '2h', '500ms' or a number of seconds -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 2h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Fields given as a duration ("30s", "15m", or seconds).
    durations: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _parse_durations(cls, data: object) -> object:
        if cls.durations and isinstance(data, dict):
            data = dict(data)
            for key in cls.durations:
                if isinstance(data.get(key), str | int | float) and not isinstance(data[key], bool):
                    data[key] = parse_duration(data[key])
        return data


class SecretRef(_Strict):
    """Where a secret lives. Exactly one of ``env`` and ``file``."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def describe(self) -> str:
        """Where the secret is, for messages; never the secret itself."""
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def resolve(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigurationError(f"secret not set: {self.describe()}")
            return value
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise ConfigurationError(
                f"secret unreadable: {self.describe()} ({e.strerror})"
            ) from None


AuthMethod = Literal["scram-sha-256", "md5", "password", "trust"]


class Role(_Strict):
    """A role is held by everyone in any of its identity-provider groups."""

    groups: list[str] = Field(min_length=1)


#: Statement classes a grant can allow, deny or send to review (see
#: :mod:`hoopfast.policy.classify`; ``unknown`` has its own setting).
StatementClass = Literal[
    "read",
    "write",
    "ddl",
    "dcl",
    "session",
    "role",
    "file",
    "maintenance",
    "procedural",
    "transaction",
    "lock",
]

#: Allowed when a grant does not say: everything but changing identity
#: (``role``), server-side files/programs (``file``) and code the gateway
#: cannot look into (``procedural``: a DO block can do what any class does,
#: including what ``role`` and ``file`` deny).
DEFAULT_ALLOW: tuple[StatementClass, ...] = (
    "read",
    "write",
    "ddl",
    "dcl",
    "session",
    "maintenance",
    "transaction",
    "lock",
)

#: Denied when a grant does not say: functions that reach outside the
#: database, other sessions or the server's configuration.
DEFAULT_DENY_FUNCTIONS: tuple[str, ...] = (
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_send_query",
    "dblink_open",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "lo_import",
    "lo_export",
)


class Grant(_Strict):
    """What one role may do on one connection."""

    #: Open the upstream session with default_transaction_read_only=on, so the
    #: database itself refuses writes (defence in depth under the guardrails),
    #: and deny every statement class that changes anything.
    read_only: bool = False
    #: Statement classes this role may run (default: :data:`DEFAULT_ALLOW`).
    allow: list[StatementClass] = Field(default_factory=lambda: list(DEFAULT_ALLOW))
    #: Classes denied even if ``allow`` lists them.
    deny: list[StatementClass] = Field(default_factory=list)
    #: Classes that need a second person's approval (verdict ``review``).
    review: list[StatementClass] = Field(default_factory=list)
    #: Verdict for statements the gateway cannot fully classify.
    unknown: Literal["deny", "review", "allow"] = "deny"
    #: Tables ("table" or "schema.table", as stored in the catalog) no
    #: statement may name.
    deny_tables: list[str] = Field(default_factory=list)
    #: Schemas no statement may name a table or function in.
    deny_schemas: list[str] = Field(default_factory=list)
    #: Functions ("name" or "schema.name") no statement may call.
    deny_functions: list[str] = Field(default_factory=lambda: list(DEFAULT_DENY_FUNCTIONS))
    #: Regular expressions (the Rust regex crate's syntax: linear time, no
    #: look-around or backreferences) searched in the statement text as
    #: received; a match denies it.
    deny_patterns: list[str] = Field(default_factory=list)

    @field_validator("deny_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        try:  # validate with the compiled engine's syntax wherever it is installed
            from hoopfast_core import PatternSet
        except ImportError:  # pragma: no cover - the reference, stricter nowhere
            from hoopfast.core import PatternSet  # type: ignore[assignment]

        for i, pattern in enumerate(patterns):
            try:
                PatternSet([pattern])
            except ValueError as e:
                first = str(e).strip().splitlines()[-1]
                raise ValueError(f"[{i}] is not a valid expression: {first}") from None
        return patterns

    @field_validator("deny_tables", "deny_schemas", "deny_functions")
    @classmethod
    def _object_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name or name != name.strip() or ".." in name or name.startswith("."):
                raise ValueError(f"not a valid object name: {name!r}")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> Grant:
        both = sorted(set(self.deny) & set(self.review))
        if both:
            raise ValueError(f"classes both denied and sent to review: {', '.join(both)}")
        return self


#: Masking strategies (docs/masking.md).
MaskStrategy = Literal[
    "redact", "same_length", "partial", "hash", "null", "default", "fake", "detect"
]

#: Value detectors (docs/masking.md), in the engine's order.
Detector = Literal[
    "pem_private_key",
    "jwt",
    "azure_storage_key",
    "aws_access_key",
    "gcp_api_key",
    "email",
    "iban",
    "card",
    "us_ssn",
    "uk_nino",
    "mac",
    "ipv6",
    "ipv4",
    "phone",
    "secret",
]
DETECTORS: tuple[str, ...] = get_args(Detector)

_COLUMN_GLOB = re.compile(r"^[^.\s]+(?:\.[^.\s]+){0,2}$")


class MaskRule(_Strict):
    """Which result columns to mask, and how (docs/masking.md)."""

    #: Column globs, matched against the column a result field comes from
    #: (resolved from the catalog, so an alias does not hide it): "email"
    #: (any table), "customers.card", "public.customers.ssn", "*.notes",
    #: "pii.*.*". Computed fields (no source column) match a one-part glob
    #: by their output name.
    columns: list[str] = Field(default_factory=list)
    #: Type names ("inet", "date", "jsonb", "varchar"...) whose columns this
    #: rule masks wherever they come from.
    types: list[str] = Field(default_factory=list)
    strategy: MaskStrategy = "redact"
    #: For ``detect``: the detectors to apply (default: all of them).
    detectors: list[Detector] = Field(default_factory=list)
    #: For ``partial``: characters kept at each end.
    keep_first: int = Field(default=0, ge=0, le=1000)
    keep_last: int = Field(default=0, ge=0, le=1000)
    #: Roles this rule applies to (default: everyone on the connection).
    roles: list[str] = Field(default_factory=list)
    #: What a column gets where the strategy cannot produce a value its
    #: type decoder parses (a non-text type, a binary result): never the
    #: raw value.
    fallback: Literal["null", "default"] = "null"

    @field_validator("columns")
    @classmethod
    def _globs(cls, columns: list[str]) -> list[str]:
        for glob in columns:
            if not _COLUMN_GLOB.match(glob):
                raise ValueError(
                    f"not a column glob (column, table.column or schema.table.column): {glob!r}"
                )
        return columns

    @model_validator(mode="after")
    def _selects_something(self) -> MaskRule:
        if not self.columns and not self.types:
            raise ValueError("a rule needs 'columns' or 'types'")
        return self


class Masking(_Strict):
    """Masking of result values on one connection. Nobody sees unmasked
    values: the only way around a rule is a time-boxed grant through the
    approval flow (not configurable here)."""

    #: HMAC-SHA-256 key of the ``hash`` and ``fake`` strategies (at least 32
    #: bytes). Without one, a random key per gateway process: masked values
    #: still join within a process, not across restarts or replicas.
    key: SecretRef | None = None
    #: Detectors run over every text value no column rule covers (computed
    #: columns such as upper(email) or row_to_json(c) included), and over
    #: error and notice texts and COPY output.
    detectors: list[Detector] = Field(default_factory=list)
    rules: list[MaskRule] = Field(default_factory=list)
    #: How long the column catalog (table OID, attnum -> name) read from the
    #: upstream is reused before it is read again.
    catalog_ttl: float = Field(default=60.0, gt=0)
    durations = ("catalog_ttl",)


#: The role name an access request asks for to see masked values unmasked
#: (hoopfast.policy.access.Access.unmasked); no configured role may use it.
UNMASKED_ROLE = "unmasked"


class Approvals(_Strict):
    """Who approves what needs a second person on one connection: statements
    the policy sends to review, and requests for time-boxed access
    (docs/approvals.md)."""

    #: Roles whose holders may approve (never their own requests).
    approvers: list[str] = Field(min_length=1)
    #: Distinct approvers needed.
    min_approvals: int = Field(default=1, ge=1, le=10)
    #: ``wait``: the statement is held until decided (a NoticeResponse tells
    #: the client at once); ``deferred``: it fails at once with the review id
    #: and runs once when re-sent after approval.
    mode: Literal["wait", "deferred"] = "wait"
    #: How long a held statement waits before it fails (wait mode).
    wait_timeout: float = Field(default=300.0, gt=0)
    #: How long a review stays open for a decision, and an approved
    #: statement stays runnable.
    review_ttl: float = Field(default=3600.0, gt=0)
    #: Roles whose holders may force-approve alone (recorded and flagged).
    break_glass: list[str] = Field(default_factory=list)
    #: Roles that may be asked for with an access request (``unmasked``
    #: included: raw values of masked columns).
    requestable_roles: list[str] = Field(default_factory=list)
    #: The longest access window a request may ask for.
    max_access: float = Field(default=8 * 3600.0, gt=0)
    durations = ("wait_timeout", "review_ttl", "max_access")


class Webhook(_Strict):
    """Where review notifications go: a JSON POST whose body is also a
    Slack incoming-webhook message, signed with HMAC-SHA-256."""

    url: str
    #: The HMAC key (at least 32 bytes). Required: an unsigned notification
    #: could be forged by anyone who can reach the receiver.
    secret: SecretRef
    #: Attempts per notification (the first included), with exponential
    #: back-off between them.
    attempts: int = Field(default=5, ge=1, le=20)
    timeout: float = Field(default=5.0, gt=0)
    durations = ("timeout",)

    @field_validator("url")
    @classmethod
    def _https(cls, url: str) -> str:
        # (Its path is the secret of a Slack-style webhook: not shown.)
        _check_provider_url("url", url, secret=True)
        return url


class Notifications(_Strict):
    webhook: Webhook | None = None


class Connection(_Strict):
    """One upstream PostgreSQL database that clients reach by name."""

    host: str
    port: int = Field(default=5432, ge=1, le=65535)
    database: str
    user: str
    password: SecretRef | None = None
    tls: Literal["disable", "require", "verify-full"] = "disable"
    #: CA bundle for verify-full; the system store when absent.
    tls_ca_file: Path | None = None
    #: Name to verify in the server certificate (default: host).
    tls_server_name: str | None = None
    #: Extra startup parameters sent upstream (e.g. {"search_path" = "app"}).
    options: dict[str, str] = Field(default_factory=dict)
    #: Upstream authentication methods the gateway accepts (libpq's
    #: require_auth): a server asking for another one is refused, so nobody in
    #: the middle can talk the gateway into sending the secret in clear.
    require_auth: list[AuthMethod] = Field(
        default_factory=lambda: list[AuthMethod](["scram-sha-256"]), min_length=1
    )
    #: Which roles may use this connection, and how. No grant, no access.
    grants: dict[str, Grant] = Field(default_factory=dict)
    #: Masking of result values (none when absent).
    masking: Masking | None = None
    #: Approvals (none when absent: statements the policy sends to review
    #: are refused).
    approvals: Approvals | None = None


class Identity(_Strict):
    """How tokens (the password a client presents) are validated."""

    issuer: str
    audience: str
    #: Where the issuer's public keys come from: exactly one of a JWKS document
    #: on disk, a URL serving one, or OIDC discovery from the issuer
    #: (``{issuer}/.well-known/openid-configuration`` -> ``jwks_uri``).
    jwks_file: Path | None = None
    jwks_url: str | None = None
    discovery: bool = False
    algorithms: list[str] = Field(default_factory=lambda: ["EdDSA", "RS256", "ES256"])
    leeway: float = Field(default=30.0, ge=0)
    #: Refetch the keys (jwks_url / discovery) this often, for key rotation.
    jwks_refresh_interval: float = Field(default=3600.0, gt=0)
    #: At most one refetch per this interval, however many tokens name an unknown key.
    jwks_min_refresh_interval: float = Field(default=60.0, gt=0)
    #: Claim that names the person, and where the groups are.
    identity_claim: str = "sub"
    groups_claim: str = "groups"
    durations = ("leeway", "jwks_refresh_interval", "jwks_min_refresh_interval")

    @model_validator(mode="after")
    def _one_keyset(self) -> Identity:
        sources = [self.jwks_file is not None, self.jwks_url is not None, self.discovery]
        if sum(sources) != 1:
            raise ValueError(
                "give exactly one of 'jwks_file' or 'jwks_url', or set 'discovery = true'"
            )
        if self.discovery:
            _check_provider_url("issuer", self.issuer)
        refused = {a for a in self.algorithms if a.lower() == "none" or a.startswith("HS")}
        if refused:
            # Symmetric algorithms would let anyone holding the verification key
            # mint tokens, and 'none' is no signature at all.
            raise ValueError(f"algorithms not allowed: {', '.join(sorted(refused))}")
        if not self.algorithms:
            raise ValueError("at least one algorithm is required")
        return self


_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def _check_provider_url(name: str, url: str, *, secret: bool = False) -> None:
    """Keys fetched over plain HTTP could be swapped in transit: https only,
    except on the loopback interface (tests, a local provider). A
    ``secret`` URL is named by its scheme and host only."""
    parsed = urlsplit(url)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname in _LOOPBACK_HOSTS:
        return
    if not secret:
        shown = repr(url)
    elif parsed.scheme and parsed.hostname:
        shown = f"{parsed.scheme}://{parsed.hostname}/... (the rest not shown)"
    else:
        shown = "(not shown)"
    raise ValueError(f"{name} must be an https:// URL (http:// only for localhost): {shown}")


class Audit(_Strict):
    """Who reads session trails. Segregation of duties: only these roles,
    and (unless allowed here) never a trail of one's own sessions."""

    #: Roles whose holders may list, export and replay trails. None by
    #: default: nobody reads a trail until the configuration names auditors.
    roles: list[str] = Field(default_factory=list)
    #: Whether an auditor may read the trail of a session they ran themselves.
    read_own_sessions: bool = False


class GatewayConfig(_Strict):
    identity: Identity
    roles: dict[ConnectionName, Role] = Field(default_factory=dict)
    connections: dict[ConnectionName, Connection] = Field(min_length=1)
    audit: Audit = Field(default_factory=Audit)
    notifications: Notifications = Field(default_factory=Notifications)

    @model_validator(mode="after")
    def _grants_name_roles(self) -> GatewayConfig:
        unknown = [
            f"connections.{name}.grants.{role}"
            for name, conn in self.connections.items()
            for role in conn.grants
            if role not in self.roles
        ]
        if unknown:
            raise ValueError(f"grants name roles that are not defined: {', '.join(unknown)}")
        unknown = [
            f"connections.{name}.masking.rules[{i}]: {role}"
            for name, conn in self.connections.items()
            if conn.masking is not None
            for i, rule in enumerate(conn.masking.rules)
            for role in rule.roles
            if role not in self.roles
        ]
        if unknown:
            raise ValueError(f"masking rules name roles that are not defined: {', '.join(unknown)}")
        unknown = [role for role in self.audit.roles if role not in self.roles]
        if unknown:
            raise ValueError(f"audit.roles names roles that are not defined: {', '.join(unknown)}")
        if UNMASKED_ROLE in self.roles:
            raise ValueError(f"the role name {UNMASKED_ROLE!r} is reserved for access requests")
        unknown = [
            f"connections.{name}.approvals: {role}"
            for name, conn in self.connections.items()
            if conn.approvals is not None
            for role in (
                *conn.approvals.approvers,
                *conn.approvals.break_glass,
                *conn.approvals.requestable_roles,
            )
            if role not in self.roles and role != UNMASKED_ROLE
        ]
        if unknown:
            raise ValueError(f"approvals name roles that are not defined: {', '.join(unknown)}")
        for name, conn in self.connections.items():
            a = conn.approvals
            if a is None:
                continue
            bad = [r for r in a.requestable_roles if r != UNMASKED_ROLE and r not in conn.grants]
            if bad:
                raise ValueError(
                    f"connections.{name}.approvals.requestable_roles: roles without a grant on"
                    f" this connection: {', '.join(bad)}"
                )
            if a.approvers == [UNMASKED_ROLE] or UNMASKED_ROLE in (*a.approvers, *a.break_glass):
                raise ValueError(f"connections.{name}.approvals: {UNMASKED_ROLE!r} cannot approve")
        return self


@dataclass(frozen=True)
class ConfigProblem:
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class ConfigFileError(ConfigurationError):
    def __init__(self, path: Path, problems: list[ConfigProblem]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s)\n{lines}")


def _resolve_relative(data: dict[str, object], base: Path) -> None:
    """Paths in the file are relative to the file, not to the working directory."""

    def fix(table: object, keys: tuple[str, ...]) -> None:
        if isinstance(table, dict):
            for key in keys:
                value = table.get(key)
                if isinstance(value, str) and not os.path.isabs(value):
                    table[key] = str(base / value)

    fix(data.get("identity"), ("jwks_file",))
    connections = data.get("connections")
    if isinstance(connections, dict):
        for conn in connections.values():
            fix(conn, ("tls_ca_file",))
            if isinstance(conn, dict):
                fix(conn.get("password"), ("file",))
                masking = conn.get("masking")
                if isinstance(masking, dict):
                    fix(masking.get("key"), ("file",))


def load_config(path: Path) -> GatewayConfig:
    """Read and validate the whole file; raise ConfigFileError listing every problem."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigFileError(path, [ConfigProblem(str(path), e.strerror or str(e))]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigFileError(path, [ConfigProblem(f"byte {e.start}", "not UTF-8")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(path, [ConfigProblem("syntax", str(e))]) from None
    _resolve_relative(data, path.parent)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as e:
        problems = [
            ConfigProblem(".".join(str(p) for p in err["loc"]) or "(top)", err["msg"])
            for err in e.errors(include_url=False, include_input=False)
        ]
        raise ConfigFileError(path, problems) from None
