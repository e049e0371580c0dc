"""The IMAP side of the poller: connection, folders, sync, IDLE, schedule and check.

Role: everything the poller (:mod:`proxy.imap.poller`) needs to talk to a real IMAP server through
aioimaplib, kept apart from the CRM (which it reaches only through :mod:`crm.capture.path` and
:mod:`crm.mailboxes.sync`). Modules:

* :mod:`.utf7` -- modified UTF-7 folder names (RFC 3501 5.1.3);
* :mod:`.parse` -- parsing of the untagged responses aioimaplib hands back;
* :mod:`.client` -- a connection wrapper with timeouts, STARTTLS and loss detection;
* :mod:`.folders` -- which folders of a mailbox are processed (INBOX, SPECIAL-USE ``\\Sent``);
* :mod:`.sync` / :mod:`.importer` / :mod:`.flags` -- one folder's incremental sync;
* :mod:`.idle` -- IMAP IDLE with a watchdog;
* :mod:`.schedule` / :mod:`.backoff` -- when to check (T1-T3, M4) and how to retry;
* :mod:`.worker` -- the loop of one mailbox; :mod:`.check` -- ``mailbox check`` (M6).
"""
