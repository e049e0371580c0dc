"""Mailboxes: connection presets, linking on login, IMAP sync checkpoints, deletions, the
poller's leases and the hand-over of a mailbox import between nodes."""
