"""Correlation benchmark, first part: what one decision costs as history grows.

The decision engine (processors/engine.py: resolve, filter, correlate, dedupe,
track) decides the same stream of new emails against a history of H tracked
emails, for H = 1,000 and H = 1,000,000 (defaults), in the same run. History is
what a long-running deployment holds: tracked messages in the engine's state
and activities in the global activity index (by Message-ID, tracking token and
conversation index). The stream mixes replies found by In-Reply-To, by tracking
token and by Thread-Index with new conversations, into mailboxes with the
`responses` and `all` filters.

Prints microseconds per decision for each history size and their ratio (aim:
the large history costs at most 1.5 times the small one), plus the memory the
history takes; figures also go to bench/results/correlate.json.

Not here yet: decisions per second through the faust pipeline on tansu next
to a bare decoding agent (the issue's other half).

    python bench/correlate.py [--emails N] [--small H] [--large H]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.conversation_index import new_conversation_index, thread_index_header
from processors.correlate import make_token
from processors.directory import ActivityIndex, Directory, Mailboxes
from processors.engine import DecisionEngine, MemoryState
from schemas.base import RecordRef
from schemas.config import CorrelationConfig, ProcessingConfig
from schemas.crm import Activity, CrmRecord, Direction
from schemas.ids import email_activity_id
from schemas.mail import EmailAddress, ParsedEmail
from schemas.mailbox import FolderRole, IncomingFilter, MailboxConfig, Protocol
from schemas.state import TrackedMessage

RESULTS = Path(__file__).resolve().parent / "results" / "correlate.json"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SETTINGS = ProcessingConfig(correlation=CorrelationConfig())
USERS = 50
CONTACTS = 2_000


def world() -> tuple[Directory, Mailboxes]:
    """50 users with a mailbox each (half `responses`, half `all`) and 2,000 contacts."""
    directory = Directory()
    mailboxes = Mailboxes()
    for n in range(USERS):
        user = CrmRecord(
            record_id=f"u{n}", record_type="user", name=f"User {n}",
            email_addresses=[f"user{n}@nw.example"],
        )  # fmt: skip
        directory.apply(user.record_id, user)
        flt = IncomingFilter.RESPONSES if n % 2 else IncomingFilter.ALL
        mailboxes.apply(
            f"mb-{n}",
            MailboxConfig(
                mailbox_id=f"mb-{n}", owner=user.ref, email_address=f"user{n}@nw.example",
                protocol=Protocol.MAILDIR, incoming_filter=flt,
            ),
        )  # fmt: skip
    for n in range(CONTACTS):
        contact = CrmRecord(
            record_id=f"c{n}", record_type="contact", name=f"Contact {n}",
            email_addresses=[f"contact{n}@contoso.example"],
        )  # fmt: skip
        directory.apply(contact.record_id, contact)
    return directory, mailboxes


def history_item(n: int) -> tuple[Activity, TrackedMessage]:
    """Tracked email n: an activity (global index) and its tracked-message state."""
    message_id = f"hist-{n}@nw.example"
    activity_id = email_activity_id(message_id)
    sent = T0 - timedelta(minutes=n % 100_000)
    token = make_token(SETTINGS.correlation, n % 1000, n % 1000)
    index = new_conversation_index(sent, uuid.UUID(int=n))
    activity = Activity(
        activity_id=activity_id, version=1, message_id=message_id, subject=f"Quote {n}",
        direction=Direction.OUTGOING, sent_at=sent,
        regarding=RecordRef("opportunity", f"o{n % 5000}"), conversation_id=activity_id,
        tracking_token=f"{token}{n}", conversation_index=index.key, source="crm",
        created_at=sent, updated_at=sent,
    )  # fmt: skip
    tracked = TrackedMessage(
        message_id=message_id, activity_id=activity_id, version=1, created_at=sent,
        direction=Direction.OUTGOING, regarding=activity.regarding,
        conversation_id=activity_id, mailboxes=[f"mb-{n % USERS}"],
    )  # fmt: skip
    return activity, tracked


def engine(history: int) -> DecisionEngine:
    directory, mailboxes = world()
    index = ActivityIndex()
    state = MemoryState()
    for n in range(history):
        activity, tracked = history_item(n)
        index.apply(activity.activity_id, activity)
        state.tracked[tracked.message_id] = tracked
    return DecisionEngine(state, directory, mailboxes, index, SETTINGS)


def stream(count: int, targets: int) -> list[ParsedEmail]:
    """New emails: a quarter each answer one of the first `targets` history items by
    In-Reply-To, by token and by Thread-Index, and a quarter start new
    conversations. Both history sizes get the same stream, so only the weight
    of the history differs."""
    emails = []
    for n in range(count):
        target = (n * 7919) % targets
        mailbox = n % USERS
        kind = n % 4
        message_id = f"new-{n}@contoso.example"
        subject, in_reply_to, thread_index = f"Question {n}", None, None
        if kind == 0:
            in_reply_to = f"hist-{target}@nw.example"
        elif kind == 1:
            token = make_token(SETTINGS.correlation, target % 1000, target % 1000)
            subject = f"RE: Quote [{token}{target}]"
        elif kind == 2:
            root = new_conversation_index(T0 - timedelta(minutes=target % 100_000))
            root = type(root)(root.raw[:6] + uuid.UUID(int=target).bytes)
            thread_index = thread_index_header(root.child())
        emails.append(
            ParsedEmail(
                event_id=f"ev-{n}", mailbox_id=f"mb-{mailbox}", folder="INBOX",
                folder_role=FolderRole.INBOX, item_id=str(n), observed_at=T0,
                message_id=message_id, thread_key=in_reply_to or message_id,
                subject=subject, sender=EmailAddress(f"contact{n % CONTACTS}@contoso.example"),
                to=[EmailAddress(f"user{mailbox}@nw.example")], sent_at=T0,
                in_reply_to=in_reply_to, references=[in_reply_to] if in_reply_to else [],
                thread_index=thread_index, body_text="Hello",
            )
        )  # fmt: skip
    return emails


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(history: int, emails: int, targets: int) -> dict[str, float]:
    """Build the history, then decide the stream twice (warm-up, timed)."""
    before = rss_mib()
    started = time.perf_counter()
    eng = engine(history)
    built_s = time.perf_counter() - started
    items = stream(emails, targets)
    gc.collect()
    for item in items[: emails // 10]:
        eng.process(item, 0, T0)
    cpu = time.process_time()
    decided = 0
    for item in items:
        decided += len(eng.process(item, 0, T0).decisions)
    cpu_s = time.process_time() - cpu
    return {
        "history": history,
        "build_s": round(built_s, 1),
        "us_per_decision": round(cpu_s / emails * 1e6, 1),
        "decisions": decided,
        "max_rss_growth_mib": round(rss_mib() - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emails", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    args = parser.parse_args()
    small = measure(args.small, args.emails, args.small)
    print(f"history {args.small:>9,}: {small['us_per_decision']:8.1f} µs per decision")
    large = measure(args.large, args.emails, args.small)
    print(
        f"history {args.large:>9,}: {large['us_per_decision']:8.1f} µs per decision "
        f"(history built in {large['build_s']} s, +{large['max_rss_growth_mib']:.0f} MiB)"
    )
    ratio = large["us_per_decision"] / small["us_per_decision"]
    print(f"ratio                     {ratio:8.2f}  (aim <= 1.5)")
    figures = {
        "benchmark": "correlate (decision cost against history)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "emails": args.emails,
        "small": small,
        "large": large,
        "ratio": round(ratio, 2),
        "aim": "<= 1.5",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
