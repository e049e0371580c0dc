"""The ``mailcrm`` command line (typer): the contract of ``docs/CLI.md`` for admins and users.

Commands only parse arguments, call :mod:`crm.face.admin` / :mod:`crm.capture.path` /
:mod:`crm.face.views` and print. Errors are one line on stderr and exit 1; usage errors exit 2;
``--json`` prints only JSON on stdout.
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
from typer.core import TyperArgument, TyperGroup, TyperOption

from crm import logs
from crm.capture.path import Capturer, CaptureResult
from crm.capture.sources import read_sources
from crm.config import Config, load_config
from crm.errors import InvalidInput, MailcrmError
from crm.face import admin, queries, views
from crm.mailboxes.presets import PRESETS
from crm.store.db import Database
from crm.store.secrets import SecretBox, load_key
from crm.vocab import INTERVALS, TLS_MODES, Direction
from proxy.cli import oauth as oauth_cli


def _flag_type(self: TyperOption, ctx: ClickContext) -> str | None:
    """--help: a flag shows as a flag (no ``<bool>``), a value as its metavar."""
    return None if self.is_flag and self.metavar is None else _OPTION_TYPE(self, ctx)


def _argument_type(self: TyperArgument, ctx: ClickContext) -> str | None:
    """--help: an argument named by its metavar (``ADDRESS``) needs no ``<str>`` besides."""
    return None if self.metavar is not None else _ARGUMENT_TYPE(self, ctx)


_OPTION_TYPE, _ARGUMENT_TYPE = TyperOption.display_type_rich, TyperArgument.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]
TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign,assignment]


def _choice(*allowed: str) -> Callable[[str | None], str | None]:
    """A usage check (exit 2): the value is one of ``allowed``."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"must be one of {', '.join(allowed)}, not {value!r}")
        return value

    return check


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
lead_app = typer.Typer(no_args_is_help=True, help="One lead: show, edit, convert.")
contacts_app = typer.Typer(no_args_is_help=True, help="Contacts.")
companies_app = typer.Typer(no_args_is_help=True, help="Companies.")
activities_app = typer.Typer(no_args_is_help=True, help="Activities.")
activity_app = typer.Typer(no_args_is_help=True, help="Edit one activity.")
contact_app = typer.Typer(no_args_is_help=True, help="One contact.")
company_app = typer.Typer(no_args_is_help=True, help="One company.")
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
    (contact_app, "contact"),
    (company_app, "company"),
):
    app.add_typer(sub, name=name)
app.add_typer(oauth_cli.app, name="oauth")  # issue 15: oauth provider ...
oauth_cli.register(mailbox_app)  # issue 15: mailbox authorize, mailbox app-password

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
    grid = Table()
    for name in columns:  # at 80 columns long values fold onto more lines, never cut off
        grid.add_column(name, overflow="fold", min_width=min(len(name), 12))
    for row in rows:
        grid.add_row(*(_cell(row.get(c)) for c in columns))
    out.print(grid, soft_wrap=False)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


@app.callback()
def root(
    db: Annotated[str | None, typer.Option("--db", metavar="URL", help="Database URL.")] = None,
    config: Annotated[
        str | None, typer.Option("--config", metavar="PATH", help="TOML config file.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log to stderr.")] = False,
) -> None:
    """Root options shared by every command."""
    STATE.db_url, STATE.config_path = db, config
    if db and _has_password(db):
        typer.echo("mailcrm: warning: the password in --db is visible to every local user (ps); "
                   "set MAILCRM_DATABASE_URL or database_url in the config file instead", err=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.formatter("text"))  # escaped, cut, redacted; json replaces it later
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return bool(make_url(url).password)
    except (ArgumentError, ValueError):
        return False


# --- users -----------------------------------------------------------------------------------


@user_app.command("add")
def user_add(
    email: Email,
    name: Annotated[str, typer.Option(metavar="TEXT", help="Full name.")] = "",
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

    from crm.store.models import User

    with STATE.db.session() as s:
        rows = [views.user_json(u) for u in s.scalars(select(User).order_by(User.email))]
    print_json(rows) if as_json else table(
        rows, ["email", "name", "admin", "crm_access"], "no users"
    )


@user_app.command("remove")
def user_remove(
    email: Email,
    force: Annotated[
        bool, typer.Option("--force", help="Also when they own a mailbox (it is unlinked).")
    ] = False,
) -> None:
    """Remove an employee (refused while they own a mailbox, unless --force)."""
    with STATE.db.session() as s:
        unlinked = admin.remove_user(s, email, force)
    out.print(f"user {email} removed", markup=False)
    for address in unlinked:
        out.print(f"mailbox {address} kept, without owner and unlinked", markup=False)


@user_app.command("set")
def user_set(
    email: Email,
    name: Annotated[str | None, typer.Option(metavar="TEXT", help="Full name.")] = None,
    is_admin: Annotated[
        bool | None, typer.Option("--admin/--no-admin", help="May manage the gateway.")
    ] = None,
    crm: Annotated[bool | None, typer.Option("--crm/--no-crm", help="CRM access.")] = None,
) -> None:
    """Change an employee."""
    with STATE.db.session() as s:
        admin.set_user(s, email, name, is_admin, crm)
    out.print(f"user {email} updated", markup=False)


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
    options["allow_plaintext_smtp"] = STATE.config.relay.allow_plaintext_upstream
    return admin.MailboxSettings(**options)


Opt = typer.Option
Preset = Annotated[str | None, Opt(metavar="NAME", help="A preset of `mailbox presets`.")]
Host = Annotated[str | None, Opt(metavar="HOST")]
Port = Annotated[int | None, Opt(metavar="PORT", min=1, max=65535)]
Tls = Annotated[
    str | None, Opt(metavar="ssl|starttls|none", callback=_choice(*TLS_MODES), help="TLS mode.")
]
Login = Annotated[str | None, Opt(metavar="NAME", help="Login name (default: the address).")]
PwStdin = Annotated[bool, Opt("--password-stdin", help="Read the password from stdin.")]
Link = Annotated[bool | None, Opt("--link/--no-link", help="Link to the CRM.")]
Since = Annotated[
    str | None, Opt(metavar="3d|all", callback=_choice("3d", "all"), help="Initial import window.")
]
Leads = Annotated[bool | None, Opt("--create-leads/--no-create-leads")]
Vcards = Annotated[bool | None, Opt("--vcard-contacts/--no-vcard-contacts")]
Folders = Annotated[str | None, Opt(metavar="NAME,NAME", help="Folders to process.")]
Interval = Annotated[
    str | None,
    Opt(metavar="|".join(INTERVALS), callback=_choice(*INTERVALS), help="Company: check interval."),
]
Queue = Annotated[
    str | None, Opt(metavar="EMAIL,EMAIL", help="Company: distribution queue of employees.")
]
Auth = Annotated[
    str | None,
    Opt(metavar="password|oauth2", callback=_choice("password", "oauth2"), help="Sign-in."),
]
OAuthProvider = Annotated[str | None, Opt(metavar="NAME", help="For --auth oauth2.")]
Address = Annotated[str, typer.Argument(metavar="ADDRESS", show_default=False)]
Email = Annotated[str, typer.Argument(metavar="EMAIL", show_default=False)]


@mailbox_app.command("add")
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
        state = "linked" if box.linked else "not linked"
        if box.auth == "oauth2" and not box.linked:
            state += f"; sign in with `mailcrm mailbox authorize {box.address}`"
        elif box.linked and box.secret is None and box.auth != "oauth2":
            state += f"; no password stored: not checked until `mailcrm mailbox set {box.address}"
            state += " --password-stdin`"
        out.print(f"mailbox {box.address} added ({box.kind}, {state})", markup=False)


@mailbox_app.command("set")
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
        admin.apply_settings(s, STATE.secrets(), box, _settings(**options))
    out.print(f"mailbox {address} updated")


@mailbox_app.command("list")
def mailbox_list(as_json: JsonOpt = False) -> None:
    """List mailboxes with their status."""
    from sqlalchemy import select

    from crm.mailboxes.schedule import schedule_json
    from crm.store.models import Mailbox

    with STATE.db.session() as s:
        rows = []
        for box in s.scalars(select(Mailbox).order_by(Mailbox.address)):
            rows.append(views.mailbox_json(box))
            rows[-1]["schedule"] = schedule_json(box, STATE.config.poller)
    print_json(rows) if as_json else table(
        rows,
        ["address", "kind", "owner", "linked", "status", "status_reason", "last_check"],
        "no mailboxes",
    )


@mailbox_app.command("show")
def mailbox_show(address: Address, as_json: JsonOpt = False) -> None:
    """Show one mailbox."""
    from crm.mailboxes.schedule import schedule_json

    with STATE.db.session() as s:
        box = admin.get_mailbox(s, address)
        data = views.mailbox_json(box)
        data["schedule"] = schedule_json(box, STATE.config.poller)
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        out.print(f"{key}: {_cell(value)}")


@mailbox_app.command("check")
def mailbox_check(address: Address, as_json: JsonOpt = False) -> None:
    """Verify settings and connection (IMAP login, folders, SMTP login); collects no mail."""
    import asyncio

    from crm.mailboxes import sync
    from proxy.imap.check import check_mailbox
    from proxy.imap.plan import load_plan

    settings = STATE.config.poller
    plan = load_plan(STATE.db, address, STATE.secrets(), settings)
    tokens = oauth_cli.tokens(STATE.db, STATE.secrets())  # OAuth2 mailboxes (issue 15)
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


@mailbox_app.command("import")
def mailbox_import(
    address: Address,
    since: Annotated[
        str | None,
        Opt(metavar="3d|all", callback=_choice("3d", "all"), help="Import window, stored."),
    ] = None,
    wait: Annotated[
        bool,
        Opt("--wait", help="Wait as long as it takes for another import or the serve node."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Import a mailbox now, in the foreground with a progress bar (Ctrl-C stops, rerun resumes)."""
    import asyncio

    from crm.mailboxes.schedule import touch_owner
    from proxy.imap.foreground import ForegroundImport, prepare
    from proxy.imap.importview import make_view
    from proxy.imap.plan import load_plan

    config = STATE.config
    plan = load_plan(STATE.db, address, STATE.secrets(), config.poller)
    window = prepare(plan, since, config.poller)
    with STATE.db.session() as s:
        owner = admin.get_mailbox(s, address).owner
        if owner is not None:
            touch_owner(s, owner.email)  # T1: an import run for the owner's mailbox
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
def mailbox_remove(address: Address) -> None:
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
            "auth",
        ],
        "no presets",
    )


# --- exclusions ------------------------------------------------------------------------------

MailboxOpt = Annotated[
    str | None, typer.Option("--mailbox", metavar="ADDRESS", help="Only for this mailbox.")
]


@exclude_app.command("add")
def exclude_add(
    entry: Annotated[str, typer.Argument(metavar="ENTRY")], mailbox: MailboxOpt = None
) -> None:
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
def exclude_remove(
    entry: Annotated[str, typer.Argument(metavar="ENTRY")], mailbox: MailboxOpt = None
) -> None:
    """Remove an exclusion."""
    with STATE.db.session() as s:
        admin.remove_exclusion(s, entry, mailbox)
    out.print(f"exclusion {entry} removed")


# --- capture ---------------------------------------------------------------------------------


@app.command("capture")
def capture(
    mailbox: Annotated[
        str, typer.Option(metavar="ADDRESS", help="The mailbox the mail belongs to.")
    ],
    direction: Annotated[
        str, typer.Option(metavar="in|out", callback=_choice("in", "out"), help="in or out.")
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
            callback=_choice("3d", "all"),
            help="all: capture old mail too, whatever the mailbox's import window.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run raw RFC 5322 messages through the capture path and print what it did."""
    from crm.capture import archive

    if direction not in ("in", "out"):
        fail("--direction must be in or out", 2)
    if since not in (None, "3d", "all"):
        fail(f"--since must be 3d or all, not {since!r}", 2)
    way = Direction.INCOMING if direction == "in" else Direction.OUTGOING
    with STATE.db.session() as s:
        address = admin.get_mailbox(s, mailbox).address
    batch = archive.Batch(address, way, seen, window=since != "all")
    sources = read_sources(paths or ["-"], sys.stdin.buffer)
    results = archive.capture_batch(Capturer(STATE.db, STATE.config.capture), batch, sources)
    if as_json:
        print_json([r.as_json() for r in results])
        return
    for r in results:
        out.print(_describe(r), markup=False)
    out.print(archive.summary(results, address), markup=False)


def _describe(r: CaptureResult) -> str:
    if r.action != "captured":
        return f"{r.source}: {r.action}" + (f" ({r.reason})" if r.reason else "")
    made = ", ".join(f"{len(v)} {k}" for k, v in r.created.as_json().items() if v)
    return f"{r.source}: captured as activity {r.activities[0]}" + (f"; new {made}" if made else "")


# --- listings --------------------------------------------------------------------------------


TABLE_LIMIT = 100
Search = Annotated[
    str | None,
    typer.Option(metavar="TEXT", help="Only rows whose name, address or subject has TEXT."),
]
Limit = Annotated[
    int | None,
    typer.Option(
        metavar="N", min=0, help=f"At most N rows (default: {TABLE_LIMIT} in a table, all in JSON)."
    ),
]


def _page(page: queries.Page, columns: list[str], empty: str, as_json: bool) -> None:
    """Print a page of a listing; say on stderr when it is not everything."""
    if len(page.rows) < page.total:
        typer.echo(
            f"mailcrm: showing {len(page.rows)} of {page.total}; use --limit N or --search TEXT",
            err=True,
        )
    print_json(page.rows) if as_json else table(page.rows, columns, empty)


def _filter(search: str | None, limit: int | None, as_json: bool) -> queries.Filter:
    return queries.Filter(search, limit if limit is not None or as_json else TABLE_LIMIT)


@leads_app.command("list")
def leads_list(
    as_json: JsonOpt = False,
    search: Search = None,
    limit: Limit = None,
    show_all: Annotated[bool, typer.Option("--all", help="Converted leads too.")] = False,
) -> None:
    """List leads (not the converted ones unless --all)."""
    with STATE.db.session() as s:
        page = queries.leads(s, _filter(search, limit, as_json), converted=show_all)
    columns = ["id", "name", "emails", "company", "responsible", "mailbox", "status"]
    _page(page, columns, "no leads", as_json)


@contacts_app.command("list")
def contacts_list(as_json: JsonOpt = False, search: Search = None, limit: Limit = None) -> None:
    """List contacts."""
    with STATE.db.session() as s:
        page = queries.contacts(s, _filter(search, limit, as_json))
    _page(page, ["id", "name", "emails", "phones", "company"], "no contacts", as_json)


@companies_app.command("list")
def companies_list(as_json: JsonOpt = False) -> None:
    """List companies."""
    with STATE.db.session() as s:
        rows = views.companies_json(s)
    print_json(rows) if as_json else table(rows, ["id", "name", "domain"], "no companies")


@activities_app.command("list")
def activities_list(
    as_json: JsonOpt = False, mailbox: MailboxOpt = None, search: Search = None, limit: Limit = None
) -> None:
    """List activities."""
    with STATE.db.session() as s:
        page = queries.activities(s, _filter(search, limit, as_json), mailbox)
    columns = ["id", "direction", "subject", "mailbox", "completed", "bindings"]
    _page(page, columns, "no activities", as_json)


IdArg = Annotated[int, typer.Argument(metavar="ID")]


def _show(record: dict[str, Any], as_json: bool) -> None:
    """One record: JSON, or its fields and then its activity timeline."""
    if as_json:
        print_json(record)
        return
    for key, value in record.items():
        if key not in ("activities", "contacts", "leads"):
            out.print(f"{key}: {_cell(value)}", markup=False)
    for key in ("contacts", "leads"):
        if key in record:
            names = [f"{r['id']} {r['name']}" for r in record[key]]
            out.print(f"{key}: {', '.join(names) or '-'}", markup=False)
    table(record["activities"], ["date", "direction", "subject", "mailbox", "completed"],
          "no activities")  # fmt: skip


@lead_app.command("show")
def lead_show(lead_id: IdArg, as_json: JsonOpt = False) -> None:
    """Show a lead and its activity timeline."""
    with STATE.db.session() as s:
        _show(queries.lead(s, lead_id), as_json)


@contact_app.command("show")
def contact_show(contact_id: IdArg, as_json: JsonOpt = False) -> None:
    """Show a contact and its activity timeline."""
    with STATE.db.session() as s:
        _show(queries.contact(s, contact_id), as_json)


@company_app.command("show")
def company_show(company_id: IdArg, as_json: JsonOpt = False) -> None:
    """Show a company, its contacts and leads, and their activity timeline."""
    with STATE.db.session() as s:
        _show(queries.company(s, company_id), as_json)


@lead_app.command("convert")
def lead_convert(
    lead_id: IdArg,
    company: Annotated[
        str | None, typer.Option(metavar="NAME", help="The contact's company (found or made).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert a lead into a contact; its activities move to the contact."""
    from crm.face.convert import convert_lead

    with STATE.db.session() as s:
        done = convert_lead(s, lead_id, company)
    if as_json:
        print_json(vars(done))
        return
    made = "new contact" if done.new_contact else "contact"
    where = f", company {done.company}" if done.company is not None else ""
    out.print(f"lead {lead_id} converted: {made} {done.contact}{where}; "
              f"{done.activities} activities moved")  # fmt: skip


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
    name: Annotated[str | None, typer.Option(metavar="TEXT")] = None,
    status: Annotated[str | None, typer.Option(metavar="TEXT")] = None,
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
    cert: Annotated[
        str | None, Opt(metavar="PATH", help="Certificate file (default: in the data dir).")
    ] = None,
    key: Annotated[
        str | None, Opt(metavar="PATH", help="Key file (default: in the data dir).")
    ] = None,
    hostname: Annotated[
        list[str] | None,
        Opt("--hostname", metavar="NAME", help="Host name or IP it is for (repeatable)."),
    ] = None,
    days: Annotated[int, Opt(metavar="N", min=1, help="Validity in days.")] = 825,
    force: Annotated[bool, Opt("--force", help="Replace existing files.")] = False,
) -> None:
    """Write a self-signed certificate and key for the relay's listeners."""
    from pathlib import Path

    from proxy.smtp.tls import default_names, default_paths, write_selfsigned

    default_cert, default_key = default_paths()
    cert_path, key_path = Path(cert or default_cert), Path(key or default_key)
    names = hostname or default_names(STATE.config.relay)
    write_selfsigned(cert_path, key_path, names, days, force)
    out.print(f"wrote {cert_path} and {key_path} (mode 0600) for {', '.join(names)}")
    out.print(f'config: [relay] cert_file = "{cert_path}"  key_file = "{key_path}"', markup=False)


@app.command("serve")
def serve() -> None:
    """SMTP relay, IMAP pollers and scheduler, until SIGTERM."""
    from proxy.serve import run_loop
    from proxy.serve import serve as serve_all

    if STATE.config.log_format != "text":
        logs.configure(STATE.config.log_format)  # before the database opens: its migrations log
    run_loop(serve_all(STATE.config, STATE.db))


def main() -> None:
    """Console entry point."""
    app()
