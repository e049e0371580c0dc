"""The status page as server-rendered HTML: no JavaScript, every value HTML-escaped.

Rows carry ``class="green"`` or ``class="red"`` and ``data-`` attributes naming what they are
(``data-mailbox``, ``data-listener``, ``data-node``), for people and for tests alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

from .status import Check, Snapshot

REFRESH_SECONDS = 30
REASON_CUT = 80  # characters of a fault's reason shown in a cell (the whole in its title)
STYLE = """
body { font: 14px/1.4 "DejaVu Sans", system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.meta { color: #666; } table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; } td.err, .err { font-family: monospace; font-size: .9em; }
tr.green td.status { background: #d9f2dc; color: #14591e; font-weight: bold; }
tr.red td.status { background: #f9d6d5; color: #8a1410; font-weight: bold; }
tr.red td.reason { color: #8a1410; } .counts { font-size: 1.1em; } .none { color: #888; }
caption { text-align: left; font-weight: bold; padding: .8em 0 .3em; }
"""


def e(value: Any) -> str:
    """``value`` as escaped HTML text (None is empty)."""
    return "" if value is None else escape(str(value), quote=True)


def render(snap: Snapshot) -> str:
    """The whole page."""
    red = sum(1 for c in [*snap.listeners, *snap.nodes] if c.status == "red") + sum(
        1 for m in snap.mailboxes if m["status"] == "red"
    )
    summary = "all green" if red == 0 else f"{red} red"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>mailcrm status: {e(summary)}</title><style>{STYLE}</style></head><body>",
        "<h1>mailcrm gateway status</h1>",
        f'<p class="meta">node <b>{e(snap.node)}</b> &middot; {e(snap.generated_at)} '
        f"&middot; {e(summary)}</p>",
        _checks("Listeners", "listener", snap.listeners, with_address=True),
        _checks("Nodes", "node", snap.nodes, with_address=False),
        _mailboxes(snap.mailboxes),
        _recent(snap),
        "</body></html>",
    ]
    return "\n".join(parts)


def _checks(title: str, kind: str, checks: list[Check], with_address: bool) -> str:
    head = ["Name", "Status", "Reason"] + (["Address"] if with_address else [])
    rows = []
    for check in checks:
        cells = [e(check.name), e(check.status), e(check.reason)]
        cells += [e(check.address)] if with_address else []
        rows.append(
            f'<tr class="{_cls(check.status)}" data-{kind}="{e(check.name)}">'
            + _cells(cells, ["", "status", "reason", ""])
            + "</tr>"
        )
    return _section(title, head, rows, f"no {kind}s")


def _mailboxes(boxes: list[dict[str, Any]]) -> str:
    head = ["Mailbox", "Status", "Reason", "Kind", "Owner", "Last check", "Schedule", "Last error",
            "Skipped (faults)", "Node"]  # fmt: skip
    rows = []
    for box in boxes:
        cells = [
            e(box["address"]),
            e(box["status"]),
            e(box["status_reason"]),
            e(box["kind"]),
            e(box["owner"]),
            e(box["last_check"] or "never"),
            e(_schedule(box.get("schedule"))),
            e(box["last_error"]),
            _faults(box.get("faults")),
            e(box.get("node") or "-"),
        ]
        rows.append(
            f'<tr class="mailbox {_cls(box["status"])}" data-mailbox="{e(box["address"])}">'
            + _cells(cells, ["", "status", "reason", "", "", "", "schedule", "err", "faults", ""])
            + "</tr>"
        )
    return _section("Mailboxes", head, rows, "no mailboxes")


def _faults(faults: dict[str, Any] | None) -> str:
    """SPEC B6: how many messages the poller skipped on a fault, the last reason (cut, whole in
    its title) and when; escaped HTML."""
    if not faults or not faults["skipped"]:
        return "0"
    reason = str(faults["last_reason"] or "")
    shown = reason if len(reason) <= REASON_CUT else reason[: REASON_CUT - 1] + "\u2026"
    return (
        f'<b class="fault-count">{e(faults["skipped"])}</b>, last: '
        f'<span class="err fault-reason" title="{e(reason)}">{e(shown)}</span> '
        f'<span class="fault-at">at {e(faults["last_at"])}</span>'
    )


def _schedule(plan: dict[str, Any] | None) -> str:
    """T1/T2: ``active, next 2026-12-06T18:20:00+00:00`` (and the owner's last use)."""
    if not plan:
        return "-"
    text = str(plan["mode"]) + (f", next {plan['next_check']}" if plan["next_check"] else "")
    if plan["mode"] in ("active", "daily"):
        text += f"; owner last active {plan['owner_last_active'] or 'never'}"
    return text


def _recent(snap: Snapshot) -> str:
    counts = (
        f'<p class="counts">Last 24 hours: <b id="leads-today">{snap.leads_today}</b> new leads, '
        f'<b id="activities-today">{snap.activities_today}</b> activities.</p>'
    )
    leads = [
        "<tr>"
        + _cells([e(x["id"]), e(x["name"]), e(x["email"]), e(x["status"]), e(x["created_at"])])
        + "</tr>"
        for x in snap.recent_leads
    ]
    activities = [
        "<tr>"
        + _cells(
            [
                e(a["id"]),
                e(a["direction"]),
                e(a["subject"]),
                e(a["mailbox"]),
                e(", ".join(a["counterparts"])),
                e("yes" if a["completed"] else "no"),
                e(a["created_at"]),
            ]
        )
        + "</tr>"
        for a in snap.recent_activities
    ]
    return "\n".join(
        [
            "<h2>CRM, last 24 hours</h2>",
            counts,
            _table(["#", "Lead", "Address", "Status", "Created"], leads, "no new leads", "Leads"),
            _table(
                ["#", "Direction", "Subject", "Mailbox", "Counterparts", "Done", "Created"],
                activities,
                "no new activities",
                "Activities",
            ),
        ]
    )


def _section(title: str, head: list[str], rows: list[str], empty: str) -> str:
    return f"<h2>{e(title)}</h2>\n" + _table(head, rows, empty)


def _table(head: list[str], rows: list[str], empty: str, caption: str = "") -> str:
    if not rows:
        return f'<p class="none">{e(empty)}</p>'
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    header = "".join(f"<th>{e(h)}</th>" for h in head)
    return (
        f"<table>{cap}<thead><tr>{header}</tr></thead><tbody>\n"
        + "\n".join(rows)
        + ("\n</tbody></table>")
    )


def _cells(cells: Iterable[str], classes: Iterable[str] = ()) -> str:
    """``<td>`` elements of already escaped text, with optional classes."""
    out = []
    for cell, cls in zip(cells, [*classes, *([""] * 20)], strict=False):
        out.append(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>")
    return "".join(out)


def _cls(status: str) -> str:
    return "green" if status == "green" else "red"
