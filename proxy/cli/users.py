"""``mailcrm user``: the employees (SPEC U1-U3)."""

from __future__ import annotations

from typing import Annotated

import typer

from crm.face import admin, views

from .common import STATE, Email, JsonOpt, choice, group, out, print_json, table

app = group("Employees (U1-U3).")

Sees = Annotated[
    str | None,
    typer.Option(
        metavar="own|all",
        callback=choice("own", "all"),
        help="What of the CRM they see (V1): own records or all (default: all for admins).",
    ),
]


@app.command("add")
def user_add(
    email: Email,
    name: Annotated[str, typer.Option(metavar="TEXT", help="Full name.")] = "",
    is_admin: Annotated[bool, typer.Option("--admin", help="May manage the gateway.")] = False,
    no_crm: Annotated[bool, typer.Option("--no-crm", help="No CRM access.")] = False,
    sees: Sees = None,
) -> None:
    """Add an employee."""
    with STATE.db.session() as s:
        user = admin.add_user(s, email, name, is_admin, not no_crm, sees)
        out.print(f"user {user.email} added")


@app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    """List employees."""
    with STATE.db.session() as s:
        rows = views.users_json(s)
    print_json(rows) if as_json else table(
        rows, ["email", "name", "admin", "crm_access", "sees"], "no users"
    )


@app.command("remove")
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


@app.command("set")
def user_set(
    email: Email,
    name: Annotated[str | None, typer.Option(metavar="TEXT", help="Full name.")] = None,
    is_admin: Annotated[
        bool | None, typer.Option("--admin/--no-admin", help="May manage the gateway.")
    ] = None,
    crm: Annotated[bool | None, typer.Option("--crm/--no-crm", help="CRM access.")] = None,
    sees: Sees = None,
) -> None:
    """Change an employee."""
    with STATE.db.session() as s:
        admin.set_user(s, email, name, is_admin, crm, sees)
    out.print(f"user {email} updated", markup=False)
