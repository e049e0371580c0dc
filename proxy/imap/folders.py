"""Which folders of a mailbox are processed (SPEC M3), and which way their mail goes.

Default: INBOX (incoming) and the Sent folder (outgoing), found by its SPECIAL-USE ``\\Sent``
attribute (RFC 6154), else by a common name. A configured list names folders (readable names;
``\\Sent`` stands for the Sent folder however it is called). Only small LIST commands are sent
(the special-use ones, then one name at a time), so a server with thousands of folders never
returns a response long enough to trip aioimaplib (its issue #118).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from crm.vocab import Direction

from .client import ImapClient
from .plan import FolderPlan

SENT = "\\Sent"
SENT_NAMES = (
    "Sent",
    "Sent Items",
    "Sent Messages",
    "Sent Mail",
    "[Gmail]/Sent Mail",
    "INBOX.Sent",
    "INBOX/Sent",
    "Gesendet",
    "Gesendete Objekte",
    "Gesendete Elemente",
    "Enviados",
    "Elementos enviados",
    "Envoyés",
    "Éléments envoyés",
    "Posta inviata",
    "Verzonden items",
    "Skickat",
    "Отправленные",
)


def not_on_server(missing: Sequence[str]) -> str | None:
    """``folder Archive not on the server`` (several joined by ``; ``), None when none."""
    return "; ".join(f"folder {name} not on the server" for name in missing) or None


@dataclass
class Discovery:
    """The folders to process, and configured ones the server does not have."""

    folders: list[FolderPlan] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        """The status reason when configured folders are missing (M5)."""
        return not_on_server(self.missing)

    def add(self, name: str, direction: Direction) -> None:
        """Add a folder once (the first direction wins)."""
        if all(f.name.casefold() != name.casefold() for f in self.folders):
            self.folders.append(FolderPlan(name, direction))


async def sent_folder(client: ImapClient) -> str | None:
    """The Sent folder: SPECIAL-USE first, then the usual names."""
    if client.has("SPECIAL-USE"):
        for entry in await client.list_folders("*", special_use=True):
            if "\\sent" in entry.attributes and entry.selectable:
                return entry.name
    for name in SENT_NAMES:
        for entry in await client.list_folders(name):
            if entry.selectable and entry.name.casefold() == name.casefold():
                return entry.name
    return None


async def _exists(client: ImapClient, name: str) -> str | None:
    if name.upper() == "INBOX":
        return "INBOX"
    for entry in await client.list_folders(name):
        if entry.selectable and entry.name == name:
            return entry.name
    return None


async def discover(client: ImapClient, configured: Sequence[str]) -> Discovery:
    """Resolve the configured folder list (default: INBOX and ``\\Sent``) on the server."""
    wanted = list(configured) or ["INBOX", SENT]
    found = Discovery()
    sent = await sent_folder(client)
    for name in wanted:
        if name.casefold() == SENT.casefold():
            if sent is not None:
                found.add(sent, Direction.OUTGOING)
            elif configured:
                found.missing.append(SENT)
            continue
        real = await _exists(client, name)
        if real is None:
            found.missing.append(name)
        else:
            is_sent = sent is not None and real == sent
            found.add(real, Direction.OUTGOING if is_sent else Direction.INCOMING)
    return found
