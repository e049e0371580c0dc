"""The web CRM's pages (issue 18): leads, contacts, companies, activities and the dashboard, with
the CLI's IDs. Data only through :mod:`crm.face` (the same listings and rules as the CLI), in
worker threads; every list and record is what the signed-in viewer may see (SPEC V1): another's
record answers 404, a write outside one's own 403.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from crm.errors import InvalidInput, NotFound, PermissionDenied
from crm.face import Database, admin, queries, views
from crm.face import web as face
from crm.face.convert import convert_lead
from crm.face.visibility import Viewer

from .charts import bars
from .figures import KEEPER, WAKE
from .guard import current, render

DB: web.AppKey[Database] = web.AppKey("crm_db", Database)
PAGE = 50
COUNT_CAP = 1000  # a listing counts this many rows past its page at most ("1,000+ in all")
T = TypeVar("T")


async def _run(request: web.Request, work: Callable[[Any], T]) -> T:
    """``work(session)`` in a worker thread; NotFound -> 404, PermissionDenied -> 403."""
    db = request.app[DB]

    def job() -> T:
        with db.session() as session:
            return work(session)

    try:
        return await asyncio.to_thread(job)
    except NotFound as exc:
        raise web.HTTPNotFound(text=f"404 Not Found: {exc}\n") from exc
    except PermissionDenied as exc:
        raise web.HTTPForbidden(text=f"403 Forbidden: {exc}\n") from exc
    except InvalidInput as exc:
        raise web.HTTPBadRequest(text=f"400 Bad Request: {exc}\n") from exc


def _viewer(request: web.Request) -> Viewer:
    return current(request).viewer


def _int(value: str | None, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        return max(0, min(int(value), 2**31 - 1))
    except ValueError:
        return default


def _id(request: web.Request) -> int:
    found = _int(request.match_info["id"])
    if found is None:
        raise web.HTTPNotFound()
    return found


def _pager(request: web.Request, page: queries.Page, offset: int) -> dict[str, Any]:
    def link(at: int) -> str:
        return urlencode({**request.query, "offset": str(at)})

    more = offset + PAGE < page.total or (page.capped and len(page.rows) == PAGE)
    return {
        "rows": page.rows,
        "total": page.total,
        "capped": page.capped,
        "first": offset + 1 if page.rows else 0,
        "last": offset + len(page.rows),
        "prev": link(max(0, offset - PAGE)) if offset > 0 else None,
        "next": link(offset + PAGE) if more else None,
    }


def _wanted(request: web.Request) -> tuple[queries.Filter, int]:
    offset = _int(request.query.get("offset"), 0) or 0
    search = request.query.get("q", "").strip()[:200] or None
    return queries.Filter(search, PAGE, offset, cap=COUNT_CAP), offset


async def leads(request: web.Request) -> web.Response:
    """``/leads``: search, status and responsible filters, paging."""
    viewer, (wanted, offset) = _viewer(request), _wanted(request)
    status = request.query.get("status", "")[:40] or None
    responsible = _int(request.query.get("responsible"))

    def work(s: Any) -> tuple[queries.Page, list[face.Employee], list[str]]:
        page = queries.leads(s, wanted, viewer=viewer, status=status, responsible=responsible)
        return page, face.employees(s), face.statuses(s)

    page, people, known = await _run(request, work)
    return render(
        request, "leads.html", page=_pager(request, page, offset), q=wanted.search or "",
        chosen=status or "", responsible=responsible, employees=people, statuses=known,
    )  # fmt: skip


async def lead(request: web.Request) -> web.Response:
    """``/leads/ID``: the lead, its timeline, Status/Save, reassign, Convert."""
    viewer, lead_id = _viewer(request), _id(request)

    def work(s: Any) -> tuple[dict[str, Any], list[face.Employee], list[str]]:
        return queries.lead(s, lead_id, viewer=viewer), face.employees(s), face.statuses(s)

    record, people, known = await _run(request, work)
    return render(request, "lead.html", record=record, employees=people, statuses=known)


async def _form(request: web.Request, name: str) -> str:
    return str((await request.post()).get(name, ""))[:320].strip()


async def lead_status(request: web.Request) -> web.StreamResponse:
    """Save a lead's status."""
    viewer, lead_id, status = _viewer(request), _id(request), await _form(request, "status")
    if not status or status == "converted":
        raise web.HTTPBadRequest(text="400 Bad Request: pick a status\n")
    await _run(request, lambda s: admin.update_lead(s, lead_id, viewer=viewer, status=status))
    raise web.HTTPSeeOther(f"/leads/{lead_id}?" + urlencode({"done": "Status saved."}))


async def lead_responsible(request: web.Request) -> web.StreamResponse:
    """Give a lead to another employee."""
    viewer, lead_id, email = _viewer(request), _id(request), await _form(request, "responsible")
    await _run(request, lambda s: face.reassign(s, lead_id, email, viewer=viewer))
    raise web.HTTPSeeOther(f"/leads/{lead_id}?" + urlencode({"done": "Lead reassigned."}))


async def lead_convert(request: web.Request) -> web.StreamResponse:
    """Convert a lead into a contact, as ``mailcrm lead convert`` does."""
    viewer, lead_id = _viewer(request), _id(request)
    done = await _run(request, lambda s: convert_lead(s, lead_id, viewer=viewer))
    raise web.HTTPSeeOther(f"/contacts/{done.contact}?" + urlencode({"done": "Lead converted."}))


async def contacts(request: web.Request) -> web.Response:
    """``/contacts``."""
    viewer, (wanted, offset) = _viewer(request), _wanted(request)
    page = await _run(request, lambda s: queries.contacts(s, wanted, viewer=viewer))
    return render(
        request, "list.html", title="Contacts", kind="contacts", q=wanted.search or "",
        page=_pager(request, page, offset), columns=["Name", "Emails", "Phones", "Company"],
        fields=["emails", "phones", "company"],
    )  # fmt: skip


async def companies(request: web.Request) -> web.Response:
    """``/companies``."""
    viewer, (wanted, offset) = _viewer(request), _wanted(request)
    page = await _run(request, lambda s: queries.companies(s, wanted, viewer=viewer))
    return render(
        request, "list.html", title="Companies", kind="companies", q=wanted.search or "",
        page=_pager(request, page, offset), columns=["Name", "Domain"], fields=["domain"],
    )  # fmt: skip


async def contact(request: web.Request) -> web.Response:
    """``/contacts/ID``."""
    viewer, cid = _viewer(request), _id(request)
    record = await _run(request, lambda s: queries.contact(s, cid, viewer=viewer))
    return render(request, "record.html", record=record)


async def company(request: web.Request) -> web.Response:
    """``/companies/ID``: its contacts, leads and timeline."""
    viewer, cid = _viewer(request), _id(request)
    record = await _run(request, lambda s: queries.company(s, cid, viewer=viewer))
    return render(request, "record.html", record=record)


async def activities(request: web.Request) -> web.Response:
    """``/activities``: open ones first."""
    viewer, (wanted, offset) = _viewer(request), _wanted(request)
    page = await _run(request, lambda s: face.open_first(s, wanted, viewer=viewer))
    return render(
        request, "activities.html", page=_pager(request, page, offset), q=wanted.search or ""
    )


async def complete(request: web.Request) -> web.StreamResponse:
    """Complete an activity (the poller marks the mail \\Seen upstream, as for the CLI)."""
    viewer, aid = _viewer(request), _id(request)

    def work(s: Any) -> dict[str, Any]:
        admin.set_completed(s, aid, True, viewer=viewer)
        s.flush()
        return views.activities_json(s, ids=[aid])[0]

    row = await _run(request, work)
    if request.headers.get("HX-Request"):
        return render(request, "_activity_row.html", a=row)
    raise web.HTTPSeeOther("/activities?" + urlencode({"done": "Activity completed."}))


async def dashboard(request: web.Request) -> web.Response:
    """``/``: new leads per week, open activities per employee, response times."""
    return render(request, "dashboard.html", **_figures(request))


async def dashboard_figures(request: web.Request) -> web.Response:
    """``/dashboard/figures``: the charts alone, which the placeholder loads (htmx)."""
    return render(request, "_figures.html", **_figures(request))


def _figures(request: web.Request) -> dict[str, Any]:
    """The last figures the background task made (:mod:`.figures`); a request never computes
    them. None yet: the task is woken and the page shows a placeholder that reloads itself."""
    kept = request.app[KEEPER].read(_viewer(request))
    if kept is None:
        request.app[WAKE].set()
        return {"charts": None, "as_of": None}
    data = kept.figures
    charts = {
        "new_leads": bars([(w, float(n)) for w, n in data.new_leads]),
        "open": bars([(e, float(n)) for e, n in data.open_by_employee]),
        "responses": bars(data.response_hours, " h"),
    }
    return {"charts": charts, "as_of": kept.as_of.strftime("%H:%M UTC")}


def add_routes(app: web.Application) -> None:
    """The CRM's routes."""
    r = app.router
    r.add_get("/", dashboard)
    r.add_get("/dashboard/figures", dashboard_figures)
    r.add_get("/leads", leads)
    r.add_get("/leads/{id}", lead)
    r.add_post("/leads/{id}/status", lead_status)
    r.add_post("/leads/{id}/responsible", lead_responsible)
    r.add_post("/leads/{id}/convert", lead_convert)
    r.add_get("/contacts", contacts)
    r.add_get("/contacts/{id}", contact)
    r.add_get("/companies", companies)
    r.add_get("/companies/{id}", company)
    r.add_get("/activities", activities)
    r.add_post("/activities/{id}/complete", complete)
