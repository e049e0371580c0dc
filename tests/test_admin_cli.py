"""Manners of the command line: exit codes (2 for usage errors, 1 for errors of state, never a
traceback), ``--help`` that shows flags as flags and values by what goes there, and tables that
fold long values at 80 columns instead of cutting them off.

Role: CLI-driven tests (in-process, as a script runs mailcrm).
"""

from __future__ import annotations

import pytest

from tests.conftest import Cli

BOB, SALES = "bob@example.com", "sales@example.com"

CASES = [
    # usage errors: exit 2
    (["mailbox", "add", "x@example.com", "--company", "--since", "5y"], 2, "--since"),
    (["mailbox", "add", "x@example.com", "--company", "--interval", "7m"], 2, "--interval"),
    (["mailbox", "add", "x@example.com", "--company", "--imap-tls", "tls"], 2, "--imap-tls"),
    (["mailbox", "add", "x@example.com", "--owner", BOB, "--company"], 2, "exactly one"),
    (["mailbox", "set", SALES, "--since", "1w"], 2, "--since"),
    (["mailbox", "import", SALES, "--since", "5y"], 2, "--since"),
    (["capture", "--mailbox", SALES, "--direction", "sideways"], 2, "--direction"),
    (["capture", "--mailbox", SALES, "--direction", "in", "--since", "1y"], 2, "--since"),
    (["leads", "list", "--limit", "-1"], 2, "--limit"),
    (["user", "list", "--frobnicate"], 2, "No such option"),
    (["lead", "show", "abc"], 2, "ID"),
    # errors of state: exit 1
    (["user", "remove", "nobody@example.com"], 1, "no user nobody@example.com"),
    (["mailbox", "show", "nobody@example.com"], 1, "no mailbox nobody@example.com"),
    (["mailbox", "set", SALES, "--queue", "nobody@example.com"], 1, "no user"),
    (["mailbox", "add", SALES, "--company"], 1, "exists already"),
    (["lead", "show", "42"], 1, "no lead 42"),
    (["contact", "show", "42"], 1, "no contact 42"),
    (["company", "show", "42"], 1, "no company 42"),
    (["lead", "convert", "42"], 1, "no lead 42"),
    (["activities", "list", "--mailbox", "nobody@example.com"], 1, "no mailbox"),
]


@pytest.mark.parametrize(("args", "code", "says"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_exit_codes(sqlite_cli: Cli, args: list[str], code: int, says: str) -> None:
    sqlite_cli.ok("user", "add", BOB)
    sqlite_cli.ok("mailbox", "add", SALES, "--company")
    result = sqlite_cli.run(*args)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert says in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("mailcrm: ") and result.stderr.count("\n") == 1


def test_help_shows_flags_as_flags_and_values_by_what_goes_there(sqlite_cli: Cli) -> None:
    text = sqlite_cli.runner.invoke(
        __import__("cli").app, ["mailbox", "add", "--help"], env={"COLUMNS": "100"}
    ).stdout
    assert "<bool>" not in text and "<str>" not in text
    for metavar in ("ADDRESS", "USER_EMAIL", "3d|all", "ssl|starttls|none", "2m|5m|10m|1h|3h|12h"):
        assert metavar in text, metavar
    root = sqlite_cli.runner.invoke(__import__("cli").app, ["--help"], env={"COLUMNS": "100"})
    assert "URL" in root.stdout and "<bool>" not in root.stdout


def test_tables_fold_long_values_at_80_columns(sqlite_cli: Cli) -> None:
    long = "someone.with.a.long.address@a-rather-long-company-name.example"
    sqlite_cli.ok("mailbox", "add", long, "--company")
    text = sqlite_cli.runner.invoke(
        __import__("cli").app, ["mailbox", "list"], env={**sqlite_cli.env, "COLUMNS": "80"}
    ).stdout
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert (
        "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line).find(long)
        >= 0
    )


def test_user_set_changes_name_admin_and_crm_access(sqlite_cli: Cli) -> None:
    sqlite_cli.ok("user", "add", BOB, "--name", "Bob")
    sqlite_cli.ok("user", "set", BOB, "--name", "Bob Sales", "--admin", "--no-crm")
    (user,) = sqlite_cli.json("user", "list")
    assert (user["name"], user["admin"], user["crm_access"]) == ("Bob Sales", True, False)
    sqlite_cli.ok("user", "set", BOB, "--crm")
    assert sqlite_cli.json("user", "list")[0]["crm_access"] is True
    assert sqlite_cli.run("user", "set", "nobody@example.com", "--crm").exit_code == 1


def test_user_remove_refuses_an_owner_of_a_mailbox_unless_forced(sqlite_cli: Cli) -> None:
    sqlite_cli.ok("user", "add", BOB)
    sqlite_cli.ok("mailbox", "add", BOB, "--owner", BOB, "--preset", "gmail", "--password-stdin",
                  input="pw\n")  # fmt: skip
    refused = sqlite_cli.run("user", "remove", BOB)
    assert refused.exit_code == 1 and f"owns mailbox {BOB}" in refused.stderr
    assert sqlite_cli.json("mailbox", "show", BOB)["linked"] is True
    text = sqlite_cli.ok("user", "remove", BOB, "--force")
    assert f"mailbox {BOB} kept, without owner and unlinked" in text
    box = sqlite_cli.json("mailbox", "show", BOB)
    assert (box["owner"], box["linked"]) == (None, False)


def test_a_company_mailbox_without_a_password_says_what_is_missing(sqlite_cli: Cli) -> None:
    text = sqlite_cli.ok("mailbox", "add", "info@example.com", "--company")
    assert "no password stored" in text and "--password-stdin" in text
    text = sqlite_cli.ok("mailbox", "add", "help@example.com", "--company", "--password-stdin",
                         input="pw\n")  # fmt: skip
    assert "no password stored" not in text
