"""What the IMAP poller (:mod:`proxy.imap`) needs of the CRM: the mailboxes as snapshots
(:mod:`crm.mailboxes.snapshot`), the capture path, message parsing, the sync checkpoints and
deletions and the faults counted per mailbox (:mod:`crm.mailboxes.sync`,
:mod:`crm.mailboxes.deletions`, :mod:`crm.mailboxes.faults`, used as modules), the
leases and a foreground import's hand-over, and the stored passwords."""

from crm.capture.path import Capturer as Capturer
from crm.capture.path import Incoming as Incoming
from crm.capture.path import Location as Location
from crm.mail.message import parse_message as parse_message
from crm.mailboxes import deletions as deletions
from crm.mailboxes import faults as faults
from crm.mailboxes import schedule as schedule
from crm.mailboxes import sync as sync
from crm.mailboxes.handover import ForegroundLease as ForegroundLease
from crm.mailboxes.handover import import_node as import_node
from crm.mailboxes.handover import is_import_node as is_import_node
from crm.mailboxes.leases import LeaseKeeper as LeaseKeeper
from crm.mailboxes.snapshot import MailboxSnapshot as MailboxSnapshot
from crm.mailboxes.snapshot import Server as Server
from crm.mailboxes.snapshot import load_snapshot as load_snapshot
from crm.mailboxes.snapshot import load_snapshots as load_snapshots
from crm.mailboxes.snapshot import snapshot_of as snapshot_of
from crm.store.secrets import SecretBox as SecretBox
from crm.store.secrets import load_key as load_key
