"""Configuration: the optional TOML file, environment variables and defaults, in one typed object.

Precedence: command-line option, then environment (``MAILCRM_DATABASE_URL``, ``MAILCRM_CONFIG``,
``MAILCRM_SECRET_KEY``), then the config file, then defaults. The default database is a SQLite
file in the user's data directory (``$XDG_DATA_HOME/mailcrm/mailcrm.db``).
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir

from .errors import ConfigError
from .vocab import INTERVALS, WINDOWS


def data_dir() -> Path:
    """Where mailcrm keeps its files when nothing else is configured."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) / "mailcrm" if xdg else Path(user_data_dir("mailcrm", appauthor=False))
    return base


def default_database_url() -> str:
    """The embedded default: a SQLite file in the data directory."""
    return f"sqlite:///{data_dir() / 'mailcrm.db'}"


@dataclass
class RelayConfig:
    """SMTP relay listeners and limits (issue: SMTP relay)."""

    host: str = "127.0.0.1"
    port: int = 2587
    tls_port: int | None = None
    cert_file: str | None = None
    key_file: str | None = None
    allow_plaintext_auth_on_loopback: bool = False
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 500
    max_connections: int = 200
    upstream_timeout: float = 60.0
    upstream_host: str | None = None
    upstream_port: int = 587
    upstream_tls: str = "starttls"
    upstream_insecure: bool = False
    enabled: bool = True
    hostname: str | None = None
    upstream_ca_file: str | None = None
    max_messages_per_minute: int = 60
    spool_dir: str | None = None
    spool_timeout: float = 5.0
    spool_poll_interval: float = 2.0
    spool_first: str = "auto"
    proxy_protocol: bool = False
    proxy_trusted: list[str] = field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    proxy_timeout: float = 10.0
    # abuse limits (proxy/smtp/gatekeeper.py)
    max_connections_per_client: int = 50  # as Postfix's smtpd_client_connection_count_limit
    unauthenticated_timeout: float = 30.0
    unauthenticated_timeout_busy: float = 10.0
    auth_failures_before_delay: int = 3
    auth_delay: float = 1.0
    auth_delay_max: float = 8.0
    auth_failures_before_refusal: int = 10
    auth_refusal_seconds: float = 300.0
    allow_plaintext_upstream: bool = False


@dataclass
class PollerConfig:
    """IMAP poller policy (SPEC T1-T3)."""

    enabled: bool = True
    active_window_hours: float = 8.0
    active_interval_s: int = 600
    idle_interval_s: int = 86400
    idle_renew_s: int = 540
    insecure: bool = False
    upstream_host: str | None = None
    upstream_port: int = 993
    upstream_tls: str = "ssl"
    ca_file: str | None = None
    idle: bool = True
    use_qresync: bool = True
    timeout_s: float = 30.0
    chunk_size: int = 200
    fetch_bytes: int = 8 * 1024 * 1024
    search_span: int = 20000
    push_check_s: float = 2.0
    refresh_s: float = 15.0
    backoff_min_s: float = 2.0
    backoff_max_s: float = 900.0
    auth_backoff_min_s: float = 300.0
    db_threads: int = 0  # capture threads, each mailbox on one; 0: 1 on SQLite, 4 on PostgreSQL


@dataclass
class HttpConfig:
    """The health, metrics and status-page listener of ``mailcrm serve`` (B6)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8025
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered (DNS rebinding)
    tls: bool = False  # HTTPS; with no cert_file/key_file here, the relay's certificate
    cert_file: str | None = None  # HTTPS with this certificate (PEM) and key_file
    key_file: str | None = None
    #: the reverse proxy that terminates TLS in front of a non-loopback listener (an address, a
    #: network or a host name): only from it are X-Forwarded-Proto/-For honoured
    #: (:mod:`proxy.web.forwarded`); without it or TLS, ``serve`` refuses to listen beyond
    #: loopback in plain HTTP
    trusted_proxy: str | None = None


@dataclass
class CaptureConfig:
    """Limits of what one message may make capture do (issue 13)."""

    max_vcard_contacts: int = 100  # contacts made from the vCards of one message
    max_vcard_bytes: int = 4 * 1024 * 1024  # vCard data read from one message


@dataclass
class DavConfig:
    """The CardDAV/CalDAV front end (B8): how long its change log keeps a change."""

    #: changes older than this are pruned (a client's older token: a full sync); 0 keeps all
    change_log_days: int = 90


def default_node_name() -> str:
    """This process's node name in a cluster: host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ClusterConfig:
    """Several nodes on one PostgreSQL (B7): who this node is, how long a mailbox lease lasts."""

    node_name: str = field(default_factory=default_node_name)
    lease_seconds: float = 30.0


@dataclass
class Config:
    """Everything mailcrm reads from its environment."""

    database_url: str = field(default_factory=default_database_url)
    secret_key: str | None = None
    secret_key_file: str | None = None
    relay: RelayConfig = field(default_factory=RelayConfig)
    poller: PollerConfig = field(default_factory=PollerConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    dav: DavConfig = field(default_factory=DavConfig)
    log_format: str = "text"
    source: Path | None = None


def _section(raw: dict[str, Any], name: str, target: Any) -> None:
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"config: [{name}] must be a table")
    for key, value in values.items():
        if not hasattr(target, key):
            raise ConfigError(f"config: unknown setting {name}.{key}")
        setattr(target, key, value)


def _refuse_removed(raw: dict[str, Any]) -> None:
    """``[limits] since/intervals`` were read by nothing (the windows and intervals are fixed,
    :mod:`crm.vocab`); a config that still sets them is told so rather than silently ignored."""
    if "limits" in raw:
        raise ConfigError(
            "config: [limits] is no longer supported (its since/intervals were never applied: "
            f"the import windows are {', '.join(WINDOWS)} and the intervals "
            f"{', '.join(INTERVALS)}); remove the [limits] table"
        )


def _check_dav(dav: DavConfig) -> None:
    days = dav.change_log_days
    if not isinstance(days, int) or isinstance(days, bool) or days < 0:
        raise ConfigError(
            f"config: dav.change_log_days must be a whole number of days, 0 or more, not {days!r}"
        )


def load_config(path: str | None = None, database_url: str | None = None) -> Config:
    """Build the configuration from an optional TOML file, the environment and options."""
    config = Config()
    path = path or os.environ.get("MAILCRM_CONFIG")
    if path:
        config.source = Path(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        config.database_url = raw.get("database_url", config.database_url)
        config.secret_key_file = raw.get("secret_key_file")
        _section(raw, "relay", config.relay)
        _section(raw, "poller", config.poller)
        _section(raw, "http", config.http)
        _section(raw, "cluster", config.cluster)
        _section(raw, "capture", config.capture)
        _section(raw, "dav", config.dav)
        _check_dav(config.dav)
        config.log_format = raw.get("log_format", config.log_format)
        _refuse_removed(raw)
    config.database_url = (
        database_url or os.environ.get("MAILCRM_DATABASE_URL") or config.database_url
    )
    config.secret_key = os.environ.get("MAILCRM_SECRET_KEY") or config.secret_key
    config.cluster.node_name = os.environ.get("MAILCRM_NODE_NAME") or config.cluster.node_name
    config.log_format = os.environ.get("MAILCRM_LOG_FORMAT") or config.log_format
    return config
