"""The face of the CRM: what front ends (``proxy/``, ``cli.py``, later DAV and a web UI) call.

One module per front-end need: :mod:`.relay` (the SMTP relay), :mod:`.poller` (the IMAP poller),
:mod:`.status` (the status page and metrics), :mod:`.admin` and :mod:`.views` (administration and
the JSON listings), :mod:`.capture` (the ``capture`` command). Where the real code lives in a
sub-package of :mod:`crm`, the face re-exports it, so the front ends depend on this door only
(tests/test_architecture.py holds them to it).
:class:`Database` is the handle every component is given, :class:`SecretBox` (made by
:func:`load_key`'s key) opens and seals the stored passwords.
"""

from sqlalchemy.exc import SQLAlchemyError

from crm.store.db import Database as Database
from crm.store.db import url_has_password as url_has_password
from crm.store.secrets import SecretBox as SecretBox
from crm.store.secrets import load_key as load_key

# What a database failure raises: the front ends catch it without importing SQLAlchemy.
StoreError = SQLAlchemyError
