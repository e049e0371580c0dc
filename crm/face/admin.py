"""What an IT admin or a user does to the CRM: users, mailboxes, exclusions, edits (U1-U3, M1-M4).

Every function takes an open session and raises :mod:`crm.errors` exceptions with a message fit
for the user; the CLI only parses arguments and prints.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from crm.mail.addresses import normalize_address, parse_exclusion
from crm.mailboxes.presets import PRESETS
from crm.mailboxes.providers import set_auth
from crm.mailboxes.schedule import touch
from crm.mailboxes.sync import passed_over, widen
from crm.store.models import (
    Activity,
    Exclusion,
    Lead,
    Mailbox,
    MailboxKind,
    QueueMember,
    User,
    utcnow,
)
from crm.store.secrets import SecretBox
from crm.vocab import DEFAULT_WINDOW, INTERVALS, TLS_MODES, WINDOWS, EntityType

from .visibility import SEES, Viewer, require_activity, require_change


def get_user(session: Session, email: str) -> User:
    """The user with this login address."""
    user = session.scalar(select(User).where(User.email == normalize_address(email)))
    if user is None:
        raise NotFound(f"no user {email}")
    return user


def _sees(value: str) -> str:
    if value not in SEES:
        raise InvalidInput(f"--sees must be own or all, not {value!r}")
    return value


def add_user(
    session: Session,
    email: str,
    name: str = "",
    admin: bool = False,
    crm_access: bool = True,
    sees: str | None = None,
) -> User:
    """U1: an employee with a login address; with or without CRM access; V1: seeing their own
    records or all (None: all for an admin, own otherwise)."""
    address = normalize_address(email)
    seeing = _sees(sees) if sees is not None else ("all" if admin else "own")
    if session.scalar(select(User.id).where(User.email == address)) is not None:
        raise AlreadyExists(f"user {address} exists already")
    user = User(email=address, name=name, admin=admin, crm_access=crm_access, sees=seeing)
    session.add(user)
    session.flush()
    return user


def remove_user(session: Session, email: str, force: bool = False) -> list[str]:
    """Delete a user. One who owns mailboxes is refused (naming them) unless ``force``: then
    those mailboxes lose their owner and are unlinked; their addresses are returned."""
    user = get_user(session, email)
    boxes = list(session.scalars(select(Mailbox).where(Mailbox.owner_id == user.id)))
    if boxes and not force:
        names = ", ".join(b.address for b in boxes)
        raise PermissionDenied(
            f"{user.email} owns mailbox {names}: remove it first, or --force to keep it unlinked"
        )
    for box in boxes:
        box.linked = False
    session.delete(user)
    return [b.address for b in boxes]


def set_user(
    session: Session,
    email: str,
    name: str | None,
    admin: bool | None,
    crm_access: bool | None,
    sees: str | None = None,
) -> User:
    """Change an employee's name, admin right, CRM access or visibility (None: leave as it
    is)."""
    user = get_user(session, email)
    if sees is not None:
        user.sees = _sees(sees)
    if name is not None:
        user.name = name
    if admin is not None:
        user.admin = admin
    if crm_access is not None:
        user.crm_access = crm_access
    return user


def touch_mailbox_owner(session: Session, address: str) -> None:
    """T1: a run for a personal mailbox (``mailbox import``) is its owner using mailcrm."""
    owner = get_mailbox(session, address).owner
    if owner is not None:
        touch(owner)


def remove_mailbox(session: Session, address: str) -> None:
    """M1: remove a mailbox; its activities stay in the CRM."""
    session.delete(get_mailbox(session, address))


def get_mailbox(session: Session, address: str) -> Mailbox:
    """The mailbox with this address."""
    box = session.scalar(select(Mailbox).where(Mailbox.address == normalize_address(address)))
    if box is None:
        raise NotFound(f"no mailbox {address}")
    return box


@dataclass
class MailboxSettings:
    """Options of ``mailbox add`` / ``mailbox set``; None means "leave as it is"."""

    preset: str | None = None
    imap_host: str | None = None
    imap_port: int | None = None
    imap_tls: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_tls: str | None = None
    login: str | None = None
    password: str | None = None
    link: bool | None = None
    since: str | None = None
    create_leads: bool | None = None
    vcard_contacts: bool | None = None
    folders: list[str] | None = None
    interval: str | None = None
    queue: list[str] | None = None
    auth: str | None = None  # password | oauth2 (issue 15)
    oauth_provider: str | None = None
    allow_plaintext_smtp: bool = False  # ``relay.allow_plaintext_upstream`` of the config


def add_mailbox(
    session: Session,
    secrets: SecretBox,
    address: str,
    owner: str | None,
    settings: MailboxSettings,
) -> Mailbox:
    """M1: a personal mailbox (with its owner) or a company mailbox (``owner`` None)."""
    normalized = normalize_address(address)
    if session.scalar(select(Mailbox.id).where(Mailbox.address == normalized)) is not None:
        raise AlreadyExists(f"mailbox {normalized} exists already")
    kind = MailboxKind.PERSONAL if owner else MailboxKind.COMPANY
    box = Mailbox(
        address=normalized,
        kind=kind.value,
        linked=False,
        folders=[],
        imap_tls="ssl",
        smtp_tls="starttls",
        since=DEFAULT_WINDOW,
        create_leads=True,
        vcard_contacts=True,
        queue_cursor=0,
    )
    if owner:
        user = get_user(session, owner)
        box.owner = user
        box.owner_id = user.id
    if settings.link is None:
        settings.link = kind is MailboxKind.COMPANY or settings.password is not None
    session.add(box)
    apply_settings(session, secrets, box, settings)
    session.flush()
    return box


def apply_settings(
    session: Session, secrets: SecretBox, box: Mailbox, settings: MailboxSettings
) -> list[str]:
    """M2-M4: connection, credentials and capture settings, validated; returns what the admin
    is to be told of their effect (a wider window on a mailbox already polled)."""
    notes: list[str] = []
    _apply_connection(box, settings)
    if settings.auth is not None or settings.oauth_provider is not None:
        set_auth(box, settings.auth, settings.oauth_provider)
    if settings.login is not None:
        box.login = settings.login
    if settings.password is not None:
        box.secret = secrets.seal(settings.password)
        if box.owner is not None:
            touch(box.owner)  # T1: the owner's own password, given just now
    if settings.since is not None:
        if settings.since not in WINDOWS:
            raise InvalidInput(f"--since must be {' or '.join(WINDOWS)}, not {settings.since!r}")
        notes += _window_note(session, box, settings.since)
    for name in ("create_leads", "vcard_contacts"):
        value = getattr(settings, name)
        if value is not None:
            setattr(box, name, value)
    if settings.folders is not None:
        box.folders = [f.strip() for f in settings.folders if f.strip()]
    _apply_company_extras(session, box, settings)
    if settings.link is not None:
        _set_link(box, settings.link, settings.password is not None)
    return notes


def _window_note(session: Session, box: Mailbox, since: str) -> list[str]:
    """C12/M3: a wider window forgets the skipped mail; the poller takes only new mail, so older
    mail it has passed over comes with ``mailbox import``."""
    if not widen(session, box, since) or not box.linked or not passed_over(session, box.id):
        return []
    return [
        f"import window now {since}: the poller takes only new mail; the older mail it passed "
        f"over is imported by `mailcrm mailbox import {box.address}`"
    ]


def _apply_connection(box: Mailbox, s: MailboxSettings) -> None:
    if s.preset is not None:
        preset = PRESETS.get(s.preset.lower())
        if preset is None:
            raise InvalidInput(f"unknown preset {s.preset!r}: see `mailcrm mailbox presets`")
        box.preset = preset.name
        box.imap_host, box.imap_port, box.imap_tls = (
            preset.imap_host,
            preset.imap_port,
            preset.imap_tls,
        )
        box.smtp_host, box.smtp_port, box.smtp_tls = (
            preset.smtp_host,
            preset.smtp_port,
            preset.smtp_tls,
        )
    for name in ("imap_tls", "smtp_tls"):
        value = getattr(s, name)
        if value is not None and value not in TLS_MODES:
            raise InvalidInput(f"--{name.replace('_', '-')} must be one of ssl, starttls, none")
    for name in ("imap_host", "imap_port", "imap_tls", "smtp_host", "smtp_port", "smtp_tls"):
        value = getattr(s, name)
        if value is not None:
            setattr(box, name, value)
            box.preset = None if s.preset is None else box.preset
    if box.imap_port is None and box.imap_host:
        box.imap_port = 993 if box.imap_tls == "ssl" else 143
    if box.smtp_port is None and box.smtp_host:
        box.smtp_port = 465 if box.smtp_tls == "ssl" else 587
    touched = s.preset is not None or s.smtp_host is not None or s.smtp_tls is not None
    if (
        touched
        and box.smtp_host
        and box.smtp_tls == "none"
        and not s.allow_plaintext_smtp
        and (not _loopback(box.smtp_host))
    ):
        raise InvalidInput(
            f"--smtp-tls none: the relay would send this mailbox's password to {box.smtp_host} "
            "in clear; use ssl or starttls (or set relay.allow_plaintext_upstream = true)"
        )


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _apply_company_extras(session: Session, box: Mailbox, s: MailboxSettings) -> None:
    if (s.interval is not None or s.queue is not None) and box.kind != MailboxKind.COMPANY:
        raise InvalidInput("--interval and --queue are for company mailboxes only")
    if s.interval is not None:
        if s.interval not in INTERVALS:
            raise InvalidInput(f"--interval must be one of {', '.join(INTERVALS)}")
        box.interval_s = INTERVALS[s.interval]
    if s.queue is not None:
        users = [get_user(session, e) for e in s.queue if e.strip()]
        box.queue.clear()
        session.flush()
        box.queue.extend(QueueMember(position=i, user=u, user_id=u.id) for i, u in enumerate(users))
        box.queue_cursor = 0


def _set_link(box: Mailbox, link: bool, with_password: bool) -> None:
    if link and box.kind == MailboxKind.PERSONAL:
        if box.owner is None or not box.owner.crm_access:
            who = box.owner.email if box.owner else "nobody"
            raise PermissionDenied(
                f"{who} has no CRM access: only users with CRM access can link a mailbox"
            )
        if not with_password and not box.linked:
            raise PermissionDenied(
                "linking a personal mailbox takes its owner's own password: give it with "
                "--password-stdin, or let the owner log in through the relay"
            )
    if link and not box.linked:
        box.linked_at = utcnow()
    box.linked = link


def add_exclusion(session: Session, entry: str, mailbox: str | None = None) -> Exclusion:
    """C6: an address or domain whose mail creates nothing (global or for one mailbox)."""
    canonical = parse_exclusion(entry)
    box_id = get_mailbox(session, mailbox).id if mailbox else None
    found = session.scalar(
        select(Exclusion).where(
            Exclusion.entry == canonical,
            Exclusion.mailbox_id.is_(box_id) if box_id is None else Exclusion.mailbox_id == box_id,
        )
    )
    if found is not None:
        raise AlreadyExists(f"{canonical} is excluded already")
    exclusion = Exclusion(entry=canonical, mailbox_id=box_id)
    session.add(exclusion)
    session.flush()
    return exclusion


def remove_exclusion(session: Session, entry: str, mailbox: str | None = None) -> None:
    """Remove one exclusion entry."""
    canonical = parse_exclusion(entry)
    box_id = get_mailbox(session, mailbox).id if mailbox else None
    condition = Exclusion.mailbox_id.is_(None) if box_id is None else Exclusion.mailbox_id == box_id
    found = session.scalar(select(Exclusion).where(Exclusion.entry == canonical, condition))
    if found is None:
        raise NotFound(f"{canonical} is not in the exclusion list")
    session.delete(found)


def set_completed(
    session: Session, activity_id: int, completed: bool, *, viewer: Viewer | None = None
) -> Activity:
    """C10: complete or reopen an activity (the poller mirrors it as \\Seen upstream); an ``own``
    viewer, one they see (V1)."""
    require_activity(session, viewer, activity_id)
    activity = session.get(Activity, activity_id)
    if activity is None:
        raise NotFound(f"no activity {activity_id}")
    activity.completed = completed
    return activity


def update_lead(
    session: Session, lead_id: int, *, viewer: Viewer | None = None, **changes: Any
) -> Lead:
    """A person edits a lead: from now on it is "changed" for C11; ``viewer`` must be allowed
    to change it (V1)."""
    require_change(session, viewer, EntityType.LEAD, lead_id)
    lead = session.get(Lead, lead_id)
    if lead is None:
        raise NotFound(f"no lead {lead_id}")
    for name, value in changes.items():
        if value is not None:
            setattr(lead, name, value)
    lead.changed_by_person = True
    lead.updated_at = utcnow()
    return lead
