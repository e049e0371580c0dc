"""Hostile DAV input (issue 16): a 10 MB card, a flood of PUTs, broken vCards and iCalendar, path
traversal in hrefs. Each gets a clear refusal, nothing is half-written, and the server keeps
answering."""

from __future__ import annotations

import os
import time

import aiohttp
import pytest
from sqlalchemy import func, select

from crm.store.models import Activity, Contact

from .test_dav import Env
from .test_dav import env as env  # the fixture: an admin, the seed, the web app

pytestmark = pytest.mark.asyncio
# PUTs in one loop: 1,000 by default (about 6 s on SQLite, 12 s on PostgreSQL on two shared cores);
# MAILCRM_DAV_FLOOD=10000 runs the issue's 10,000
FLOOD = int(os.environ.get("MAILCRM_DAV_FLOOD", "1000"))


def _card(n: int) -> str:
    return (
        f"BEGIN:VCARD\r\nVERSION:3.0\r\nUID:flood-{n}\r\nFN:Flood {n}\r\nN:;Flood {n};;;\r\n"
        f"EMAIL:flood{n}@flood.test\r\nEND:VCARD\r\n"
    )


async def _still_serving(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(
        env.url + f"/dav/users/1/crm/lead-{env.ids['lead']}.vcf", headers=env.auth()
    ) as r:
        assert r.status == 200 and "FN:Ana Gomez" in await r.text()


def _contacts(env: Env) -> int:
    with env.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Contact)) or 0)


async def test_huge_and_broken_payloads_are_refused(env: Env) -> None:
    base = env.url + "/dav/users/1/"
    before = _contacts(env)
    huge = _card(0).replace("END:VCARD", "NOTE:" + "x" * (10 * 1024 * 1024) + "\r\nEND:VCARD")
    broken_cards = [
        "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:no end\r\n",
        "BEGIN:VCARD\r\nVERSION:3.0\r\nEND:VCARD\r\n",  # no name
        "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Bad\r\nEMAIL:not an address\r\nEND:VCARD\r\n",
        "\x00\xff\xfe garbage",
        "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
    ]
    async with aiohttp.ClientSession() as http:
        async with http.put(
            base + "crm/huge.vcf", data=huge, headers={**env.auth(), "Content-Type": "text/vcard"}
        ) as r:
            assert r.status == 413 and "limited" in await r.text()
        for body in broken_cards:
            async with http.put(
                base + "crm/broken.vcf",
                data=body.encode("utf-8", "surrogateescape"),
                headers={**env.auth(), "Content-Type": "text/vcard"},
            ) as r:
                assert r.status == 400, (body, r.status, await r.text())
        task = base + f"tasks/activity-{env.ids['activity']}.ics"
        for body in ("BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\n", "STATUS:COMPLETED", "\x00" * 100):
            async with http.put(
                task, data=body, headers={**env.auth(), "Content-Type": "text/calendar"}
            ) as r:
                assert r.status == 400, (body, r.status, await r.text())
        await _still_serving(env, http)
    assert _contacts(env) == before
    with env.db.session() as s:
        assert not s.get(Activity, env.ids["activity"]).completed  # type: ignore[union-attr]


async def test_path_traversal_reaches_nothing(env: Env) -> None:
    paths = [
        "/dav/users/1/crm/../../2/crm/",
        "/dav/users/1/crm/%2e%2e/%2e%2e/2/crm/",
        "/dav/users/1/crm/..%2f..%2f2%2fcrm%2f",
        "/dav/users/1/crm/lead-1.vcf/../../../../etc/passwd",
        "/dav/users/2/crm/",
        "/dav/users/1/crm/lead-01.vcf",
        "/dav/users/1/crm/lead-99999999999.vcf",
        "/dav/users/1/crm/%00.vcf",
        "/dav/users/1/tasks/activity-1.ics/x",
    ]
    async with aiohttp.ClientSession() as http:
        for path in paths:
            async with http.get(env.url + path, headers=env.auth()) as r:
                text = await r.text()
                assert r.status in (400, 404), (path, r.status)
                assert "BEGIN:VCARD" not in text and "root:" not in text
        await _still_serving(env, http)


async def test_a_flood_of_puts_creates_each_card_once(env: Env) -> None:
    before = _contacts(env)
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        headers = {**env.auth(), "Content-Type": "text/vcard", "If-None-Match": "*"}
        for n in range(1, FLOOD + 1):
            async with http.put(
                env.url + f"/dav/users/1/crm/flood-{n}.vcf", data=_card(n), headers=headers
            ) as r:
                assert r.status == 201, (n, await r.text())
        elapsed = time.monotonic() - started
        print(f"{FLOOD} PUTs in {elapsed:.1f} s ({FLOOD / elapsed:.0f}/s)")
        await _still_serving(env, http)
    assert _contacts(env) == before + FLOOD
