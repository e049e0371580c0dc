"""The capture spool: relayed mail made durable (table, file spool and journal) until the
spool worker has captured it."""
