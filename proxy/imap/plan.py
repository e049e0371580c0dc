"""What the poller knows of one mailbox: a detached snapshot of its row, with the password opened.

:func:`load_plans` reads every mailbox once (a short transaction on the poller's database
thread); workers only ever see these frozen snapshots, and a changed snapshot (new password,
other host, other folders) restarts the mailbox's worker.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from crm.config import PollerConfig
from crm.errors import SecretError
from crm.face import Database
from crm.face.poller import SecretBox
from crm.store.models import Mailbox
from crm.vocab import DEFAULT_WINDOW, WINDOWS, Direction, MailboxKind

from .client import Endpoint

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


def _endpoint(
    box: Mailbox, password: str | None, config: PollerConfig
) -> tuple[Endpoint | None, str | None]:
    host = box.imap_host or config.upstream_host
    if not host:
        return None, "no IMAP server configured (mailbox set --imap-host or a preset)"
    tls = box.imap_tls if box.imap_host else config.upstream_tls
    port = box.imap_port if box.imap_host else config.upstream_port
    oauth = box.auth == "oauth2"  # the token comes at login (issue 15)
    if password is None and not oauth:
        return None, "no password stored (mailbox set --password-stdin)"
    login = box.login or box.address
    endpoint = Endpoint(
        host,
        port or DEFAULT_PORTS.get(tls, 993),
        tls,
        login,
        "" if oauth else password or "",
        config.ca_file,
        config.insecure,
        oauth,
    )
    return endpoint, None


def _smtp(box: Mailbox, password: str | None, config: PollerConfig) -> Endpoint | None:
    oauth = box.auth == "oauth2"
    if not box.smtp_host or (password is None and not oauth):
        return None
    port = box.smtp_port or SMTP_PORTS.get(box.smtp_tls, 587)
    login = box.login or box.address
    return Endpoint(
        box.smtp_host,
        port,
        box.smtp_tls,
        login,
        password or "",
        config.ca_file,
        config.insecure,
        oauth,
    )


def plan_for(box: Mailbox, secrets: SecretBox | None, config: PollerConfig) -> MailboxPlan:
    """The snapshot of one mailbox row (call inside its session)."""
    password: str | None = None
    problem: str | None = None
    if box.secret is not None:
        try:
            if secrets is None:
                raise SecretError("no secret key to open the stored password")
            password = secrets.open(box.secret)
        except SecretError as exc:
            problem = str(exc)
    endpoint, missing = _endpoint(box, password, config)
    owner = box.owner
    return MailboxPlan(
        id=box.id,
        address=box.address,
        kind=box.kind,
        linked=box.linked,
        owner_ok=owner is not None and owner.crm_access,
        owner_active_at=owner.last_active_at if owner is not None else None,
        linked_at=box.linked_at,
        since=box.since,
        folders=tuple(box.folders or ()),
        interval_s=box.interval_s,
        endpoint=endpoint,
        smtp=_smtp(box, password, config),
        problem=problem or missing,
    )


def load_plans(db: Database, secrets: SecretBox | None, config: PollerConfig) -> list[MailboxPlan]:
    """Every mailbox, as snapshots."""
    with db.session() as s:
        boxes = s.scalars(select(Mailbox).order_by(Mailbox.id)).unique()
        return [plan_for(box, secrets, config) for box in boxes]


def load_plan(
    db: Database, address: str, secrets: SecretBox | None, config: PollerConfig
) -> MailboxPlan:
    """One mailbox by address (NotFound when there is none)."""
    from crm.face.admin import get_mailbox

    with db.session() as s:
        return plan_for(get_mailbox(s, address), secrets, config)
