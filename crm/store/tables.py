"""The model tables as SQL Core ``Table`` objects, for the capture path's hot statements."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table

from .models import (
    Activity,
    ActivityBinding,
    Company,
    Contact,
    EntityEmail,
    Exclusion,
    Lead,
    Mailbox,
    MessageLocation,
    QueueMember,
    User,
)


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


ACTIVITIES = _table(Activity)
BINDINGS = _table(ActivityBinding)
COMPANIES = _table(Company)
CONTACTS = _table(Contact)
EMAILS = _table(EntityEmail)
EXCLUSIONS = _table(Exclusion)
LEADS = _table(Lead)
LOCATIONS = _table(MessageLocation)
MAILBOXES = _table(Mailbox)
QUEUE = _table(QueueMember)
USERS = _table(User)
