"""Capture results a new admin checked: the company's own domain never becomes a CRM company,
and importing the same archive twice gives the same decisions.

Role: CLI-driven tests (``mailcrm capture``) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import mailbox
from pathlib import Path

from tests.conftest import Cli
from tests.pollerkit import message

SALES = "sales@ownco-gmbh.example"


def crm(cli: Cli) -> None:
    cli.ok("user", "add", "bob@ownco-gmbh.example", "--name", "Bob")
    cli.ok("mailbox", "add", SALES, "--company", "--since", "all")


def capture(cli: Cli, *paths: Path) -> list[dict[str, object]]:
    found: list[dict[str, object]] = cli.json(
        "capture", "--mailbox", SALES, "--direction", "in", *map(str, paths)
    )
    return found


def test_mail_from_a_colleague_without_a_login_makes_a_lead_but_no_company(
    cli: Cli, tmp_path: Path
) -> None:
    crm(cli)
    (tmp_path / "carol.eml").write_bytes(
        message("Carol <carol@mail.ownco-gmbh.example>", SALES, "Lunch order")
    )
    (tmp_path / "dave.eml").write_bytes(
        message("Dave <dave@customer-firm.example>", SALES, "Order")
    )
    results = capture(cli, tmp_path / "carol.eml", tmp_path / "dave.eml")
    assert [r["action"] for r in results] == ["captured", "captured"]
    leads = {lead["emails"][0]: lead for lead in cli.json("leads", "list")}
    assert leads["carol@mail.ownco-gmbh.example"]["company"] is None
    assert [c["domain"] for c in cli.json("companies", "list")] == ["customer-firm.example"]


def test_the_same_archive_twice_gives_the_same_decisions(cli: Cli, tmp_path: Path) -> None:
    """An auto-reply comes before the first human mail of its sender: a second run used to bind
    it to the lead the first run made from the later mail."""
    crm(cli)
    archive = mailbox.mbox(tmp_path / "in.mbox")
    sender = "Maria <maria@acme-widgets.example>"
    archive.add(message(sender, SALES, "Out of office", extra="Auto-Submitted: auto-replied\r\n"))
    archive.add(message(sender, SALES, "Pricing for 200 units"))
    archive.add(message("News <news@letters.example>", SALES, "Weekly",
                        extra="List-Id: <weekly.letters.example>\r\n"))  # fmt: skip
    archive.close()
    first = capture(cli, tmp_path / "in.mbox")
    second = capture(cli, tmp_path / "in.mbox")
    assert [r["action"] for r in first] == ["captured", "captured", "skipped"]
    assert [r["action"] for r in second] == ["duplicate", "duplicate", "skipped"]
    assert len(cli.json("activities", "list")) == 2
