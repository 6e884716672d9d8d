"""Read CRM records (and tracked emails) from CSV or JSON Lines.

CSV columns: id, type, name, emails (separated by ';'), parent_account.
JSON Lines: one object per line with the same fields (`emails` a list), or an
email activity that already exists in the CRM:
`{"type": "email", "message_id": ..., "subject": ..., "tracking_token": ...,
  "regarding": "opportunity:opp-1", "owner": "user:alice", "from": ..., "to": [...],
  "sent_at": "2026-03-02T09:15:00+00:00"}` — imported onto crm.activities so replies
and tokens correlate to it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas.base import RecordRef
from schemas.crm import Activity, ActivityParty, CrmRecord, Direction, PartyRole
from schemas.ids import email_activity_id, normalize_message_id


class ImportFileError(ValueError):
    """A line of the import file is invalid; the message names the file and line."""


@dataclass
class ImportBatch:
    """What a file holds: records for crm.records, tracked emails for crm.activities."""

    records: list[CrmRecord] = field(default_factory=list)
    activities: list[Activity] = field(default_factory=list)


def read_import_file(path: Path, fmt: str | None = None) -> ImportBatch:
    """Parse `path` as CSV or JSON Lines (by `fmt`, else by extension)."""
    kind = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from exc
    rows = _csv_rows(text) if kind == "csv" else _jsonl_rows(text, path)
    batch = ImportBatch()
    for line, row in rows:
        try:
            if str(row.get("type", "")).lower() == "email":
                batch.activities.append(tracked_email(row))
            else:
                batch.records.append(crm_record(row))
        except (KeyError, ValueError, TypeError) as exc:
            raise ImportFileError(f"{path.name} line {line}: {exc}") from exc
    return batch


def _csv_rows(text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for index, row in enumerate(reader, start=2):
        emails = [e.strip() for e in (row.get("emails") or "").split(";") if e.strip()]
        rows.append((index, {**row, "emails": emails}))
    return rows


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for index, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImportFileError(f"{path.name} line {index}: not JSON ({exc.msg})") from exc
        if not isinstance(value, dict):
            raise ImportFileError(f"{path.name} line {index}: expected a JSON object")
        rows.append((index, value))
    return rows


def _required(row: dict[str, Any], name: str) -> str:
    value = str(row.get(name) or "").strip()
    if not value:
        raise ValueError(f"missing '{name}'")
    return value


def crm_record(row: dict[str, Any]) -> CrmRecord:
    """A CrmRecord from an import row."""
    emails = row.get("emails") or []
    if isinstance(emails, str):
        emails = [e.strip() for e in emails.split(";") if e.strip()]
    return CrmRecord(
        record_id=_required(row, "id"),
        record_type=_required(row, "type").lower(),
        name=_required(row, "name"),
        email_addresses=[str(e).strip().lower() for e in emails],
        parent_account_id=(str(row.get("parent_account") or "").strip() or None),
    )


def _address_list(value: Any) -> list[str]:
    """Recipients given as a list, or as one string separated by ';' or ','."""
    if value is None:
        return []
    if isinstance(value, str):
        items = value.replace(",", ";").split(";")
    elif isinstance(value, list):
        items = [str(v) for v in value]
    else:
        raise ValueError("'to' must be a list of addresses or a string")
    return [item.strip().lower() for item in items if item.strip()]


def tracked_email(row: dict[str, Any]) -> Activity:
    """An Activity for an email that already exists in the CRM."""
    message_id = normalize_message_id(_required(row, "message_id"))
    if message_id is None:
        raise ValueError("invalid 'message_id'")
    sent_at = datetime.fromisoformat(_required(row, "sent_at"))
    if sent_at.tzinfo is None:
        raise ValueError("'sent_at' needs a timezone offset")
    activity_id = email_activity_id(message_id)
    parties = [ActivityParty(role=PartyRole.FROM, address=_required(row, "from").lower())]
    parties += [ActivityParty(role=PartyRole.TO, address=a) for a in _address_list(row.get("to"))]
    regarding = row.get("regarding")
    owner = row.get("owner")
    return Activity(
        activity_id=activity_id,
        version=1,
        message_id=message_id,
        subject=str(row.get("subject") or ""),
        description=str(row.get("description") or ""),
        direction=Direction.OUTGOING,
        parties=parties,
        sent_at=sent_at,
        owner=RecordRef.parse(owner) if owner else None,
        regarding=RecordRef.parse(regarding) if regarding else None,
        conversation_id=activity_id,
        tracking_token=(str(row.get("tracking_token") or "").strip().upper() or None),
        source="crm",
        created_at=sent_at,
        updated_at=sent_at,
    )
