"""``mailcrm exclude``: the exclusion list (SPEC C6), global and per mailbox."""

from __future__ import annotations

from typing import Annotated

import typer

from crm.face import admin, views

from .common import STATE, JsonOpt, MailboxOpt, group, out, print_json, table

app = group("Exclusion list (C6).")
Entry = Annotated[str, typer.Argument(metavar="ENTRY")]


@app.command("add")
def exclude_add(entry: Entry, mailbox: MailboxOpt = None) -> None:
    """Exclude an address (a@x.com) or a domain (@x.com or x.com)."""
    with STATE.db.session() as s:
        excl = admin.add_exclusion(s, entry, mailbox)
        out.print(f"excluded {excl.entry}" + (f" for {mailbox}" if mailbox else ""))


@app.command("list")
def exclude_list(as_json: JsonOpt = False) -> None:
    """List exclusions (global and per mailbox)."""
    with STATE.db.session() as s:
        rows = views.exclusions_json(s)
    print_json(rows) if as_json else table(rows, ["entry", "mailbox"], "no exclusions")


@app.command("remove")
def exclude_remove(entry: Entry, mailbox: MailboxOpt = None) -> None:
    """Remove an exclusion."""
    with STATE.db.session() as s:
        admin.remove_exclusion(s, entry, mailbox)
    out.print(f"exclusion {entry} removed")
