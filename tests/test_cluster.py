"""Two ``mailcrm serve`` nodes on one PostgreSQL, 100 mailboxes on a real Dovecot (B7, B1, C9).

What an operator of a two-node gateway is promised, shown end to end:

* every mailbox is synced and its mail captured exactly once, and the mailboxes spread evenly
  over the nodes (the ``leases`` table; ``/metrics`` says the same);
* no mailbox is ever synced by both nodes at once: Dovecot's own log (microsecond timestamps)
  lists every IMAP session, and per user no two sessions are ever open together, whichever node
  opened them;
* ``kill -9`` of one node: the survivor holds its mailboxes within two lease periods (measured
  in the ``leases`` table from the kill) and captures the mail that arrives meanwhile, once;
* spool entries, relayed through both nodes' relays to the real Postfix and bulk-inserted (some
  while a node dies), are applied exactly once though both nodes' spool workers drain the one
  table: test-only triggers record every spool entry leaving ``pending`` and every activity
  inserted, with the node that did it (``PGAPPNAME``) — each happens once, and both nodes work.
"""

from __future__ import annotations

import collections
import email.utils
import itertools
import smtplib
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from crm.face import admin
from crm.mailboxes.leases import lease_owners
from crm.spool import queue as spool
from crm.store.db import Database
from crm.store.models import Activity, Mailbox, SpoolEntry
from crm.store.secrets import SecretBox
from proxy.smtp.tls import write_selfsigned
from tests.clusterkit import (
    HOST,
    TIMED_LOG,
    Node,
    audit,
    imap_sessions,
    install_audit,
    overlaps,
    started_nodes,
    until,
    writers,
)
from tests.servers import Dovecot, Postfix, servers_available

__all__ = ["started_nodes"]
pytestmark = [pytest.mark.servers, pytest.mark.postgres]
BOXES = 100
LEASE = 4.0
PASSWORD = "cluster pass 1"
Expected = dict[str, str]  # message id -> mailbox address


@pytest.fixture(scope="module")
def mail() -> Iterator[tuple[Dovecot, Postfix]]:
    """A Dovecot of its own (exact session times in its log) and a Postfix in front of it."""
    reason = servers_available()
    if reason is not None:
        pytest.skip(reason)
    with Dovecot(extra_config=TIMED_LOG) as dovecot, Postfix(dovecot) as postfix:
        yield dovecot, postfix


def message(sender: str, to: str, subject: str) -> tuple[str, bytes]:
    """(Message-ID without brackets, raw message)."""
    mid = email.utils.make_msgid(domain="cluster.example")
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {mid}\r\n"
    )
    return mid.strip("<>"), (head + "\r\nHello,\r\nplease send an offer.\r\n").encode()


def add_mailboxes(db: Database, dovecot: Dovecot, key: str) -> dict[str, int]:
    """BOXES employees on Dovecot, each with a linked personal mailbox; address -> mailbox id."""
    addresses = dovecot.add_users({f"emp{i:03d}": PASSWORD for i in range(BOXES)})
    secrets = SecretBox(key.encode())
    with db.session() as session:
        for address in addresses:
            admin.add_user(session, address, name=f"Employee {address[:6]}")
            admin.add_mailbox(
                session,
                secrets,
                address,
                address,
                admin.MailboxSettings(
                    imap_host=HOST, imap_port=dovecot.imaps_port, imap_tls="ssl", password=PASSWORD
                ),
            )
        return dict(session.execute(select(Mailbox.address, Mailbox.id)).all())


def deliver(dovecot: Dovecot, addresses: list[str], expected: Expected, tag: str) -> None:
    """One message from a new customer into each mailbox's INBOX."""
    for n, address in enumerate(addresses):
        mid, raw = message(f"Buyer <buyer{n}.{tag}@firm{n}.example>", address, f"{tag} {n}")
        dovecot.deliver(address, raw)
        expected[mid] = address


def node_settings(tmp: Path, dovecot: Dovecot, postfix: Postfix) -> dict[str, dict[str, object]]:
    """What both nodes' config files share: lease, quick poller timers, relay to Postfix."""
    cert, key = tmp / "relay.crt", tmp / "relay.key"
    write_selfsigned(cert, key, ["localhost", HOST])
    return {
        "cluster": {"lease_seconds": LEASE},
        "poller": {
            "ca_file": str(dovecot.cert_path),
            "refresh_s": 1.0,
            "push_check_s": 0.2,
            "backoff_min_s": 0.2,
            "backoff_max_s": 2.0,
            "timeout_s": 20.0,
            "active_interval_s": 3600,
        },
        "relay": {
            "cert_file": str(cert),
            "key_file": str(key),
            "upstream_host": HOST,
            "upstream_port": postfix.port,
            "upstream_ca_file": str(postfix.cert_path),
            "spool_poll_interval": 0.2,
            "max_messages_per_minute": 1000,
        },
    }


def holdings(db: Database) -> collections.Counter[str]:
    """node -> mailboxes it holds an unexpired lease on."""
    return collections.Counter(lease_owners(db).values())


def captured(db: Database) -> dict[str, tuple[str, str | None]]:
    """message id -> (direction, mailbox address) of every activity."""
    with db.session() as session:
        rows = session.execute(
            select(Activity.message_id, Activity.direction, Mailbox.address).outerjoin(
                Mailbox, Mailbox.id == Activity.mailbox_id
            )
        ).all()
    assert len({mid for mid, _, _ in rows}) == len(rows), "one message, two activities"
    return {str(mid): (direction, box) for mid, direction, box in rows}


def all_captured(db: Database, incoming: Expected, outgoing: Expected) -> bool:
    found = captured(db)
    return all(found.get(m) == ("incoming", box) for m, box in incoming.items()) and all(
        found.get(m) == ("outgoing", box) for m, box in outgoing.items()
    )


def metric_leases(node: Node) -> dict[str, int]:
    """``mailcrm_node_leases`` from one node's ``/metrics``."""
    with urllib.request.urlopen(f"http://{HOST}:{node.http_port}/metrics", timeout=10) as reply:
        body = reply.read().decode()
    prefix = 'mailcrm_node_leases{node="'
    return {
        line[len(prefix) :].split('"')[0]: int(float(line.rsplit(" ", 1)[1]))
        for line in body.splitlines()
        if line.startswith(prefix)
    }


def relay_send(node: Node, cert: Path, sender: str, outgoing: Expected, n: int) -> str:
    """One message through ``node``'s relay (STARTTLS, the sender's own password); recipient."""
    to = f"client{n}.{node.name}@relayed{n}.example"
    mid, raw = message(f"Employee <{sender}>", to, f"offer {n} via {node.name}")
    context = ssl.create_default_context(cafile=str(cert))
    with smtplib.SMTP(HOST, node.relay_port, timeout=60) as smtp:
        smtp.starttls(context=context)
        smtp.login(sender, PASSWORD)
        smtp.sendmail(sender, [to], raw)
    outgoing[mid] = sender
    return to


def bulk_spool(db: Database, senders: list[str], outgoing: Expected, count: int, tag: str) -> None:
    """``count`` delivered entries straight into the spool table (one transaction)."""
    items = []
    for n in range(count):
        sender = senders[n % len(senders)]
        to = f"bulk{n}.{tag}@spooled{n}.example"
        mid, raw = message(f"Employee <{sender}>", to, f"{tag} {n}")
        items.append((raw, spool.Envelope(sender, sender, [to])))
        outgoing[mid] = sender
    spool.enqueue_many(db, items)


def spool_settled(db: Database) -> bool:
    with db.session() as session:
        states = session.scalars(select(SpoolEntry.state)).all()
    return bool(states) and all(state == "done" for state in states)


def spool_ids(db: Database) -> list[int]:
    with db.session() as session:
        return list(session.scalars(select(SpoolEntry.id).order_by(SpoolEntry.id)))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_nodes_share_take_over_and_apply_once(
    db_url: str, mail: tuple[Dovecot, Postfix], tmp_path: Path, started_nodes: list[Node]
) -> None:
    dovecot, postfix = mail
    key = Fernet.generate_key().decode()
    db = Database(db_url)
    install_audit(db)
    boxes = add_mailboxes(db, dovecot, key)
    addresses = sorted(boxes)
    incoming: Expected = {}
    outgoing: Expected = {}
    deliver(dovecot, addresses, incoming, "first")
    settings = node_settings(tmp_path, dovecot, postfix)
    env = {"MAILCRM_DATABASE_URL": db_url, "MAILCRM_SECRET_KEY": key}
    a, b = (Node(name, tmp_path / name, settings, env) for name in ("node-a", "node-b"))
    started_nodes += [a, b]
    try:
        _share(db, a, b, incoming, outgoing)
        _spool_under_both(db, a, b, postfix, tmp_path / "relay.crt", addresses, outgoing)
        _kill_and_take_over(db, dovecot, a, boxes, incoming, outgoing)
        _check_sessions(dovecot, addresses)
        _check_applied_once(db, incoming, outgoing)
        _check_logs(a, b)
        assert b.terminate() == 0
        assert lease_owners(db) == {}, "a node stopped by SIGTERM releases its leases"
        # its children (capture worker, resource tracker) see it gone and end right after it
        until(lambda: not b.survivors(), 30, f"{b.name}'s processes to end with it")
    except BaseException:
        for node in (a, b):
            print(f"--- {node.name} log (tail)\n{node.log_tail(60)}")
        raise
    finally:
        db.dispose()


def _share(db: Database, a: Node, b: Node, incoming: Expected, outgoing: Expected) -> None:
    """Node a takes every mailbox; node b joins and gets half; all first mail is captured once."""
    a.start()
    until(lambda: holdings(db)["node-a"] == BOXES, 90, "node-a leasing every mailbox")
    b.start()
    a.wait_ready()
    b.wait_ready()
    until(
        lambda: holdings(db) == {"node-a": BOXES // 2, "node-b": BOXES // 2},
        90,
        "an even spread over both nodes",
    )
    until(lambda: all_captured(db, incoming, outgoing), 120, "every first message captured")
    print(f"spread: {dict(holdings(db))}; /metrics of node-b: {metric_leases(b)}")
    assert metric_leases(b) == {"node-a": BOXES // 2, "node-b": BOXES // 2}


def _spool_under_both(
    db: Database,
    a: Node,
    b: Node,
    postfix: Postfix,
    cert: Path,
    addresses: list[str],
    outgoing: Expected,
) -> None:
    """Mail relayed through both nodes and a bulk of spool entries: all captured, each once."""
    recipients = [
        relay_send(node, cert, addresses[n], outgoing, n) for n, node in enumerate([a, b] * 5)
    ]
    bulk_spool(db, addresses, outgoing, 200, "bulk")
    until(lambda: spool_settled(db), 120, "the spool drained by both nodes")
    workers = collections.Counter(node for _, _, node in audit(db, "spool"))
    print(f"spool entries applied per node, both alive: {dict(workers)}")
    assert set(workers) == {"node-a", "node-b"}, "both nodes' spool workers took entries"
    delivered = until(
        lambda: all(postfix.delivered(to) for to in recipients),
        60,
        "the relayed mail delivered by the real Postfix",
    )
    assert delivered


def _kill_and_take_over(
    db: Database,
    dovecot: Dovecot,
    a: Node,
    boxes: dict[str, int],
    incoming: Expected,
    outgoing: Expected,
) -> None:
    """kill -9 node a while it drains the spool; node b takes its mailboxes and mail over."""
    owners, addresses = lease_owners(db), sorted(boxes)
    orphaned = [address for address in addresses if owners.get(boxes[address]) == "node-a"]
    before = len(audit(db, "spool"))
    bulk_spool(db, addresses, outgoing, 300, "dying")
    until(lambda: len(audit(db, "spool")) >= before + 30, 60, "the spool being drained")
    killed = time.time()
    a.kill()
    since: Expected = {}
    deliver(dovecot, addresses, since, "second")
    incoming.update(since)
    until(lambda: holdings(db) == {"node-b": BOXES}, 2 * LEASE + 30, "node-b holding every box")
    took = time.time() - killed
    until(lambda: not a.survivors(), 30, "node-a's processes to end with it")
    until(lambda: all_captured(db, incoming, outgoing), 120, "the mail since the kill captured")
    resumed = _first_logins_after(dovecot, orphaned, killed)
    print(
        f"after SIGKILL: node-b holds all leases in {took:.2f} s (lease {LEASE:.0f} s); "
        f"IMAP sessions on node-a's {len(orphaned)} mailboxes resumed within "
        f"{max(resumed) - killed:.2f} s; their new mail captured within "
        f"{time.time() - killed:.2f} s"
    )
    assert took <= 2 * LEASE + 0.5, f"takeover took {took:.2f} s, over two lease periods"
    assert writers(db, list(since)) == {"node-b"}
    until(lambda: spool_settled(db), 120, "the spool drained by the survivor")


def _first_logins_after(dovecot: Dovecot, users: list[str], when: float) -> list[float]:
    sessions = imap_sessions(dovecot.log())
    return [min(start for start, _ in sessions[user] if start > when) for user in users]


def _check_sessions(dovecot: Dovecot, addresses: list[str]) -> None:
    """Dovecot's log: every mailbox was synced, and never in two sessions at once."""
    sessions = imap_sessions(dovecot.log())
    assert sorted(sessions) == addresses, "every mailbox had IMAP sessions (and only those)"
    clashes = {user: overlaps(spans) for user, spans in sessions.items() if overlaps(spans)}
    assert not clashes, f"sessions open at the same time: {clashes}"
    gaps = [
        after[0] - before[1]
        for spans in sessions.values()
        for before, after in itertools.pairwise(spans)
        if before[1] is not None
    ]
    print(
        f"IMAP sessions: {sum(map(len, sessions.values()))} over {len(sessions)} mailboxes; "
        f"shortest pause between two sessions of one mailbox: {min(gaps, default=0):.3f} s"
    )


def _check_applied_once(db: Database, incoming: Expected, outgoing: Expected) -> None:
    """Every message is one activity, inserted once; every spool entry left pending once."""
    found = captured(db)
    assert sorted(found) == sorted([*incoming, *outgoing]), "no activity but the expected ones"
    inserted = audit(db, "activity")
    assert len(inserted) == len(found), "an activity was inserted and then removed again"
    applied = collections.Counter(row for row, _, _ in audit(db, "spool"))
    assert sorted(applied) == spool_ids(db) and set(applied.values()) == {1}
    print(
        f"activities inserted per node: {dict(collections.Counter(n for _, _, n in inserted))}; "
        f"spool entries applied per node: "
        f"{dict(collections.Counter(node for _, _, node in audit(db, 'spool')))}"
    )


def _check_logs(a: Node, b: Node) -> None:
    """The nodes' own logs: a handed half to b once, b lost nothing; no errors."""
    changes = {node.name: node.lease_changes() for node in (a, b)}
    print(f"lease changes (gained, lost) per node: {changes}")
    assert changes["node-a"] == [(BOXES, 0), (0, BOXES // 2)], "node-a's leases flapped"
    assert changes["node-b"] == [(BOXES // 2, 0), (BOXES // 2, 0)], "node-b's leases flapped"
    assert a.errors() == [] and b.errors() == []
