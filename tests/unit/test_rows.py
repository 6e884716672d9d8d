"""sinks.rows (Structs to ClickHouse rows) and pipeline.crm_import (CRM import files)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pipeline.crm_import import ImportFileError, read_import_file
from schemas.base import RecordRef
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
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.ids import email_activity_id
from schemas.mailbox import MailboxCounters, MailboxStatus, RunStatus, SyncState
from schemas.outgoing import OutgoingStatus, SendStatus
from sinks.migrations import MIGRATIONS
from sinks.rows import (
    COLUMNS,
    Row,
    activity_rows,
    decision_row,
    error_row,
    outgoing_status_row,
    status_row,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 1, 9, 5, tzinfo=UTC)


def as_dict(table: str, row: Row) -> dict[str, Any]:
    assert len(row) == len(COLUMNS[table])
    return dict(zip(COLUMNS[table], row, strict=True))


def test_column_names_are_unique_per_table() -> None:
    for table, columns in COLUMNS.items():
        assert len(columns) == len(set(columns)), table


def ddl_columns() -> dict[str, list[tuple[str, str]]]:
    """Column names and types of every table, in order, from the migrations' DDL."""
    tables: dict[str, list[tuple[str, str]]] = {}
    for migration in MIGRATIONS:
        for statement in migration.statements:
            added = re.fullmatch(
                r"ALTER TABLE \{db\}\.(\w+) ADD COLUMN IF NOT EXISTS (\w+) (.+) AFTER (\w+)",
                statement,
            )
            if added is not None:
                table, name, kind, after = added.groups()
                names = [column for column, _ in tables[table]]
                tables[table].insert(names.index(after) + 1, (name, kind))
                continue
            found = re.search(r"\{db\}\.(\w+) \((.*)\) ENGINE", statement, re.S)
            assert found is not None, statement
            tables[found.group(1)] = [
                (line.split(None, 1)[0], line.split(None, 1)[1].rstrip(","))
                for line in (raw.strip() for raw in found.group(2).splitlines())
                if line
            ]
    return tables


def test_columns_match_the_clickhouse_tables_in_order() -> None:
    tables = ddl_columns()
    for table, columns in COLUMNS.items():
        assert [name for name, _ in tables[table]] == list(columns), table


def assert_nulls_only_in_nullable_columns(table: str, row: Row) -> None:
    types = dict(ddl_columns()[table])
    for column, value in zip(COLUMNS[table], row, strict=True):
        if value is None:
            assert types[column].startswith("Nullable("), column


# -- activities -----------------------------------------------------------------


FULL_ACTIVITY = Activity(
    activity_id="act-1",
    version=3,
    message_id="m1@x.example",
    subject="RE: Quote",
    description="thanks",
    description_truncated=True,
    direction=Direction.INCOMING,
    parties=[
        ActivityParty(
            role=PartyRole.FROM,
            address="dana@contoso.example",
            name="Dana",
            records=[RecordRef("contact", "c-1")],
        ),
        ActivityParty(
            role=PartyRole.TO,
            address="shared@contoso.example",
            records=[RecordRef("contact", "c-2"), RecordRef("contact", "c-3")],
        ),
        ActivityParty(role=PartyRole.TO, address="alice@nw.example", name="Alice"),
        ActivityParty(role=PartyRole.CC, address="stranger@else.example"),
        ActivityParty(role=PartyRole.BCC, address="hidden@else.example"),
    ],
    sent_at=T0,
    owner=RecordRef("user", "alice"),
    regarding=RecordRef("opportunity", "opp-1"),
    parent_activity_id="act-0",
    conversation_id="act-0",
    correlation_method=CorrelationMethod.IN_REPLY_TO,
    correlated_activity_id="act-0",
    tracking_token="CRM:0001001",
    in_reply_to="p@x.example",
    conversation_index="01c4fb64ef1b42feb11847944940908379e15c3769df0059ed6a60",
    receiving_mailboxes=["mb-alice", "mb-support"],
    queues=[RecordRef("queue", "support")],
    accepting_queue=RecordRef("queue", "support"),
    source="mailbox",
    created_at=T0,
    updated_at=T1,
)

MINIMAL_ACTIVITY = Activity(
    activity_id="act-2",
    version=1,
    message_id="m2@x.example",
    direction=Direction.OUTGOING,
    conversation_id="act-2",
    created_at=T0,
    updated_at=T0,
)


def test_activity_row_values() -> None:
    row, _ = activity_rows(FULL_ACTIVITY)
    assert as_dict("activities", row) == {
        "activity_id": "act-1",
        "version": 3,
        "activity_type": "email",
        "message_id": "m1@x.example",
        "subject": "RE: Quote",
        "description": "thanks",
        "description_truncated": 1,
        "direction": "incoming",
        "sender": "dana@contoso.example",
        "to_addresses": ("shared@contoso.example", "alice@nw.example"),
        "cc_addresses": ("stranger@else.example",),
        "sent_at": T0,
        "owner": "user:alice",
        "regarding": "opportunity:opp-1",
        "parent_activity_id": "act-0",
        "conversation_id": "act-0",
        "correlation_method": "InReplyTo",
        "correlated_activity_id": "act-0",
        "tracking_token": "CRM:0001001",
        "in_reply_to": "p@x.example",
        "conversation_index": "01c4fb64ef1b42feb11847944940908379e15c3769df0059ed6a60",
        "receiving_mailboxes": ("mb-alice", "mb-support"),
        "queues": ("queue:support",),
        "accepting_queue": "queue:support",
        "source": "mailbox",
        "created_at": T0,
        "updated_at": T1,
    }


def test_activity_row_optional_strings_become_empty() -> None:
    row, parties = activity_rows(MINIMAL_ACTIVITY)
    values = as_dict("activities", row)
    for column in (
        "sender",
        "owner",
        "regarding",
        "parent_activity_id",
        "correlated_activity_id",
        "tracking_token",
        "in_reply_to",
        "subject",
        "description",
    ):
        assert values[column] == "", column
    assert values["sent_at"] is None  # a timestamp stays NULL, not ''
    assert values["description_truncated"] == 0
    assert values["direction"] == "outgoing"
    assert values["correlation_method"] == "None"
    assert values["to_addresses"] == ()
    assert values["cc_addresses"] == ()
    assert values["receiving_mailboxes"] == ()
    assert parties == []
    assert_nulls_only_in_nullable_columns("activities", row)


def test_activity_party_rows_expand_one_row_per_resolved_record() -> None:
    _, parties = activity_rows(FULL_ACTIVITY)
    rows = [as_dict("activity_parties", p) for p in parties]
    assert [
        (r["role"], r["position"], r["address"], r["name"], r["record_type"], r["record_id"])
        for r in rows
    ] == [
        ("from", 0, "dana@contoso.example", "Dana", "contact", "c-1"),
        ("to", 1, "shared@contoso.example", "", "contact", "c-2"),
        ("to", 1, "shared@contoso.example", "", "contact", "c-3"),
        ("to", 2, "alice@nw.example", "Alice", "", ""),  # unresolved: one empty row
        ("cc", 3, "stranger@else.example", "", "", ""),
        ("bcc", 4, "hidden@else.example", "", "", ""),
    ]
    assert {(r["activity_id"], r["version"]) for r in rows} == {("act-1", 3)}


def test_activity_rows_are_pure() -> None:
    assert activity_rows(FULL_ACTIVITY) == activity_rows(FULL_ACTIVITY)


# -- decisions ------------------------------------------------------------------


def test_decision_row_values() -> None:
    decision = PromotionDecision(
        item_key="mb-alice|INBOX|1",
        mailbox_id="mb-alice",
        folder="INBOX",
        item_id="1",
        event_id="ev-1",
        message_id="m1@x.example",
        status=DecisionStatus.PROMOTED,
        reason=ReasonCode.SENDER_MATCH,
        explanation="the sender is a contact",
        activity_id="act-1",
        correlation_method=CorrelationMethod.TRACKING_TOKEN,
        correlated_activity_id="act-0",
        direction=Direction.INCOMING,
        sender=ActivityParty(
            role=PartyRole.FROM,
            address="shared@contoso.example",
            records=[RecordRef("contact", "c-2"), RecordRef("contact", "c-3")],
        ),
        version=4,
        decided_at=T1,
    )
    assert as_dict("promotion_decisions", decision_row(decision)) == {
        "item_key": "mb-alice|INBOX|1",
        "mailbox_id": "mb-alice",
        "folder": "INBOX",
        "item_id": "1",
        "event_id": "ev-1",
        "message_id": "m1@x.example",
        "status": "promoted",
        "reason": "SenderMatch",
        "explanation": "the sender is a contact",
        "activity_id": "act-1",
        "correlation_method": "TrackingToken",
        "correlated_activity_id": "act-0",
        "direction": "incoming",
        "sender": "shared@contoso.example",
        "sender_records": ("contact:c-2", "contact:c-3"),
        "version": 4,
        "decided_at": T1,
    }


def test_decision_row_optional_values_become_empty() -> None:
    decision = PromotionDecision(
        item_key="mb|INBOX|2",
        mailbox_id="mb",
        folder="INBOX",
        item_id="2",
        event_id="ev-2",
        status=DecisionStatus.ERRORED,
        reason=ReasonCode.MALFORMED,
        explanation="the message is empty",
        decided_at=T0,
    )
    values = as_dict("promotion_decisions", decision_row(decision))
    for column in ("message_id", "activity_id", "correlated_activity_id", "direction", "sender"):
        assert values[column] == "", column
    assert values["sender_records"] == ()
    assert values["status"] == "errored"
    assert values["reason"] == "Malformed"
    assert values["correlation_method"] == "None"
    assert values["version"] == 1
    assert_nulls_only_in_nullable_columns("promotion_decisions", decision_row(decision))


# -- errors and status ----------------------------------------------------------


def test_error_row_values() -> None:
    error = SyncError(
        error_id="err-1",
        mailbox_id="mb",
        scope=ErrorScope.ITEM,
        severity=Severity.PERMANENT,
        code="Malformed",
        message="boundary never appears",
        component="processors",
        folder="INBOX",
        item_id="1",
        event_id="ev-1",
        attempt=3,
        occurred_at=T1,
    )
    assert as_dict("sync_errors", error_row(error)) == {
        "error_id": "err-1",
        "mailbox_id": "mb",
        "scope": "item",
        "severity": "permanent",
        "code": "Malformed",
        "message": "boundary never appears",
        "component": "processors",
        "folder": "INBOX",
        "item_id": "1",
        "event_id": "ev-1",
        "attempt": 3,
        "occurred_at": T1,
    }


def test_error_row_optional_values_become_empty() -> None:
    error = SyncError(
        error_id="err-2",
        mailbox_id="mb",
        scope=ErrorScope.SERVER,
        severity=Severity.TRANSIENT,
        code="Timeout",
        message="no answer",
        component="connectors",
        occurred_at=T0,
    )
    values = as_dict("sync_errors", error_row(error))
    assert (values["folder"], values["item_id"], values["event_id"]) == ("", "", "")
    assert values["attempt"] == 1
    assert (values["scope"], values["severity"]) == ("server", "transient")
    assert_nulls_only_in_nullable_columns("sync_errors", error_row(error))


def test_status_row_values() -> None:
    status = MailboxStatus(
        mailbox_id="mb",
        state=SyncState.ENABLED,
        incoming_status=RunStatus.SUCCESS,
        outgoing_status=RunStatus.FAILURE,
        act_status=RunStatus.NOT_RUN,
        last_sync_started_at=T0,
        last_sync_at=T1,
        last_success_at=T0,
        next_poll_at=T1 + timedelta(minutes=5),
        sync_generation=9,
        pending_items=4,
        counters=MailboxCounters(
            items_listed=100, created_events=90, updated_events=5, deleted_events=3, errors=2
        ),
        last_error_code="Timeout",
        last_error="no answer",
        worker="w-1",
        updated_at=T1,
    )
    assert as_dict("mailbox_status", status_row(status)) == {
        "mailbox_id": "mb",
        "state": "enabled",
        "incoming_status": "success",
        "outgoing_status": "failure",
        "act_status": "not-run",
        "last_sync_started_at": T0,
        "last_sync_at": T1,
        "last_success_at": T0,
        "next_poll_at": T1 + timedelta(minutes=5),
        "sync_generation": 9,
        "pending_items": 4,
        "items_listed": 100,
        "created_events": 90,
        "updated_events": 5,
        "deleted_events": 3,
        "errors": 2,
        "last_error_code": "Timeout",
        "last_error": "no answer",
        "worker": "w-1",
        "updated_at": T1,
    }


def test_status_row_optional_values() -> None:
    status = MailboxStatus(mailbox_id="mb", state=SyncState.PENDING_APPROVAL, updated_at=T0)
    values = as_dict("mailbox_status", status_row(status))
    assert (values["last_error_code"], values["last_error"], values["worker"]) == ("", "", "")
    assert values["last_sync_at"] is None
    assert values["next_poll_at"] is None
    assert values["state"] == "pending-approval"
    assert values["items_listed"] == values["errors"] == 0
    assert_nulls_only_in_nullable_columns("mailbox_status", status_row(status))


def test_outgoing_status_row_values() -> None:
    status = OutgoingStatus(
        activity_id="act-9",
        mailbox_id="mb",
        status=SendStatus.SENT,
        message_id="act-9@nw.example",
        attempt=2,
        tracking_token="CRM:0001001",
        sent_at=T0,
        accepted=["dana@contoso.example"],
        refused=["nobody@contoso.example"],
        copied_to_sent=True,
        worker="w-1",
        updated_at=T1,
    )
    assert as_dict("outgoing_status", outgoing_status_row(status)) == {
        "activity_id": "act-9",
        "mailbox_id": "mb",
        "status": "sent",
        "message_id": "act-9@nw.example",
        "attempt": 2,
        "tracking_token": "CRM:0001001",
        "error_code": "",
        "error_message": "",
        "next_attempt_at": None,
        "sent_at": T0,
        "accepted": ("dana@contoso.example",),
        "refused": ("nobody@contoso.example",),
        "copied_to_sent": 1,
        "worker": "w-1",
        "updated_at": T1,
    }
    pending = OutgoingStatus(
        activity_id="act-9",
        mailbox_id="mb",
        status=SendStatus.PENDING,
        message_id="m",
        updated_at=T0,
    )
    assert_nulls_only_in_nullable_columns("outgoing_status", outgoing_status_row(pending))


# -- crm_import -----------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_records_with_semicolon_separated_emails(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "records.csv",
        "id,type,name,emails,parent_account\n"
        "c-1,Contact,Dana Scully,Dana@Contoso.example; d.scully@contoso.example ;,contoso\n"
        "contoso,account,Contoso,,\n",
    )
    batch = read_import_file(path)
    assert batch.activities == []
    assert batch.records == [
        CrmRecord(
            record_id="c-1",
            record_type="contact",
            name="Dana Scully",
            email_addresses=["dana@contoso.example", "d.scully@contoso.example"],
            parent_account_id="contoso",
        ),
        CrmRecord(record_id="contoso", record_type="account", name="Contoso"),
    ]


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffid,type,name,emails\nu-1,user,Alice,alice@nw.example\n".encode())
    batch = read_import_file(path)
    assert [r.record_id for r in batch.records] == ["u-1"]


def test_format_argument_overrides_the_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "records.txt", "id,type,name,emails\nu-1,user,Alice,a@x.example\n")
    assert read_import_file(path, "csv").records[0].email_addresses == ["a@x.example"]


def test_jsonl_records_and_tracked_emails(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "crm.jsonl",
        "# exported from the CRM\n"
        '{"id": "c-1", "type": "contact", "name": "Dana", "emails": ["Dana@Contoso.example"],'
        ' "parent_account": "contoso"}\n'
        "\n"
        '{"id": "l-1", "type": "lead", "name": "Priya", "emails": "p@lead.example; q@l.example"}\n'
        '{"type": "Email", "message_id": "<Quote-1@NW.Example>", "subject": "Quote",'
        ' "tracking_token": " crm:0001001 ", "regarding": "opportunity:opp-1",'
        ' "owner": "user:alice", "from": "Alice@NW.example", "to": ["Dana@Contoso.example"],'
        ' "sent_at": "2026-03-02T09:15:00+01:00", "description": "the quote"}\n',
    )
    batch = read_import_file(path)
    assert batch.records == [
        CrmRecord(
            record_id="c-1",
            record_type="contact",
            name="Dana",
            email_addresses=["dana@contoso.example"],
            parent_account_id="contoso",
        ),
        CrmRecord(
            record_id="l-1",
            record_type="lead",
            name="Priya",
            email_addresses=["p@lead.example", "q@l.example"],
        ),
    ]
    [activity] = batch.activities
    sent_at = datetime(2026, 3, 2, 9, 15, tzinfo=timezone(timedelta(hours=1)))
    assert activity.message_id == "Quote-1@nw.example"
    assert activity.activity_id == email_activity_id("Quote-1@nw.example")
    assert activity.conversation_id == activity.activity_id
    assert activity.tracking_token == "CRM:0001001"
    assert activity.regarding == RecordRef("opportunity", "opp-1")
    assert activity.owner == RecordRef("user", "alice")
    assert activity.subject == "Quote"
    assert activity.description == "the quote"
    assert activity.direction == Direction.OUTGOING
    assert activity.source == "crm"
    assert activity.version == 1
    assert activity.sent_at == sent_at
    assert activity.created_at == activity.updated_at == sent_at
    assert activity.parties == [
        ActivityParty(role=PartyRole.FROM, address="alice@nw.example"),
        ActivityParty(role=PartyRole.TO, address="dana@contoso.example"),
    ]


def test_tracked_email_without_optional_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.jsonl",
        '{"type": "email", "message_id": "m@x.example", "from": "a@x.example",'
        ' "sent_at": "2026-03-02T09:15:00Z"}\n',
    )
    [activity] = read_import_file(path).activities
    assert activity.tracking_token is None
    assert activity.regarding is None
    assert activity.owner is None
    assert activity.party(PartyRole.TO) == []


def test_same_message_id_imports_to_the_same_activity_id(tmp_path: Path) -> None:
    line = (
        '{{"type": "email", "message_id": "{}", "from": "a@x.example",'
        ' "sent_at": "2026-03-02T09:15:00Z"}}\n'
    )
    path = write(tmp_path, "e.jsonl", line.format("<M@X.example>") + line.format("M@x.EXAMPLE"))
    first, second = read_import_file(path).activities
    assert first.activity_id == second.activity_id


@pytest.mark.parametrize(
    ("name", "text", "line", "fragment"),
    [
        ("a.jsonl", '{"type": "contact", "name": "x"}\n', 1, "missing 'id'"),
        ("b.jsonl", '{"id": "c", "type": "contact", "name": "x"}\n{bad\n', 2, "not JSON"),
        ("c.jsonl", "[1, 2]\n", 1, "expected a JSON object"),
        (
            "d.jsonl",
            '\n# c\n{"type": "email", "message_id": "m@x", "from": "a@x",'
            ' "sent_at": "2026-03-02T09:15:00"}\n',
            3,
            "timezone",
        ),
        (
            "e.jsonl",
            '{"type": "email", "message_id": "m@x", "from": "a@x",'
            ' "sent_at": "2026-03-02T09:15:00Z", "regarding": "no-colon"}\n',
            1,
            "TYPE:ID",
        ),
        ("f.jsonl", '{"type": "email", "from": "a@x", "sent_at": "2026-03-02"}\n', 1, "message_id"),
        ("g.jsonl", '{"id": "c", "type": "contact"}\n', 1, "missing 'name'"),
        ("h.csv", "id,type,name,emails\nc-1,contact,Dana,\n,contact,NoId,\n", 3, "missing 'id'"),
        ("i.csv", "id,type,name,emails\nc-1,,Dana,\n", 2, "missing 'type'"),
    ],
)
def test_import_errors_name_the_file_and_line(
    tmp_path: Path, name: str, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ImportFileError) as caught:
        read_import_file(path)
    message = str(caught.value)
    assert f"{name} line {line}:" in message
    assert fragment in message


def test_unreadable_import_file_is_an_import_error(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="cannot read"):
        read_import_file(tmp_path / "missing.csv")


def test_import_file_error_is_a_value_error() -> None:
    assert issubclass(ImportFileError, ValueError)


def test_tracked_email_with_a_string_recipient(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.jsonl",
        '{"type": "email", "message_id": "m@x.example", "from": "a@x.example",'
        ' "to": "b@x.example", "sent_at": "2026-03-02T09:15:00Z"}\n',
    )
    try:
        batch = read_import_file(path)
    except ImportFileError:
        return
    [activity] = batch.activities
    assert [p.address for p in activity.party(PartyRole.TO)] == ["b@x.example"]
