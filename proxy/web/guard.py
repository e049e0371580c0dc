"""The web CRM's door: sign-in and sign-out, the session middleware (every page but ``/login``,
``/healthz``, ``/metrics`` and the static files redirects to ``/login`` without a session; the
session is looked up in the database once per request, 503 while it cannot be reached), the
CSRF check on every state-changing request (403 without the session's token), the security
headers (a Content-Security-Policy without inline scripts), and page rendering with Jinja2
(autoescape on: the CRM is filled by strangers' mail).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from crm.face import StoreError

from .sessions import COOKIE, SessionStore, WebSession
from .signin import SignIn, SignInRefused

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions", SessionStore)
SIGNIN: web.AppKey[SignIn] = web.AppKey("signin", SignIn)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
SESSION: web.RequestKey[WebSession | None] = web.RequestKey("session")
DOWN = "503 Service Unavailable: the database cannot be reached, try again later\n"
OPEN = (
    "/login",
    "/healthz",
    "/metrics",
    "/static/",
    "/dav",
    "/.well-known/",
)  # DAV: own Basic sign-in
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATUS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
MAX_FORM = 64 * 1024


def templates() -> jinja2.Environment:
    """The packaged templates, autoescaped."""
    folder = resources.files("proxy.web") / "templates"
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


async def _look_up(request: web.Request) -> WebSession | None:
    """The cookie's live session (from the database, once per request), kept on the request."""
    try:
        found = await request.app[SESSIONS].get(request.cookies.get(COOKIE))
    except StoreError as exc:
        log.warning("web: sessions unavailable: %s", str(exc).splitlines()[0][:200])
        raise web.HTTPServiceUnavailable(text=DOWN) from exc
    request[SESSION] = found
    return found


def session_of(request: web.Request) -> WebSession | None:
    """The request's live session, if any (looked up by :func:`gate`)."""
    return request.get(SESSION)


def current(request: web.Request) -> WebSession:
    """The request's session (the middleware made sure there is one)."""
    found = session_of(request)
    if found is None:
        raise web.HTTPSeeOther("/login")
    return found


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    """A page from template ``name``, with the viewer and CSRF token of the session."""
    session = session_of(request)
    context.setdefault("message", request.query.get("done", "")[:200])
    html = (
        request.app[TEMPLATES]
        .get_template(name)
        .render(
            viewer=session.viewer if session else None,
            csrf=session.csrf if session else "",
            **context,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault(
        "Content-Security-Policy", STATUS_CSP if request.path == "/status" else CSP
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _add_headers(request, exc)
        raise
    _add_headers(request, response)
    return response


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session required (else to /login), CSRF token required on POST (else 403)."""
    if request.path.startswith(OPEN):
        if request.path == "/login" and COOKIE in request.cookies:
            await _look_up(request)  # the page shows who is signed in already
        return await handler(request)
    session = await _look_up(request)
    if session is None:
        if request.method == "GET":
            target = request.path_qs if request.path != "/" else ""
            raise web.HTTPSeeOther("/login" + (f"?next={quote(target)}" if target else ""))
        raise web.HTTPForbidden(text="403 Forbidden: sign in first\n")
    if request.method not in ("GET", "HEAD"):
        given = request.headers.get("X-CSRF-Token")
        if given is None and request.content_type == "application/x-www-form-urlencoded":
            given = (await request.post()).get("csrf")  # type: ignore[assignment]
        if not session.csrf_ok(given if isinstance(given, str) else None):
            log.info("web: %s %s refused: no valid CSRF token", request.method, request.path)
            raise web.HTTPForbidden(text="403 Forbidden: missing or invalid CSRF token\n")
    return await handler(request)


def _safe_next(value: str) -> str:
    """Only a local path to go back to after sign-in."""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return "/"
    return value[:500]


async def login_page(request: web.Request) -> web.Response:
    """The sign-in form."""
    nxt = _safe_next(request.query.get("next", "/"))
    return render(request, "login.html", error="", email="", next=nxt)


async def login(request: web.Request) -> web.StreamResponse:
    """Check the credentials upstream; a session cookie on success."""
    if request.content_length is not None and request.content_length > MAX_FORM:
        raise web.HTTPRequestEntityTooLarge(MAX_FORM, request.content_length)
    form = await request.post()
    email, password = str(form.get("email", ""))[:400], str(form.get("password", ""))
    nxt = _safe_next(str(form.get("next", "/")))
    try:
        viewer = await request.app[SIGNIN].check(request.remote, email, password)
    except SignInRefused as refused:
        return render(request, "login.html", 401, error=str(refused), email=email, next=nxt)
    await request.app[SESSIONS].end(request.cookies.get(COOKIE))  # a new sign-in replaces it
    session = await request.app[SESSIONS].start(viewer)
    response = web.HTTPSeeOther(nxt)
    response.set_cookie(
        COOKIE, session.token, httponly=True, samesite="Lax", secure=request.secure, path="/"
    )
    log.info("web: %s signed in", viewer.email)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """Forget the session and the cookie."""
    await request.app[SESSIONS].end(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


def static_dir() -> str:
    """The packaged static files (htmx, the stylesheet)."""
    return str(resources.files("proxy.web") / "static")
