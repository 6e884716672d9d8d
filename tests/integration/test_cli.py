"""The `tidings` command line end to end: real tansu, real chDB, real Maildir, each command
run as a subprocess the way a user or a script runs it (stdin closed, output captured, so
not a terminal)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.topics import TOPICS
from tests.workspace import ROOT, Workspace

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 150.0
"""Upper bound for one `run ... --until-idle` (it takes about 15 s on a 2-core machine)."""

CRM_CSV = """\
id,type,name,emails,parent_account
alice,user,Alice Moreau,alice@northwind.example,
contoso,account,Contoso Ltd,info@contoso.example,
dana,contact,Dana Whit,dana@contoso.example; Dana.W@Contoso.EXAMPLE,contoso
"""

TRACKED_ID = "crm-0001001@northwind.example"
TRACKED_EMAIL = {
    "type": "email",
    "message_id": f"<{TRACKED_ID}>",
    "subject": "Renewal terms CRM:0001001",
    "tracking_token": "crm:0001001",
    "regarding": "opportunity:opp-1",
    "owner": "user:alice",
    "from": "Alice@Northwind.example",
    "to": ["dana@contoso.example"],
    "sent_at": "2026-03-01T09:00:00+00:00",
}

# The demo-sized mailbox of alice (filter crm-records): file name -> what the pipeline decides.
MAILBOX_ID = "mb-alice"
CONTACT_MAIL = "1772445600.M1P1Q1.test"
UNKNOWN_SENDER = "1772445601.M1P1Q2.test"
REPLY_TO_CONTACT_MAIL = "1772445602.M1P1Q3.test"
REPLY_TO_TRACKED = "1772445603.M1P1Q4.test"
TOKEN_IN_SUBJECT = "1772445604.M1P1Q5.test"
NO_HEADER_BLOCK = "1772445605.M1P1Q6.test"
SENT_TO_CONTACT = "1772445606.M1P1Q7.test"
LATE_ARRIVAL = "1772445700.M1P1Q8.test"

EXPECTED_DECISIONS = {
    CONTACT_MAIL: ("promoted", "SenderMatch", "None", "incoming"),
    UNKNOWN_SENDER: ("skipped", "NoSenderMatch", "None", "incoming"),
    REPLY_TO_CONTACT_MAIL: ("promoted", "CorrelationMatch", "InReplyTo", "incoming"),
    REPLY_TO_TRACKED: ("promoted", "CorrelationMatch", "InReplyTo", "incoming"),
    TOKEN_IN_SUBJECT: ("promoted", "CorrelationMatch", "TrackingToken", "incoming"),
    NO_HEADER_BLOCK: ("errored", "Malformed", "None", ""),
    SENT_TO_CONTACT: ("promoted", "RecipientMatch", "None", "outgoing"),
}


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def ws(workspace: Workspace) -> Iterator[Workspace]:
    """The workspace as a script sees it: no terminal, no COLUMNS (pipes, cron, CI logs)."""
    for name in ("COLUMNS", "LINES"):
        workspace.env.pop(name, None)
    yield workspace


def write_message(
    maildir: Path, name: str, headers: dict[str, str], body: str = "Hello.\n", sub: str = "cur"
) -> Path:
    """Deliver one RFC 5322 message into `maildir` (cur/ with the Seen flag, or new/)."""
    text = "".join(f"{key}: {value}\n" for key, value in headers.items()) + "\n" + body
    path = maildir / sub / (f"{name}:2,S" if sub == "cur" else name)
    path.write_text(text, encoding="utf-8")
    return path


def make_maildir(root: Path) -> Path:
    """Alice's Maildir: every scenario of EXPECTED_DECISIONS, one file each."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    date = "Mon, 02 Mar 2026 10:00:00 +0000"
    alice = "Alice Moreau <alice@northwind.example>"
    write_message(
        root,
        CONTACT_MAIL,
        {
            "From": "Dana Whit <dana@contoso.example>",
            "To": alice,
            "Subject": "Quote for Q3",
            "Date": date,
            "Message-ID": "<m1@contoso.example>",
        },
    )
    write_message(
        root,
        UNKNOWN_SENDER,
        {
            "From": "Stranger <stranger@unknown.example>",
            "To": alice,
            "Subject": "Cheap offers",
            "Date": date,
            "Message-ID": "<m2@unknown.example>",
        },
    )
    write_message(
        root,
        REPLY_TO_CONTACT_MAIL,
        {
            "From": "Eve <eve@partner.example>",
            "To": alice,
            "Subject": "Re: Quote for Q3",
            "Date": date,
            "Message-ID": "<m3@partner.example>",
            "In-Reply-To": "<m1@contoso.example>",
        },
    )
    write_message(
        root,
        REPLY_TO_TRACKED,
        {
            "From": "Frank <frank@fabrikam.example>",
            "To": alice,
            "Subject": "Re: Renewal terms",
            "Date": date,
            "Message-ID": "<m4@fabrikam.example>",
            "In-Reply-To": f"<{TRACKED_ID}>",
        },
    )
    write_message(
        root,
        TOKEN_IN_SUBJECT,
        {
            "From": "Gina <gina@fabrikam.example>",
            "To": alice,
            "Subject": "Question about CRM:0001001",
            "Date": date,
            "Message-ID": "<m5@fabrikam.example>",
        },
    )
    (root / "cur" / f"{NO_HEADER_BLOCK}:2,S").write_text(
        "this file has no header block\njust some text\n", encoding="utf-8"
    )
    write_message(
        root,
        SENT_TO_CONTACT,
        {
            "From": alice,
            "To": "Dana Whit <dana@contoso.example>",
            "Subject": "Your quote",
            "Date": date,
            "Message-ID": "<m7@northwind.example>",
        },
        sub="new",
    )
    return root


def seed(ws: Workspace, tmp_path: Path) -> Path:
    """Import the CRM (records and a tracked email), add alice's mailbox; returns its path."""
    (tmp_path / "crm.csv").write_text(CRM_CSV, encoding="utf-8")
    (tmp_path / "tracked.jsonl").write_text(json.dumps(TRACKED_EMAIL) + "\n", encoding="utf-8")
    maildir = make_maildir(tmp_path / "alice")
    ws.cli("crm", "import", str(tmp_path / "crm.csv"))
    ws.cli("crm", "import", str(tmp_path / "tracked.jsonl"))
    add_alice(ws, maildir)
    return maildir


def add_alice(ws: Workspace, maildir: Path) -> None:
    """`tidings mailbox add` alice's Maildir mailbox (filter crm-records)."""
    ws.cli(
        "mailbox",
        "add",
        "--id",
        MAILBOX_ID,
        "--path",
        str(maildir),
        "--owner",
        "user:alice",
        "--filter",
        "crm-records",
        "--email",
        "alice@northwind.example",
    )


class PipelineHang(AssertionError):
    """`tidings run ... --until-idle` did not exit within its time limit."""


def run_until_idle(ws: Workspace, log: Path, *role: str, timeout: float = RUN_TIMEOUT_S) -> str:
    """`tidings run ROLE --until-idle` must exit 0 within `timeout`; returns its output.

    It runs in a process group of its own so that, should it hang, it and the role
    processes it supervises are stopped (SIGTERM, then SIGKILL) instead of left behind,
    and PipelineHang is raised.
    """
    command = f"tidings run {' '.join(role or ('all',))} --until-idle"
    process = ws.start("run", *(role or ("all",)), "--until-idle", log=log)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop_group(process)
    output = log.read_text(errors="replace")
    if code is None:
        raise PipelineHang(
            f"`{command}` still running after {timeout:.0f} s\n"
            f"output:\n{output[-3000:]}\nlogs:\n{ws.logs()}"
        )
    assert code == 0, f"`{command}` exited {code}\noutput:\n{output[-3000:]}\nlogs:\n{ws.logs()}"
    return output


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started with `Workspace.start` that is still running: SIGTERM, then
    SIGKILL to its process group (the role processes it supervises)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def one_line(text: str) -> str:
    """`text` with its white space collapsed: rich wraps long output lines at 80 columns."""
    return " ".join(text.split())


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The non-empty lines of stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """A failure a person can read: exit `code`, no traceback; returns stderr on one line."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    return " ".join(line.strip() for line in error_lines(result))


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse JSON Lines output; every line must be one JSON object."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(row, dict) for row in rows)
    return rows


def table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of a rich table (rows whose cells fit on one line)."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def read_topic(ws: Workspace, suffix: str) -> dict[str, dict[str, Any]]:
    """The latest value per key of a compacted topic, read in a subprocess of its own."""
    script = (
        "import asyncio, json, sys\n"
        "import msgspec\n"
        "from pipeline.bootstrap import bring_up\n"
        "from pipeline.config import load_config\n"
        "from pipeline.idle import read_compacted\n"
        "from schemas.topics import spec_by_name\n"
        "config = load_config()\n"
        "infra = bring_up(config)\n"
        "try:\n"
        "    spec = spec_by_name(config.topic_prefix + sys.argv[1], config.topic_prefix)\n"
        "    values = asyncio.run(read_compacted(infra.config, spec))\n"
        "finally:\n"
        "    infra.close()\n"
        "print(json.dumps(msgspec.to_builtins(values)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, suffix],
        cwd=ROOT,
        env=ws.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values: dict[str, dict[str, Any]] = json.loads(result.stdout)
    return values


def decision_counts(ws: Workspace) -> tuple[int, int, list[tuple[Any, ...]]]:
    """Decisions and activities (FINAL), and every current decision."""
    decisions, activities, rows = ws.query_many(
        "SELECT count() FROM tidings.promotion_decisions FINAL",
        "SELECT count() FROM tidings.activities FINAL",
        "SELECT item_key, status, reason, activity_id "
        "FROM tidings.promotion_decisions FINAL ORDER BY item_key",
    )
    return int(decisions[0][0]), int(activities[0][0]), rows


# -- 1. crm import ---------------------------------------------------------------------


def test_crm_import_csv_and_jsonl_publish_records_and_tracked_emails(
    ws: Workspace, tmp_path: Path
) -> None:
    records_csv = tmp_path / "records.csv"
    records_csv.write_text(CRM_CSV, encoding="utf-8")
    result = ws.cli("crm", "import", str(records_csv))
    assert one_line(result.stdout) == f"published 3 records and 0 tracked emails from {records_csv}"

    records_jsonl = tmp_path / "more.jsonl"
    records_jsonl.write_text(
        "# leads from the fair\n"
        + json.dumps({"id": "l-1", "type": "Lead", "name": "Olivia Grant", "emails": ["o@b.ex"]})
        + "\n\n"
        + json.dumps({"id": "support", "type": "queue", "name": "Support", "emails": []})
        + "\n"
        + json.dumps(TRACKED_EMAIL)
        + "\n",
        encoding="utf-8",
    )
    result = ws.cli("crm", "import", str(records_jsonl))
    assert one_line(result.stdout) == (
        f"published 2 records and 1 tracked emails from {records_jsonl}"
    )

    records = read_topic(ws, "crm.records")
    assert sorted(records) == ["alice", "contoso", "dana", "l-1", "support"]
    assert records["dana"]["record_type"] == "contact"
    assert records["dana"]["email_addresses"] == ["dana@contoso.example", "dana.w@contoso.example"]
    assert records["dana"]["parent_account_id"] == "contoso"
    assert records["alice"]["parent_account_id"] is None
    assert records["l-1"]["record_type"] == "lead"

    activities = list(read_topic(ws, "crm.activities").values())
    assert len(activities) == 1
    tracked = activities[0]
    assert tracked["message_id"] == TRACKED_ID
    assert tracked["tracking_token"] == "CRM:0001001"
    assert tracked["source"] == "crm"
    assert "opp-1" in json.dumps(tracked["regarding"])


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        (
            "bad.csv",
            "id,type,name,emails,parent_account\nc-1,contact,Ann,ann@x.example,\nc-2,,Bo,,\n",
            "bad.csv line 3",
        ),
        (
            "bad.jsonl",
            json.dumps({"id": "c-1", "type": "contact", "name": "Ann", "emails": []})
            + "\n{not json\n",
            "bad.jsonl line 2",
        ),
        (
            "naive.jsonl",
            json.dumps({"id": "c-1", "type": "contact", "name": "Ann", "emails": []})
            + "\n"
            + json.dumps({**TRACKED_EMAIL, "sent_at": "2026-03-01T09:00:00"})
            + "\n",
            "naive.jsonl line 2",
        ),
    ],
)
def test_crm_import_bad_line_fails_naming_file_and_line_and_publishes_nothing(
    ws: Workspace, tmp_path: Path, name: str, content: str, where: str
) -> None:
    bad = tmp_path / name
    bad.write_text(content, encoding="utf-8")
    result = ws.cli("crm", "import", str(bad), check=False)
    message = assert_clean_failure(result)
    assert len(error_lines(result)) == 1, result.stderr
    assert message.startswith("error:")
    assert where in message
    assert "published" not in result.stdout
    # The file is all or nothing: its good first line was not published either.
    assert read_topic(ws, "crm.records") == {}


# -- 2. mailbox add / list -------------------------------------------------------------


def test_mailbox_add_then_list_and_invalid_definitions(ws: Workspace, tmp_path: Path) -> None:
    maildir = tmp_path / "x"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    base = ("mailbox", "add", "--path", str(maildir), "--email", "x@example.com")

    bogus_owner = ws.cli(*base, "--id", "mb-bad", "--owner", "bogus", check=False)
    message = assert_clean_failure(bogus_owner)
    assert len(error_lines(bogus_owner)) == 1
    assert message.startswith("error:") and "--owner" in message and "user:NAME" in message

    contact_owner = ws.cli(*base, "--id", "mb-bad", "--owner", "contact:dana", check=False)
    message = assert_clean_failure(contact_owner)
    assert len(error_lines(contact_owner)) == 1
    assert "--owner must be a user or a queue" in message

    bad_filter = ws.cli(
        *base, "--id", "mb-bad", "--owner", "user:x", "--filter", "nope", check=False
    )
    assert_clean_failure(bad_filter, code=2)
    errors = [line for line in error_lines(bad_filter) if line.lower().startswith("error")]
    assert len(errors) == 1
    assert "--filter" in errors[0] and "'nope'" in errors[0]
    assert all(choice in errors[0] for choice in ("all", "responses", "crm-records", "none"))

    empty = ws.cli("mailbox", "list")
    assert "no mailboxes yet" in empty.stdout

    added = ws.cli(*base, "--id", "mb-x", "--owner", "user:x", "--filter", "all")
    assert added.stdout.strip() == "mailbox mb-x (user:x, filter all) added"

    listing = ws.cli("mailbox", "list")
    rows = table_rows(listing.stdout)
    assert [row[0] for row in rows if row[0]] == ["mb-x"], listing.stdout
    assert rows[0][:6] == [
        "mb-x",
        "user:x",
        "x@example.com",
        "all",
        "enabled (not run yet)",
        "never",
    ]
    assert "mb-bad" not in listing.stdout
    assert "no mailboxes yet" not in listing.stdout


def test_mailbox_list_shows_ordinary_ids_in_full_when_piped(ws: Workspace, tmp_path: Path) -> None:
    maildir = tmp_path / "alice"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    add_alice(ws, maildir)
    listing = ws.cli("mailbox", "list").stdout
    assert table_rows(listing)[0][:4] == [
        "mb-alice",
        "user:alice",
        "alice@northwind.example",
        "crm-records",
    ], listing


# -- 3. run all + query ----------------------------------------------------------------


def test_run_all_until_idle_then_query_in_every_format(ws: Workspace, tmp_path: Path) -> None:
    seed(ws, tmp_path)
    output = run_until_idle(ws, tmp_path / "run.log")
    assert "idle: every mailbox synced" in output

    # JSON Lines: one object per row, columns as keys.
    as_json = ws.cli(
        "query",
        "SELECT item_id, status, reason, correlation_method, direction "
        "FROM tidings.promotion_decisions FINAL ORDER BY item_id",
        "--format",
        "json",
    )
    rows = json_lines(as_json.stdout)
    assert len(rows) == len(EXPECTED_DECISIONS)
    assert all(
        list(row) == ["item_id", "status", "reason", "correlation_method", "direction"]
        for row in rows
    )
    decisions = {
        row["item_id"]: (row["status"], row["reason"], row["correlation_method"], row["direction"])
        for row in rows
    }
    assert decisions == EXPECTED_DECISIONS

    # CSV: a header row, then the activities (the imported CRM email among them).
    as_csv = ws.cli(
        "query",
        "SELECT message_id, correlation_method, regarding, parent_activity_id, activity_id, "
        "source, receiving_mailboxes FROM tidings.activities FINAL ORDER BY message_id",
        "--format",
        "csv",
    )
    header, *body = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert header == [
        "message_id",
        "correlation_method",
        "regarding",
        "parent_activity_id",
        "activity_id",
        "source",
        "receiving_mailboxes",
    ]
    activities = {row[0]: row for row in body}
    assert sorted(activities) == [
        TRACKED_ID,
        "m1@contoso.example",
        "m3@partner.example",
        "m4@fabrikam.example",
        "m5@fabrikam.example",
        "m7@northwind.example",
    ]
    tracked_id = activities[TRACKED_ID][4]
    assert activities[TRACKED_ID][1:3] == ["None", "opportunity:opp-1"]
    assert activities[TRACKED_ID][5] == "crm"
    assert activities["m3@partner.example"][1] == "InReplyTo"
    assert activities["m3@partner.example"][3] == activities["m1@contoso.example"][4]
    assert activities["m4@fabrikam.example"][1:4] == ["InReplyTo", "opportunity:opp-1", tracked_id]
    assert activities["m5@fabrikam.example"][1:3] == ["TrackingToken", "opportunity:opp-1"]
    for message_id in ("m1@contoso.example", "m3@partner.example", "m7@northwind.example"):
        assert activities[message_id][5] == "mailbox"
        assert MAILBOX_ID in activities[message_id][6]

    # The default table: a header, one row per item, and the row count.
    as_table = ws.cli(
        "query",
        "SELECT item_id, status, reason FROM tidings.promotion_decisions FINAL ORDER BY item_id",
    )
    assert "item_id" in as_table.stdout and "reason" in as_table.stdout
    assert table_rows(as_table.stdout) == [
        [item, status, reason] for item, (status, reason, _, _) in EXPECTED_DECISIONS.items()
    ]
    assert f"{len(EXPECTED_DECISIONS)} rows" in as_table.stdout

    # The malformed file is an error event, and nothing else is.
    errors = json_lines(
        ws.cli(
            "query",
            "SELECT mailbox_id, folder, item_id, code, severity, scope, message "
            "FROM tidings.sync_errors FINAL",
            "--format",
            "json",
        ).stdout
    )
    assert len(errors) == 1
    error = errors[0]
    assert (error["mailbox_id"], error["folder"], error["item_id"]) == (
        MAILBOX_ID,
        "INBOX",
        NO_HEADER_BLOCK,
    )
    assert (error["code"], error["severity"], error["scope"]) == ("Malformed", "permanent", "item")
    assert "no header block" in error["message"]

    # Invalid SQL: exit 1, an error and what to do, no traceback, nothing on stdout.
    invalid = ws.cli("query", "SELECT FROM WHERE", check=False)
    message = assert_clean_failure(invalid)
    assert len(error_lines(invalid)) == 1, invalid.stderr
    assert message.startswith("error:") and "Syntax error" in message
    assert invalid.stdout == ""
    unknown = ws.cli("query", "SELECT * FROM tidings.no_such_table", check=False)
    message = assert_clean_failure(unknown)
    assert message.startswith("error:") and "no_such_table" in message


def test_query_is_read_only(ws: Workspace) -> None:
    count = "SELECT count() FROM tidings.activities"
    assert ws.cli("query", count, "--format", "csv").stdout.splitlines() == ["count()", "0"]
    for statement in (
        "INSERT INTO tidings.activities (activity_id) VALUES ('injected')",
        "DROP TABLE tidings.activities",
    ):
        refused = ws.cli("query", statement, check=False)
        message = assert_clean_failure(refused)
        assert len(error_lines(refused)) == 1, refused.stderr
        assert message.startswith("error:")
    assert ws.cli("query", count, "--format", "csv").stdout.splitlines() == ["count()", "0"]


# -- 4. replays change nothing; one new file is one new decision -----------------------


def test_run_again_is_idempotent_and_a_new_file_adds_one_decision(
    ws: Workspace, tmp_path: Path
) -> None:
    maildir = seed(ws, tmp_path)
    run_until_idle(ws, tmp_path / "run-1.log")
    decisions, activities, rows = decision_counts(ws)
    assert decisions == len(EXPECTED_DECISIONS)
    assert activities == 6  # five promoted messages and the imported CRM email

    run_until_idle(ws, tmp_path / "run-2.log")
    assert decision_counts(ws) == (decisions, activities, rows)

    write_message(
        maildir,
        LATE_ARRIVAL,
        {
            "From": "Dana Whit <Dana.W@contoso.example>",
            "To": "alice@northwind.example",
            "Subject": "One more thing",
            "Date": "Mon, 02 Mar 2026 11:00:00 +0000",
            "Message-ID": "<m8@contoso.example>",
        },
        sub="new",
    )
    # A restart must not drop the first new event (it once did, while faust recovered
    # its tables and the agents were not yet reading their streams).
    run_until_idle(ws, tmp_path / "run-3.log", timeout=90)
    new_decisions, new_activities, new_rows = decision_counts(ws)
    assert new_decisions == decisions + 1
    assert new_activities == activities + 1
    added = [row for row in new_rows if row not in rows]
    assert [(row[0], row[1], row[2]) for row in added] == [
        (f"{MAILBOX_ID}|INBOX|{LATE_ARRIVAL}", "promoted", "SenderMatch")
    ]
    assert set(rows) <= set(new_rows)


# -- 5. separate roles against a running broker ----------------------------------------


def test_run_connectors_until_idle_and_sinks_stop_on_sigterm(ws: Workspace, tmp_path: Path) -> None:
    started = ws.cli("broker", "start")
    assert "embedded broker running at 127.0.0.1:" in started.stdout
    assert ws.cli("broker", "status").stdout.startswith("running at")
    seed(ws, tmp_path)

    run_until_idle(ws, tmp_path / "connectors.log", "connectors")
    listing = table_rows(ws.cli("mailbox", "list").stdout)
    assert listing[0][0] == MAILBOX_ID
    assert listing[0][4] == "enabled"  # state
    assert listing[0][5] != "never"  # last sync
    assert listing[0][6] == str(len(EXPECTED_DECISIONS))  # items listed

    record = ws.data_dir / "run" / "sinks.json"
    log = tmp_path / "sinks.log"
    sinks = ws.start("run", "sinks", log=log)
    try:
        deadline = time.monotonic() + 60
        while not record.exists():
            assert sinks.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "sinks did not record its endpoint within 60 s"
            time.sleep(0.2)
        assert json.loads(record.read_text())["pid"] == sinks.pid

        # While sinks owns chDB, queries go through it; the connectors' status lands there.
        deadline = time.monotonic() + 60
        status: list[dict[str, Any]] = []
        while not status:
            assert time.monotonic() < deadline, "mailbox status never reached ClickHouse"
            status = json_lines(
                ws.cli(
                    "query",
                    "SELECT mailbox_id, state, items_listed FROM tidings.mailbox_status FINAL",
                    "--format",
                    "json",
                ).stdout
            )
            time.sleep(0.5)
        assert status == [
            {"mailbox_id": MAILBOX_ID, "state": "enabled", "items_listed": len(EXPECTED_DECISIONS)},
        ]

        sinks.send_signal(signal.SIGTERM)
        assert sinks.wait(timeout=30) == 0, log.read_text()
    finally:
        stop_group(sinks)
    assert not record.exists()
    assert "Traceback" not in log.read_text()

    assert ws.cli("broker", "stop").stdout.strip() == "stopped"
    assert ws.cli("broker", "status").stdout.strip() == "not running"


# -- 6. schemas export -----------------------------------------------------------------


def test_schemas_export_writes_one_json_schema_per_topic(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "exported" / "schemas"
    result = ws.cli("schemas", "export", str(out))
    value_topics = [spec for spec in TOPICS if spec.value_type is not None]
    assert f"{len(value_topics)} schemas written" in result.stdout

    files = sorted(path.name for path in out.glob("*.schema.json"))
    assert files == sorted(f"tidings.{spec.suffix}.schema.json" for spec in value_topics)
    assert len(list(out.iterdir())) == len(value_topics)
    for spec in value_topics:
        schema = json.loads((out / f"tidings.{spec.suffix}.schema.json").read_text())
        assert schema["title"] == f"tidings.{spec.suffix}"
        assert schema["x-tidings"]["topic"] == f"tidings.{spec.suffix}"
        # The value type is the root: inline, or a $ref into $defs (msgspec's layout).
        root = schema
        if "$ref" in schema:
            root = schema["$defs"][schema["$ref"].removeprefix("#/$defs/")]
        assert root["type"] == "object"
        assert "schema_version" in root["properties"]
        assert set(root.get("required", [])) <= set(root["properties"])


# -- 7. help ---------------------------------------------------------------------------


def test_help_lists_commands_and_settings(ws: Workspace) -> None:
    top = ws.cli("--help")
    for command in ("demo", "run", "crm", "mailbox", "query", "schemas", "broker"):
        assert f"\n  {command} " in top.stdout, command
    assert "TIDINGS_KAFKA__BOOTSTRAP_SERVERS" in top.stdout
    assert "TIDINGS_DATA_DIR" in top.stdout

    run = ws.cli("run", "--help")
    assert "--until-idle" in run.stdout
    assert "connectors|processors|sinks|all" in run.stdout
    assert "SIGTERM" in run.stdout

    # The installed console script is the same command.
    script = Path(sys.executable).parent / "tidings"
    installed = subprocess.run(
        [str(script), "--help"],
        env=ws.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert installed.returncode == 0
    assert installed.stdout.startswith("Usage: tidings ")
