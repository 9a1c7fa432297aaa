"""Gateway settings from ``HOOPFAST_*`` environment variables.

Deployment knobs live here (SREs tune them without editing files); what the
gateway connects to and who may do what lives in the TOML file that
``config`` points at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def parse_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'host:port', ':port' or '[v6]:port' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {value!r}")
    host = host.strip("[]") or default_host
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, number


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOOPFAST_", extra="ignore")

    #: The TOML file with connections and identity (see docs/configuration.md).
    config: Path = Path("hoopfast.toml")
    #: Where the PostgreSQL listener binds.
    pg_listen: str = "127.0.0.1:15432"
    #: Directory for local state: the development issuer's keys, the SQLite store.
    state_dir: Path = Path(".hoopfast")

    #: TLS certificate and key the gateway presents to clients (PEM). Without
    #: them SSLRequest is answered 'N'.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Development only: accept the token as a cleartext password on a
    #: connection without TLS. Off by default: tokens are bearer credentials.
    allow_cleartext_without_tls: bool = False

    #: Cap on the startup packet (before authentication, so it is tight).
    pg_max_startup_packet: int = Field(default=10_000, ge=64, le=1_000_000)
    #: Cap on any one message after authentication; PostgreSQL's own limit on a
    #: field is 1 GB, so a DataRow may legitimately approach that.
    pg_max_message: int = Field(default=1 << 30, ge=1 << 16, le=(1 << 31) - 1)
    #: Client connections at once, counting those still authenticating; past
    #: it a client gets 53300 "too many clients", as from PostgreSQL.
    pg_max_client_connections: int = Field(default=2000, ge=1)
    #: Seconds a client may take to finish startup and authentication.
    pg_auth_timeout: float = Field(default=30.0, gt=0)
    #: Seconds to connect and authenticate to the upstream.
    pg_upstream_connect_timeout: float = Field(default=10.0, gt=0)
    #: Per-transport write-buffer high-water mark: above it, the gateway stops
    #: reading from the other side until the buffer drains (back-pressure).
    pg_write_high_water: int = Field(default=256 * 1024, ge=1024)
    #: Bytes a client may send behind a statement held for approval (they
    #: wait, in memory, until it is decided); past it the session ends.
    pg_max_held_bytes: int = Field(default=8 << 20, ge=1 << 16)

    #: Seconds a session may outlive its token's expiry. 0 (the default):
    #: the session ends when the token does.
    session_expiry_grace: float = Field(default=0.0, ge=0)

    #: Statement guardrails (classification, deny/review). Off ONLY to
    #: measure what they cost (bench/): with them off every statement reaches
    #: the database unchecked, and the gateway says so loudly at start.
    guardrails: bool = True
    #: Seconds the gateway may spend analysing a statement it has no verdict
    #: for (off the event loop); past it the statement is unknown, which the
    #: policy refuses unless ``unknown = "allow"`` (docs/guardrails.md).
    analysis_timeout: float = Field(default=10.0, gt=0)

    #: Seconds between checks of the config file for changes (a change
    #: reloads it, as SIGHUP does); 0 turns the check off.
    config_poll_interval: float = Field(default=2.0, ge=0)

    #: The state store (reviews, recordings): ``sqlite:`` (state_dir/hoopfast.db),
    #: ``sqlite:///path``, or ``postgresql://...`` when several replicas share it.
    store: str = "sqlite:"
    #: The HTTP admin API (audit, metrics) binds here; "off" runs none.
    api_listen: str = "127.0.0.1:8080"

    #: Session recording. Off ONLY to measure what it costs (bench/): with it
    #: off nothing is recorded, and the gateway says so loudly at start.
    recording: bool = True
    #: Result rows and bytes (as the client saw them) kept per statement, and
    #: result bytes kept per session; past a cap the rest is counted, not kept.
    record_result_rows: int = Field(default=100, ge=0)
    record_result_bytes: int = Field(default=64 * 1024, ge=0)
    record_session_result_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    #: The local spool recordings pass through on their way to the store
    #: (default: state_dir/spool).
    spool_dir: Path | None = None
    #: When spool writes reach the disk: "always" (fsync before the client
    #: sees the statement's result), "batch" (fsync every spool_fsync_interval;
    #: a kill loses nothing, a power cut at most that long), "off" (the OS decides).
    spool_fsync: Literal["always", "batch", "off"] = "batch"
    spool_fsync_interval: float = Field(default=0.2, gt=0)
    #: Bytes the spool may hold that the store has not taken yet.
    spool_max_bytes: int = Field(default=1 << 30, ge=1 << 16)
    spool_segment_bytes: int = Field(default=16 << 20, ge=1 << 12)
    #: With the spool full: "refuse" new statements (fail closed), or
    #: "continue" unrecorded (logged loudly, counted in metrics).
    recording_on_full: Literal["refuse", "continue"] = "refuse"
    #: Seconds between moves from the spool to the store.
    store_flush_interval: float = Field(default=0.2, gt=0)
    #: Ed25519 private key (PEM) that signs sealed sessions (default:
    #: state_dir/recording-key.pem, created on first start).
    recording_key_file: Path | None = None
    #: Seconds between reads of the store for decisions made through another
    #: replica (a held statement's release) and for access grants that
    #: started, ended or were revoked (sessions gain or lose the role).
    approvals_poll_interval: float = Field(default=1.0, gt=0, le=60)

    log_level: str = "INFO"

    @field_validator("pg_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_hostport(value)
        return value

    @field_validator("api_listen")
    @classmethod
    def _check_api_listen(cls, value: str) -> str:
        if value != "off":
            parse_hostport(value)
        return value

    @property
    def pg_listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.pg_listen)
