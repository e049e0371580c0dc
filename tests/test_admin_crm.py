"""CRM basics from the command line: a lead becomes a contact, one record with its timeline,
and listings that search and stop at a limit.

Role: CLI-driven tests (``mailcrm lead convert``, ``lead/contact/company show``, ``--search``,
``--limit``, ``--all``) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import mailbox
from pathlib import Path
from typing import Any

from tests.conftest import Cli
from tests.pollerkit import message

SALES = "sales@ownco-gmbh.example"
MARIA = "Maria Garcia <maria@acme-widgets.example>"


def crm(cli: Cli) -> None:
    cli.ok("user", "add", "bob@ownco-gmbh.example", "--name", "Bob")
    cli.ok("mailbox", "add", SALES, "--company", "--since", "all")


def capture(cli: Cli, tmp: Path, *raws: bytes) -> list[dict[str, Any]]:
    path = tmp / f"batch{len(list(tmp.glob('*.mbox')))}.mbox"
    box = mailbox.mbox(path)
    for raw in raws:
        box.add(raw)
    box.close()
    found: list[dict[str, Any]] = cli.json(
        "capture", "--mailbox", SALES, "--direction", "in", str(path)
    )
    return found


def test_a_converted_lead_becomes_a_contact_with_its_activities(cli: Cli, tmp_path: Path) -> None:
    crm(cli)
    capture(cli, tmp_path, message(MARIA, SALES, "Pricing"), message(MARIA, SALES, "Delivery"))
    (lead,) = cli.json("leads", "list")
    assert lead["company"] == "Acme Widgets"
    done = cli.json("lead", "convert", str(lead["id"]))
    assert done["new_contact"] is True and done["activities"] == 2

    (contact,) = cli.json("contacts", "list")
    assert contact["name"] == "Maria Garcia" and contact["emails"] == ["maria@acme-widgets.example"]
    assert contact["company"] == "Acme Widgets"
    shown = cli.json("contact", "show", str(contact["id"]))
    assert [a["subject"] for a in shown["activities"]] == ["Pricing", "Delivery"]
    assert cli.json("lead", "show", str(lead["id"]))["activities"] == []
    assert cli.json("lead", "show", str(lead["id"]))["status"] == "converted"

    assert cli.json("leads", "list") == [], "converted leads are hidden"
    assert [x["status"] for x in cli.json("leads", "list", "--all")] == ["converted"]

    (later,) = capture(cli, tmp_path, message(MARIA, SALES, "Order"))
    assert later["created"] == {"leads": [], "contacts": [], "companies": []}
    company = cli.json("company", "show", str(done["company"]))
    assert [a["subject"] for a in company["activities"]] == ["Pricing", "Delivery", "Order"]
    assert [c["id"] for c in company["contacts"]] == [contact["id"]]
    bindings = {(b["type"], b["id"]) for b in company["activities"][-1]["bindings"]}
    assert ("contact", contact["id"]) in bindings and ("lead", lead["id"]) not in bindings

    again = cli.run("lead", "convert", str(lead["id"]))
    assert again.exit_code == 1 and "converted already" in again.stderr


def test_convert_with_a_company_name(cli: Cli, tmp_path: Path) -> None:
    crm(cli)
    capture(cli, tmp_path, message("Tom <tom@gmail.com>", SALES, "Do you ship?"))
    (lead,) = cli.json("leads", "list")
    assert lead["company"] is None, "free mail makes no company"
    text = cli.ok("lead", "convert", str(lead["id"]), "--company", "Baker Ltd")
    assert f"lead {lead['id']} converted: new contact" in text
    assert cli.json("contacts", "list")[0]["company"] == "Baker Ltd"
    assert cli.run("lead", "show", "999").exit_code == 1


def test_listings_search_and_limit(sqlite_cli: Cli, tmp_path: Path) -> None:
    cli = sqlite_cli
    crm(cli)
    people = [(f"Person {i} <p{i}@firm{i}.example>", f"Question {i}") for i in range(103)]
    raws = [message(who, SALES, subject) for who, subject in people]
    capture(cli, tmp_path, *raws)
    table = cli.run("leads", "list")
    assert table.exit_code == 0
    assert "showing 100 of 103; use --limit N or --search TEXT" in table.stderr
    assert len(cli.json("leads", "list")) == 103, "JSON lists everything unless --limit"
    limited = cli.run("leads", "list", "--json", "--limit", "2")
    assert "showing 2 of 103" in limited.stderr
    assert [r["name"] for r in cli.json("leads", "list", "--search", "p17@")] == ["Person 17"]
    assert [r["name"] for r in cli.json("contacts", "list", "--search", "x")] == []
    found = cli.json("activities", "list", "--search", "QUESTION 10")
    assert sorted(a["subject"] for a in found) == ["Question 10", "Question 100", "Question 101",
                                                   "Question 102"]  # fmt: skip
    assert len(cli.json("activities", "list", "--search", "firm5.example")) == 1
