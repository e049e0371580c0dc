"""The CRM's records on the command line: ``leads``/``contacts``/``companies``/``activities``
listings (searchable, paged), ``lead``/``contact``/``company`` show with the activity timeline,
``lead convert``/``update`` and ``activity complete``/``reopen``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from crm.face import admin, queries, views

from .common import STATE, IdArg, JsonOpt, MailboxOpt, cell, group, out, print_json, table

leads_app = group("Leads.")
lead_app = group("One lead: show, edit, convert.")
contacts_app = group("Contacts.")
companies_app = group("Companies.")
activities_app = group("Activities.")
activity_app = group("Edit one activity.")
contact_app = group("One contact.")
company_app = group("One company.")

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


def _show(record: dict[str, Any], as_json: bool) -> None:
    """One record: JSON, or its fields and then its activity timeline."""
    if as_json:
        print_json(record)
        return
    for key, value in record.items():
        if key not in ("activities", "contacts", "leads"):
            out.print(f"{key}: {cell(value)}", markup=False)
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
def activity_complete(activity_id: IdArg) -> None:
    """Mark an activity completed (the mail becomes read)."""
    with STATE.db.session() as s:
        admin.set_completed(s, activity_id, True)
    out.print(f"activity {activity_id} completed")


@activity_app.command("reopen")
def activity_reopen(activity_id: IdArg) -> None:
    """Mark an activity not completed (the mail becomes unread)."""
    with STATE.db.session() as s:
        admin.set_completed(s, activity_id, False)
    out.print(f"activity {activity_id} reopened")


@lead_app.command("update")
def lead_update(
    lead_id: IdArg,
    name: Annotated[str | None, typer.Option(metavar="TEXT")] = None,
    status: Annotated[str | None, typer.Option(metavar="TEXT")] = None,
) -> None:
    """Edit a lead."""
    with STATE.db.session() as s:
        admin.update_lead(s, lead_id, name=name, status=status)
    out.print(f"lead {lead_id} updated")


GROUPS = (
    ("leads", leads_app),
    ("lead", lead_app),
    ("contacts", contacts_app),
    ("companies", companies_app),
    ("activities", activities_app),
    ("activity", activity_app),
    ("contact", contact_app),
    ("company", company_app),
)
