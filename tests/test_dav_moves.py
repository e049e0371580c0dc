"""Changes that move records between readers without touching them (issue 16, SPEC V1): a lead's
new responsible takes the company-mailbox activities bound to it and the cards bound to those; a
mailbox's new owner takes all its activities. The new reader's next sync-collection brings the
cards and tasks, the old reader's brings their removal (RFC 6578: 404 for the href)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import aiohttp
import pytest
from sqlalchemy import select

from crm.face import admin
from crm.store.models import Activity, ActivityBinding, Company, Contact, Lead, Mailbox

from .conftest import Cli
from .test_dav import sync_report
from .test_dav_users import Person, Two
from .test_dav_users import two as two  # the fixture: ann and ben (own), their worlds, the app

pytestmark = pytest.mark.asyncio
D = "{DAV:}"


async def _sync(
    http: aiohttp.ClientSession, two: Two, who: Person, coll: str, token: str = ""
) -> tuple[dict[str, str], str]:
    """One sync-collection: href name -> "200" or "404", and the new token."""
    url = f"{two.url}/dav/users/{who.uid}/{coll}/"
    code, text = await sync_report(http, url, who.auth(), token)
    assert code == 207, text
    root = ET.fromstring(text.encode())
    found = {}
    for response in root.iter(D + "response"):
        name = (response.findtext(D + "href") or "").rstrip("/").rsplit("/", 1)[-1]
        status = response.findtext(D + "status") or response.findtext(f"{D}propstat/{D}status")
        found[name] = "404" if status and " 404 " in status else "200"
    return found, root.findtext(D + "sync-token") or ""


def _company_world(two: Two) -> dict[str, int]:
    """A company mailbox with one activity bound to a lead of ann's (at a company) and a
    contact: ann sees all four through the lead; ben sees none of them."""
    with two.db.session() as s:
        firm = Company(name="Moving Firm")
        s.add(firm)
        s.flush()
        box = Mailbox(address="sales@ours.test", kind="company")
        lead = Lead(name="Moving Lead", company_id=firm.id, responsible_id=two.ann.uid)
        contact = Contact(name="Moving Contact")
        s.add_all([box, lead, contact])
        s.flush()
        act = Activity(message_key="km", thread="<km@x>", direction="incoming",
                       subject="Moving", counterparts=[], mailbox_id=box.id)  # fmt: skip
        act.bindings = [
            ActivityBinding(entity_type="lead", entity_id=lead.id),
            ActivityBinding(entity_type="contact", entity_id=contact.id),
        ]
        s.add(act)
        s.flush()
        return {"company": firm.id, "lead": lead.id, "contact": contact.id, "activity": act.id}


def _names(ids: dict[str, int]) -> tuple[set[str], set[str]]:
    cards = {f"{k}-{ids[k]}.vcf" for k in ("company", "lead", "contact")}
    return cards, {f"activity-{ids['activity']}.ics"}


async def test_a_reassigned_lead_moves_its_cards_and_tasks(two: Two) -> None:
    ann, ben = two.ann, two.ben
    moving = _company_world(two)
    cards, tasks = _names(moving)
    async with aiohttp.ClientSession() as http:
        tokens = {}
        for who in (ann, ben):
            for coll, names in (("crm", cards), ("tasks", tasks)):
                found, tokens[who.email, coll] = await _sync(http, two, who, coll)
                assert (names <= set(found)) == (who is ann), (who.email, found)
        with two.db.session() as s:  # as the web CRM's "take the lead" does
            admin.update_lead(s, moving["lead"], responsible_id=ben.uid)
        for who, status in ((ben, "200"), (ann, "404")):
            for coll, names in (("crm", cards), ("tasks", tasks)):
                found, _ = await _sync(http, two, who, coll, tokens[who.email, coll])
                assert {n: found.get(n) for n in names} == dict.fromkeys(names, status), (
                    who.email,
                    coll,
                    found,
                )
            assert not {n for n, st in found.items() if st == "404" and n in who.expected()}


async def _moved_on(
    two: Two, change: Callable[[], object], gone: Person, to: Person | None
) -> None:
    """ann's own mailbox changes (``change``): its activity and the cards bound to it leave
    ``gone``'s next sync and reach ``to``'s (if anyone's)."""
    ann = two.ann
    cards = {f"lead-{ann.ids['lead']}.vcf", f"contact-{ann.ids['bound']}.vcf"}
    tasks = {f"activity-{ann.ids['activity']}.ics"}
    readers = [(gone, "404")] + ([(to, "200")] if to else [])
    async with aiohttp.ClientSession() as http:
        tokens = {}
        for who, _ in readers:
            for coll in ("crm", "tasks"):
                _, tokens[who.email, coll] = await _sync(http, two, who, coll)
        change()
        for who, status in readers:
            for coll, names in (("crm", cards), ("tasks", tasks)):
                found, _ = await _sync(http, two, who, coll, tokens[who.email, coll])
                assert {n: found.get(n) for n in names} == dict.fromkeys(names, status), (
                    who.email,
                    coll,
                    found,
                )


async def test_a_mailbox_with_a_new_owner_moves_its_activities(two: Two) -> None:
    def give_to_ben() -> None:
        with two.db.session() as s:
            box = s.scalar(select(Mailbox).where(Mailbox.address == two.ann.email))
            assert box is not None
            box.owner_id = two.ben.uid

    await _moved_on(two, give_to_ben, two.ann, two.ben)


async def test_a_removed_mailbox_takes_its_activities_from_the_owner(two: Two, cli: Cli) -> None:
    await _moved_on(two, lambda: cli.ok("mailbox", "remove", two.ann.email), two.ann, None)


async def test_a_changed_sees_invalidates_the_users_sync_tokens(two: Two, cli: Cli) -> None:
    """``user set --sees all``: the old token answers "valid-sync-token" (the client resyncs in
    full and gets everyone's cards)."""
    ann = two.ann
    async with aiohttp.ClientSession() as http:
        _, token = await _sync(http, two, ann, "crm")
        cli.ok("user", "set", ann.email, "--sees", "all")
        async with http.request(
            "REPORT",
            f"{two.url}/dav/users/{ann.uid}/crm/",
            data='<?xml version="1.0"?><d:sync-collection xmlns:d="DAV:">'
            f"<d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level>"
            "<d:prop><d:getetag/></d:prop></d:sync-collection>",
            headers={**ann.auth(), "Content-Type": "application/xml"},
        ) as r:
            assert r.status in (403, 412) and "valid-sync-token" in await r.text()
        found, _ = await _sync(http, two, ann, "crm")
        assert f"contact-{two.ben.ids['made']}.vcf" in found and f"contact-{two.stray}.vcf" in found
