"""The CRM data model (SQLAlchemy 2 typed ORM), the same for SQLite and PostgreSQL.

Addresses are stored normalised (see :mod:`crm.mail.addresses`) in one indexed table,
``entity_emails``, so that matching a correspondent to a lead, contact or company is a single index
lookup. Schema changes go through Alembic (``crm/store/migrations``), never ``create_all`` in
production code.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from crm.vocab import DEFAULT_WINDOW

# The kinds live in the plain vocabulary (the rules use them without the ORM); still importable
# from here.
from crm.vocab import Direction as Direction
from crm.vocab import EntityType as EntityType
from crm.vocab import MailboxKind as MailboxKind
from crm.vocab import utcnow as utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every engine (SQLite keeps no zone: it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base with a stable constraint naming convention (for Alembic)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime()}


class User(Base):
    """An employee (U1). Their login address is never captured (C5)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    crm_access: Mapped[bool] = mapped_column(Boolean, default=True)
    #: V1: "own" (their own leads, mail and what it touches) or "all" (the whole CRM).
    sees: Mapped[str] = mapped_column(String(8), default="own", server_default="own")
    last_active_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Mailbox(Base):
    """A linked (or linkable) mailbox with its connection and capture settings (M1-M5)."""

    __tablename__ = "mailboxes"
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    owner: Mapped[User | None] = relationship(lazy="joined")
    linked: Mapped[bool] = mapped_column(Boolean, default=True)
    linked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    preset: Mapped[str | None] = mapped_column(String(40), default=None)
    imap_host: Mapped[str | None] = mapped_column(String(255), default=None)
    imap_port: Mapped[int | None] = mapped_column(Integer, default=None)
    imap_tls: Mapped[str] = mapped_column(String(10), default="ssl")
    smtp_host: Mapped[str | None] = mapped_column(String(255), default=None)
    smtp_port: Mapped[int | None] = mapped_column(Integer, default=None)
    smtp_tls: Mapped[str] = mapped_column(String(10), default="starttls")
    login: Mapped[str | None] = mapped_column(String(320), default=None)
    secret: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    since: Mapped[str] = mapped_column(String(8), default=DEFAULT_WINDOW)
    create_leads: Mapped[bool] = mapped_column(Boolean, default=True)
    vcard_contacts: Mapped[bool] = mapped_column(Boolean, default=True)
    folders: Mapped[list[str]] = mapped_column(JSON, default=list)
    interval_s: Mapped[int | None] = mapped_column(Integer, default=None)
    queue_cursor: Mapped[int] = mapped_column(Integer, default=0)
    last_check_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_ok_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    #: ``password`` or ``oauth2`` (issue 15); an oauth2 mailbox's tokens are in ``mailbox_oauth``
    auth: Mapped[str] = mapped_column(String(10), default="password", server_default="password")
    oauth_provider: Mapped[str | None] = mapped_column(String(40), default=None)
    #: messages the poller skipped on a fault (not the rules' skips), the last reason and when
    skipped_faults: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_fault: Mapped[str | None] = mapped_column(Text, default=None)
    last_fault_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    queue: Mapped[list[QueueMember]] = relationship(
        order_by="QueueMember.position", cascade="all, delete-orphan", lazy="selectin"
    )


class QueueMember(Base):
    """One place in a company mailbox's distribution queue (M4)."""

    __tablename__ = "queue_members"
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    user: Mapped[User] = relationship(lazy="joined")


class Company(Base):
    """A company, from a business domain (B5) or a vCard's ORG."""

    __tablename__ = "companies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    domain: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Lead(Base):
    """A prospect made from an unknown correspondent (C1, C2)."""

    __tablename__ = "leads"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(40), default="new")
    company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL"), index=True, default=None
    )
    responsible_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True, default=None
    )
    mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="SET NULL"), default=None
    )
    phones: Mapped[list[str]] = mapped_column(JSON, default=list)
    changed_by_person: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(index=True, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Contact(Base):
    """A person known to the CRM, e.g. from a vCard (C7)."""

    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    phones: Mapped[list[str]] = mapped_column(JSON, default=list)
    title: Mapped[str | None] = mapped_column(String(200), default=None)
    company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL"), index=True, default=None
    )
    #: V1: the person who made it (a conversion, a web or DAV write): they keep seeing it.
    created_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True, default=None
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class EntityEmail(Base):
    """Which CRM entity an address belongs to: the one table every address lookup hits."""

    __tablename__ = "entity_emails"
    __table_args__ = (UniqueConstraint("address", "entity_type", "entity_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320), index=True)
    entity_type: Mapped[str] = mapped_column(String(10))
    entity_id: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)


class Activity(Base):
    """One captured message (C1-C3, C9): an e-mail activity bound to CRM entities."""

    __tablename__ = "activities"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_key: Mapped[str] = mapped_column(String(200), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True, default=None)
    alt_message_id: Mapped[str | None] = mapped_column(String(998), index=True, default=None)
    thread: Mapped[str] = mapped_column(String(998), index=True)
    direction: Mapped[str] = mapped_column(String(10))
    subject: Mapped[str] = mapped_column(Text, default="")
    sender: Mapped[str | None] = mapped_column(String(320), default=None)
    counterparts: Mapped[list[str]] = mapped_column(JSON, default=list)
    mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="SET NULL"), index=True, default=None
    )
    folder: Mapped[str | None] = mapped_column(String(255), default=None)
    sent_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_at: Mapped[dt.datetime | None] = mapped_column(default=None)  # set by _stamp
    status_changes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    answered: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    bindings: Mapped[list[ActivityBinding]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="ActivityBinding.entity_type"
    )


@event.listens_for(Activity.completed, "set", active_history=True)
def _stamp(target: Activity, value: Any, old: Any, _initiator: Any) -> None:
    """When an activity was completed (a VTODO's COMPLETED) and how often it was completed or
    reopened (its SEQUENCE), whoever does it."""
    if isinstance(old, bool) and old == bool(value):
        return
    target.completed_at = utcnow() if value else None
    if isinstance(old, bool):
        target.status_changes = (target.status_changes or 0) + 1


#: the web's /activities order (open first, newest first) read straight off an index
Index("ix_activities_open_first", Activity.completed, Activity.id.desc())


class ActivityBinding(Base):
    """An activity is bound to at least one entity (C8)."""

    __tablename__ = "activity_bindings"
    activity_id: Mapped[int] = mapped_column(
        ForeignKey("activities.id", ondelete="CASCADE"), primary_key=True
    )
    entity_type: Mapped[str] = mapped_column(String(10), primary_key=True)
    entity_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    __table_args__ = (Index("ix_activity_bindings_entity", "entity_type", "entity_id"),)


class Exclusion(Base):
    """An exclusion entry (C6): global when ``mailbox_id`` is NULL, else per mailbox."""

    __tablename__ = "exclusions"
    id: Mapped[int] = mapped_column(primary_key=True)
    entry: Mapped[str] = mapped_column(String(320))
    mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), default=None
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("entry", "mailbox_id"),)


class MessageLocation(Base):
    """Where a captured message lives on an IMAP server (for C10 read state and C11 deletions)."""

    __tablename__ = "message_locations"
    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    folder: Mapped[str] = mapped_column(String(255))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    message_key: Mapped[str] = mapped_column(String(200), index=True)
    activity_id: Mapped[int | None] = mapped_column(
        ForeignKey("activities.id", ondelete="SET NULL"), index=True, default=None
    )
    seen: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (UniqueConstraint("mailbox_id", "folder", "uidvalidity", "uid"),)


class FolderState(Base):
    """The incremental-sync checkpoint of one IMAP folder of one mailbox."""

    __tablename__ = "folder_states"
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    folder: Mapped[str] = mapped_column(String(255), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, default=0)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    highest_modseq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SpoolEntry(Base):
    """A message waiting for capture, durable before the relay answers 250 (B1)."""

    __tablename__ = "spool"
    id: Mapped[int] = mapped_column(primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    mailbox_address: Mapped[str] = mapped_column(String(320))
    direction: Mapped[str] = mapped_column(String(10))
    envelope_from: Mapped[str | None] = mapped_column(String(320), default=None)
    envelope_to: Mapped[list[str]] = mapped_column(JSON, default=list)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(12), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Node(Base):
    """A gateway node (B7): alive while it keeps ``last_seen`` fresh."""

    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """Which node syncs a mailbox, until when (B7): one row per mailbox."""

    __tablename__ = "leases"
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    node: Mapped[str | None] = mapped_column(String(200), default=None)
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    #: A foreground import asking the holder to hand the mailbox over, until the request lapses.
    requested_by: Mapped[str | None] = mapped_column(String(200), default=None)
    requested_until: Mapped[dt.datetime | None] = mapped_column(default=None)


class DavChange(Base):
    """One change of a lead, contact, company or activity: its id is a DAV sync token; when the
    database wrote it (every insert, bulk ones too) is what the retention prunes by."""

    __tablename__ = "dav_changes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    entity_type: Mapped[str] = mapped_column(String(10))
    entity_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
    __table_args__ = (Index("ix_dav_changes_kind", "entity_type", "id"), Index(None, "created_at"))


class OAuthProvider(Base):
    """An OAuth2 provider the admin registered (issue 15): endpoints, client id, sealed secret."""

    __tablename__ = "oauth_providers"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    authorize_url: Mapped[str] = mapped_column(String(2000))
    token_url: Mapped[str] = mapped_column(String(2000))
    device_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    client_id: Mapped[str] = mapped_column(String(500))
    secret: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MailboxOAuth(Base):
    """An oauth2 mailbox's grant: sealed refresh and access tokens, when the access token was
    issued and expires, why the provider last refused, and the relay's app password hash.
    The row is what a refresh locks (``SELECT ... FOR UPDATE`` on PostgreSQL)."""

    __tablename__ = "mailbox_oauth"
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    refresh: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    access: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    issued_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    refreshes: Mapped[int] = mapped_column(Integer, default=0)
    refused: Mapped[str | None] = mapped_column(Text, default=None)
    app_password: Mapped[str | None] = mapped_column(String(300), default=None)


class WebSession(Base):
    """A web CRM sign-in (B7: any node serves it): the SHA-256 of the cookie's token (never the
    token), the user, the CSRF token, when it started and was last used (to a minute)."""

    __tablename__ = "web_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
