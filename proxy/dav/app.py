"""CardDAV (RFC 6352) and CalDAV (RFC 4791) under ``/dav/`` on the web listener of ``mailcrm
serve``, built on xandikos' WebDAV layer (the XML, PROPFIND/REPORT/sync-collection machinery);
the collections are :mod:`proxy.dav.resources` over the CRM, which stays the only store.

A request is signed in first (:mod:`proxy.dav.signin`), its body read with a size bound, and
then handed to xandikos in a worker thread with its own event loop (the CRM's database calls
are synchronous: they must not stall the relay on the main loop).
"""

from __future__ import annotations

import asyncio
import io
import logging
import xml.etree.ElementTree as ET
from typing import Any

from aiohttp import hdrs, web
from xandikos import access, caldav, carddav, sync, webdav

from crm.config import Config
from crm.face import Database

from . import resources, tree
from .context import CURRENT, MAX_CARD, Request
from .signin import Refused, SignIn

log = logging.getLogger("proxy.dav")
PREFIX = "/dav"
REALM = 'Basic realm="mailcrm CRM", charset="UTF-8"'
MAX_BODY = 2 * MAX_CARD  # bytes of a request body (XML or payload)
SIGNIN: web.AppKey[SignIn] = web.AppKey("dav_signin", SignIn)
DAVAPP: web.AppKey[Any] = web.AppKey("dav_app", object)


class TruncatingSync(sync.SyncCollectionReporter):
    """sync-collection answering a long change list in parts (RFC 6578 3.6): a 507 for the
    request URI and the token of the part answered; the client asks again from there. A token
    it cannot answer (unknown, or older than the pruned change log) is 403 with
    DAV:valid-sync-token (RFC 6578 3.2; xandikos says 412): the client drops it and syncs anew."""

    async def report(self, environ: Any, body: Any, by_hrefs: Any, *args: Any) -> Any:
        try:
            response = await super().report(environ, body, by_hrefs, *args)
        except webdav.PreconditionFailure as exc:
            if exc.precondition != "{DAV:}valid-sync-token":
                raise
            raise webdav.ForbiddenPrecondition(exc.precondition, exc.description) from exc
        req = CURRENT.get()
        if req.truncated is None or not str(response.status).startswith("207"):
            return response
        root = ET.fromstring(b"".join(bytes(chunk) for chunk in response.body))
        token = root.find("{DAV:}sync-token")
        if token is not None:
            token.text = req.truncated
            href = environ["SCRIPT_NAME"] + environ["ORIGINAL_ENVIRON"]["PATH_INFO"]
            error = ET.Element("{DAV:}number-of-matches-within-limits")
            full = webdav.Status(href, "507 Insufficient Storage", error=error)
            root.insert(list(root).index(token), full.aselement())  # type: ignore[no-untyped-call]
        text = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return webdav.Response(
            status="207 Multi-Status",
            headers={"Content-Type": "application/xml; charset=utf-8"},
            body=[text],
        )


class DavApp(webdav.WebDAVApp):
    """xandikos' WebDAV app with the CardDAV/CalDAV properties and reports mailcrm serves."""

    def __init__(self) -> None:
        super().__init__(tree.Backend(), strict=False)
        self.register_properties(  # type: ignore[no-untyped-call]  # xandikos: no annotations
            [
                webdav.ResourceTypeProperty(),
                webdav.CurrentUserPrincipalProperty(
                    lambda env: resources.home(CURRENT.get().viewer)
                ),
                webdav.PrincipalURLProperty(),
                webdav.PrincipalCollectionSetProperty(self.backend.get_principal_collection_set),
                webdav.DisplayNameProperty(),
                webdav.GetETagProperty(),
                webdav.GetContentTypeProperty(),
                webdav.GetContentLengthProperty(),
                caldav.CalendarHomeSetProperty(),
                carddav.AddressbookHomeSetProperty(),
                caldav.CalendarDescriptionProperty(),
                carddav.AddressbookDescriptionProperty(),
                caldav.SupportedCalendarComponentSetProperty(),
                caldav.SupportedCalendarDataProperty(),
                carddav.SupportedAddressDataProperty(),
                carddav.AddressDataProperty(),  # bodies in a sync-collection answer
                caldav.CalendarDataProperty(),
                webdav.AppleGetCTagProperty(),
                webdav.DAVGetCTagProperty(),
                webdav.SupportedReportSetProperty(self.reporters),
                sync.SyncTokenProperty(),
                carddav.MaxResourceSizeProperty(),
                caldav.MaxResourceSizeProperty(),
                access.CurrentUserPrivilegeSetProperty(),
                access.OwnerProperty(),
            ]
        )
        self.register_reporters(  # type: ignore[no-untyped-call]  # xandikos: no annotations
            [
                caldav.CalendarMultiGetReporter(),
                caldav.CalendarQueryReporter(),
                carddav.AddressbookMultiGetReporter(),
                carddav.AddressbookQueryReporter(),
                webdav.ExpandPropertyReporter(),
                TruncatingSync(),
            ]
        )

    def _get_dav_features(self, resource: Any) -> list[str]:
        return ["1", "3", "calendar-access", "addressbook", "sync-collection"]


def mount(app: web.Application, config: Config, db: Database) -> None:
    """Add ``/.well-known/carddav``, ``/.well-known/caldav`` and ``/dav/`` to ``app``."""
    app[SIGNIN], app[DAVAPP], app[DB_KEY] = SignIn(config, db), DavApp(), db
    app.router.add_route("*", "/.well-known/carddav", well_known)
    app.router.add_route("*", "/.well-known/caldav", well_known)
    app.router.add_route("*", PREFIX, handle)
    app.router.add_route("*", PREFIX + "/{path_info:.*}", handle)


async def well_known(request: web.Request) -> web.StreamResponse:
    """RFC 6764: the context path is /dav/ (the client signs in there)."""
    raise web.HTTPMovedPermanently(PREFIX + "/")


def _environ(request: web.Request, body: bytes, user: str) -> dict[str, Any]:
    path = request.path[len(PREFIX) :] or "/"
    env: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": PREFIX,
        "PATH_INFO": path,
        "QUERY_STRING": request.query_string,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": request.scheme,
        "SERVER_NAME": request.host.split(":")[0],
        "SERVER_PORT": str(request.url.port or 80),
        "REMOTE_USER": user,
    }
    if request.content_type and body:
        env["CONTENT_TYPE"] = request.headers.get(hdrs.CONTENT_TYPE, "")
    for name, value in request.headers.items():
        key = "HTTP_" + name.upper().replace("-", "_")
        if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_AUTHORIZATION"):
            env[key] = value
    return env


def _run(dav: DavApp, req: Request, env: dict[str, Any]) -> webdav.Response:
    CURRENT.set(req)
    request = webdav.WSGIRequest(env)
    environ = {"SCRIPT_NAME": PREFIX, "ORIGINAL_ENVIRON": env, "REMOTE_USER": env["REMOTE_USER"]}
    response: webdav.Response = asyncio.run(
        dav._handle_request(request, environ)  # type: ignore[no-untyped-call]  # untyped upstream
    )
    body = response.body
    if not isinstance(body, bytes | bytearray):
        body = b"".join(bytes(chunk) for chunk in body)
    response.body = bytes(body)
    return response


def _version(request: web.Request) -> str:
    accept = request.headers.get(hdrs.ACCEPT, "")
    return "4.0" if "version=4.0" in accept.replace(" ", "").replace('"', "") else "3.0"


async def handle(request: web.Request) -> web.StreamResponse:
    """One DAV request: sign in, bound the body, let xandikos answer in a worker thread."""
    try:
        viewer = await request.app[SIGNIN].viewer(
            request.remote, request.headers.get(hdrs.AUTHORIZATION)
        )
    except Refused as exc:
        headers = {"WWW-Authenticate": REALM} if exc.status == 401 else {}
        if exc.retry_after:
            headers["Retry-After"] = str(int(exc.retry_after) + 1)
        return web.Response(status=exc.status, text=exc.reason + "\n", headers=headers)
    if (request.content_length or 0) > MAX_BODY:
        return web.Response(status=413, text=f"bodies are limited to {MAX_BODY} bytes\n")
    body = await _read(request)
    if body is None:
        return web.Response(status=413, text=f"bodies are limited to {MAX_BODY} bytes\n")
    req = Request(request.app[DB_KEY], viewer, _version(request))
    env = _environ(request, body, viewer.email)
    response = await asyncio.to_thread(_run, request.app[DAVAPP], req, env)
    answered = [
        (k, v)
        for k, v in response.headers
        if not (
            k.lower() == "etag" and request.method == "PUT" and req.put_identical[-1:] == [False]
        )
    ]
    return web.Response(
        status=response.status, reason=response.reason, headers=answered, body=response.body
    )


async def _read(request: web.Request) -> bytes | None:
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


DB_KEY: web.AppKey[Database] = web.AppKey("dav_db", Database)
