"""Compare what the pipeline stored in ClickHouse with examples/ground-truth.jsonl."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.ids import email_activity_id

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
Rows = list[tuple[Any, ...]]
Query = Callable[[str], Rows]


@dataclass(frozen=True)
class Expected:
    """One ground-truth line."""

    item_key: str
    mailbox: str
    message_id: str | None
    status: str
    reasons: list[str]
    correlation_method: str
    correlated_to: str | None
    regarding: str | None
    error_code: str | None
    scenario: str


def load_ground_truth(examples: Path = EXAMPLES) -> dict[str, Expected]:
    """Ground truth by item key (mailbox|folder|file)."""
    expected: dict[str, Expected] = {}
    for line in (examples / "ground-truth.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = f"{row['mailbox']}|{row['folder']}|{row['file']}"
        expected[key] = Expected(
            item_key=key,
            mailbox=row["mailbox"],
            message_id=row["message_id"],
            status=row["status"],
            reasons=row["reasons"],
            correlation_method=row["correlation_method"],
            correlated_to=row["correlated_to"],
            regarding=row["regarding"],
            error_code=row["error_code"],
            scenario=row["scenario"],
        )
    return expected


def mismatches(query: Query, expected: dict[str, Expected]) -> list[str]:
    """Every difference between the stored decisions/activities/errors and the ground truth."""
    problems: list[str] = []
    decisions = {
        row[0]: row
        for row in query(
            "SELECT item_key, status, reason, activity_id FROM tidings.promotion_decisions FINAL"
        )
    }
    activities = {
        row[0]: row
        for row in query(
            "SELECT activity_id, correlation_method, correlated_activity_id, parent_activity_id, "
            "regarding, receiving_mailboxes, message_id FROM tidings.activities FINAL"
        )
    }
    errors = {
        (row[0], row[1]): row[2]
        for row in query("SELECT mailbox_id, item_id, code FROM tidings.sync_errors FINAL")
    }
    problems += [
        f"{key}: decided but not in the ground truth" for key in decisions.keys() - expected.keys()
    ]
    receivers: dict[str, set[str]] = defaultdict(set)
    for key, want in sorted(expected.items()):
        got = decisions.get(key)
        if got is None:
            problems.append(f"{key}: no decision ({want.scenario})")
            continue
        _, status, reason, activity_id = got
        where = f"{key} ({want.scenario})"
        if status != want.status or reason not in want.reasons:
            problems.append(f"{where}: got {status}/{reason}, want {want.status}/{want.reasons}")
            continue
        if status == "errored":
            mailbox_id, _, item_id = key.split("|", 2)
            code = errors.get((mailbox_id, item_id))
            if code != want.error_code:
                problems.append(f"{where}: sync error {code}, want {want.error_code}")
        if status != "promoted":
            continue
        if want.message_id is not None:
            if activity_id != email_activity_id(want.message_id):
                problems.append(f"{where}: activity {activity_id} is not that of {want.message_id}")
            receivers[activity_id].add(want.mailbox)
        problems += _activity_problems(where, activities.get(activity_id), want)
    for activity_id, mailboxes in receivers.items():
        row = activities.get(activity_id)
        if row is not None and set(row[5]) != mailboxes:
            problems.append(
                f"activity {activity_id}: receiving {sorted(row[5])}, want {sorted(mailboxes)}"
            )
    return problems


def _activity_problems(where: str, row: tuple[Any, ...] | None, want: Expected) -> list[str]:
    if row is None:
        return [f"{where}: promoted but its activity is missing"]
    _, method, correlated, parent, regarding, _, _ = row
    problems = []
    if method != want.correlation_method:
        problems.append(f"{where}: correlation {method}, want {want.correlation_method}")
    target = email_activity_id(want.correlated_to) if want.correlated_to else ""
    if correlated != target:
        problems.append(f"{where}: correlated to {correlated!r}, want {want.correlated_to}")
    if want.correlation_method == "InReplyTo" and parent != target:
        problems.append(f"{where}: parent {parent!r}, want {want.correlated_to}")
    if (regarding or None) != want.regarding:
        problems.append(f"{where}: regarding {regarding!r}, want {want.regarding}")
    return problems


def counts(query: Query) -> dict[str, int]:
    """Headline counts that must not change when the same data is processed again."""
    decided = query(
        "SELECT count(), countIf(status='promoted'), countIf(status='skipped'), "
        "countIf(status='errored') FROM tidings.promotion_decisions FINAL"
    )[0]
    activities = query("SELECT count() FROM tidings.activities FINAL")[0][0]
    raw_activities = query("SELECT uniqExact(activity_id) FROM tidings.activities")[0][0]
    errors = query("SELECT count() FROM tidings.sync_errors FINAL")[0][0]
    return {
        "decided": int(decided[0]),
        "promoted": int(decided[1]),
        "skipped": int(decided[2]),
        "errored": int(decided[3]),
        "activities": int(activities),
        "distinct_activity_ids": int(raw_activities),
        "errors": int(errors),
    }
