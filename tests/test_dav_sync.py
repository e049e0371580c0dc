"""vdirsyncer, a real DAV client, syncing the address book "CRM" and the task list "CRM
activities" both ways with local folders (issue 16): edits made in the client reach the CRM, and
changes made in the CRM reach the client on its next sync."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from crm.store.models import Activity, Contact, Lead

from .test_dav import Env
from .test_dav import env as env  # the fixture: an admin, the seed, the web app

pytestmark = pytest.mark.asyncio
VDIRSYNCER = Path(sys.executable).with_name("vdirsyncer")
CONFIG = """
[general]
status_path = "{root}/status/"

[pair book]
a = "book_local"
b = "book_remote"
collections = ["from b"]
conflict_resolution = "b wins"

[storage book_local]
type = "filesystem"
path = "{root}/book/"
fileext = ".vcf"

[storage book_remote]
type = "carddav"
url = "{url}/dav/"
username = "{user}"
password = "{password}"

[pair todo]
a = "todo_local"
b = "todo_remote"
collections = ["from b"]
conflict_resolution = "b wins"

[storage todo_local]
type = "filesystem"
path = "{root}/todo/"
fileext = ".ics"

[storage todo_remote]
type = "caldav"
url = "{url}/dav/"
username = "{user}"
password = "{password}"
item_types = ["VTODO"]
"""


async def _vdirsyncer(config: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(VDIRSYNCER),
        "-c",
        str(config),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(b"y\ny\ny\ny\n"), 120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.glob("*/*") if p.is_file()}


async def test_vdirsyncer_syncs_both_collections_both_ways(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "vdirsyncer.conf"
    config.write_text(
        CONFIG.format(root=tmp_path, url=env.url, user=env.user, password=env.password)
    )
    (tmp_path / "book").mkdir()
    (tmp_path / "todo").mkdir()
    await _vdirsyncer(config, "discover")
    await _vdirsyncer(config, "sync")
    book, todo = _files(tmp_path / "book"), _files(tmp_path / "todo")
    assert len(book) == 3 and any("FN:Ana Gomez" in card for card in book.values())
    [task] = todo.values()
    assert "SUMMARY:Quote please" in task and "STATUS:NEEDS-ACTION" in task

    # client -> CRM: edit a card's name, complete the to-do, add a new card
    [lead_file] = [p for p in (tmp_path / "book").glob("*/*") if "FN:Ana Gomez" in p.read_text()]
    lead_file.write_text(lead_file.read_text().replace("Ana Gomez", "Ana Gómez-Ruiz"))
    [todo_file] = list((tmp_path / "todo").glob("*/*"))
    todo_file.write_bytes(todo_file.read_bytes().replace(b"NEEDS-ACTION", b"COMPLETED"))
    new = lead_file.parent / "from-client.vcf"
    new.write_text(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:from-client\r\nFN:Di Dahl\r\nN:Dahl;Di;;;\r\n"
        "EMAIL:di@dahl.test\r\nTEL:+45 1234\r\nEND:VCARD\r\n"
    )
    await _vdirsyncer(config, "sync")
    with env.db.session() as s:
        lead = s.get(Lead, env.ids["lead"])
        assert lead is not None and lead.name == "Ana Gómez-Ruiz"
        activity = s.get(Activity, env.ids["activity"])
        assert activity is not None and activity.completed
        made = s.scalar(select(Contact).where(Contact.name == "Di Dahl"))
        assert made is not None and made.phones == ["+45 1234"]

        # CRM -> client: a new activity, completed in the CRM, and a contact renamed there
        s.add(
            Activity(
                message_key="k2",
                message_id="<m2@acme.test>",
                thread="<m2@acme.test>",
                direction="outgoing",
                subject="Quote sent",
                sender=env.user,
                counterparts=["ana@acme.test"],
                completed=True,
            )
        )
        contact = s.get(Contact, env.ids["contact"])
        assert contact is not None
        contact.name = "Bo Berg-Lund"
    await _vdirsyncer(config, "sync")
    book, todo = _files(tmp_path / "book"), _files(tmp_path / "todo")
    assert any("FN:Bo Berg-Lund" in card for card in book.values())
    assert any("FN:Di Dahl" in card for card in book.values())
    assert len(todo) == 2
    assert [t for t in todo.values() if "SUMMARY:Quote sent" in t and "STATUS:COMPLETED" in t]
    assert len(book) == 4  # the new card once, under the CRM's name for it

    # nothing changed: a sync changes no file
    before = _files(tmp_path / "book") | _files(tmp_path / "todo")
    await _vdirsyncer(config, "sync")
    assert _files(tmp_path / "book") | _files(tmp_path / "todo") == before
