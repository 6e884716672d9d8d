"""Party resolution on activities, and records created for unknown senders."""

from __future__ import annotations

import msgspec

from processors.engine import DecisionEngine
from schemas.base import RecordRef
from schemas.config import ProcessingConfig
from schemas.crm import DecisionStatus, PartyRole, ReasonCode
from schemas.ids import created_record_id
from schemas.mail import EmailAddress
from schemas.mailbox import AutoCreate, IncomingFilter
from tests.unit.helpers import MAILBOXES, T0, email, engine, mailbox

SHARED = "shared@contoso.example"  # two contacts, c-2 and c-3
STRANGER = "pat@unknown.example"


def world(
    settings: ProcessingConfig | None = None, auto_create: AutoCreate = AutoCreate.NONE
) -> DecisionEngine:
    """The shared engine plus mailbox mb-all (filter all, creating `auto_create`)."""
    eng = engine(settings)
    inbox = mailbox("mb-all", "user:alice", "alice@nw.example", IncomingFilter.ALL)
    eng.mailboxes.apply("mb-all", msgspec.structs.replace(inbox, auto_create=auto_create))
    return eng


def test_sender_resolves_to_one_record_and_recipients_to_all() -> None:
    item = email("mb-all", "1", "m1@x.example", SHARED, ["alice@nw.example", SHARED])
    activity = world().process(item, 0, T0).activities[0]
    sender = activity.party(PartyRole.FROM)[0]
    assert sender.records == [RecordRef("contact", "c-2")]  # the first in resolution order
    shared_to = next(p for p in activity.party(PartyRole.TO) if p.address == SHARED)
    assert shared_to.records == [RecordRef("contact", "c-2"), RecordRef("contact", "c-3")]


def test_ambiguous_recipients_can_be_left_unresolved() -> None:
    settings = ProcessingConfig(leave_ambiguous_recipients_unresolved=True)
    item = email("mb-all", "1", "m1@x.example", SHARED, ["alice@nw.example", SHARED])
    activity = world(settings).process(item, 0, T0).activities[0]
    assert activity.party(PartyRole.FROM)[0].records == [RecordRef("contact", "c-2")]
    to = {p.address: p.records for p in activity.party(PartyRole.TO)}
    assert to == {"alice@nw.example": [RecordRef("user", "alice")], SHARED: []}


def test_no_record_is_created_by_default() -> None:
    out = world().process(
        email("mb-all", "1", "m1@x.example", STRANGER, ["alice@nw.example"]), 0, T0
    )
    assert out.records == []
    assert out.activities[0].party(PartyRole.FROM)[0].records == []


def test_an_unknown_sender_of_tracked_email_becomes_a_contact() -> None:
    eng = world(auto_create=AutoCreate.CONTACT)
    item = msgspec.structs.replace(
        email("mb-all", "1", "m1@x.example", STRANGER, ["alice@nw.example"]),
        sender=EmailAddress(STRANGER, "Pat Doe"),
    )
    out = eng.process(item, 0, T0)
    assert out.decisions[0].reason == ReasonCode.ACCEPT_ALL
    [record] = out.records
    assert record.record_id == created_record_id("contact", STRANGER)
    assert (record.record_type, record.name, record.email_addresses) == (
        "contact",
        "Pat Doe",
        [STRANGER],
    )
    assert record.created_by_tidings
    assert out.activities[0].party(PartyRole.FROM)[0].records == [record.ref]
    # The next email from Pat resolves to the new contact and creates nothing more.
    again = eng.process(email("mb-all", "2", "m2@x.example", STRANGER, ["alice@nw.example"]), 0, T0)
    assert again.records == []
    assert again.activities[0].party(PartyRole.FROM)[0].records == [record.ref]


def test_leads_are_created_when_the_mailbox_says_so() -> None:
    out = world(auto_create=AutoCreate.LEAD).process(
        email("mb-all", "1", "m1@x.example", STRANGER, ["alice@nw.example"]), 0, T0
    )
    assert [(r.record_type, r.name) for r in out.records] == [("lead", "pat")]


def test_nothing_is_created_for_skipped_or_outgoing_email() -> None:
    eng = world(auto_create=AutoCreate.CONTACT)
    settings_reject = msgspec.structs.replace(
        MAILBOXES[0], mailbox_id="mb-resp", auto_create=AutoCreate.CONTACT
    )
    eng.mailboxes.apply("mb-resp", settings_reject)
    skipped = eng.process(
        email("mb-resp", "1", "m1@x.example", STRANGER, ["alice@nw.example"]), 0, T0
    )
    assert skipped.decisions[0].status == DecisionStatus.SKIPPED
    assert skipped.records == []
    outgoing = eng.process(
        email("mb-all", "2", "m2@x.example", "alice@nw.example", [STRANGER], folder="Sent"), 0, T0
    )
    assert outgoing.decisions[0].status == DecisionStatus.PROMOTED
    assert outgoing.records == []
