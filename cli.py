"""The ``mailcrm`` command line (typer): the contract of ``shared/CLI.md`` for admins and users.

Commands only parse arguments, call :mod:`crm.admin` / :mod:`crm.capture` / :mod:`crm.views`
and print. Errors are one line on stderr and exit 1; usage errors exit 2; ``--json`` prints
only JSON on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from typer._click.core import Context as ClickContext  # typer vendors click
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperGroup

from crm import admin, views
from crm.capture import Capturer, CaptureResult
from crm.config import Config, load_config
from crm.db import Database
from crm.errors import InvalidInput, MailcrmError
from crm.models import Direction
from crm.presets import PRESETS
from crm.secrets import SecretBox, load_key
from crm.sources import read_sources


class _Group(TyperGroup):
    """The root group: a MailcrmError anywhere becomes one line on stderr and exit 1, a usage
    error one line and exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except ClickException as exc:
            hint = " (see --help)" if isinstance(exc, UsageError) else ""
            typer.echo(f"mailcrm: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("mailcrm: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except MailcrmError as exc:
            typer.echo(f"mailcrm: {exc}", err=True)
            raise typer.Exit(1) from None
        finally:
            STATE.close()


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="mailcrm: a self-hosted mail-to-CRM gateway.",
)
user_app = typer.Typer(no_args_is_help=True, help="Employees (U1-U3).")
mailbox_app = typer.Typer(no_args_is_help=True, help="Linked mailboxes (M1-M6).")
exclude_app = typer.Typer(no_args_is_help=True, help="Exclusion list (C6).")
db_app = typer.Typer(no_args_is_help=True, help="The database.")
leads_app = typer.Typer(no_args_is_help=True, help="Leads.")
lead_app = typer.Typer(no_args_is_help=True, help="Edit one lead.")
contacts_app = typer.Typer(no_args_is_help=True, help="Contacts.")
companies_app = typer.Typer(no_args_is_help=True, help="Companies.")
activities_app = typer.Typer(no_args_is_help=True, help="Activities.")
activity_app = typer.Typer(no_args_is_help=True, help="Edit one activity.")
for sub, name in (
    (user_app, "user"),
    (mailbox_app, "mailbox"),
    (exclude_app, "exclude"),
    (db_app, "db"),
    (leads_app, "leads"),
    (lead_app, "lead"),
    (contacts_app, "contacts"),
    (companies_app, "companies"),
    (activities_app, "activities"),
    (activity_app, "activity"),
):
    app.add_typer(sub, name=name)

out = Console(highlight=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]


@dataclass
class State:
    """Root options, opened lazily: the config and the database."""

    db_url: str | None = None
    config_path: str | None = None
    _config: Config | None = None
    _db: Database | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, self.db_url)
        return self._config

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.config.database_url)
        return self._db

    def secrets(self) -> SecretBox:
        return SecretBox(load_key(self.config))

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
        self._db = self._config = None


STATE = State()


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr, then exit."""
    typer.echo(f"mailcrm: {message}", err=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """JSON only on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> None:
    """A rich table of ``columns`` or a one-line note when there is nothing."""
    if not rows:
        out.print(empty)
        return
    grid = Table(*columns)
    for row in rows:
        grid.add_row(*(_cell(row.get(c)) for c in columns))
    out.print(grid)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


@app.callback()
def root(
    db: Annotated[str | None, typer.Option("--db", help="Database URL.")] = None,
    config: Annotated[str | None, typer.Option("--config", help="TOML config file.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log to stderr.")] = False,
) -> None:
    """Root options shared by every command."""
    STATE.db_url, STATE.config_path = db, config
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --- users -----------------------------------------------------------------------------------


@user_app.command("add")
def user_add(
    email: str,
    name: Annotated[str, typer.Option(help="Full name.")] = "",
    is_admin: Annotated[bool, typer.Option("--admin", help="May manage the gateway.")] = False,
    no_crm: Annotated[bool, typer.Option("--no-crm", help="No CRM access.")] = False,
) -> None:
    """Add an employee."""
    with STATE.db.session() as s:
        user = admin.add_user(s, email, name, is_admin, not no_crm)
        out.print(f"user {user.email} added")


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    """List employees."""
    from sqlalchemy import select

    from crm.models import User

    with STATE.db.session() as s:
        rows = [views.user_json(u) for u in s.scalars(select(User).order_by(User.email))]
    print_json(rows) if as_json else table(
        rows, ["email", "name", "admin", "crm_access"], "no users"
    )


@user_app.command("remove")
def user_remove(email: str) -> None:
    """Remove an employee."""
    with STATE.db.session() as s:
        admin.remove_user(s, email)
    out.print(f"user {email} removed")


# --- mailboxes -------------------------------------------------------------------------------


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _settings(**options: Any) -> admin.MailboxSettings:
    if options.pop("password_stdin"):
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidInput("--password-stdin: no password on standard input")
        options["password"] = password
    options["folders"] = _split(options["folders"])
    options["queue"] = _split(options["queue"])
    return admin.MailboxSettings(**options)


Opt = typer.Option
Preset = Annotated[str | None, Opt(help="A preset of `mailbox presets`.")]
Host = Annotated[str | None, Opt()]
Port = Annotated[int | None, Opt(min=1, max=65535)]
Tls = Annotated[str | None, Opt(help="ssl, starttls or none.")]
Login = Annotated[str | None, Opt(help="Login name (default: the address).")]
PwStdin = Annotated[bool, Opt("--password-stdin", help="Read the password from stdin.")]
Link = Annotated[bool | None, Opt("--link/--no-link", help="Link to the CRM.")]
Since = Annotated[str | None, Opt(help="Initial import window: 3d or all.")]
Leads = Annotated[bool | None, Opt("--create-leads/--no-create-leads")]
Vcards = Annotated[bool | None, Opt("--vcard-contacts/--no-vcard-contacts")]
Folders = Annotated[str | None, Opt(help="Folders to process, comma separated.")]
Interval = Annotated[str | None, Opt(help="Company: 2m, 5m, 10m, 1h, 3h or 12h.")]
Queue = Annotated[str | None, Opt(help="Company: distribution queue, comma separated.")]


@mailbox_app.command("add")
def mailbox_add(
    address: str,
    owner: Annotated[str | None, Opt(help="Owner of a personal mailbox.")] = None,
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
) -> None:
    """Add a personal (--owner) or company (--company) mailbox."""
    if bool(owner) == company:
        fail("give exactly one of --owner USER_EMAIL or --company", 2)
    options = dict(locals())
    for key in ("address", "owner", "company"):
        options.pop(key)
    with STATE.db.session() as s:
        box = admin.add_mailbox(s, STATE.secrets(), address, owner, _settings(**options))
        out.print(
            f"mailbox {box.address} added ({box.kind}, {'linked' if box.linked else 'not linked'})"
        )


@mailbox_app.command("set")
def mailbox_set(
    address: str,
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
) -> None:
    """Change settings of a mailbox."""
    options = dict(locals())
    options.pop("address")
    with STATE.db.session() as s:
        box = admin.get_mailbox(s, address)
        admin.apply_settings(s, STATE.secrets(), box, _settings(**options))
    out.print(f"mailbox {address} updated")


@mailbox_app.command("list")
def mailbox_list(as_json: JsonOpt = False) -> None:
    """List mailboxes with their status."""
    from sqlalchemy import select

    from crm.models import Mailbox

    with STATE.db.session() as s:
        rows = [views.mailbox_json(b) for b in s.scalars(select(Mailbox).order_by(Mailbox.address))]
    print_json(rows) if as_json else table(
        rows,
        ["address", "kind", "owner", "linked", "status", "status_reason", "last_check"],
        "no mailboxes",
    )


@mailbox_app.command("show")
def mailbox_show(address: str, as_json: JsonOpt = False) -> None:
    """Show one mailbox."""
    with STATE.db.session() as s:
        data = views.mailbox_json(admin.get_mailbox(s, address))
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        out.print(f"{key}: {_cell(value)}")


@mailbox_app.command("check")
def mailbox_check(address: str, as_json: JsonOpt = False) -> None:
    """Verify settings and connection (IMAP login, folders, SMTP login); collects no mail."""
    import asyncio

    from crm import sync
    from proxy.imap.check import check_mailbox
    from proxy.imap.plan import load_plan

    settings = STATE.config.poller
    plan = load_plan(STATE.db, address, STATE.secrets(), settings)
    report = asyncio.run(check_mailbox(plan, settings.timeout_s))
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


@mailbox_app.command("import")
def mailbox_import(
    address: str,
    since: Annotated[
        str | None, Opt(help="Import window, stored as the mailbox's: 3d or all.")
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


@mailbox_app.command("remove")
def mailbox_remove(address: str) -> None:
    """Remove a mailbox (its activities stay in the CRM)."""
    with STATE.db.session() as s:
        s.delete(admin.get_mailbox(s, address))
    out.print(f"mailbox {address} removed")


@mailbox_app.command("presets")
def mailbox_presets(as_json: JsonOpt = False) -> None:
    """List connection presets for common mail services."""
    rows = [vars(p) for p in PRESETS.values()]
    print_json(rows) if as_json else table(
        rows,
        [
            "name",
            "label",
            "imap_host",
            "imap_port",
            "imap_tls",
            "smtp_host",
            "smtp_port",
            "smtp_tls",
        ],
        "no presets",
    )


# --- exclusions ------------------------------------------------------------------------------

MailboxOpt = Annotated[str | None, typer.Option("--mailbox", help="Only for this mailbox.")]


@exclude_app.command("add")
def exclude_add(entry: str, mailbox: MailboxOpt = None) -> None:
    """Exclude an address (a@x.com) or a domain (@x.com or x.com)."""
    with STATE.db.session() as s:
        excl = admin.add_exclusion(s, entry, mailbox)
        out.print(f"excluded {excl.entry}" + (f" for {mailbox}" if mailbox else ""))


@exclude_app.command("list")
def exclude_list(as_json: JsonOpt = False) -> None:
    """List exclusions (global and per mailbox)."""
    with STATE.db.session() as s:
        rows = views.exclusions_json(s)
    print_json(rows) if as_json else table(rows, ["entry", "mailbox"], "no exclusions")


@exclude_app.command("remove")
def exclude_remove(entry: str, mailbox: MailboxOpt = None) -> None:
    """Remove an exclusion."""
    with STATE.db.session() as s:
        admin.remove_exclusion(s, entry, mailbox)
    out.print(f"exclusion {entry} removed")


# --- capture ---------------------------------------------------------------------------------


@app.command("capture")
def capture(
    mailbox: Annotated[str, typer.Option(help="The mailbox the mail belongs to.")],
    direction: Annotated[str, typer.Option(help="in or out.")],
    paths: Annotated[
        list[str] | None, typer.Argument(help="Files, Maildirs, mbox files or -.")
    ] = None,
    folder: Annotated[str | None, typer.Option(help="Folder name to record.")] = None,
    seen: Annotated[bool, typer.Option("--seen", help="The mail was read.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run raw RFC 5322 messages through the capture path and print what it did."""
    if direction not in ("in", "out"):
        fail("--direction must be in or out", 2)
    way = Direction.INCOMING if direction == "in" else Direction.OUTGOING
    capturer = Capturer(STATE.db, STATE.config.capture)
    with STATE.db.session() as s:
        admin.get_mailbox(s, mailbox)
    results = [
        _capture_one(capturer, source, raw, mailbox, way, seen or flag)
        for source, raw, flag in read_sources(paths or ["-"], sys.stdin.buffer)
    ]
    if as_json:
        print_json([r.as_json() for r in results])
        return
    for r in results:
        out.print(_describe(r))
    counts = {a: sum(r.action == a for r in results) for a in ("captured", "duplicate", "skipped")}
    out.print(", ".join(f"{n} {a}" for a, n in counts.items()))


def _capture_one(
    capturer: Capturer,
    source: str,
    raw: bytes | Exception,
    mailbox: str,
    way: Direction,
    seen: bool,
) -> CaptureResult:
    if isinstance(raw, Exception):
        return CaptureResult(source, "skipped", f"cannot read: {raw}")
    try:
        return capturer.capture(raw, mailbox, way, source=source, seen=seen)
    except MailcrmError as exc:
        return CaptureResult(source, "skipped", str(exc))
    except Exception as exc:  # one bad message never stops the batch; the cause is logged
        logging.getLogger("mailcrm.capture").exception("capture of %s failed", source)
        return CaptureResult(source, "skipped", f"error: {type(exc).__name__}: {exc}"[:300])


def _describe(r: CaptureResult) -> str:
    if r.action != "captured":
        return f"{r.source}: {r.action}" + (f" ({r.reason})" if r.reason else "")
    made = ", ".join(f"{len(v)} {k}" for k, v in r.created.as_json().items() if v)
    return f"{r.source}: captured as activity {r.activities[0]}" + (f"; new {made}" if made else "")


# --- listings --------------------------------------------------------------------------------


def _listing(
    fetch: Callable[..., list[dict[str, Any]]],
    columns: list[str],
    empty: str,
    as_json: bool,
    *args: Any,
) -> None:
    with STATE.db.session() as s:
        rows = fetch(s, *args)
    print_json(rows) if as_json else table(rows, columns, empty)


@leads_app.command("list")
def leads_list(as_json: JsonOpt = False) -> None:
    """List leads."""
    _listing(
        views.leads_json,
        ["id", "name", "emails", "company", "responsible", "mailbox", "status"],
        "no leads",
        as_json,
    )


@contacts_app.command("list")
def contacts_list(as_json: JsonOpt = False) -> None:
    """List contacts."""
    _listing(
        views.contacts_json, ["id", "name", "emails", "phones", "company"], "no contacts", as_json
    )


@companies_app.command("list")
def companies_list(as_json: JsonOpt = False) -> None:
    """List companies."""
    _listing(views.companies_json, ["id", "name", "domain"], "no companies", as_json)


@activities_app.command("list")
def activities_list(as_json: JsonOpt = False, mailbox: MailboxOpt = None) -> None:
    """List activities."""
    _listing(
        views.activities_json,
        ["id", "direction", "subject", "mailbox", "completed", "bindings"],
        "no activities",
        as_json,
        mailbox,
    )


@activity_app.command("complete")
def activity_complete(activity_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Mark an activity completed (the mail becomes read)."""
    with STATE.db.session() as s:
        admin.set_completed(s, activity_id, True)
    out.print(f"activity {activity_id} completed")


@activity_app.command("reopen")
def activity_reopen(activity_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Mark an activity not completed (the mail becomes unread)."""
    with STATE.db.session() as s:
        admin.set_completed(s, activity_id, False)
    out.print(f"activity {activity_id} reopened")


@lead_app.command("update")
def lead_update(
    lead_id: Annotated[int, typer.Argument(metavar="ID")],
    name: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Edit a lead."""
    with STATE.db.session() as s:
        admin.update_lead(s, lead_id, name=name, status=status)
    out.print(f"lead {lead_id} updated")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    database = Database(STATE.config.database_url, migrate=False)
    done = database.upgrade_if_needed()
    out.print(f"database {database.safe_url} " + ("migrated" if done else "is up to date"))


@app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """The status page in the terminal: listeners, nodes, mailboxes (green/red, why, last check)."""
    import asyncio

    from proxy.web.status import gather, probe_tcp

    snap = asyncio.run(gather(STATE.config, STATE.db))
    http = STATE.config.http
    snap.listeners = [
        asyncio.run(probe_tcp("HTTP (status, metrics)", http.host, http.port, "http"))
        if check.key == "http"
        else check
        for check in snap.listeners
        if check.key != "http" or http.enabled
    ]
    if as_json:
        print_json(snap.as_json())
        return
    checks = [vars(c) for c in snap.listeners + snap.nodes]
    table(checks, ["name", "status", "reason", "address"], "no listeners")
    table(
        snap.mailboxes, ["address", "kind", "status", "status_reason", "last_check"], "no mailboxes"
    )
    out.print(f"last day: {snap.leads_today} new leads, {snap.activities_today} activities")


tls_app = typer.Typer(no_args_is_help=True, help="TLS certificates of the relay.")
app.add_typer(tls_app, name="tls")


@tls_app.command("selfsigned")
def tls_selfsigned(
    cert: Annotated[str | None, Opt(help="Certificate file (default: in the data dir).")] = None,
    key: Annotated[str | None, Opt(help="Key file (default: in the data dir).")] = None,
    hostname: Annotated[
        list[str] | None, Opt("--hostname", help="Host name or IP it is for (repeatable).")
    ] = None,
    days: Annotated[int, Opt(min=1, help="Validity in days.")] = 825,
    force: Annotated[bool, Opt("--force", help="Replace existing files.")] = False,
) -> None:
    """Write a self-signed certificate and key for the relay's listeners."""
    from pathlib import Path

    from proxy.tls import default_names, default_paths, write_selfsigned

    default_cert, default_key = default_paths()
    cert_path, key_path = Path(cert or default_cert), Path(key or default_key)
    names = hostname or default_names(STATE.config.relay)
    write_selfsigned(cert_path, key_path, names, days, force)
    out.print(f"wrote {cert_path} and {key_path} (mode 0600) for {', '.join(names)}")
    out.print(f'config: [relay] cert_file = "{cert_path}"  key_file = "{key_path}"', markup=False)


@app.command("serve")
def serve() -> None:
    """SMTP relay, IMAP pollers and scheduler, until SIGTERM."""
    from crm import logs
    from proxy.serve import run_loop
    from proxy.serve import serve as serve_all

    if STATE.config.log_format != "text":
        logs.configure(STATE.config.log_format)  # before the database opens: its migrations log
    run_loop(serve_all(STATE.config, STATE.db))


def main() -> None:
    """Console entry point."""
    app()
