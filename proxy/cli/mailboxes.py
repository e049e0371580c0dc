"""``mailcrm mailbox``: linked mailboxes (SPEC M1-M6): add, change, list, check the connection,
import now in the foreground, remove, and the presets of common mail services."""

from __future__ import annotations

import functools
import sys
from typing import Annotated, Any

from crm.errors import InvalidInput
from crm.face import admin, oauth, views
from crm.vocab import INTERVALS, TLS_MODES

from .common import (
    STATE,
    Address,
    JsonOpt,
    Opt,
    cell,
    choice,
    fail,
    group,
    out,
    print_json,
    table,
)

app = group("Linked mailboxes (M1-M6).")


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _verify_folders(box: Any) -> str:
    """--folders: the server asked for them when it can be (InvalidInput: one is missing)."""
    from crm.face.poller import snapshot_of
    from proxy.imap.check import verify_folders
    from proxy.imap.plan import plan_for

    plan = plan_for(snapshot_of(box, STATE.secrets()), STATE.config.poller)
    return verify_folders(plan, STATE.config.poller.timeout_s)


def _settings(**options: Any) -> admin.MailboxSettings:
    if options.pop("password_stdin"):
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidInput("--password-stdin: no password on standard input")
        options["password"] = password
    options["folders"] = _split(options["folders"])
    options["queue"] = _split(options["queue"])
    options["allow_plaintext_smtp"] = STATE.config.relay.allow_plaintext_upstream
    return admin.MailboxSettings(**options)


Preset = Annotated[str | None, Opt(metavar="NAME", help="A preset of `mailbox presets`.")]
Host = Annotated[str | None, Opt(metavar="HOST")]
Port = Annotated[int | None, Opt(metavar="PORT", min=1, max=65535)]
Tls = Annotated[
    str | None, Opt(metavar="ssl|starttls|none", callback=choice(*TLS_MODES), help="TLS mode.")
]
Login = Annotated[str | None, Opt(metavar="NAME", help="Login name (default: the address).")]
PwStdin = Annotated[bool, Opt("--password-stdin", help="Read the password from stdin.")]
Link = Annotated[bool | None, Opt("--link/--no-link", help="Link to the CRM.")]
Since = Annotated[
    str | None, Opt(metavar="3d|all", callback=choice("3d", "all"), help="Initial import window.")
]
Leads = Annotated[bool | None, Opt("--create-leads/--no-create-leads")]
Vcards = Annotated[bool | None, Opt("--vcard-contacts/--no-vcard-contacts")]
Folders = Annotated[str | None, Opt(metavar="NAME,NAME", help="Folders to process.")]
Interval = Annotated[
    str | None,
    Opt(metavar="|".join(INTERVALS), callback=choice(*INTERVALS), help="Company: check interval."),
]
Queue = Annotated[
    str | None, Opt(metavar="EMAIL,EMAIL", help="Company: distribution queue of employees.")
]
Auth = Annotated[  # issue 15
    str | None,
    Opt(metavar="password|oauth2", callback=choice("password", "oauth2"), help="Sign-in."),
]
OAuthProvider = Annotated[str | None, Opt(metavar="NAME", help="For --auth oauth2.")]


@app.command("add")
def mailbox_add(
    address: Address,
    owner: Annotated[
        str | None, Opt(metavar="USER_EMAIL", help="Owner of a personal mailbox.")
    ] = None,
    company: Annotated[bool, Opt("--company", help="A company mailbox.")] = False,
    preset: Preset = None,
    imap_host: Host = None,
    imap_port: Port = None,
    imap_tls: Tls = None,
    smtp_host: Host = None,
    smtp_port: Port = None,
    smtp_tls: Tls = None,
    login: Login = None,
    password_stdin: PwStdin = False,
    link: Link = None,
    since: Since = None,
    create_leads: Leads = None,
    vcard_contacts: Vcards = None,
    folders: Folders = None,
    interval: Interval = None,
    queue: Queue = None,
    auth: Auth = None,
    oauth_provider: OAuthProvider = None,
) -> None:
    """Add a personal (--owner) or company (--company) mailbox."""
    if bool(owner) == company:
        fail("give exactly one of --owner USER_EMAIL or --company", 2)
    options = dict(locals())
    for key in ("address", "owner", "company"):
        options.pop(key)
    with STATE.db.session() as s:
        box = admin.add_mailbox(s, STATE.secrets(), address, owner, _settings(**options))
        found = _verify_folders(box) if folders else None
        state = "linked" if box.linked else "not linked"
        if box.auth == "oauth2" and not box.linked:
            state += f"; sign in with `mailcrm mailbox authorize {box.address}`"
        elif box.linked and box.secret is None and box.auth != "oauth2":
            state += f"; no password stored: not checked until `mailcrm mailbox set {box.address}"
            state += " --password-stdin`"
        out.print(f"mailbox {box.address} added ({box.kind}, {state})", markup=False)
    if found:
        out.print(found, markup=False)


@app.command("set")
def mailbox_set(
    address: Address,
    preset: Preset = None,
    imap_host: Host = None,
    imap_port: Port = None,
    imap_tls: Tls = None,
    smtp_host: Host = None,
    smtp_port: Port = None,
    smtp_tls: Tls = None,
    login: Login = None,
    password_stdin: PwStdin = False,
    link: Link = None,
    since: Since = None,
    create_leads: Leads = None,
    vcard_contacts: Vcards = None,
    folders: Folders = None,
    interval: Interval = None,
    queue: Queue = None,
    auth: Auth = None,
    oauth_provider: OAuthProvider = None,
) -> None:
    """Change settings of a mailbox."""
    options = dict(locals())
    options.pop("address")
    with STATE.db.session() as s:
        box = admin.get_mailbox(s, address)
        notes = admin.apply_settings(s, STATE.secrets(), box, _settings(**options))
        found = _verify_folders(box) if folders else None
    out.print(f"mailbox {address} updated")
    for note in notes:
        out.print(note, markup=False)
    if found:
        out.print(found, markup=False)


@app.command("list")
def mailbox_list(as_json: JsonOpt = False) -> None:
    """List mailboxes with their status."""
    with STATE.db.session() as s:
        rows = views.mailboxes_json(s, STATE.config.poller)
    print_json(rows) if as_json else table(
        rows,
        ["address", "kind", "owner", "linked", "status", "status_reason", "last_check"],
        "no mailboxes",
    )


@app.command("show")
def mailbox_show(address: Address, as_json: JsonOpt = False) -> None:
    """Show one mailbox."""
    with STATE.db.session() as s:
        data = views.scheduled_json(admin.get_mailbox(s, address), STATE.config.poller)
    if as_json:
        print_json(data)
        return
    for key, value in data.items():  # values as they are: a reason's [brackets] are no markup
        out.print(f"{key}: {cell(value)}", markup=False)


@app.command("check")
def mailbox_check(address: Address, as_json: JsonOpt = False) -> None:
    """Verify settings and connection (IMAP login, folders, SMTP login); collects no mail."""
    import asyncio

    from crm.face.poller import sync
    from proxy.imap.check import check_mailbox
    from proxy.imap.plan import load_plan

    settings = STATE.config.poller
    plan = load_plan(STATE.db, address, STATE.secrets(), settings)
    tokens = functools.partial(oauth.access_token, STATE.db, STATE.secrets())  # issue 15
    report = asyncio.run(check_mailbox(plan, settings.timeout_s, tokens))
    sync.record_status(STATE.db, plan.id, "; ".join(report.problems) or None)
    if as_json:
        print_json(report.as_json())
    else:
        out.print(f"IMAP: {report.imap}")
        for folder in report.folders:
            out.print(f"  folder {folder['name']} ({folder['direction']})")
        out.print(f"SMTP: {report.smtp}")
    if not report.ok:
        fail(f"check of {plan.address} failed: {'; '.join(report.problems)}")


@app.command("import")
def mailbox_import(
    address: Address,
    since: Annotated[
        str | None,
        Opt(metavar="3d|all", callback=choice("3d", "all"), help="Import window, stored."),
    ] = None,
    wait: Annotated[
        bool,
        Opt("--wait", help="Wait as long as it takes for another import or the serve node."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Import a mailbox now, in the foreground with a progress bar (Ctrl-C stops, rerun resumes)."""
    import asyncio

    from proxy.imap.foreground import ForegroundImport, prepare
    from proxy.imap.importview import make_view
    from proxy.imap.plan import load_plan

    config = STATE.config
    plan = load_plan(STATE.db, address, STATE.secrets(), config.poller)
    window = prepare(plan, since, config.poller)
    with STATE.db.session() as s:
        admin.touch_mailbox_owner(s, address)  # T1: an import run for the owner's mailbox
    resume = f"mailcrm mailbox import {plan.address}" + (f" --since {since}" if since else "")
    job = ForegroundImport(config, STATE.db, plan, window, make_view(plan.address))
    try:
        summary = asyncio.run(job.run(wait))
    except KeyboardInterrupt:
        fail(f"import of {plan.address} interrupted; run `{resume}` to resume", 130)
    if as_json:
        print_json(summary.as_json())
    if summary.exit_code:
        fail(summary.stop_line(resume), summary.exit_code)
    if not as_json:
        out.print(summary.done_line(), markup=False)


@app.command("remove")
def mailbox_remove(address: Address) -> None:
    """Remove a mailbox (its activities stay in the CRM)."""
    with STATE.db.session() as s:
        admin.remove_mailbox(s, address)
    out.print(f"mailbox {address} removed")


@app.command("presets")
def mailbox_presets(as_json: JsonOpt = False) -> None:
    """List connection presets for common mail services."""
    rows = views.presets_json()
    columns = ["name", "label", "imap_host", "imap_port", "imap_tls", "smtp_host", "smtp_port",
               "smtp_tls", "auth"]  # fmt: skip
    print_json(rows) if as_json else table(rows, columns, "no presets")
