"""The CLI contract of ``docs/CLI.md``: every list/show with ``--json`` prints only JSON with
the documented fields; errors are one clear line on stderr, no traceback, exit 1 (2 for usage
errors); ``capture`` reads message files, Maildir folders, mbox files and stdin, and a bad
message in a batch is reported while the rest go on.
"""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli

GOLDEN = Path(__file__).parent / "golden"
BOB, ANNA, SALES = "bob@example.com", "anna@example.com", "sales@example.com"
JSON = dict[str, Any]


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def path(name: str) -> str:
    return str(GOLDEN / name)


def company_crm(cli: Cli) -> None:
    """Employee bob and the company mailbox sales@ (all time, queue: bob)."""
    cli.ok("user", "add", BOB, "--name", "Bob Sales")
    cli.ok("mailbox", "add", SALES, "--company", "--since", "all", "--queue", BOB)


def only_json(cli: Cli, *args: str) -> Any:
    """Run a listing with --json: stdout must be exactly one JSON document, stderr empty."""
    result = cli.run(*args, "--json")
    assert result.exit_code == 0, (args, result.stderr, result.exception)
    assert result.stderr == "", args
    return json.loads(result.stdout)


def has(row: JSON, **types: type | tuple[type, ...]) -> None:
    """The row has these fields with values of these types."""
    for name, kind in types.items():
        assert name in row, (name, row)
        assert isinstance(row[name], kind), (name, row[name])


OPT_STR = (str, type(None))


# --- JSON -------------------------------------------------------------------------------------


def test_every_list_and_show_prints_only_json_with_the_contract_fields(cli: Cli) -> None:
    for listing in (
        ["user", "list"],
        ["mailbox", "list"],
        ["exclude", "list"],
        ["leads", "list"],
        ["contacts", "list"],
        ["companies", "list"],
        ["activities", "list"],
    ):
        assert only_json(cli, *listing) == [], "an empty CRM lists nothing"
    company_crm(cli)
    cli.ok("user", "add", ANNA, "--no-crm")
    cli.ok("mailbox", "add", BOB, "--owner", BOB, "--preset", "gmail", "--password-stdin",
           input="bobs-pw\n")  # fmt: skip
    cli.ok("mailbox", "set", SALES, "--interval", "5m", "--folders", "INBOX,Sent Items")
    cli.ok("exclude", "add", "@spamcorp.com")
    cli.ok("exclude", "add", "x@rival.com", "--mailbox", SALES)
    captured = only_json(
        cli, "capture", path("C7_vcard_40.eml"), path("C1_unknown_sender.eml"),
        "--mailbox", SALES, "--direction", "in",
    )  # fmt: skip
    for result in captured:
        has(result, source=str, action=str, reason=OPT_STR, activities=list, created=dict)
        assert result["action"] in ("captured", "skipped", "duplicate")
        assert sorted(result["created"]) == ["companies", "contacts", "leads"]
    assert [len(r["activities"]) for r in captured] == [1, 1]

    users = only_json(cli, "user", "list")
    assert {u["email"]: u["crm_access"] for u in users} == {ANNA: False, BOB: True}
    for user in users:
        has(user, email=str, name=str, admin=bool, crm_access=bool)

    boxes = only_json(cli, "mailbox", "list")
    assert [b["address"] for b in boxes] == [BOB, SALES]
    for box in boxes:
        has(box, address=str, kind=str, owner=OPT_STR, linked=bool, status=str)
        has(box, status_reason=OPT_STR, last_check=OPT_STR, settings=dict)
        assert box["kind"] in ("personal", "company")
        assert box["status"] in ("green", "red")
        assert box["status"] == "red" and box["status_reason"], "never checked: red, with why"
        for name in ("since", "create_leads", "vcard_contacts", "folders", "interval", "queue"):
            assert name in box["settings"]
    sales = only_json(cli, "mailbox", "show", SALES)
    assert sales == boxes[1]
    assert (sales["kind"], sales["owner"], sales["linked"]) == ("company", None, True)
    assert sales["settings"]["interval"] == "5m"
    assert sales["settings"]["queue"] == [BOB]
    assert sales["settings"]["folders"] == ["INBOX", "Sent Items"]
    bob = only_json(cli, "mailbox", "show", BOB)
    assert (bob["kind"], bob["owner"], bob["linked"]) == ("personal", BOB, True)
    assert bob["settings"]["since"] == "3d", "the default import window"
    assert "bobs-pw" not in json.dumps(bob)

    exclusions = only_json(cli, "exclude", "list")
    assert {(e["entry"], e["mailbox"]) for e in exclusions} == {
        ("@spamcorp.com", None),
        ("x@rival.com", SALES),
    }

    [lead] = only_json(cli, "leads", "list")
    has(lead, id=int, name=str, emails=list, company=OPT_STR, responsible=OPT_STR, mailbox=OPT_STR)
    assert (lead["emails"], lead["responsible"], lead["mailbox"]) == (
        ["maria.garcia@globex.com"],
        BOB,
        SALES,
    )
    [contact] = only_json(cli, "contacts", "list")
    has(contact, id=int, name=str, emails=list, phones=list, company=OPT_STR)
    companies = only_json(cli, "companies", "list")
    for company in companies:
        has(company, id=int, name=str, domain=OPT_STR)
    assert {c["name"] for c in companies} == {"Umbrella Corporation", "Globex"}
    activities = only_json(cli, "activities", "list")
    assert len(activities) == 2
    for activity in activities:
        has(activity, id=int, direction=str, subject=str, message_id=OPT_STR, mailbox=OPT_STR)
        has(activity, completed=bool, thread=str, bindings=list)
        assert activity["direction"] in ("incoming", "outgoing")
        for binding in activity["bindings"]:
            assert binding["type"] in ("lead", "contact", "company")
            assert isinstance(binding["id"], int)
    assert only_json(cli, "activities", "list", "--mailbox", SALES) == activities
    assert only_json(cli, "activities", "list", "--mailbox", BOB) == []
    status = only_json(cli, "status")
    assert {b["address"] for b in status["mailboxes"]} == {BOB, SALES}
    presets = only_json(cli, "mailbox", "presets")
    assert "gmail" in {p["name"] for p in presets}


def test_human_output(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    assert "no leads" in cli.ok("leads", "list")
    company_crm(cli)
    text = cli.ok("capture", path("C1_unknown_sender.eml"), path("B4_mailing_list.eml"),
                  "--mailbox", SALES, "--direction", "in")  # fmt: skip
    assert "C1_unknown_sender.eml: captured as activity 1" in text
    assert "B4_mailing_list.eml: skipped (robot: mailing list)" in text
    assert "1 captured, 0 duplicate, 1 skipped" in text
    assert "María" in cli.ok("leads", "list")


# --- errors -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """One SQLite CRM (bob, sales@) for the error cases, which change nothing."""
    home = tmp_path_factory.mktemp("errors")
    cli = Cli(f"sqlite:///{home / 'crm.db'}", home / "home")
    company_crm(cli)
    return cli


def assert_one_line_error(result: Any, code: int, *needles: str) -> None:
    """Exit ``code``, nothing on stdout, one clear line on stderr, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


ERRORS_1 = [
    (["mailbox", "show", "nobody@example.com"], "no mailbox nobody@example.com"),
    (["mailbox", "remove", "nobody@example.com"], "no mailbox"),
    (["mailbox", "set", "nobody@example.com", "--no-link"], "no mailbox"),
    (["user", "add", BOB], "exists already"),
    (["user", "add", "not-an-address"], "not an e-mail address"),
    (["user", "remove", "ghost@example.com"], "no user"),
    (["mailbox", "add", SALES, "--company"], "exists already"),
    (["mailbox", "add", "x@example.com", "--owner", "ghost@example.com"], "no user"),
    (["mailbox", "add", "x@example.com", "--company", "--preset", "nosuch"], "preset"),
    (["mailbox", "add", "x@example.com", "--owner", BOB, "--queue", BOB], "company"),
    (["mailbox", "set", SALES, "--queue", "ghost@example.com"], "no user"),
    (["exclude", "add", "*@spamcorp.com"], "wildcard"),
    (["exclude", "add", "spam*@spamcorp.com"], "wildcard"),
    (["exclude", "add", "co.uk"], "public suffix"),
    (["exclude", "add", "@spamcorp.com", "--mailbox", "nobody@example.com"], "no mailbox"),
    (["exclude", "remove", "@never.com"], "not in the exclusion list"),
    (["activity", "complete", "999"], "no activity 999"),
    (["activity", "reopen", "999"], "no activity 999"),
    (["lead", "update", "999", "--name", "X"], "no lead 999"),
    (["capture", "-", "--mailbox", "nobody@example.com", "--direction", "in"], "no mailbox"),
    (["--config", "/nonexistent/mailcrm.toml", "user", "list"], "/nonexistent/mailcrm.toml"),
    (["--db", "not a url", "user", "list"], "not a database URL"),
]


@pytest.mark.parametrize(("args", "needle"), ERRORS_1, ids=[" ".join(a[:3]) for a, _ in ERRORS_1])
def test_errors_are_one_line_and_exit_1(shared_cli: Cli, args: list[str], needle: str) -> None:
    assert_one_line_error(shared_cli.run(*args), 1, needle)


USAGE_2 = [  # bad choices are usage errors (issue 14); the full table is tests/test_admin_cli.py
    (["mailbox", "add", "x@example.com", "--company", "--interval", "7m"], "--interval"),
    (["mailbox", "add", "x@example.com", "--company", "--since", "5d"], "--since"),
    (["mailbox", "add", "x@example.com", "--company", "--imap-tls", "maybe"], "--imap-tls"),
]


@pytest.mark.parametrize(("args", "needle"), USAGE_2, ids=[" ".join(a[3:]) for a, _ in USAGE_2])
def test_bad_choices_are_usage_errors_exit_2(shared_cli: Cli, args: list[str], needle: str) -> None:
    assert_one_line_error(shared_cli.run(*args), 2, needle)


def test_wildcard_exclusion_names_the_accepted_forms(shared_cli: Cli) -> None:
    result = shared_cli.run("exclude", "add", "*@spamcorp.com")
    assert_one_line_error(result, 1, "*@spamcorp.com", "a@x.com", "@x.com", "x.com")
    assert shared_cli.json("exclude", "list") == []


def test_unknown_database_driver_is_one_line(shared_cli: Cli) -> None:
    assert_one_line_error(shared_cli.run("--db", "nonsense://x", "user", "list"), 1, "nonsense")


def test_listing_the_activities_of_an_unknown_mailbox_is_an_error(shared_cli: Cli) -> None:
    result = shared_cli.run("activities", "list", "--mailbox", "nobody@example.com", "--json")
    assert_one_line_error(result, 1, "no mailbox")


def test_an_exclusion_is_removed_in_any_accepted_form(shared_cli: Cli) -> None:
    shared_cli.ok("exclude", "add", "LawFirm.COM")
    shared_cli.ok("exclude", "add", "Saul@LawFirm.com", "--mailbox", SALES)
    assert {(e["entry"], e["mailbox"]) for e in shared_cli.json("exclude", "list")} == {
        ("@lawfirm.com", None),
        ("saul@lawfirm.com", SALES),
    }
    not_global = shared_cli.run("exclude", "remove", "saul@lawfirm.com")
    assert_one_line_error(not_global, 1, "not in the exclusion list")
    shared_cli.ok("exclude", "remove", "@lawfirm.com")
    shared_cli.ok("exclude", "remove", "SAUL@lawfirm.com", "--mailbox", "Sales@Example.com")
    assert shared_cli.json("exclude", "list") == []


def test_password_stdin_without_a_password(shared_cli: Cli) -> None:
    result = shared_cli.run("mailbox", "add", BOB, "--owner", BOB, "--password-stdin", input="")
    assert_one_line_error(result, 1, "password")
    assert [b["address"] for b in shared_cli.json("mailbox", "list")] == [SALES]


USAGE = [
    ["lead", "update", "abc"],
    ["activity", "complete", "one"],
    ["capture", "--direction", "in"],
    ["capture", "--mailbox", SALES, "--direction", "sideways"],
    ["mailbox", "add", "x@example.com"],
    ["mailbox", "add", "x@example.com", "--owner", BOB, "--company"],
    ["mailbox", "add", "x@example.com", "--company", "--imap-port", "99999"],
    ["user", "add"],
    ["leads", "list", "--bogus"],
    ["no-such-command"],
]


@pytest.mark.parametrize("args", USAGE, ids=[" ".join(a[:3]) for a in USAGE])
def test_usage_errors_are_one_line_and_exit_2(shared_cli: Cli, args: list[str]) -> None:
    assert_one_line_error(shared_cli.run(*args), 2)


def test_a_real_process_prints_only_json_even_when_logging(tmp_path: Path) -> None:
    """Outside the test runner, with ``-v`` logging to stderr: stdout is the JSON alone."""
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    prepared = Cli(url, tmp_path / "home")
    company_crm(prepared)
    program = Path(sys.executable).with_name("mailcrm")
    env = {**os.environ, "MAILCRM_DATABASE_URL": url, "XDG_DATA_HOME": str(tmp_path / "home")}
    env.pop("MAILCRM_CONFIG", None)
    args = ["-v", "capture", path("C1_unknown_sender.eml"), path("BAD_not_mime.eml")]
    run = subprocess.run(
        [str(program), *args, "--mailbox", SALES, "--direction", "in", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    assert [r["action"] for r in results] == ["captured", "skipped"]
    assert "BAD_not_mime.eml" in run.stderr, "the skip is logged, on stderr"
    assert "Traceback" not in run.stderr


# --- capture sources --------------------------------------------------------------------------


def test_capture_a_maildir_folder(sqlite_cli: Cli, tmp_path: Path) -> None:
    company_crm(sqlite_cli)
    folder = mailbox.Maildir(tmp_path / "Maildir", create=True)
    read = mailbox.MaildirMessage(golden("C1_unknown_sender.eml"))
    read.set_subdir("cur")
    read.set_flags("S")
    keys = {
        folder.add(read): ("captured", True),
        folder.add(golden("B5_free_mail.eml")): ("captured", False),
        folder.add(golden("BAD_not_mime.eml")): ("skipped", None),
    }
    results = sqlite_cli.json("capture", str(tmp_path / "Maildir"), "--mailbox", SALES,
                              "--direction", "in", "--folder", "INBOX")  # fmt: skip
    by_source = {r["source"]: r for r in results}
    assert set(by_source) == {f"{tmp_path / 'Maildir'}/{key}" for key in keys}
    activities = {a["id"]: a for a in sqlite_cli.json("activities", "list")}
    for key, (action, completed) in keys.items():
        result = by_source[f"{tmp_path / 'Maildir'}/{key}"]
        assert result["action"] == action
        if completed is not None:
            [activity_id] = result["activities"]
            assert activities[activity_id]["completed"] is completed, "the S flag is \\Seen"


def test_capture_an_mbox_file(sqlite_cli: Cli, tmp_path: Path) -> None:
    company_crm(sqlite_cli)
    box = mailbox.mbox(tmp_path / "archive.mbox", create=True)
    for index, name in enumerate(("M4_new_lead_1.eml", "M4_new_lead_2.eml", "M4_new_lead_3.eml")):
        message = mailbox.mboxMessage(golden(name))
        if index == 1:
            message.set_flags("RO")
        box.add(message)
    box.flush()
    box.close()
    source = str(tmp_path / "archive.mbox")
    results = sqlite_cli.json("capture", source, "--mailbox", SALES, "--direction", "in")
    assert [(r["source"], r["action"]) for r in results] == [
        (f"{source}#1", "captured"),
        (f"{source}#2", "captured"),
        (f"{source}#3", "captured"),
    ]
    completed = [a["completed"] for a in sqlite_cli.json("activities", "list")]
    assert completed == [False, True, False], "Status: RO is a read message"
    names = [lead["name"] for lead in sqlite_cli.json("leads", "list")]
    assert names == ["Ada Lovelace", "Alan Turing", "Grace Hopper"]


def test_capture_several_files_a_directory_and_stdin(sqlite_cli: Cli, tmp_path: Path) -> None:
    company_crm(sqlite_cli)
    cli = sqlite_cli
    several = cli.json("capture", path("C1_unknown_sender.eml"), path("C3_known_lead.eml"),
                       "--mailbox", SALES, "--direction", "in")  # fmt: skip
    assert [r["action"] for r in several] == ["captured", "captured"]
    assert several[1]["created"]["leads"] == [], "the second binds to the lead of the first"
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "a.eml").write_bytes(golden("B5_free_mail.eml"))
    (folder / "b.eml").write_bytes(golden("B5_business_co_uk.eml"))
    in_dir = cli.json("capture", str(folder), "--mailbox", SALES, "--direction", "in")
    assert [(Path(r["source"]).name, r["action"]) for r in in_dir] == [
        ("a.eml", "captured"),
        ("b.eml", "captured"),
    ]
    [stdin] = cli.json("capture", "-", "--mailbox", SALES, "--direction", "out",
                       input=golden("C2_outgoing_to_cc_bcc.eml"))  # fmt: skip
    assert (stdin["source"], stdin["action"], len(stdin["created"]["leads"])) == (
        "-",
        "captured",
        3,
    )
    [default] = cli.json("capture", "--mailbox", SALES, "--direction", "in",
                         input=golden("B5_business_subdomain.eml"))  # fmt: skip
    assert (default["source"], default["action"]) == ("-", "captured"), "no PATH: stdin"
    [empty] = cli.json("capture", "-", "--mailbox", SALES, "--direction", "in", input=b"")
    assert (empty["action"], empty["reason"]) == ("skipped", "empty message")
    directions = {a["subject"]: a["direction"] for a in cli.json("activities", "list")}
    assert directions["Our offer"] == "outgoing"
    assert directions["Pricing for 200 units"] == "incoming"


def test_status_shows_a_stored_error_as_text_not_as_markup(cli: Cli, db_url: str) -> None:
    """A server's error text is stranger-written: brackets in it are printed as they are, never
    read as rich markup (which would restyle, swallow or, for "[/x]", crash the table)."""
    from sqlalchemy import update

    from crm.store.db import Database
    from crm.store.models import Mailbox

    company_crm(cli)
    hostile = "NO [AUTHENTICATIONFAILED] [bold]x[/bold] [/nonsense] [link=http://evil]y[/link]"
    database = Database(db_url, migrate=False)
    try:
        with database.session() as s:
            s.execute(update(Mailbox).values(last_error=hostile))
    finally:
        database.dispose()
    shown = only_json(cli, "status")["mailboxes"][0]["status_reason"]
    assert hostile in shown
    cli.env["COLUMNS"] = "300"  # wide enough that the table folds no cell
    result = cli.run("status")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert hostile in result.stdout
