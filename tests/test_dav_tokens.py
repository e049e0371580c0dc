"""Sync tokens never skip a change (SPEC B8). On PostgreSQL a change's id is taken when it is
written and becomes visible when its transaction commits, in any order: a change whose
transaction took a lower id but committed after a client synced must reach that client's next
sync. Tokens there carry the oldest transaction running when they were made
(:mod:`crm.store.positions`); on SQLite (one writer at a time) they stay a change id."""

from __future__ import annotations

import re

import aiohttp
import pytest
from sqlalchemy.orm import Session

from crm.store.models import Contact
from crm.store.positions import Position

from .test_dav import Env, _report, _token
from .test_dav import env as env  # the fixture: an admin, the seed, the web app


def _names(answer: str) -> set[str]:
    return set(re.findall(r"(?:lead|contact|company)-[0-9]+\.vcf", answer))


def test_a_token_position_reads_back_and_refuses_what_is_none() -> None:
    for text, position in (
        ("12", Position(12)),
        ("12.7731.7740", Position(12, (7731, 7740))),
        ("12x7731", Position(12, oldest=7731)),
    ):
        assert Position.parse(text) == position and str(position) == text
    for bad in ("", "x", "12.", ".5", "1" * 19, "12..5", "-3", "12 ", "12x", "12.5x6"):
        assert Position.parse(bad) is None, bad


@pytest.mark.asyncio
async def test_a_change_committed_after_a_sync_under_a_lower_id_reaches_the_next_one(
    env: Env, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: ids become visible in their order")
    async with aiohttp.ClientSession() as http:
        _, first = await _report(env, http)
        token = _token(first)
        with env.db.engine.connect() as slow:  # a capture batch still writing
            late = Session(bind=slow)
            late.get_one(Contact, env.ids["contact"]).name = "Bo Late"
            late.flush()  # its change row takes the next id, not committed yet
            with env.db.session() as quick:  # another writer takes a higher id and commits
                cy = Contact(name="Cy Quick")
                quick.add(cy)
            status, between = await _report(env, http, token)
            assert status == 207 and _names(between) == {f"contact-{cy.id}.vcf"}, between
            token = _token(between)  # names the running transaction (the late writer's)
            late.commit()
            late.close()
        status, after = await _report(env, http, token)
        assert status == 207 and _names(after) == {f"contact-{env.ids['contact']}.vcf"}, after
        status, again = await _report(env, http, _token(after))
    assert status == 207 and _names(again) == set(), "an unchanged re-sync carries no card"
