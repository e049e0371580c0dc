"""Protocol front ends: the SMTP relay and the IMAP poller. They speak protocols only and hand
raw messages to the capture path in :mod:`crm`."""
