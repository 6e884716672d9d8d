"""IMAP backfill benchmark: the initial sync of one large dovecot mailbox through the
IMAP connector into Kafka, next to Python's stdlib imaplib fetching the same
messages, in the same run.

Both read the same N messages (default 20,000 of ~500 bytes) over the same
kind of connection (plaintext loopback by default, --tls for IMAPS):

* imaplib: LOGIN, EXAMINE INBOX, one `UID FETCH 1:* (BODY.PEEK[])`;
* tidings: ImapMailbox.sync_pass — STATUS, EXAMINE, UID SEARCH, bounded
  FETCHes of sizes and bodies, MailItemChanged events produced to the embedded
  broker (tansu) and acknowledged, cursor saved after each batch.

Prints both rates and their ratio (aim: tidings >= 0.5 x imaplib); figures also
go to bench/results/imap_backfill.json.

    python bench/imap_backfill.py [--messages N] [--tls] [--storage memory|s3]
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SyncRun, connector_figures, timed_syncs
from connectors.auth import secret_provider
from connectors.imap import ImapMailbox
from pipeline.config import load_config
from schemas.base import RecordRef, RecordType
from schemas.mailbox import (
    Credentials,
    ImapSettings,
    MailboxConfig,
    Protocol,
    ServerProfile,
)
from schemas.secret import SecretRef
from tests.mailserver import Dovecot

USER = "bench"
PASSWORD = "bench-pw"
RESULTS = Path(__file__).resolve().parent / "results" / "imap_backfill.json"


def message(n: int) -> bytes:
    """A ~500-byte email."""
    mail = EmailMessage()
    mail["From"] = f"Sender {n % 97} <sender{n % 97}@contoso.example>"
    mail["To"] = "bench@northwind.example"
    mail["Subject"] = f"Quarterly figures, part {n}"
    mail["Message-ID"] = f"<bench-{n}@contoso.example>"
    mail["Date"] = "Mon, 30 Mar 2026 10:15:00 +0000"
    mail.set_content(f"Hello,\n\nplease find the figures for part {n} below.\n" + "x" * 180)
    return mail.as_bytes()


def stdlib_fetch(dovecot: Dovecot, tls: bool) -> tuple[float, int]:
    """Seconds for imaplib to fetch every message body, and how many it got."""
    started = time.perf_counter()
    if tls:
        context = ssl.create_default_context(cafile=str(dovecot.ca_file))
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
            "localhost", dovecot.imaps_port, ssl_context=context
        )
    else:
        client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login(USER, PASSWORD)
    client.select("INBOX", readonly=True)
    typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
    client.logout()
    elapsed = time.perf_counter() - started
    assert typ == "OK"
    bodies = sum(1 for item in data if isinstance(item, tuple))
    return elapsed, bodies


async def connector_syncs(
    dovecot: Dovecot,
    tls: bool,
    data_dir: Path,
    storage: str,
    repeat: int,
    fetch_batch: int,
) -> list[SyncRun]:
    """Initial syncs of the mailbox into Kafka (a fresh source and cursor each time)."""
    os.environ["BENCH_IMAP_PASSWORD"] = PASSWORD
    profile = dovecot.profile(tls=tls, fetch_batch=fetch_batch)
    mailbox = MailboxConfig(
        mailbox_id="mb-bench",
        owner=RecordRef(type=RecordType.USER, id=USER),
        email_address="bench@northwind.example",
        protocol=Protocol.IMAP,
        server_profile="bench",
        credentials=Credentials(username=USER, password=SecretRef(env="BENCH_IMAP_PASSWORD")),
        imap=ImapSettings(include_sent=False),
    )
    return await timed_syncs(
        mailbox,
        profile,
        lambda wiring: ImapMailbox(wiring, secret=secret_provider(mailbox, profile)),
        data_dir=data_dir,
        storage=storage,
        repeat=repeat,
        connections=10,
        commands=lambda source: source.session.commands if source.session else 0,
    )


def config_compression() -> str:
    """The producers' compression as configured (the default unless overridden)."""
    return load_config(env=dict(os.environ)).kafka.compression


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--tls", action="store_true", help="IMAPS for both clients")
    parser.add_argument(
        "--storage",
        choices=["s3", "memory"],
        default="s3",
        help="embedded broker storage (s3 = localbucket, the default)",
    )
    parser.add_argument(
        "--fetch-batch",
        type=int,
        default=ServerProfile(protocol=Protocol.IMAP, host="-").fetch_batch,
        help="messages per FETCH (the server profile's fetch_batch; default: its default)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-imap-") as tmp:
        root = Path(tmp)
        with Dovecot(root / "dovecot") as dovecot:
            dovecot.add_user(USER, PASSWORD)
            delivered = dovecot.deliver_many(
                USER, "INBOX", (message(n) for n in range(args.messages))
            )
            stdlib_fetch(dovecot, args.tls)  # warm dovecot's index and caches for both
            stdlib_runs = [stdlib_fetch(dovecot, args.tls) for _ in range(args.repeat)]
            our_runs = asyncio.run(
                connector_syncs(
                    dovecot, args.tls, root / "data", args.storage, args.repeat, args.fetch_batch
                )
            )
    assert all(count == delivered for _, count in stdlib_runs), stdlib_runs
    assert all(run.events == delivered for run in our_runs), our_runs
    stdlib_s = statistics.median(seconds for seconds, _ in stdlib_runs)
    ours_s = statistics.median(run.seconds for run in our_runs)
    cpu_us = statistics.median(run.cpu_seconds for run in our_runs) / delivered * 1e6
    commands = our_runs[0].commands
    stdlib_rate = delivered / stdlib_s
    ours_rate = delivered / ours_s
    figures = {
        "benchmark": "imap_backfill",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages": delivered,
        "transport": "imaps" if args.tls else "imap (plaintext, loopback)",
        "broker_storage": args.storage,
        "compression": config_compression(),
        "fetch_batch": args.fetch_batch,
        "runs_each": args.repeat,
        "stdlib_imaplib": {
            "median_seconds": round(stdlib_s, 3),
            "messages_per_s": round(stdlib_rate),
            "runs_s": [round(seconds, 3) for seconds, _ in stdlib_runs],
        },
        "tidings_connector_into_kafka": {
            **connector_figures(our_runs, delivered),
            "imap_commands": commands,
        },
        "ratio": round(ours_rate / stdlib_rate, 3),
        "aim": ">= 0.5",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(f"messages                 {delivered}")
    print(f"stdlib imaplib fetch     {stdlib_rate:10,.0f} msgs/s  ({stdlib_s:.2f} s)")
    print(
        f"tidings into Kafka       {ours_rate:10,.0f} msgs/s  ({ours_s:.2f} s, {commands} commands,"
        f" {cpu_us:.1f} µs CPU per message in this process)"
    )
    print(f"ratio                    {ours_rate / stdlib_rate:10.2f}  (aim >= 0.5)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
