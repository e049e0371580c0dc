"""The ``mailcrm`` command line (typer): the contract of ``docs/CLI.md`` for admins and users.

This is the entry point (``mailcrm = "cli:main"``): it builds the root command with its shared
options and registers the command groups, which live in :mod:`proxy.cli` (one module per group).
Commands only parse arguments, call the CRM's face (:mod:`crm.face`) and print. Errors are one
line on stderr and exit 1; usage errors exit 2; ``--json`` prints only JSON on stdout.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from crm import logs
from crm.face import url_has_password
from proxy.cli import capture, exclusions, mailboxes, oauth, records, system, users
from proxy.cli.common import STATE, RootGroup

app = typer.Typer(
    cls=RootGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="mailcrm: a self-hosted mail-to-CRM gateway.",
)
# The order here is the order of `mailcrm --help`: commands first, then the groups.
app.command("capture")(capture.capture)
app.command("status")(system.status)
app.command("serve")(system.serve)
for name, group in (
    ("user", users.app),
    ("mailbox", mailboxes.app),
    ("exclude", exclusions.app),
    ("db", system.db_app),
    *records.GROUPS,
    ("tls", system.tls_app),
):
    app.add_typer(group, name=name)
app.add_typer(oauth.app, name="oauth")  # issue 15: oauth provider add/set/list
oauth.register(mailboxes.app)  # issue 15: mailbox authorize, mailbox app-password


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
    if db and url_has_password(db):
        typer.echo(
            "mailcrm: warning: the password in --db is visible to every local user (ps); "
            "set MAILCRM_DATABASE_URL or database_url in the config file instead",
            err=True,
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.formatter("text"))  # escaped, cut, redacted; json replaces it later
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def main() -> None:
    """Console entry point."""
    app()
