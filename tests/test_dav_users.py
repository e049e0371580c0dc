"""CardDAV/CalDAV per user (issue 16, SPEC V1): two users who see ``own`` get disjoint address
books and task lists, a write outside what they see is refused and changes nothing, and a card
they PUT becomes a contact they created."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from caldav.davclient import DAVClient
from sqlalchemy import select

from crm.config import Config
from crm.face import Database
from crm.store.models import (
    Activity,
    ActivityBinding,
    Company,
    Contact,
    EntityEmail,
    Lead,
    Mailbox,
    User,
)
from proxy.web.app import make_app

from .conftest import Cli
from .relaykit import relay_config
from .servers import Postfix

pytestmark = pytest.mark.asyncio
HREF = re.compile(r"(?:lead|contact|company)-[0-9]+\.vcf|activity-[0-9]+\.ics")


@dataclass
class Person:
    email: str
    password: str
    uid: int = 0
    ids: dict[str, int] = field(default_factory=dict)

    def auth(self) -> dict[str, str]:
        token = f"{self.email}:{self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(token).decode()}

    def expected(self) -> set[str]:
        """The cards and tasks this person sees (their own world of the seed)."""
        return {
            f"lead-{self.ids['lead']}.vcf",
            f"company-{self.ids['company']}.vcf",
            f"contact-{self.ids['made']}.vcf",
            f"contact-{self.ids['bound']}.vcf",
            f"activity-{self.ids['activity']}.ics",
        }


def _world(s: object, person: Person, n: int) -> None:
    """A personal mailbox with one activity bound to a lead (at a company) and a contact, plus
    a contact the person created."""
    from sqlalchemy.orm import Session

    assert isinstance(s, Session)
    company = Company(name=f"Firm {n}", domain=f"firm{n}.test")
    s.add(company)
    s.flush()
    box = Mailbox(address=person.email, kind="personal", owner_id=person.uid)
    lead = Lead(name=f"Lead {n}", company_id=company.id)
    bound = Contact(name=f"Bound {n}")
    made = Contact(name=f"Made {n}", created_by_id=person.uid)
    s.add_all([box, lead, bound, made])
    s.flush()
    s.add(EntityEmail(address=f"lead{n}@firm{n}.test", entity_type="lead", entity_id=lead.id))
    act = Activity(
        message_key=f"k{n}",
        message_id=f"<m{n}@firm.test>",
        thread=f"<m{n}@firm.test>",
        direction="incoming",
        subject=f"Hello {n}",
        sender=f"lead{n}@firm{n}.test",
        counterparts=[f"lead{n}@firm{n}.test"],
        mailbox_id=box.id,
    )
    act.bindings.append(ActivityBinding(entity_type="lead", entity_id=lead.id))
    act.bindings.append(ActivityBinding(entity_type="contact", entity_id=bound.id))
    s.add(act)
    s.flush()
    person.ids = {
        "company": company.id,
        "lead": lead.id,
        "bound": bound.id,
        "made": made.id,
        "activity": act.id,
    }


@dataclass
class Two:
    url: str
    db: Database
    ann: Person
    ben: Person
    stray: int  # a contact nobody owns or sees (no creator, no activity)


@pytest.fixture
async def two(cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix) -> AsyncIterator[Two]:
    people = []
    for name in ("ann", "ben"):
        email = postfix.dovecot.add_user(name, f"pw-{name}-9")
        cli.ok("user", "add", email)  # sees "own" by default
        people.append(Person(email, f"pw-{name}-9"))
    config = Config(database_url=db_url, secret_key=cli.env["MAILCRM_SECRET_KEY"])
    config.relay = relay_config(tmp_path, postfix, postfix.port)
    db = Database(db_url)
    with db.session() as s:
        for n, person in enumerate(people, 1):
            user = s.scalar(select(User).where(User.email == person.email))
            assert user is not None and user.sees == "own" and not user.admin
            person.uid = user.id
            _world(s, person, n)
        stray = Contact(name="Nobody's")
        s.add(stray)
        s.flush()
        stray_id = stray.id
    server = TestServer(make_app(config, db), host="127.0.0.1")
    await server.start_server()
    try:
        yield Two(f"http://127.0.0.1:{server.port}", db, people[0], people[1], stray_id)
    finally:
        await server.close()
        db.dispose()


async def _listing(http: aiohttp.ClientSession, two: Two, who: Person, coll: str) -> set[str]:
    async with http.request(
        "PROPFIND",
        f"{two.url}/dav/users/{who.uid}/{coll}/",
        headers={**who.auth(), "Depth": "1"},
    ) as r:
        assert r.status == 207, await r.text()
        return set(HREF.findall(await r.text()))


def _todos(two: Two, who: Person) -> list[str]:
    client = DAVClient(url=two.url + "/dav/", username=who.email, password=who.password)
    principal = client.principal()  # type: ignore[no-untyped-call]  # caldav: unannotated
    [tasks] = [c for c in principal.calendars() if c.get_display_name() == "CRM activities"]
    return [t.data for t in tasks.todos(include_completed=True)]


async def test_own_users_see_disjoint_cards_and_tasks(two: Two) -> None:
    async with aiohttp.ClientSession() as http:
        seen = {}
        for who in (two.ann, two.ben):
            seen[who.email] = await _listing(http, two, who, "crm") | await _listing(
                http, two, who, "tasks"
            )
            assert seen[who.email] == who.expected()
            assert f"contact-{two.stray}.vcf" not in seen[who.email]
        assert not seen[two.ann.email] & seen[two.ben.email]
    ann_todos = await asyncio.to_thread(_todos, two, two.ann)
    assert len(ann_todos) == 1 and "SUMMARY:Hello 1" in ann_todos[0]
    ben_todos = await asyncio.to_thread(_todos, two, two.ben)
    assert len(ben_todos) == 1 and "SUMMARY:Hello 2" in ben_todos[0]


async def test_writes_outside_what_a_user_sees_are_refused(two: Two) -> None:
    ann, ben = two.ann, two.ben
    card = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:x\r\nFN:Hijacked\r\nN:;Hijacked;;;\r\nEND:VCARD\r\n"
    base = f"{two.url}/dav/users/{ann.uid}"
    async with aiohttp.ClientSession() as http:
        headers = {**ann.auth(), "Content-Type": "text/vcard"}
        for target in (f"contact-{ben.ids['made']}.vcf", f"lead-{ben.ids['lead']}.vcf"):
            async with http.put(f"{base}/crm/{target}", data=card, headers=headers) as r:
                assert r.status == 403, await r.text()
        async with http.get(f"{base}/crm/contact-{ben.ids['made']}.vcf", headers=ann.auth()) as r:
            assert r.status == 404
        async with http.delete(
            f"{base}/crm/contact-{ben.ids['made']}.vcf", headers=ann.auth()
        ) as r:
            assert r.status in (403, 404)
        todo = (
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VTODO\r\n"
            "UID:x\r\nSUMMARY:s\r\nSTATUS:COMPLETED\r\nEND:VTODO\r\nEND:VCALENDAR\r\n"
        )
        async with http.put(
            f"{base}/tasks/activity-{ben.ids['activity']}.ics",
            data=todo,
            headers={**ann.auth(), "Content-Type": "text/calendar"},
        ) as r:
            assert r.status == 403, await r.text()
        async with http.request(
            "PROPFIND", f"{two.url}/dav/users/{ben.uid}/crm/", headers={**ann.auth(), "Depth": "1"}
        ) as r:
            text = await r.text()  # xandikos: 207 carrying the collection's 404
            assert r.status == 404 or (r.status == 207 and "404 Not Found" in text), text
            assert not HREF.findall(text)
    with two.db.session() as s:
        names = set(s.scalars(select(Contact.name)))
        assert "Hijacked" not in names and "Made 2" in names
        assert s.get(Lead, ben.ids["lead"]).name == "Lead 2"  # type: ignore[union-attr]
        assert not s.get(Activity, ben.ids["activity"]).completed  # type: ignore[union-attr]


async def test_a_card_put_becomes_the_users_own_contact(two: Two) -> None:
    ann, ben = two.ann, two.ben
    card = (
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:new-ann\r\nFN:Cy Cole\r\nN:Cole;Cy;;;\r\n"
        "EMAIL:cy@cole.test\r\nEND:VCARD\r\n"
    )
    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{two.url}/dav/users/{ann.uid}/crm/new-ann.vcf",
            data=card,
            headers={**ann.auth(), "Content-Type": "text/vcard", "If-None-Match": "*"},
        ) as r:
            assert r.status == 201, await r.text()
        with two.db.session() as s:
            made = s.scalar(select(Contact).where(Contact.name == "Cy Cole"))
            assert made is not None and made.created_by_id == ann.uid
            cid = made.id
        assert f"contact-{cid}.vcf" in await _listing(http, two, ann, "crm")
        assert f"contact-{cid}.vcf" not in await _listing(http, two, ben, "crm")
        edited = card.replace("FN:Cy Cole", "FN:Cy Cole-Ann")
        async with http.put(
            f"{two.url}/dav/users/{ann.uid}/crm/contact-{cid}.vcf",
            data=edited,
            headers={**ann.auth(), "Content-Type": "text/vcard"},
        ) as r:
            assert r.status in (201, 204), await r.text()
    with two.db.session() as s:
        assert s.get(Contact, cid).name == "Cy Cole-Ann"  # type: ignore[union-attr]
