"""CardDAV/CalDAV (issue 16) with real clients: the python ``caldav`` client and raw HTTP for the
protocol's edges, signing in against the real Postfix/Dovecot the relay uses."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from caldav.davclient import DAVClient
from sqlalchemy import select

from crm.config import Config
from crm.face import Database
from crm.store.models import Activity, ActivityBinding, Company, Contact, EntityEmail, Lead
from proxy.web.app import make_app

from .conftest import Cli
from .relaykit import relay_config
from .servers import Postfix

pytestmark = pytest.mark.asyncio


def seed(db: Database) -> dict[str, int]:
    """One company, a lead at it, a contact and an activity bound to the lead."""
    with db.session() as s:
        acme = Company(name="Acme", domain="acme.test")
        s.add(acme)
        s.flush()
        lead = Lead(name="Ana Gomez", company_id=acme.id, phones=["+34 600 000 000"])
        contact = Contact(name="Bo Berg", phones=["+46 70 1"])
        s.add_all([lead, contact])
        s.flush()
        s.add_all(
            [
                EntityEmail(address="ana@acme.test", entity_type="lead", entity_id=lead.id),
                EntityEmail(address="bo@berg.test", entity_type="contact", entity_id=contact.id),
            ]
        )
        act = Activity(
            message_key="k1",
            message_id="<m1@acme.test>",
            thread="<m1@acme.test>",
            direction="incoming",
            subject="Quote please",
            sender="ana@acme.test",
            counterparts=["ana@acme.test"],
        )
        act.bindings.append(ActivityBinding(entity_type="lead", entity_id=lead.id))
        s.add(act)
        s.flush()
        return {"company": acme.id, "lead": lead.id, "contact": contact.id, "activity": act.id}


class Env:
    def __init__(self, url: str, db: Database, user: str, password: str, ids: dict[str, int]):
        self.url, self.db, self.user, self.password, self.ids = url, db, user, password, ids

    def auth(self, user: str | None = None, password: str | None = None) -> dict[str, str]:
        token = f"{user or self.user}:{password or self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(token).decode()}

    def client(self) -> DAVClient:
        return DAVClient(url=self.url + "/dav/", username=self.user, password=self.password)


@pytest.fixture
async def env(cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix) -> AsyncIterator[Env]:
    user = postfix.dovecot.add_user("davuser", "s3cret-pw")
    cli.ok("user", "add", user, "--admin")
    config = Config(database_url=db_url, secret_key=cli.env["MAILCRM_SECRET_KEY"])
    config.relay = relay_config(tmp_path, postfix, postfix.port)
    db = Database(db_url)
    ids = seed(db)
    server = TestServer(make_app(config, db), host="127.0.0.1")
    await server.start_server()
    try:
        yield Env(f"http://127.0.0.1:{server.port}", db, user, "s3cret-pw", ids)
    finally:
        await server.close()
        db.dispose()


async def test_wrong_password_is_401_with_basic_realm(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.request(
            "PROPFIND", env.url + "/dav/", headers=env.auth(password="wrong")
        ) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == 'Basic realm="mailcrm CRM", charset="UTF-8"'
        async with http.request("PROPFIND", env.url + "/dav/") as r:
            assert r.status == 401


async def test_well_known_redirects_to_dav(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        for name in ("carddav", "caldav"):
            async with http.get(env.url + f"/.well-known/{name}", allow_redirects=False) as r:
                assert r.status == 301
                assert r.headers["Location"] == "/dav/"


def _discover(env: Env) -> dict[str, Any]:
    client = env.client()
    principal = client.principal()  # type: ignore[no-untyped-call]  # caldav: unannotated
    calendars = principal.calendars()
    [tasks] = [c for c in calendars if c.get_display_name() == "CRM activities"]
    todos = tasks.todos(include_completed=True)
    return {"principal": str(principal.url), "todos": [t.data for t in todos]}


async def test_caldav_client_finds_the_task_list(env: Env) -> None:
    found = await asyncio.to_thread(_discover, env)
    assert found["principal"].endswith("/dav/users/1/")
    [todo] = found["todos"]
    assert "SUMMARY:Quote please" in todo
    assert "STATUS:NEEDS-ACTION" in todo
    assert "DESCRIPTION:incoming e-mail from ana@acme.test" in todo


async def sync_report(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], token: str = ""
) -> tuple[int, str]:
    """One sync-collection REPORT on the collection at ``url``, as a client sends it (etags
    only): its status and body."""
    body = (
        '<?xml version="1.0"?><d:sync-collection xmlns:d="DAV:">'
        f"<d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level>"
        "<d:prop><d:getetag/></d:prop></d:sync-collection>"
    )
    headers = {**headers, "Content-Type": "application/xml"}
    async with http.request("REPORT", url, data=body, headers=headers) as r:
        return r.status, await r.text()


async def _report(env: Env, http: aiohttp.ClientSession, token: str = "") -> tuple[int, str]:
    return await sync_report(http, env.url + "/dav/users/1/crm/", env.auth(), token)


def _token(text: str) -> str:
    return (
        text.split("<ns0:sync-token>")[1].split("<")[0]
        if "<ns0:sync-token>" in text
        else text.split("sync-token>")[1].split("<")[0]
    )


async def test_address_book_lists_cards_and_syncs(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            env.url + f"/dav/users/1/crm/lead-{env.ids['lead']}.vcf", headers=env.auth()
        ) as r:
            assert r.status == 200
            card = await r.text()
        assert "FN:Ana Gomez" in card and "CATEGORIES:Lead" in card
        assert "ORG:Acme" in card and "TEL:+34 600 000 000" in card
        assert f"UID:mailcrm-lead-{env.ids['lead']}" in card
        async with http.get(
            env.url + f"/dav/users/1/crm/company-{env.ids['company']}.vcf",
            headers={**env.auth(), "Accept": "text/vcard; version=4.0"},
        ) as r:
            company = await r.text()
        assert "VERSION:4.0" in company and "KIND:org" in company
        status, first = await _report(env, http)
        assert status == 207
        for kind in ("lead", "contact", "company"):
            assert f"{kind}-{env.ids[kind]}.vcf" in first
        token = _token(first)
        status, again = await _report(env, http, token)
        assert status == 207 and ".vcf" not in again and _token(again) == token
        with env.db.session() as s:
            s.get(Contact, env.ids["contact"]).name = "Bo Bergström"  # type: ignore[union-attr]
        status, changed = await _report(env, http, token)
        assert f"contact-{env.ids['contact']}.vcf" in changed
        assert f"lead-{env.ids['lead']}.vcf" not in changed
        status, bad = await _report(env, http, "urn:mailcrm:sync:all:999999")
        assert status == 403 and "valid-sync-token" in bad  # RFC 6578 3.2 (xandikos says 412)


async def test_put_delete_and_preconditions(env: Env) -> None:
    card = (
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:new-1\r\nFN:Cy Cole\r\nN:Cole;Cy;;;\r\n"
        "EMAIL:cy@cole.test\r\nTEL:+1 555\r\nEND:VCARD\r\n"
    )
    async with aiohttp.ClientSession() as http:
        base = env.url + "/dav/users/1/crm/"
        async with http.put(
            base + "new-1.vcf",
            data=card,
            headers={**env.auth(), "Content-Type": "text/vcard", "If-None-Match": "*"},
        ) as r:
            assert r.status == 201, await r.text()
        with env.db.session() as s:
            [made] = [c for c in s.query(Contact).all() if c.name == "Cy Cole"]
            assert made.phones == ["+1 555"]
        async with http.put(
            base + "new-2.vcf",
            data="BEGIN:VCARD\r\nFN:x\r\n",
            headers={**env.auth(), "Content-Type": "text/vcard"},
        ) as r:
            assert r.status == 400
        async with http.put(
            base + "new-3.vcf", data="hello", headers={**env.auth(), "Content-Type": "image/png"}
        ) as r:
            assert r.status == 415
        url = base + f"contact-{env.ids['contact']}.vcf"
        async with http.put(
            url,
            data=card.replace("Cy Cole", "Bo B"),
            headers={**env.auth(), "Content-Type": "text/vcard", "If-Match": '"nope"'},
        ) as r:
            assert r.status == 412
        async with http.delete(base + f"lead-{env.ids['lead']}.vcf", headers=env.auth()) as r:
            assert r.status == 403  # it has an activity: the CRM keeps it
        async with http.get(env.url + "/dav/users/2/crm/", headers=env.auth()) as r:
            assert r.status == 404
        async with http.get(
            env.url + "/dav/users/1/crm/../../2/crm/x.vcf", headers=env.auth()
        ) as r:
            assert r.status == 404


async def test_completing_the_todo_completes_the_activity(env: Env) -> None:
    url = env.url + f"/dav/users/1/tasks/activity-{env.ids['activity']}.ics"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=env.auth()) as r:
            ics = await r.text()
        done = ics.replace("STATUS:NEEDS-ACTION", "STATUS:COMPLETED")
        async with http.put(
            url, data=done, headers={**env.auth(), "Content-Type": "text/calendar"}
        ) as r:
            assert r.status == 204, await r.text()
    with env.db.session() as s:
        assert s.get(Activity, env.ids["activity"]).completed  # type: ignore[union-attr]


async def test_a_sync_past_a_thousand_changes_is_answered_in_parts(env: Env) -> None:
    """RFC 6578 3.6: 507 for the request URI with the token of the part answered; asking again
    from there brings the rest."""
    async with aiohttp.ClientSession() as http:
        _, first = await _report(env, http)
        token = _token(first)
        with env.db.session() as s:
            s.add_all(Contact(name=f"Many {n}") for n in range(1100))
        status, part = await _report(env, http, token)
        assert status == 207 and "507 Insufficient Storage" in part, part[-500:]
        assert "number-of-matches-within-limits" in part
        assert 900 <= part.count("contact-") <= 1000
        partial = _token(part)
        assert partial != token
        status, rest = await _report(env, http, partial)
        assert status == 207 and "507 Insufficient" not in rest
        names = set(re.findall(r"contact-[0-9]+\.vcf", part + rest))
        with env.db.session() as s:
            ids = s.scalars(select(Contact.id).where(Contact.name.like("Many %"))).all()
        assert {f"contact-{i}.vcf" for i in ids} <= names
        status, again = await _report(env, http, _token(rest))
        assert status == 207 and ".vcf" not in again
