"""Who is logging in to the relay, and U3: an employee links their own mailbox by logging in.

:func:`lookup_login` tells the relay what it needs about a login name: the user behind it, the
mailbox it belongs to (found by its login name or address), that mailbox's own SMTP server and the
sender addresses the user may use. :func:`link_on_login` runs after the upstream server accepted
the password: the login is the owner's own credential, so a user with CRM access gets their
personal mailbox linked (created from the company's upstream servers when missing, password
stored encrypted); users without CRM access are refused (U2); company mailboxes are the admin's
business and stay as they are. Every login marks the user active (SPEC T1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from crm.config import Config
from crm.errors import SecretError
from crm.face import admin
from crm.mail.addresses import try_normalize
from crm.mailboxes.schedule import touch
from crm.store.models import Mailbox, MailboxOAuth, User
from crm.store.secrets import SecretBox
from crm.vocab import MailboxKind

log = logging.getLogger("crm.linking")  # its name before the move (issue 17)


@dataclass(frozen=True)
class LoginView:
    """What the relay knows about a login name."""

    login: str
    user_email: str | None = None
    crm_access: bool = False
    mailbox: str | None = None
    company: bool = False
    linked: bool = False
    smtp: tuple[str, int, str] | None = None
    senders: frozenset[str] = frozenset()
    #: an OAuth2 mailbox (issue 15): the client logs in with the mailbox's app password (its
    #: hash here), the relay upstream as ``upstream_login`` with the mailbox's token
    oauth: bool = False
    upstream_login: str | None = None
    app_password: str | None = field(default=None, repr=False)


def _mailbox_for(session: Session, login: str) -> Mailbox | None:
    wanted = login.strip().lower()
    address = try_normalize(login) or wanted
    rows = session.scalars(
        select(Mailbox).where(or_(func.lower(Mailbox.login) == wanted, Mailbox.address == address))
    ).unique()
    boxes = sorted(rows, key=lambda b: (b.login or "").lower() != wanted)
    return boxes[0] if boxes else None


def _user_for(session: Session, login: str) -> User | None:
    address = try_normalize(login)
    if address is None:
        return None
    return session.scalar(select(User).where(User.email == address))


def _senders(session: Session, user: User | None, box: Mailbox | None) -> frozenset[str]:
    found: set[str] = set()
    if box is not None:
        found.add(box.address)
    if user is not None:
        found.add(user.email)
        found.update(session.scalars(select(Mailbox.address).where(Mailbox.owner_id == user.id)))
    return frozenset(found)


def lookup_login(session: Session, login: str) -> LoginView:
    """The user, mailbox, own SMTP server and sender addresses behind ``login``."""
    box = _mailbox_for(session, login)
    user = (box.owner if box.kind == MailboxKind.PERSONAL else None) if box else None
    if box is None:
        user = _user_for(session, login)
    smtp = None
    if box is not None and box.smtp_host:
        smtp = (box.smtp_host, box.smtp_port or 587, box.smtp_tls)
    if box is None and user is not None:
        box = session.scalar(
            select(Mailbox).where(Mailbox.owner_id == user.id, Mailbox.address == user.email)
        )
    senders = _senders(session, user, box)
    if box is None and user is None and (address := try_normalize(login)):
        senders = frozenset({address})
    oauth = box is not None and box.auth == "oauth2"
    grant = session.get(MailboxOAuth, box.id) if oauth and box is not None else None
    return LoginView(
        login=login,
        user_email=user.email if user else None,
        crm_access=bool(user and user.crm_access),
        mailbox=box.address if box else None,
        company=bool(box and box.kind == MailboxKind.COMPANY),
        linked=bool(box and box.linked),
        smtp=smtp,
        senders=senders,
        oauth=oauth,
        upstream_login=(box.login or box.address) if oauth and box is not None else None,
        app_password=grant.app_password if grant is not None else None,
    )


def link_on_login(
    session: Session, secrets: SecretBox, config: Config, login: str, password: str
) -> LoginView:
    """U3 after a successful upstream login: mark the user active, link their own mailbox."""
    box = _mailbox_for(session, login)
    if box is not None and box.kind == MailboxKind.COMPANY:
        return lookup_login(session, login)
    user = box.owner if box is not None else _user_for(session, login)
    if user is None:
        return lookup_login(session, login)
    touch(user)
    if not user.crm_access:
        log.info("relay login of %s: no CRM access, mailbox not linked (U2)", user.email)
        return lookup_login(session, login)
    if box is None:
        box = session.scalar(select(Mailbox).where(Mailbox.address == user.email))
    if box is None:
        _create(session, secrets, config, user, login, password)
    elif box.owner_id == user.id:
        _refresh(session, secrets, box, login, password)
    session.flush()
    return lookup_login(session, login)


def _create(
    session: Session, secrets: SecretBox, config: Config, user: User, login: str, password: str
) -> None:
    relay, poller = config.relay, config.poller
    settings = admin.MailboxSettings(
        smtp_host=relay.upstream_host,
        smtp_port=relay.upstream_port,
        smtp_tls=relay.upstream_tls,
        imap_host=poller.upstream_host,
        imap_port=poller.upstream_port,
        imap_tls=poller.upstream_tls,
        login=None if try_normalize(login) == user.email else login,
        password=password,
        link=True,
    )
    admin.add_mailbox(session, secrets, user.email, user.email, settings)
    log.info("relay login of %s linked a new mailbox %s (U3)", user.email, user.email)


def _stored_password(secrets: SecretBox, box: Mailbox) -> str | None:
    if box.secret is None:
        return None
    try:
        return secrets.open(box.secret)
    except SecretError:
        return None


def _refresh(session: Session, secrets: SecretBox, box: Mailbox, login: str, password: str) -> None:
    settings = admin.MailboxSettings()
    if not box.linked:
        settings.link, settings.password = True, password
        log.info("relay login of %s linked mailbox %s (U3)", login, box.address)
    elif _stored_password(secrets, box) != password:
        settings.password = password
    if box.login is None and try_normalize(login) != box.address:
        settings.login = login
    admin.apply_settings(session, secrets, box, settings)
