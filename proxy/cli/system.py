"""The gateway itself on the command line: ``db upgrade``, ``db prune-dav-changes`` (the DAV
change log now), ``status`` (the status page in the terminal), ``tls selfsigned`` (certificates
for the relay) and ``serve`` (everything, until SIGTERM)."""

from __future__ import annotations

from typing import Annotated, Any

from crm import logs
from crm.face import Database

from .common import STATE, JsonOpt, Opt, fail, group, out, print_json, table

db_app = group("The database.")
tls_app = group("TLS certificates of the relay.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    database = Database(STATE.config.database_url, migrate=False)
    done = database.upgrade_if_needed()
    out.print(f"database {database.safe_url} " + ("migrated" if done else "is up to date"))


@db_app.command("prune-dav-changes")
def db_prune_dav_changes(
    older_than_days: Annotated[
        int | None,
        Opt(metavar="N", min=1, help="Retention in days (default: [dav] change_log_days)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete the DAV change log's changes older than N days now (serve does it every hour)."""
    from crm.face.dav import prune_changes

    days = older_than_days or STATE.config.dav.change_log_days
    if not days:
        fail("[dav] change_log_days = 0 keeps every change: give --older-than-days N")
    done = prune_changes(STATE.db, days)
    if as_json:
        print_json({"deleted": done.deleted, "older_than_days": days, "below": done.below})
    elif done.below is None:
        out.print(f"nothing deleted: no DAV change is older than {days} days")
    else:
        out.print(f"deleted {done.deleted} DAV changes older than {days} days")


def status(as_json: JsonOpt = False) -> None:
    """The status page in the terminal: listeners, nodes, mailboxes (green/red, why, last check)."""
    import asyncio

    from proxy.web.status import gather, probe_tcp

    snap = asyncio.run(gather(STATE.config, STATE.db, from_node=False))
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
    rows = [{**box, "skipped (faults)": faults_text(box.get("faults"))} for box in snap.mailboxes]
    columns = ["address", "kind", "status", "status_reason", "last_check", "skipped (faults)"]
    table(rows, columns, "no mailboxes")
    out.print(f"last day: {snap.leads_today} new leads, {snap.activities_today} activities")


def faults_text(faults: dict[str, Any] | None) -> str:
    """SPEC B6: ``1, last: capture error: RecursionError at 2026-...`` (``0`` without any)."""
    if not faults or not faults["skipped"]:
        return "0"
    return f"{faults['skipped']}, last: {faults['last_reason']} at {faults['last_at']}"


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


def serve() -> None:
    """SMTP relay, IMAP pollers and scheduler, until SIGTERM."""
    from proxy.serve import run_loop
    from proxy.serve import serve as serve_all

    if STATE.config.log_format != "text":
        logs.configure(STATE.config.log_format)  # before the database opens: its migrations log
    run_loop(serve_all(STATE.config, STATE.db))
