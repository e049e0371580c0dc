"""What the SMTP relay (:mod:`proxy.smtp`) needs of the CRM: the login lookup and linking on a
login, the address forms, and the capture spool its copies go to (table, journal, wake-up)."""

from crm import metrics as metrics
from crm.mail.addresses import domain_of as domain_of
from crm.mail.addresses import try_normalize as try_normalize
from crm.mailboxes.linking import LoginView as LoginView
from crm.mailboxes.linking import link_on_login as link_on_login
from crm.mailboxes.linking import lookup_login as lookup_login
from crm.spool.journal import Journal as Journal
from crm.spool.queue import Envelope as Envelope
from crm.spool.queue import Wakeup as Wakeup
from crm.spool.queue import enqueue_many as enqueue_many
from crm.spool.queue import files_first as files_first
from crm.spool.queue import spool_dir as spool_dir
from crm.store.secrets import SecretBox as SecretBox
from crm.store.secrets import load_key as load_key
