"""``mailcrm capture``: raw RFC 5322 messages (files, Maildirs, mbox, stdin) through the capture
path, and what it did with each."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from crm.face import admin
from crm.face.capture import Batch, Capturer, CaptureResult, capture_batch, read_sources, summary
from crm.vocab import Direction

from .common import STATE, JsonOpt, choice, fail, out, print_json


def capture(
    mailbox: Annotated[
        str, typer.Option(metavar="ADDRESS", help="The mailbox the mail belongs to.")
    ],
    direction: Annotated[
        str, typer.Option(metavar="in|out", callback=choice("in", "out"), help="in or out.")
    ],
    paths: Annotated[
        list[str] | None,
        typer.Argument(metavar="[PATH]...", help="Files, Maildirs, mbox files or -."),
    ] = None,
    folder: Annotated[
        str | None, typer.Option(metavar="NAME", help="Folder name to record.")
    ] = None,
    seen: Annotated[bool, typer.Option("--seen", help="The mail was read.")] = False,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="3d|all",
            callback=choice("3d", "all"),
            help="all: capture old mail too, whatever the mailbox's import window.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run raw RFC 5322 messages through the capture path and print what it did."""
    if direction not in ("in", "out"):
        fail("--direction must be in or out", 2)
    if since not in (None, "3d", "all"):
        fail(f"--since must be 3d or all, not {since!r}", 2)
    way = Direction.INCOMING if direction == "in" else Direction.OUTGOING
    with STATE.db.session() as s:
        address = admin.get_mailbox(s, mailbox).address
    batch = Batch(address, way, seen, window=since != "all")
    sources = read_sources(paths or ["-"], sys.stdin.buffer)
    results = capture_batch(Capturer(STATE.db, STATE.config.capture), batch, sources)
    if as_json:
        print_json([r.as_json() for r in results])
        return
    for r in results:
        out.print(_describe(r), markup=False)
    out.print(summary(results, address), markup=False)


def _describe(r: CaptureResult) -> str:
    if r.action != "captured":
        return f"{r.source}: {r.action}" + (f" ({r.reason})" if r.reason else "")
    made = ", ".join(f"{len(v)} {k}" for k, v in r.created.as_json().items() if v)
    return f"{r.source}: captured as activity {r.activities[0]}" + (f"; new {made}" if made else "")
