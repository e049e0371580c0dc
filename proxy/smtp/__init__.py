"""The SMTP relay (aiosmtpd): relays a client's mail to its real SMTP server and spools a copy
for the CRM (:mod:`.relay` assembles it)."""
