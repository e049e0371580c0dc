"""What the poller knows of one mailbox: a frozen plan built from the CRM's snapshot of its row
(:class:`crm.face.poller.MailboxSnapshot`, the password opened), with the IMAP and SMTP endpoints
the poller connects to (defaults, ports and TLS settings from the poller's config).

:func:`load_plans` reads every mailbox once (a short transaction on the poller's database
thread); workers only ever see these frozen plans, and a changed plan (new password, other
host, other folders) restarts the mailbox's worker.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from crm.config import PollerConfig
from crm.face import Database
from crm.face.poller import MailboxSnapshot, SecretBox, Server, load_snapshot, load_snapshots
from crm.vocab import DEFAULT_WINDOW, WINDOWS, Direction, MailboxKind

from .client import Endpoint

NO_PASSWORD = "no password stored (mailbox set --password-stdin)"
DEFAULT_PORTS = {"ssl": 993, "starttls": 143, "none": 143}
SMTP_PORTS = {"ssl": 465, "starttls": 587, "none": 25}


@dataclass(frozen=True)
class MailboxPlan:
    """One mailbox as the poller sees it."""

    id: int
    address: str
    kind: str
    linked: bool
    owner_ok: bool
    owner_active_at: dt.datetime | None
    linked_at: dt.datetime | None
    since: str
    folders: tuple[str, ...]
    interval_s: int | None
    endpoint: Endpoint | None
    smtp: Endpoint | None
    problem: str | None
    smtp_problem: str | None = None  # why ``smtp`` is None: not configured, or no password

    @property
    def is_company(self) -> bool:
        """SPEC M1: a company mailbox."""
        return self.kind == MailboxKind.COMPANY.value

    def window_start(self, now: dt.datetime) -> dt.datetime | None:
        """C12: mail older than this is not imported (None: all time)."""
        span = WINDOWS.get(self.since, WINDOWS[DEFAULT_WINDOW])
        return None if span is None else (self.linked_at or now) - span


@dataclass(frozen=True)
class FolderPlan:
    """A folder to process and the direction of the mail in it."""

    name: str
    direction: Direction


def _endpoint(box: MailboxSnapshot, config: PollerConfig) -> tuple[Endpoint | None, str | None]:
    default = Server(config.upstream_host or "", config.upstream_port, config.upstream_tls)
    server = box.imap or default
    host, port, tls = server.host, server.port, server.tls
    if not host:
        return None, "no IMAP server configured (mailbox set --imap-host or a preset)"
    if box.password is None and not box.oauth:  # OAuth2: the token comes at login (issue 15)
        return None, NO_PASSWORD
    endpoint = Endpoint(
        host,
        port or DEFAULT_PORTS.get(tls, 993),
        tls,
        box.login,
        box.password or "",
        config.ca_file,
        config.insecure,
        box.oauth,
    )
    return endpoint, None


def _smtp_problem(box: MailboxSnapshot) -> str | None:
    """Why the mailbox has no SMTP endpoint (None: it has one)."""
    if box.smtp is None:
        return "not configured"
    return (box.problem or NO_PASSWORD) if box.password is None and not box.oauth else None


def _smtp(box: MailboxSnapshot, config: PollerConfig) -> Endpoint | None:
    if box.smtp is None or (box.password is None and not box.oauth):
        return None
    port = box.smtp.port or SMTP_PORTS.get(box.smtp.tls, 587)
    return Endpoint(
        box.smtp.host, port, box.smtp.tls, box.login, box.password or "", config.ca_file,
        config.insecure, box.oauth,
    )  # fmt: skip


def plan_for(box: MailboxSnapshot, config: PollerConfig) -> MailboxPlan:
    """The plan of one mailbox's snapshot."""
    endpoint, missing = _endpoint(box, config)
    return MailboxPlan(
        id=box.id,
        address=box.address,
        kind=box.kind,
        linked=box.linked,
        owner_ok=box.owner_ok,
        owner_active_at=box.owner_active_at,
        linked_at=box.linked_at,
        since=box.since,
        folders=box.folders,
        interval_s=box.interval_s,
        endpoint=endpoint,
        smtp=_smtp(box, config),
        problem=box.problem or missing,
        smtp_problem=_smtp_problem(box),
    )


def load_plans(db: Database, secrets: SecretBox | None, config: PollerConfig) -> list[MailboxPlan]:
    """Every mailbox, as plans."""
    return [plan_for(box, config) for box in load_snapshots(db, secrets)]


def load_plan(
    db: Database, address: str, secrets: SecretBox | None, config: PollerConfig
) -> MailboxPlan:
    """One mailbox by address (NotFound when there is none)."""
    return plan_for(load_snapshot(db, address, secrets), config)
