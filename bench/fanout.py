"""Fan-out cost (the third part of bench/correlate.py): one message in N mailboxes.

An email from a known contact to a distribution list (all-staff@) reaches the N
mailboxes of its members: N copies of one message, decided one after the other
on one partition (copies share the thread key). The first is tracked;
every later copy is a Duplicate that adds its mailbox to the one activity. For
each N the engine (processors/engine.py on DiskState, RocksDB as a worker keeps
it) decides the N copies; printed per N: CPU microseconds per copy, and the
state bytes written per copy (encoded values put into the engine's state). A
cost per copy that grows with N means the whole fan-out grows as N².
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from processors.directory import ActivityIndex, Directory, Mailboxes
from processors.disk_state import DiskState
from processors.engine import DecisionEngine
from processors.index_store import IndexStore
from schemas.base import RecordRef
from schemas.config import CorrelationConfig, ProcessingConfig
from schemas.crm import CrmRecord
from schemas.mail import EmailAddress, ParsedEmail
from schemas.mailbox import FolderRole, IncomingFilter, MailboxConfig, Protocol

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SETTINGS = ProcessingConfig(correlation=CorrelationConfig())
SENDER = "announce@contoso.example"
LIST = "all-staff@nw.example"


class CountingStore(IndexStore):
    """An IndexStore that counts the bytes of the values written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, puts: dict[bytes, bytes], deletes: Any) -> None:
        self.written += sum(len(value) for value in puts.values())
        super().write(puts, deletes)


def fanout_world(copies: int) -> tuple[Directory, Mailboxes]:
    """`copies` users with a mailbox each (filter `all`) and the sending contact."""
    directory, mailboxes = Directory(), Mailboxes()
    sender = CrmRecord(
        record_id="c-announce", record_type="contact", name="Announcements",
        email_addresses=[SENDER],
    )  # fmt: skip
    directory.apply(sender.record_id, sender)
    for n in range(copies):
        user = CrmRecord(
            record_id=f"u{n}", record_type="user", name=f"User {n}",
            email_addresses=[f"user{n}@nw.example"],
        )  # fmt: skip
        directory.apply(user.record_id, user)
        mailbox = MailboxConfig(
            mailbox_id=f"mb-{n}", owner=RecordRef("user", f"u{n}"),
            email_address=f"user{n}@nw.example", protocol=Protocol.MAILDIR,
            incoming_filter=IncomingFilter.ALL,
        )  # fmt: skip
        mailboxes.apply(mailbox.mailbox_id, mailbox)
    return directory, mailboxes


def fanout_copies(copies: int, message: int) -> list[ParsedEmail]:
    """Message number `message`, as each of the `copies` mailboxes received it."""
    message_id = f"announce-{message}@contoso.example"
    return [
        ParsedEmail(
            event_id=f"ev-{message}-{n}",
            mailbox_id=f"mb-{n}",
            folder="INBOX",
            folder_role=FolderRole.INBOX,
            item_id=f"{message}-{n}",
            observed_at=T0,
            message_id=message_id,
            thread_key=message_id,
            subject=f"News {message}",
            sender=EmailAddress(SENDER),
            to=[EmailAddress(LIST)],
            sent_at=T0,
            body_text="Hello all",
        )
        for n in range(copies)
    ]


def measure_fanout(copies: int, messages: int) -> dict[str, float | int]:
    """Decide `messages` messages of `copies` copies each; CPU and bytes per copy."""
    directory, mailboxes = fanout_world(copies)
    store = CountingStore()
    engine = DecisionEngine(DiskState(store), directory, mailboxes, ActivityIndex(), SETTINGS)
    streams = [fanout_copies(copies, message) for message in range(messages + 1)]
    for email in streams[0]:  # warm-up
        engine.process(email, 0, T0)
    store.written = 0
    activities = activity_bytes = 0
    cpu = time.process_time()
    for stream in streams[1:]:
        for email in stream:
            emission = engine.process(email, 0, T0)
            activities += len(emission.activities)
            activity_bytes += sum(len(msgspec.msgpack.encode(a)) for a in emission.activities)
    cpu_s = time.process_time() - cpu
    decided = copies * messages
    return {
        "copies": copies,
        "messages": messages,
        "us_per_copy": round(cpu_s / decided * 1e6, 1),
        "state_bytes_per_copy": round(store.written / decided),
        "activities_per_copy": round(activities / decided, 2),
    }
