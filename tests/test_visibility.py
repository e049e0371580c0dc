"""The visibility rule (SPEC V1) on SQLite and PostgreSQL: two ``own`` users see disjoint parts
of one CRM, a company mailbox's mail goes to the lead's responsible, ``all`` users and the admin
CLI see everything, writes outside one's own records are refused, and ``user --sees``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from crm.errors import NotFound, PermissionDenied
from crm.face import Database, admin, queries
from crm.face.convert import convert_lead
from crm.face.visibility import (
    Viewer,
    can_change,
    can_see,
    can_see_activity,
    viewer_for,
)
from crm.store.models import (
    Activity,
    ActivityBinding,
    Company,
    Contact,
    Lead,
    Mailbox,
    User,
)
from crm.vocab import EntityType
from tests.conftest import Cli

EVERYTHING = queries.Filter()


@dataclass
class World:
    """The ids of the records made by :func:`world`."""

    ids: dict[str, int]

    def __getitem__(self, name: str) -> int:
        return self.ids[name]


def _activity(s: object, key: str, box: Mailbox | None, *bound: tuple[str, int]) -> Activity:
    act = Activity(
        message_key=key,
        thread=key,
        direction="incoming",
        subject=f"subject {key}",
        counterparts=[],
        mailbox_id=box.id if box else None,
    )
    act.bindings = [ActivityBinding(entity_type=t, entity_id=i) for t, i in bound]
    return act


def world(db: Database) -> World:
    """alice and bob (own), boss (admin: all), nocrm (no CRM access); their personal mailboxes
    and a company mailbox; leads, contacts, companies and the mail that binds them."""
    with db.session() as s:
        alice, bob = User(email="alice@co.test", sees="own"), User(email="bob@co.test", sees="own")
        boss = User(email="boss@co.test", admin=True, sees="all")
        nocrm = User(email="nocrm@co.test", crm_access=False)
        s.add_all([alice, bob, boss, nocrm])
        s.flush()
        abox = Mailbox(address="alice@co.test", kind="personal", owner_id=alice.id, folders=[])
        bbox = Mailbox(address="bob@co.test", kind="personal", owner_id=bob.id, folders=[])
        sales = Mailbox(address="sales@co.test", kind="company", folders=[])
        acme, ycorp, zcorp = Company(name="Acme"), Company(name="Ycorp"), Company(name="Zcorp")
        s.add_all([abox, bbox, sales, acme, ycorp, zcorp])
        s.flush()
        la = Lead(name="Lead A", responsible_id=alice.id, company_id=acme.id)
        lb = Lead(name="Lead B", responsible_id=bob.id)
        lc = Lead(name="Lead C", responsible_id=bob.id, company_id=ycorp.id)
        ld = Lead(name="Lead D")  # nobody's, but mail of alice's mailbox is bound to it
        le = Lead(name="Lead E", responsible_id=alice.id)
        ca = Contact(name="Contact A", phones=[], created_by_id=alice.id)
        cb = Contact(name="Contact B", phones=[], company_id=zcorp.id)
        s.add_all([la, lb, lc, ld, le, ca, cb])
        s.flush()
        acts = {
            "a1": _activity(s, "a1", abox, ("lead", la.id), ("company", acme.id)),
            "a2": _activity(s, "a2", abox, ("lead", ld.id)),
            "b1": _activity(s, "b1", bbox, ("lead", lb.id)),
            "b2": _activity(s, "b2", bbox, ("contact", cb.id)),
            "s1": _activity(s, "s1", sales, ("lead", lc.id)),  # company mail: bob's lead
            "s2": _activity(s, "s2", sales, ("lead", le.id)),  # company mail: alice's lead
            "b3": _activity(s, "b3", bbox, ("lead", le.id)),  # bob's mail to alice's lead
        }
        s.add_all(acts.values())
        s.flush()
        ids = {"alice": alice.id, "bob": bob.id, "boss": boss.id}
        ids |= {"la": la.id, "lb": lb.id, "lc": lc.id, "ld": ld.id, "le": le.id}
        ids |= {"ca": ca.id, "cb": cb.id, "acme": acme.id, "ycorp": ycorp.id, "zcorp": zcorp.id}
        ids |= {k: a.id for k, a in acts.items()}
        return World(ids)


def _viewer(db: Database, email: str) -> Viewer:
    found = viewer_for(db, email)
    assert found is not None
    return found


def _seen(db: Database, viewer: Viewer | None) -> dict[str, set[str]]:
    """What ``viewer`` sees in each listing, by name (activities by subject)."""
    with db.session() as s:
        return {
            "leads": {r["name"] for r in queries.leads(s, EVERYTHING, viewer=viewer).rows},
            "contacts": {r["name"] for r in queries.contacts(s, EVERYTHING, viewer=viewer).rows},
            "companies": {r["name"] for r in queries.companies(s, EVERYTHING, viewer=viewer).rows},
            "activities": {
                r["subject"].split()[-1]
                for r in queries.activities(s, EVERYTHING, viewer=viewer).rows
            },
        }


def test_two_own_users_see_disjoint_parts(db: Database) -> None:
    world(db)
    alice = _seen(db, _viewer(db, "alice@co.test"))
    bob = _seen(db, _viewer(db, "bob@co.test"))
    assert alice == {
        "leads": {"Lead A", "Lead D", "Lead E"},
        "contacts": {"Contact A"},
        "companies": {"Acme"},
        "activities": {"a1", "a2", "s2"},
    }
    assert bob == {
        "leads": {"Lead B", "Lead C", "Lead E"},
        "contacts": {"Contact B"},
        "companies": {"Ycorp", "Zcorp"},
        "activities": {"b1", "b2", "b3", "s1"},
    }
    # Lead E is alice's, with mail from bob's own mailbox: both see the lead, each their own mail.
    for kind in ("contacts", "companies", "activities"):
        assert not alice[kind] & bob[kind], kind


def test_company_mailbox_mail_goes_to_the_leads_responsible(db: Database) -> None:
    w = world(db)
    alice, bob = _viewer(db, "alice@co.test"), _viewer(db, "bob@co.test")
    assert can_see_activity(db, bob, w["s1"]) and not can_see_activity(db, alice, w["s1"])
    assert can_see_activity(db, alice, w["s2"]) and not can_see_activity(db, bob, w["s2"])
    assert can_see(db, bob, EntityType.COMPANY, w["ycorp"])  # the company of a lead he sees
    assert not can_see(db, alice, EntityType.COMPANY, w["ycorp"])
    with db.session() as s:
        timeline = queries.lead(s, w["le"], viewer=alice)["activities"]
        assert [a["subject"] for a in timeline] == ["subject s2"]
        assert [a["subject"] for a in queries.lead(s, w["le"], viewer=bob)["activities"]] == [
            "subject b3"
        ]


def test_all_and_the_admin_cli_see_everything(db: Database) -> None:
    world(db)
    every = _seen(db, None)
    assert every["leads"] == {f"Lead {x}" for x in "ABCDE"}
    assert every["activities"] == {"a1", "a2", "b1", "b2", "b3", "s1", "s2"}
    assert _seen(db, _viewer(db, "boss@co.test")) == every
    with db.session() as s:
        admin.set_user(s, "alice@co.test", None, None, None, sees="all")
    assert _seen(db, _viewer(db, "alice@co.test")) == every


def test_no_crm_access_or_unknown_user_is_no_viewer(db: Database) -> None:
    world(db)
    assert viewer_for(db, "nocrm@co.test") is None
    assert viewer_for(db, "stranger@elsewhere.test") is None
    assert viewer_for(db, "not an address") is None
    boss = _viewer(db, "boss@co.test")
    assert boss.admin and boss.sees_all and boss.email == "boss@co.test"


def test_records_outside_are_not_found_and_writes_refused(db: Database) -> None:
    w = world(db)
    alice = _viewer(db, "alice@co.test")
    assert not can_see(db, alice, EntityType.LEAD, w["lb"])
    assert can_see(db, alice, EntityType.LEAD, w["ld"])
    assert not can_see(db, alice, EntityType.LEAD, 999_999)
    assert can_change(db, alice, EntityType.LEAD, w["la"])
    assert not can_change(db, alice, EntityType.LEAD, w["ld"])  # sees it, is not responsible
    assert can_change(db, alice, EntityType.CONTACT, w["ca"])
    assert not can_change(db, alice, EntityType.COMPANY, w["acme"])
    boss = _viewer(db, "boss@co.test")
    assert can_change(db, boss, EntityType.LEAD, w["lb"])
    with db.session() as s:
        for show, rid in ((queries.lead, w["lb"]), (queries.contact, w["cb"])):
            with pytest.raises(NotFound):
                show(s, rid, viewer=alice)
        with pytest.raises(NotFound):
            queries.company(s, w["zcorp"], viewer=alice)
        with pytest.raises(NotFound):
            admin.update_lead(s, w["lb"], viewer=alice, status="won")
        with pytest.raises(PermissionDenied):
            admin.update_lead(s, w["ld"], viewer=alice, status="won")
        with pytest.raises(PermissionDenied):
            convert_lead(s, w["ld"], viewer=alice)
        with pytest.raises(NotFound):
            admin.set_completed(s, w["b1"], True, viewer=alice)
        admin.set_completed(s, w["a1"], True, viewer=alice)
        admin.update_lead(s, w["la"], viewer=alice, status="won")
    with db.session() as s:
        assert queries.lead(s, w["la"])["status"] == "won"
        assert queries.lead(s, w["lb"])["status"] == "new"


def test_a_converted_lead_stays_with_its_person(db: Database) -> None:
    w = world(db)
    alice = _viewer(db, "alice@co.test")
    with db.session() as s:
        by_web = convert_lead(s, w["la"], viewer=alice)
        by_cli = convert_lead(s, w["le"])  # the admin CLI: made for the lead's responsible
    with db.session() as s:
        assert queries.contact(s, by_web.contact, viewer=alice)["name"] == "Lead A"
        assert queries.contact(s, by_cli.contact, viewer=alice)["name"] == "Lead E"
        bob = _viewer(db, "bob@co.test")
        with pytest.raises(NotFound):
            queries.contact(s, by_web.contact, viewer=bob)
        # Bob's own mail to Lead E moved to the contact: he sees it, and only his mail.
        shown = queries.contact(s, by_cli.contact, viewer=bob)["activities"]
        assert [a["subject"] for a in shown] == ["subject b3"]


def test_cli_user_sees(cli: Cli) -> None:
    cli.ok("user", "add", "ann@co.test")
    cli.ok("user", "add", "root@co.test", "--admin")
    cli.ok("user", "add", "max@co.test", "--sees", "all")
    users = {u["email"]: u["sees"] for u in cli.json("user", "list")}
    assert users == {"ann@co.test": "own", "root@co.test": "all", "max@co.test": "all"}
    cli.ok("user", "set", "max@co.test", "--sees", "own")
    assert {u["email"]: u["sees"] for u in cli.json("user", "list")}["max@co.test"] == "own"
    bad = cli.run("user", "set", "max@co.test", "--sees", "everything")
    assert bad.exit_code == 2 and "own, all" in bad.stderr
    assert "sees" in cli.ok("user", "list")
