"""schemas/: codecs of every topic, typed decode errors, ids, JSON Schema export, DLQ."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import dlq
from schemas.act import (
    ActRecord,
    ActSource,
    ActType,
    Appointment,
    Attendee,
    AttendeeRole,
    OccurrenceChange,
    Recurrence,
    ResponseStatus,
    Task,
    appointment_record_id,
)
from schemas.act_changes import ActLink, ActParked, CrmActChange, link_key
from schemas.act_sync import Side
from schemas.base import RecordRef
from schemas.codec import decode_key, encode_key
from schemas.crm import (
    Activity,
    ActivityParty,
    CorrelationMethod,
    CrmRecord,
    DecisionStatus,
    Direction,
    PartyRole,
    PromotionDecision,
    ReasonCode,
)
from schemas.errors import DecodeError, ErrorScope, Severity, SyncError
from schemas.ids import (
    change_event_id,
    email_activity_id,
    error_id,
    normalize_message_id,
    uuid5_text,
)
from schemas.jsonschema import export_schemas
from schemas.mail import (
    AttachmentInfo,
    AutoReplyKind,
    ChangeKind,
    EmailAddress,
    ItemType,
    MailItemChanged,
    ManualTrack,
    ParsedEmail,
)
from schemas.mailbox import (
    Cursor,
    FolderRole,
    IncomingFilter,
    MailboxConfig,
    MailboxCounters,
    MailboxStatus,
    MaildirPosition,
    MaildirSettings,
    Protocol,
    RunStatus,
    ServerProfile,
    ServerProfileConfig,
    SyncState,
    TransportSecurity,
)
from schemas.outgoing import OutgoingEmail, OutgoingStatus, SendStatus
from schemas.topics import DLQ, TOPICS, TopicSpec, codec, spec_by_name
from schemas.track import TrackRequest

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 1, 9, 5, 30, 123000, tzinfo=UTC)

SENDER = ActivityParty(
    role=PartyRole.FROM,
    address="dana@contoso.example",
    name="Dana",
    records=[RecordRef("contact", "c-1")],
)

SAMPLES: dict[type[Any], Any] = {
    MailboxConfig: MailboxConfig(
        mailbox_id="mb-alice",
        owner=RecordRef("user", "alice"),
        email_address="alice@nw.example",
        protocol=Protocol.MAILDIR,
        incoming_filter=IncomingFilter.CRM_RECORDS,
        approved=False,
        maildir=MaildirSettings(path="/srv/mail/alice", folders=["INBOX", "Sent", "Archive"]),
        process_email_from=T0,
        updated_at=T1,
    ),
    ServerProfileConfig: ServerProfileConfig(
        name="exchange-eu",
        profile=ServerProfile(
            protocol=Protocol.IMAP,
            host="imap.nw.example",
            security=TransportSecurity.STARTTLS,
            max_connections=4,
        ),
        updated_at=T1,
    ),
    CrmRecord: CrmRecord(
        record_id="c-1",
        record_type="contact",
        name="Dana Scully",
        email_addresses=["dana@contoso.example", "d.scully@contoso.example"],
        parent_account_id="contoso",
        updated_at=T1,
    ),
    Cursor: Cursor(
        mailbox_id="mb-alice",
        folder="INBOX",
        position=MaildirPosition(names_z=b"x\x9c\x00\xff binary", count=3),
        updated_at=T1,
    ),
    MailItemChanged: MailItemChanged(
        event_id="ev-1",
        mailbox_id="mb-alice",
        folder="INBOX",
        item_id="1700000000.M1P2.host",
        change=ChangeKind.UPDATED,
        item_type=ItemType.EMAIL,
        version="S",
        observed_at=T0,
        server_time=T1,
        size=1234,
        flags=["S", "F"],
        raw=b"From: a@b.example\r\n\r\n\x00\xff bytes survive",
        unreadable_code=None,
        manual_track=ManualTrack(request_id="t-1", requested_by="alice", requested_at=T0),
    ),
    ParsedEmail: ParsedEmail(
        event_id="ev-1",
        mailbox_id="mb-alice",
        folder="Sent",
        folder_role=FolderRole.SENT,
        item_id="1",
        observed_at=T0,
        message_id="m1@x.example",
        thread_key="root@x.example",
        subject="Grüße ✓",
        sender=EmailAddress("alice@nw.example", "Alice"),
        to=[EmailAddress("dana@contoso.example")],
        cc=[EmailAddress("c@x.example", "C")],
        bcc=[EmailAddress("b@x.example")],
        sent_at=T1,
        in_reply_to="p@x.example",
        references=["root@x.example", "p@x.example"],
        thread_index="AdS=",
        auto_reply=AutoReplyKind.BOUNCE,
        body_text="line 1\nline 2",
        body_truncated=True,
        has_html=True,
        attachments=[AttachmentInfo(filename="q.pdf", content_type="application/pdf", size=9)],
        size=4321,
        defects=["InvalidDateHeader"],
    ),
    PromotionDecision: PromotionDecision(
        item_key="mb-alice|INBOX|1",
        mailbox_id="mb-alice",
        folder="INBOX",
        item_id="1",
        event_id="ev-1",
        message_id="m1@x.example",
        status=DecisionStatus.PROMOTED,
        reason=ReasonCode.CORRELATION_MATCH,
        explanation="replies to tracked email",
        activity_id="act-1",
        correlation_method=CorrelationMethod.IN_REPLY_TO,
        correlated_activity_id="act-0",
        direction=Direction.INCOMING,
        sender=SENDER,
        version=3,
        decided_at=T1,
    ),
    Activity: Activity(
        activity_id="act-1",
        version=2,
        message_id="m1@x.example",
        subject="RE: Quote",
        description="thanks",
        description_truncated=False,
        direction=Direction.INCOMING,
        parties=[
            SENDER,
            ActivityParty(role=PartyRole.TO, address="alice@nw.example"),
        ],
        sent_at=T0,
        owner=RecordRef("user", "alice"),
        regarding=RecordRef("opportunity", "opp-1"),
        parent_activity_id="act-0",
        conversation_id="act-0",
        correlation_method=CorrelationMethod.TRACKING_TOKEN,
        correlated_activity_id="act-0",
        tracking_token="CRM:0001001",
        in_reply_to="p@x.example",
        receiving_mailboxes=["mb-alice", "mb-support"],
        created_at=T0,
        updated_at=T1,
    ),
    SyncError: SyncError(
        error_id="err-1",
        mailbox_id="mb-alice",
        scope=ErrorScope.ITEM,
        severity=Severity.PERMANENT,
        code="Malformed",
        message="the message is empty",
        component="processors",
        folder="INBOX",
        item_id="1",
        event_id="ev-1",
        attempt=2,
        occurred_at=T1,
    ),
    MailboxStatus: MailboxStatus(
        mailbox_id="mb-alice",
        state=SyncState.ENABLED,
        incoming_status=RunStatus.SUCCESS,
        outgoing_status=RunStatus.FAILURE,
        last_sync_started_at=T0,
        last_sync_at=T1,
        last_success_at=T1,
        next_poll_at=T1,
        sync_generation=7,
        pending_items=2,
        counters=MailboxCounters(items_listed=10, created_events=8, deleted_events=1, errors=1),
        last_error_code="Timeout",
        last_error="server did not answer",
        worker="w-1",
        updated_at=T1,
    ),
    OutgoingEmail: OutgoingEmail(
        activity_id="act-9",
        mailbox_id="mb-alice",
        sender=EmailAddress("alice@nw.example", "Alice"),
        to=[EmailAddress("dana@contoso.example")],
        subject="Quote CRM:0001001",
        body_text="see attached",
        body_html="<p>see attached</p>",
        in_reply_to="m1@x.example",
        status=SendStatus.SENDING,
        requested_at=T0,
    ),
    OutgoingStatus: OutgoingStatus(
        activity_id="act-9",
        mailbox_id="mb-alice",
        status=SendStatus.SENT,
        message_id="tidings.0f3d@nw.example",
        attempt=2,
        tracking_token="CRM:0001001",
        sent_at=T0,
        accepted=["dana@contoso.example"],
        copied_to_sent=True,
        worker="w-1",
        updated_at=T1,
    ),
    ActRecord: ActRecord(
        record_id=appointment_record_id("040000008200E00074C5B7101A82E008000000001"),
        record_type=ActType.APPOINTMENT,
        version=1_772_355_930_123,
        payload=Appointment(
            ical_uid="040000008200E00074C5B7101A82E008000000001",
            subject="Weekly review",
            start=T0,
            end=T1,
            time_zone="W. Europe Standard Time",
            location="Room 4",
            organizer=Attendee(address="alice@nw.example", name="Alice"),
            attendees=[
                Attendee(
                    address="dana@contoso.example",
                    role=AttendeeRole.OPTIONAL,
                    response=ResponseStatus.ACCEPTED,
                )
            ],
            recurrence=Recurrence(rrule="FREQ=WEEKLY;BYDAY=MO", start_date=T0.date(), count=10),
            exceptions=[OccurrenceChange(original_start=T0, cancelled=True)],
            categories=["Tracked to CRM"],
            change_time=T1,
            change_key="ck-2",
        ),
        owner=RecordRef("user", "alice"),
        parties=[SENDER],
        source=ActSource(mailbox_id="mb-alice", folder="Calendar", item_id="AAMk1"),
        mailboxes=["mb-alice"],
        change_time=T1,
        updated_at=T1,
    ),
    TrackRequest: TrackRequest(
        request_id="t-1",
        mailbox_id="mb-alice",
        message_id="m1@x.example",
        requested_by="alice",
        requested_at=T1,
    ),
    CrmActChange: CrmActChange(
        record_id="crm-appt-1",
        record_type=ActType.APPOINTMENT,
        owner=RecordRef("user", "alice"),
        payload=Appointment(
            ical_uid="crm-appt-1@crm.example",
            subject="Quarterly review",
            start=T0,
            end=T1,
            attendees=[Attendee(address="dana@contoso.example")],
            recurrence=Recurrence(rrule="FREQ=WEEKLY;BYDAY=MO", start_date=T0.date(), count=4),
        ),
        crm_change_time=T1,
        regarding=RecordRef("account", "contoso"),
    ),
    ActLink: ActLink(
        record_id="crm-appt-1",
        mailbox_id="mb-alice",
        record_type=ActType.APPOINTMENT,
        item_id="AAMk1",
        change_key="CQAAAB1",
        ical_uid="crm-appt-1@crm.example",
        crm_change_time=T1,
        exchange_change_time=T1,
        synced={"subject": "0123456789abcdef01234567"},
        origin=Side.CRM,
        updated_at=T1,
        owner=RecordRef("user", "alice"),
        partition=0,
    ),
    ActParked: ActParked(
        record_id="crm-appt-1",
        mailbox_id="mb-alice",
        change=CrmActChange(
            record_id="crm-appt-1",
            record_type=ActType.TASK,
            owner=RecordRef("user", "alice"),
            payload=Task(subject="Send the quote", due=T1),
            crm_change_time=T1,
        ),
        retries=1,
        first_failed_at=T0,
        next_attempt_at=T1,
        last_code="ServerBusy",
        last_message="ews busy",
        updated_at=T1,
    ),
}

VALUE_TOPICS = [spec for spec in TOPICS if spec.value_type is not None]


def topic_id(spec: TopicSpec[Any]) -> str:
    return spec.suffix


def sample(spec: TopicSpec[Any]) -> Any:
    """The representative value of a topic's value type."""
    assert spec.value_type is not None
    return SAMPLES[spec.value_type]


def test_every_value_type_has_a_sample() -> None:
    assert {spec.value_type for spec in VALUE_TOPICS} <= set(SAMPLES)


@pytest.mark.parametrize("spec", VALUE_TOPICS, ids=topic_id)
def test_codec_round_trips_a_representative_value(spec: TopicSpec[Any]) -> None:
    value = sample(spec)
    data = codec(spec).encode(value)
    assert isinstance(data, bytes)
    json.loads(data)  # the wire format is JSON
    assert codec(spec).decode(data) == value
    assert codec(spec).encode(codec(spec).decode(data)) == data


@pytest.mark.parametrize("spec", VALUE_TOPICS, ids=topic_id)
def test_every_payload_carries_a_schema_version(spec: TopicSpec[Any]) -> None:
    assert json.loads(codec(spec).encode(sample(spec)))["schema_version"] == 1


def test_codec_is_one_instance_per_topic() -> None:
    for spec in VALUE_TOPICS:
        assert codec(spec) is codec(spec)
        assert codec(spec).value_type is spec.value_type


def test_dlq_has_no_codec() -> None:
    with pytest.raises(KeyError):
        codec(DLQ)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"{", b"\xff\xfe\x00", b"[]", b"null", b"42", b'"a string"'],
)
@pytest.mark.parametrize("spec", VALUE_TOPICS, ids=topic_id)
def test_decoding_garbage_raises_decode_error_with_location(
    spec: TopicSpec[Any], data: bytes
) -> None:
    with pytest.raises(DecodeError) as caught:
        codec(spec).decode(data, topic="tidings." + spec.suffix, partition=3, offset=1234)
    error = caught.value
    assert error.topic == "tidings." + spec.suffix
    assert error.partition == 3
    assert error.offset == 1234
    assert error.reason
    assert f"tidings.{spec.suffix}[3]@1234" in str(error)
    assert error.reason in str(error)


@pytest.mark.parametrize("spec", VALUE_TOPICS, ids=topic_id)
def test_decoding_an_object_missing_required_fields_raises_decode_error(
    spec: TopicSpec[Any],
) -> None:
    with pytest.raises(DecodeError) as caught:
        codec(spec).decode(b"{}", "t", 0, 0)
    assert "missing required field" in caught.value.reason.lower()


@pytest.mark.parametrize(
    ("spec_type", "field", "bad"),
    [
        (CrmRecord, "email_addresses", "not-a-list"),
        (MailboxConfig, "protocol", "carrier-pigeon"),
        (MailboxConfig, "owner", "user:alice"),
        (PromotionDecision, "version", "three"),
        (PromotionDecision, "decided_at", "yesterday"),
        (SyncError, "attempt", 1.5),
        (MailItemChanged, "observed_at", 12),
        (Activity, "direction", "sideways"),
    ],
)
def test_decoding_a_wrong_type_raises_decode_error_naming_the_field(
    spec_type: type[Any], field: str, bad: object
) -> None:
    spec = next(s for s in VALUE_TOPICS if s.value_type is spec_type)
    payload = json.loads(codec(spec).encode(SAMPLES[spec_type]))
    payload[field] = bad
    with pytest.raises(DecodeError) as caught:
        codec(spec).decode(json.dumps(payload).encode(), "topic", 1, 2)
    assert field in caught.value.reason
    assert (caught.value.topic, caught.value.partition, caught.value.offset) == ("topic", 1, 2)


@pytest.mark.parametrize("spec", VALUE_TOPICS, ids=topic_id)
def test_unknown_fields_are_ignored(spec: TopicSpec[Any]) -> None:
    value = sample(spec)
    payload = json.loads(codec(spec).encode(value))
    payload["field_from_the_future"] = {"nested": [1, 2, 3]}
    payload["another"] = "x"
    assert codec(spec).decode(json.dumps(payload).encode()) == value


def test_unknown_fields_in_nested_structs_are_ignored() -> None:
    spec = next(s for s in VALUE_TOPICS if s.value_type is Activity)
    payload = json.loads(codec(spec).encode(SAMPLES[Activity]))
    payload["parties"][0]["future"] = True
    payload["regarding"]["future"] = 1
    assert codec(spec).decode(json.dumps(payload).encode()) == SAMPLES[Activity]


def test_missing_optional_fields_take_their_defaults() -> None:
    spec = next(s for s in VALUE_TOPICS if s.value_type is CrmRecord)
    record = codec(spec).decode(b'{"record_id": "c", "record_type": "contact", "name": "C"}')
    assert record.email_addresses == []
    assert record.schema_version == 1


@pytest.mark.parametrize("spec", VALUE_TOPICS, ids=topic_id)
def test_decode_nullable_tombstones(spec: TopicSpec[Any]) -> None:
    assert codec(spec).decode_nullable(None) is None
    assert codec(spec).decode_nullable(b"") is None
    value = sample(spec)
    assert codec(spec).decode_nullable(codec(spec).encode(value)) == value
    with pytest.raises(DecodeError) as caught:
        codec(spec).decode_nullable(b"junk", "t", 5, 6)
    assert (caught.value.partition, caught.value.offset) == (5, 6)


def test_keys_encode_as_utf8_and_decode_leniently() -> None:
    assert encode_key("mb-ä|INBOX") == "mb-ä|INBOX".encode()
    assert decode_key(encode_key("mb-ä|INBOX")) == "mb-ä|INBOX"
    assert decode_key(None) is None
    assert decode_key(b"\xff") == "\ufffd"


def test_topic_names_and_lookup() -> None:
    suffixes = [spec.suffix for spec in TOPICS]
    assert len(suffixes) == len(set(suffixes))
    for spec in TOPICS:
        assert spec.name("tidings.") == f"tidings.{spec.suffix}"
        assert spec_by_name(spec.name("acme."), "acme.") is spec
        assert spec.configs()["cleanup.policy"] in ("compact", "delete")
    assert spec_by_name("tidings.crm.records", "acme.") is None
    assert spec_by_name("other", "tidings.") is None


def test_the_docs_topic_table_lists_every_topic_with_its_key_and_policy() -> None:
    table = (Path(__file__).resolve().parents[2] / "docs" / "topics.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in table.splitlines()
        if line.startswith("| `")
    }
    assert sorted(rows) == sorted(spec.suffix for spec in TOPICS)
    for spec in TOPICS:
        cells = [cell.strip() for cell in rows[spec.suffix].split("|")[1:-1]]
        assert cells[1].startswith(spec.key.split(" (")[0].replace("|", " + ")), spec.suffix
        assert cells[3] == str(spec.cleanup), spec.suffix
        if spec.value_type is not None:
            assert cells[2].startswith(f"`{spec.value_type.__name__}`"), spec.suffix


# -- ids ------------------------------------------------------------------------


def test_change_event_id_is_stable_and_depends_on_every_part() -> None:
    parts = ("mb-alice", "INBOX", "item-1", "created", "v1")
    first = change_event_id(*parts)
    assert change_event_id(*parts) == first
    assert len(first) == 32
    int(first, 16)
    for index in range(len(parts)):
        changed = list(parts)
        changed[index] = changed[index] + "x"
        assert change_event_id(*changed) != first


def test_change_event_id_does_not_confuse_part_boundaries() -> None:
    assert change_event_id("a|b", "c", "d", "e", "f") != change_event_id("a", "b|c", "d", "e", "f")
    assert change_event_id("ab", "c", "d", "e", "f") != change_event_id("a", "bc", "d", "e", "f")


def test_error_id_is_stable_per_attempt() -> None:
    assert error_id("ev-1", "Malformed") == error_id("ev-1", "Malformed", 1)
    assert error_id("ev-1", "Malformed", 2) != error_id("ev-1", "Malformed", 1)
    assert error_id("ev-1", "Timeout") != error_id("ev-1", "Malformed")


def test_email_activity_id_is_a_stable_uuid_and_qualifier_separates() -> None:
    plain = email_activity_id("m1@x.example")
    assert uuid.UUID(plain).version == 5
    assert email_activity_id("m1@x.example") == plain
    assert email_activity_id("m1@x.example", "") == plain
    sent = email_activity_id("m1@x.example", "outgoing")
    received = email_activity_id("m1@x.example", "incoming")
    assert len({plain, sent, received}) == 3
    assert email_activity_id("m2@x.example") != plain


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])), st.uuids())
def test_uuid5_text_is_the_standard_uuid5(name: str, namespace: uuid.UUID) -> None:
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


def test_email_activity_id_of_one_message_seen_differently_is_one_id() -> None:
    forms = ["<M1@X.Example>", " <M1@x.example> ", "M1@X.EXAMPLE"]
    normalized = {normalize_message_id(form) for form in forms}
    assert normalized == {"M1@x.example"}
    assert len({email_activity_id(n) for n in normalized if n}) == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("<>", None),
        ("<Abc.Def@Example.COM>", "Abc.Def@example.com"),
        ("  <abc@EXAMPLE.com>  ", "abc@example.com"),
        ("abc@EXAMPLE.com", "abc@example.com"),
        ("<abc@ex\r\n ample.com>", "abc@example.com"),  # folded inside the id
        ("<a@b.example> <c@d.example>", "a@b.example"),  # the first id only
        ("<abc@Example.com", "abc@example.com"),  # unclosed bracket
        ("a@b@C.COM", "a@b@c.com"),  # the domain is after the last @
        ("no-at-sign", "no-at-sign"),
        ("<@DOMAIN.example>", "@DOMAIN.example"),  # no local part: kept as is
    ],
)
def test_normalize_message_id(raw: str | None, expected: str | None) -> None:
    assert normalize_message_id(raw) == expected


@given(st.text())
def test_normalize_message_id_is_idempotent(raw: str) -> None:
    once = normalize_message_id(raw)
    if once is not None:
        assert normalize_message_id(once) == once
        assert not any(ch.isspace() for ch in once)


@given(
    st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,20}@[A-Za-z0-9.-]{1,20}", fullmatch=True),
    st.sampled_from(["", " ", "\t", "\r\n "]),
)
def test_normalize_message_id_strips_brackets_and_lowercases_only_the_domain(
    message_id: str, space: str
) -> None:
    local, _, domain = message_id.rpartition("@")
    expected = f"{local}@{domain.lower()}"
    assert normalize_message_id(message_id) == expected
    assert normalize_message_id(f"{space}<{message_id}>{space}") == expected


# -- JSON Schema export ---------------------------------------------------------


def test_export_schemas_writes_one_valid_json_file_per_value_topic(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "schemas"
    paths = export_schemas(out, "acme.")
    assert len(paths) == len(VALUE_TOPICS)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"acme.{spec.suffix}.schema.json" for spec in VALUE_TOPICS
    )
    for spec in VALUE_TOPICS:
        path = out / f"acme.{spec.suffix}.schema.json"
        assert path in paths
        schema = json.loads(path.read_text())
        assert schema["title"] == f"acme.{spec.suffix}"
        assert schema["description"] == spec.description
        meta = schema["x-tidings"]
        assert meta["topic"] == f"acme.{spec.suffix}"
        assert spec.value_type is not None
        assert meta["value"] == spec.value_type.__name__
        assert meta["key"] == spec.key
        assert meta["cleanup.policy"] == str(spec.cleanup)
        _assert_sample_fits(schema, json.loads(codec(spec).encode(sample(spec))))
    assert not (out / "acme.dlq.schema.json").exists()


def _assert_sample_fits(schema: dict[str, Any], sample: dict[str, Any]) -> None:
    """The encoded sample has every required property and no property the schema lacks."""
    ref = schema["$ref"]
    assert ref.startswith("#/$defs/")
    definition = schema["$defs"][ref.removeprefix("#/$defs/")]
    assert definition["type"] == "object"
    properties = set(definition["properties"])
    assert set(sample) <= properties
    assert set(definition.get("required", [])) <= set(sample)
    assert "schema_version" in properties


def test_export_schemas_is_repeatable(tmp_path: Path) -> None:
    first = {p.name: p.read_text() for p in export_schemas(tmp_path / "a", "tidings.")}
    second = {p.name: p.read_text() for p in export_schemas(tmp_path / "a", "tidings.")}
    assert first == second


# -- RecordRef, MailboxConfig ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user:alice", RecordRef("user", "alice")),
        (" User : alice ", RecordRef("user", "alice")),
        ("opportunity:opp:1", RecordRef("opportunity", "opp:1")),
    ],
)
def test_record_ref_parse(text: str, expected: RecordRef) -> None:
    assert RecordRef.parse(text) == expected
    assert RecordRef.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "alice", ":alice", "user:", ":"])
def test_record_ref_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match="TYPE:ID"):
        RecordRef.parse(text)


def test_record_ref_str() -> None:
    assert str(RecordRef("contact", "c-1")) == "contact:c-1"


def config(maildir: MaildirSettings | None = None) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id="mb",
        owner=RecordRef("user", "alice"),
        email_address="alice@nw.example",
        protocol=Protocol.MAILDIR if maildir else Protocol.IMAP,
        maildir=maildir,
    )


@pytest.mark.parametrize(
    ("folder", "role"),
    [
        ("INBOX", FolderRole.INBOX),
        ("inbox", FolderRole.INBOX),
        ("Sent", FolderRole.SENT),
        ("sent items", FolderRole.SENT),
        ("Sent Messages", FolderRole.SENT),
        ("Archive", FolderRole.OTHER),
        ("Inbox.Sub", FolderRole.OTHER),
    ],
)
def test_folder_role_with_default_maildir_settings(folder: str, role: FolderRole) -> None:
    assert config(MaildirSettings(path="/m")).folder_role(folder) == role


def test_folder_role_with_configured_sent_folders() -> None:
    mailbox = config(MaildirSettings(path="/m", sent_folders=["Gesendet"]))
    assert mailbox.folder_role("gesendet") == FolderRole.SENT
    assert mailbox.folder_role("Sent") == FolderRole.OTHER
    assert mailbox.folder_role("INBOX") == FolderRole.INBOX


def test_folder_role_without_maildir_settings() -> None:
    mailbox = config()
    assert mailbox.folder_role("Sent") == FolderRole.SENT
    assert mailbox.folder_role("Sent Items") == FolderRole.SENT
    assert mailbox.folder_role("Drafts") == FolderRole.OTHER


# -- dead letters ---------------------------------------------------------------


def test_dead_letter_round_trips_through_its_headers() -> None:
    headers = dlq.dead_letter_headers(
        topic="tidings.crm.records",
        partition=2,
        offset=99,
        error="tidings.crm.records[2]@99: Expected `object`, got `str`",
        consumer="processors",
        failed_at=T1,
    )
    letter = dlq.DeadLetter.from_headers(headers, b"key", b"value", dlq_partition=0, dlq_offset=7)
    assert letter == dlq.DeadLetter(
        topic="tidings.crm.records",
        partition=2,
        offset=99,
        error="tidings.crm.records[2]@99: Expected `object`, got `str`",
        consumer="processors",
        failed_at=T1.isoformat(),
        key=b"key",
        value=b"value",
        dlq_partition=0,
        dlq_offset=7,
    )
    assert datetime.fromisoformat(letter.failed_at) == T1
    assert all(isinstance(value, bytes) for _, value in headers)


def test_dead_letter_with_missing_headers_reads_as_empty() -> None:
    letter = dlq.DeadLetter.from_headers([("unrelated", b"x")], None, None, 1, 2)
    assert (letter.topic, letter.partition, letter.offset) == ("", -1, -1)
    assert (letter.error, letter.consumer, letter.failed_at) == ("", "", "")
    assert (letter.key, letter.value, letter.dlq_partition, letter.dlq_offset) == (None, None, 1, 2)


def test_dead_letter_error_header_is_bounded() -> None:
    headers = dict(
        dlq.dead_letter_headers(
            topic="t", partition=0, offset=0, error="é" * 5000, consumer="c", failed_at=T0
        )
    )
    assert len(headers[dlq.HEADER_ERROR]) == 4096
    letter = dlq.DeadLetter.from_headers(list(headers.items()), None, b"", 0, 0)
    assert letter.error.startswith("é" * 2047)


def test_dead_letter_struct_round_trips_through_msgspec() -> None:
    letter = dlq.DeadLetter.from_headers(
        dlq.dead_letter_headers(
            topic="t", partition=1, offset=2, error="e", consumer="c", failed_at=T0
        ),
        b"\x00k",
        b"\xffv",
        3,
        4,
    )
    assert msgspec.json.decode(msgspec.json.encode(letter), type=dlq.DeadLetter) == letter


def test_a_crm_act_change_without_payload_must_be_a_delete() -> None:
    with pytest.raises(ValueError, match="deleted"):
        CrmActChange(
            record_id="r",
            record_type=ActType.TASK,
            owner=RecordRef("user", "alice"),
            crm_change_time=T0,
        )
    gone = CrmActChange(
        record_id="r",
        record_type=ActType.TASK,
        owner=RecordRef("user", "alice"),
        deleted=True,
        crm_change_time=T0,
    )
    assert gone.payload is None
    assert link_key("r", "mb-alice") == "r|mb-alice"
