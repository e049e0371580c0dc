"""A mailbox as the IMAP poller needs it: a frozen snapshot of its row, owner and stored password
(opened), read in one short transaction. The poller (:mod:`proxy.imap.plan`) turns it into its
plan with the connection endpoints; no ORM object leaves this module."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select

from crm.errors import NotFound, SecretError
from crm.mail.addresses import normalize_address
from crm.store.db import Database
from crm.store.models import Mailbox
from crm.store.secrets import SecretBox


@dataclass(frozen=True)
class Server:
    """An upstream server as stored for the mailbox (port None: the TLS mode's default)."""

    host: str
    port: int | None
    tls: str


@dataclass(frozen=True)
class MailboxSnapshot:
    """One mailbox row, its owner's state and its password, detached from the database."""

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
    imap: Server | None  # None: the mailbox names no IMAP server (the poller's default applies)
    smtp: Server | None
    login: str
    password: str | None = field(repr=False)
    problem: str | None  # the stored password could not be opened
    oauth: bool = False  # signs in with OAuth2 (issue 15): no password, a token at login


def snapshot_of(box: Mailbox, secrets: SecretBox | None) -> MailboxSnapshot:
    """The snapshot of one mailbox row (inside its session)."""
    password: str | None = None
    problem: str | None = None
    if box.secret is not None:
        try:
            if secrets is None:
                raise SecretError("no secret key to open the stored password")
            password = secrets.open(box.secret)
        except SecretError as exc:
            problem = str(exc)
    owner = box.owner
    return MailboxSnapshot(
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
        imap=Server(box.imap_host, box.imap_port, box.imap_tls) if box.imap_host else None,
        smtp=Server(box.smtp_host, box.smtp_port, box.smtp_tls) if box.smtp_host else None,
        login=box.login or box.address,
        password=password,
        problem=problem,
        oauth=box.auth == "oauth2",
    )


def load_snapshots(db: Database, secrets: SecretBox | None) -> list[MailboxSnapshot]:
    """Every mailbox, in id order."""
    with db.session() as s:
        boxes = s.scalars(select(Mailbox).order_by(Mailbox.id)).unique()
        return [snapshot_of(box, secrets) for box in boxes]


def load_snapshot(db: Database, address: str, secrets: SecretBox | None) -> MailboxSnapshot:
    """One mailbox by address (NotFound when there is none)."""
    with db.session() as s:
        box = s.scalar(select(Mailbox).where(Mailbox.address == normalize_address(address)))
        if box is None:
            raise NotFound(f"no mailbox {address}")
        return snapshot_of(box, secrets)
