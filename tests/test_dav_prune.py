"""The DAV change log kept to a retention (SPEC B8): changes older than ``[dav] change_log_days``
are pruned (by ``mailcrm db prune-dav-changes`` and ``serve``'s ``davlog`` component, several
nodes at once harmlessly); a client whose sync token is older than the log gets 403
DAV:valid-sync-token (RFC 6578 3.2) and syncs anew, a client with a newer token its delta."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from caldav.lib.error import AuthorizationError
from sqlalchemy import select, update

from crm.config import Config, load_config
from crm.errors import ConfigError
from crm.face import Database
from crm.store import pruning
from crm.store.models import Activity, Contact, DavChange, Lead
from crm.vocab import utcnow
from proxy.serve import COMPONENTS, _load

from .conftest import Cli
from .test_dav import Env, _report, _token
from .test_dav import env as env  # the fixture: an admin, the seed, the web app

DAY = dt.timedelta(days=1)


def contacts(db: Database, *names: str) -> list[int]:
    """New contacts (each one change of the log): their ids."""
    with db.session() as s:
        made = [Contact(name=name) for name in names]
        s.add_all(made)
        s.flush()
        return [c.id for c in made]


def rename(db: Database, model: type[Contact] | type[Lead], eid: int, name: str) -> None:
    with db.session() as s:
        record: Any = s.get_one(model, eid)  # an ORM change: the flush logs it
        record.name = name


def clock(db: Database, when: dt.datetime) -> None:
    """As if every change logged so far had been written at ``when`` at the latest."""
    with db.session() as s:
        s.execute(update(DavChange).where(DavChange.created_at > when).values(created_at=when))


def _names(answer: str) -> set[str]:
    return set(re.findall(r"(?:lead|contact|company)-[0-9]+\.vcf", answer))


def logged(db: Database, kind: str = "contact") -> set[int]:
    """The records of ``kind`` the change log still names."""
    with db.session() as s:
        query = select(DavChange.entity_id).where(DavChange.entity_type == kind)
        return set(s.scalars(query))


def test_a_prune_deletes_what_is_older_than_the_retention_and_keeps_the_rest(
    db: Database, cli: Cli
) -> None:
    now = utcnow()
    old = contacts(db, *(f"Old {n}" for n in range(30)))
    clock(db, now - 100 * DAY)
    recent = contacts(db, "Mid")
    clock(db, now - 10 * DAY)
    recent += contacts(db, "New")
    before = cli.ok("db", "prune-dav-changes", "--older-than-days", "365")
    assert "nothing deleted" in before and logged(db) == set(old + recent)
    done = cli.json("db", "prune-dav-changes", "--older-than-days", "90")
    assert done["deleted"] == 30 and done["older_than_days"] == 90
    assert logged(db) == set(recent)
    again = cli.json("db", "prune-dav-changes", "--older-than-days", "90")
    assert again["deleted"] == 0 and logged(db) == set(recent)
    assert cli.json("db", "prune-dav-changes", "--older-than-days", "5")["deleted"] == 1  # Mid
    assert logged(db) == {recent[-1]}  # the newest change of a kind stays: its token's base


def test_the_prune_command_refuses_what_it_cannot_do(cli: Cli, tmp_path: Path) -> None:
    wrong = cli.run("db", "prune-dav-changes", "--older-than-days", "0")
    assert wrong.exit_code == 2 and "Traceback" not in wrong.stderr
    config = tmp_path / "mailcrm.toml"
    config.write_text("[dav]\nchange_log_days = 0\n")
    cli.env["MAILCRM_CONFIG"] = str(config)
    kept = cli.run("db", "prune-dav-changes")
    assert kept.exit_code == 1 and "keeps every change" in kept.stderr
    assert cli.json("db", "prune-dav-changes", "--older-than-days", "30")["deleted"] == 0


def test_nodes_pruning_at_once_delete_each_change_once(db: Database) -> None:
    """Batches of their own transactions, idempotent by id: two nodes at once delete every old
    row between them, none twice, and no newer one."""
    now = utcnow()
    old = contacts(db, *(f"Old {n}" for n in range(1200)))
    clock(db, now - 100 * DAY)
    recent = contacts(db, "New")
    results: list[pruning.Pruned] = []
    start = threading.Barrier(2)

    def node() -> None:
        start.wait()
        results.append(pruning.prune(db, 90, now, batch=100))

    threads = [threading.Thread(target=node) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 2
    assert sum(r.deleted for r in results) == len(old)
    assert logged(db) == set(recent)


def test_a_prune_stops_between_batches_when_its_node_stops(db: Database) -> None:
    """A node shutting down in the middle of a long prune ends after the batch under way; the
    next prune goes on from there."""
    now = utcnow()
    old = contacts(db, *(f"Old {n}" for n in range(50)))
    clock(db, now - 100 * DAY)
    assert pruning.prune(db, 90, now, batch=10, stopping=lambda: True).deleted == 10
    assert len(logged(db)) == 40
    assert pruning.prune(db, 90, now, batch=10).deleted == 39  # the newest contact stays
    assert logged(db) == {old[-1]}


def test_the_serve_component_prunes(db_url: str, db: Database) -> None:
    now = utcnow()
    old = contacts(db, "Old 1", "Old 2")
    clock(db, now - 91 * DAY)
    recent = contacts(db, "New")
    config = Config(database_url=db_url)
    assert _load(dict(COMPONENTS)["davlog"]) is pruning.run_pruning  # serve runs it

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pruning.run_pruning(config, db, stop))
        try:
            async with asyncio.timeout(20):
                while logged(db) & set(old):
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert logged(db) == set(recent)


def test_change_log_days_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "mailcrm.toml"
    assert load_config(None, "sqlite://").dav.change_log_days == 90
    path.write_text("[dav]\nchange_log_days = 30\n")
    assert load_config(str(path), "sqlite://").dav.change_log_days == 30
    for bad in ("-1", '"90"', "1.5", "true"):
        path.write_text(f"[dav]\nchange_log_days = {bad}\n")
        with pytest.raises(ConfigError, match=r"dav\.change_log_days"):
            load_config(str(path), "sqlite://")


async def test_a_token_older_than_the_log_is_403_and_a_newer_one_gets_its_delta(env: Env) -> None:
    db, now = env.db, utcnow()
    async with aiohttp.ClientSession() as http:
        status, first = await _report(env, http)
        old_token = _token(first)  # a client that then stays away for months
        rename(db, Contact, env.ids["contact"], "Bo Away")
        clock(db, now - 100 * DAY)
        [mid] = contacts(db, "Cy Mid")
        status, second = await _report(env, http)
        recent_token = _token(second)  # a client that synced since
        [new] = contacts(db, "Di New")
        rename(db, Lead, env.ids["lead"], "Ana Renamed")
        pruned = pruning.prune(db, 90)
        assert pruned.deleted > 0

        status, refused = await _report(env, http, old_token)
        assert status == 403, refused
        assert "valid-sync-token" in refused and ".vcf" not in refused

        status, delta = await _report(env, http, recent_token)
        assert status == 207
        lead, acme = f"lead-{env.ids['lead']}.vcf", f"company-{env.ids['company']}.vcf"
        assert _names(delta) == {
            f"contact-{new}.vcf",
            lead,
            acme,
        }  # a lead's change logs its company

        status, full = await _report(env, http)  # what the refused client does next
        assert status == 207
        wanted = {f"contact-{env.ids['contact']}.vcf", f"contact-{mid}.vcf", f"contact-{new}.vcf"}
        assert wanted <= _names(full)
        status, again = await _report(env, http, _token(full))
        assert status == 207 and ".vcf" not in again


def _task_list(env: Env) -> Any:
    principal = env.client().principal()  # type: ignore[no-untyped-call]  # caldav: unannotated
    [tasks] = [c for c in principal.calendars() if c.get_display_name() == "CRM activities"]
    return tasks


def _sync(tasks: Any, token: str | None = None, fallback: bool = True) -> tuple[Any, set[str]]:
    found = tasks.get_objects_by_sync_token(token, load_objects=True, disable_fallback=not fallback)
    return found.sync_token, {str(o.url).rsplit("/", 1)[-1] for o in found.objects}


def _complete(db: Database, aid: int, done: bool) -> None:
    with db.session() as s:
        s.get_one(Activity, aid).completed = done


async def test_a_caldav_client_with_a_pruned_token_resyncs_and_a_quiet_collection_does_not(
    env: Env,
) -> None:
    """The python caldav client (as Thunderbird, DAVx5, iOS) takes the 403 valid-sync-token as
    "sync anew" and gets every to-do; the address book, unchanged since before the horizon,
    keeps its token (the newest change of each kind survives the prune: no resync loop)."""
    db, now, aid = env.db, utcnow(), env.ids["activity"]
    tasks = await asyncio.to_thread(_task_list, env)
    old_token, first = await asyncio.to_thread(_sync, tasks)
    assert first == {f"activity-{aid}.ics"}
    _complete(db, aid, True)
    clock(db, now - 100 * DAY)
    async with aiohttp.ClientSession() as http:
        _, cards = await _report(env, http)
        card_token = _token(cards)
        _complete(db, aid, False)
        assert pruning.prune(db, 90).deleted > 0

        with pytest.raises(AuthorizationError) as refused:
            await asyncio.to_thread(_sync, tasks, old_token, False)
        assert refused.value.status == 403
        assert "{DAV:}valid-sync-token" in refused.value.preconditions
        _, resynced = await asyncio.to_thread(_sync, tasks, old_token)
        assert resynced == {f"activity-{aid}.ics"}
        fresh, _ = await asyncio.to_thread(_sync, tasks)
        _, nothing = await asyncio.to_thread(_sync, tasks, fresh, False)
        assert nothing == set()

        status, quiet = await _report(env, http, card_token)
        assert status == 207 and ".vcf" not in quiet and _token(quiet) == card_token
