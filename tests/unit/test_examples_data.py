"""The demo data under examples/ is reproducible and internally consistent.

These tests import nothing from tidings: they check the files `examples/generate.py`
writes (Maildirs, CRM records, tracked CRM email, ground truth) against each other and
against the reason codes docs/decisions.md names.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GENERATED = ("crm", "mailboxes", "mailboxes.toml", "ground-truth.jsonl")
STATUSES = {"promoted", "skipped", "errored"}
METHODS = {"None", "InReplyTo", "TrackingToken"}
TOKEN = re.compile(r"CRM:\d{7}")


def normalize_message_id(raw: str | None) -> str | None:
    """docs/decisions.md: angle brackets and white space stripped, domain lower-cased."""
    if raw is None:
        return None
    text = "".join(str(raw).split()).strip("<>")
    if not text:
        return None
    local, at, domain = text.rpartition("@")
    return f"{local}@{domain.lower()}" if at and local else text


def generated_files(root: Path) -> dict[str, bytes]:
    """Every file the generator owns under `root`, by relative path."""
    files: dict[str, bytes] = {}
    for name in GENERATED:
        path = root / name
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in paths:
            files[file.relative_to(root).as_posix()] = file.read_bytes()
    return files


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def ground_truth() -> list[dict[str, Any]]:
    return load_jsonl(EXAMPLES / "ground-truth.jsonl")


@pytest.fixture(scope="module")
def tracked() -> list[dict[str, Any]]:
    return load_jsonl(EXAMPLES / "crm" / "tracked-emails.jsonl")


@pytest.fixture(scope="module")
def mailboxes() -> list[dict[str, Any]]:
    with (EXAMPLES / "mailboxes.toml").open("rb") as fh:
        return list(tomllib.load(fh)["mailbox"])


@pytest.fixture(scope="module")
def message_files(mailboxes: list[dict[str, Any]]) -> dict[tuple[str, str, str], Path]:
    """(mailbox, folder, unique name) → the Maildir file."""
    files: dict[tuple[str, str, str], Path] = {}
    for mailbox in mailboxes:
        root = EXAMPLES / mailbox["path"]
        for folder in mailbox["folders"]:
            base = root if folder == "INBOX" else root / f".{folder}"
            for sub in ("cur", "new"):
                for file in sorted((base / sub).iterdir()):
                    unique = file.name.split(":", 1)[0]
                    key = (mailbox["id"], folder, unique)
                    assert key not in files, f"unique name used twice: {key}"
                    assert (sub == "new") == (":" not in file.name), file
                    files[key] = file
    return files


@pytest.fixture(scope="module")
def parsed(
    ground_truth: list[dict[str, Any]], message_files: dict[tuple[str, str, str], Path]
) -> dict[tuple[str, str, str], EmailMessage]:
    """Every message the ground truth does not expect to be malformed, parsed."""
    out = {}
    for row in ground_truth:
        if row["status"] == "errored":
            continue
        key = (row["mailbox"], row["folder"], row["file"])
        data = message_files[key].read_bytes()
        message = BytesParser(policy=policy.default).parsebytes(data)
        assert isinstance(message, EmailMessage)
        out[key] = message
    return out


def decision_codes() -> set[str]:
    """The back-quoted words of docs/decisions.md (reason codes among them)."""
    text = (ROOT / "docs" / "decisions.md").read_text(encoding="utf-8")
    return set(re.findall(r"`([A-Za-z]+)`", text))


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    out = tmp_path / "examples"
    for _ in range(2):  # the second run over its own output must change nothing
        subprocess.run(
            [sys.executable, str(EXAMPLES / "generate.py"), "--out", str(out)],
            check=True,
            capture_output=True,
        )
    committed = generated_files(EXAMPLES)
    regenerated = generated_files(out)
    assert sorted(regenerated) == sorted(committed)
    changed = [name for name in committed if committed[name] != regenerated[name]]
    assert not changed, f"regenerating changes {len(changed)} files, e.g. {changed[:3]}"


def test_enough_messages_and_mailboxes(
    mailboxes: list[dict[str, Any]], message_files: dict[tuple[str, str, str], Path]
) -> None:
    assert len(mailboxes) >= 3
    assert len(message_files) >= 200
    per_mailbox: dict[str, int] = defaultdict(int)
    for mailbox_id, _, _ in message_files:
        per_mailbox[mailbox_id] += 1
    assert sorted(per_mailbox) == sorted(m["id"] for m in mailboxes)


def test_maildir_layout(mailboxes: list[dict[str, Any]]) -> None:
    for mailbox in mailboxes:
        root = EXAMPLES / mailbox["path"]
        for folder in mailbox["folders"]:
            base = root if folder == "INBOX" else root / f".{folder}"
            assert {p.name for p in base.iterdir() if p.is_dir()} >= {"cur", "new", "tmp"}
            assert [p.name for p in (base / "tmp").iterdir()] == [".keep"]


def test_every_file_has_exactly_one_ground_truth_line(
    ground_truth: list[dict[str, Any]], message_files: dict[tuple[str, str, str], Path]
) -> None:
    keys = [(r["mailbox"], r["folder"], r["file"]) for r in ground_truth]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(message_files)
    assert keys == sorted(keys)


def test_messages_parse_and_message_ids_match(
    ground_truth: list[dict[str, Any]], parsed: dict[tuple[str, str, str], EmailMessage]
) -> None:
    for row in ground_truth:
        key = (row["mailbox"], row["folder"], row["file"])
        if row["status"] == "errored":
            assert row["message_id"] is None
            continue
        message = parsed[key]
        assert normalize_message_id(message["Message-ID"]) == row["message_id"], key
        assert message.get_body(("plain", "html")) is not None, key


def test_copies_of_one_message_are_the_same_bytes(
    ground_truth: list[dict[str, Any]], message_files: dict[tuple[str, str, str], Path]
) -> None:
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for row in ground_truth:
        if row["message_id"]:
            key = (row["mailbox"], row["folder"], row["file"])
            by_id[row["message_id"]].add(message_files[key].read_bytes())
    assert all(len(contents) == 1 for contents in by_id.values())


def test_status_and_reason_codes_come_from_the_decision_rules(
    ground_truth: list[dict[str, Any]],
) -> None:
    codes = decision_codes()
    for row in ground_truth:
        assert row["status"] in STATUSES and row["status"] in codes
        assert row["reasons"] and set(row["reasons"]) <= codes, row
        assert row["correlation_method"] in METHODS
        if row["status"] == "errored":
            assert row["reasons"] == ["Malformed"] and row["error_code"] == "Malformed"
        else:
            assert row["error_code"] is None
        if row["status"] == "skipped":
            assert len(row["reasons"]) == 1 and row["correlation_method"] == "None"


def test_correlations_point_at_tracked_email(
    ground_truth: list[dict[str, Any]],
    tracked: list[dict[str, Any]],
    parsed: dict[tuple[str, str, str], EmailMessage],
) -> None:
    history = {t["message_id"]: t for t in tracked}
    promoted = {r["message_id"]: r for r in ground_truth if r["status"] == "promoted"}
    for row in ground_truth:
        target = row["correlated_to"]
        if row["correlation_method"] == "None":
            assert target is None and row["regarding"] is None, row
            continue
        assert "CorrelationMatch" in row["reasons"] or row["reasons"] == ["Duplicate"], row
        assert target in history or target in promoted, row
        parent_regarding = (history.get(target) or promoted[target])["regarding"]
        assert row["regarding"] == parent_regarding, row
        message = parsed[(row["mailbox"], row["folder"], row["file"])]
        if row["correlation_method"] == "InReplyTo":
            ids = [message["In-Reply-To"] or "", *str(message["References"] or "").split()]
            assert target in {normalize_message_id(i) for i in ids}, row
        else:
            assert history[target]["tracking_token"] in str(message["Subject"]), row


def test_duplicates_link_to_a_copy_that_passed(ground_truth: list[dict[str, Any]]) -> None:
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in ground_truth:
        if row["message_id"]:
            copies[row["message_id"]].append(row)
    for message_id, rows in copies.items():
        promoted = [r for r in rows if r["status"] == "promoted"]
        passing = [r for r in promoted if set(r["reasons"]) - {"Duplicate"}]
        if any("Duplicate" in r["reasons"] for r in rows):
            assert passing, f"{message_id}: Duplicate of a message no copy promotes"
            assert all(r["status"] == "promoted" for r in rows), message_id
        if len(passing) >= 2:
            assert all("Duplicate" in r["reasons"] for r in passing), message_id
        if len(passing) == 1 and len(promoted) > 1:
            assert len(passing[0]["reasons"]) == 1, message_id
        links = {(r["correlation_method"], r["correlated_to"], r["regarding"]) for r in promoted}
        assert len(links) <= 1, f"{message_id}: copies disagree on the activity"


def test_known_tokens_always_correlate(
    ground_truth: list[dict[str, Any]],
    tracked: list[dict[str, Any]],
    parsed: dict[tuple[str, str, str], EmailMessage],
) -> None:
    """A subject with a token the CRM knows cannot end uncorrelated (the rules try tokens
    before the filter), unless the item stopped before correlation."""
    tokens = {t["tracking_token"] for t in tracked}
    for key, message in parsed.items():
        row = next(r for r in ground_truth if (r["mailbox"], r["folder"], r["file"]) == key)
        found = set(TOKEN.findall(str(message["Subject"] or ""))) & tokens
        if found and row["reasons"] != ["InvalidSender"]:
            assert row["correlation_method"] != "None", row


def test_crm_files_agree(tracked: list[dict[str, Any]], mailboxes: list[dict[str, Any]]) -> None:
    records = load_jsonl(EXAMPLES / "crm" / "records.jsonl")
    ids = {r["id"] for r in records}
    assert len(ids) == len(records)
    accounts = {r["id"] for r in records if r["type"] == "account"}
    for record in records:
        assert list(record) == ["id", "type", "name", "emails", "parent_account"]
        assert record["parent_account"] is None or record["parent_account"] in accounts
        for address in record["emails"]:
            assert re.fullmatch(r"[^@\s]+@([a-z0-9-]+\.)*(example|example\.(com|net|org))", address)
    csv_lines = (EXAMPLES / "crm" / "records.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0] == "id,type,name,emails,parent_account"
    assert len(csv_lines) == len(records) + 1
    for entry in tracked:
        assert entry["tracking_token"] in entry["subject"]
        assert re.fullmatch(r"CRM:0\d{6}", entry["tracking_token"])
        owner_type, _, owner_id = entry["owner"].partition(":")
        assert owner_type == "user" and owner_id in ids
    owners = {m["owner"] for m in mailboxes}
    assert all(owner.split(":", 1)[1] in ids for owner in owners)
