"""Idle-check benchmark: what a poll costs when nothing changed, over 1,000 dovecot
mailboxes (INBOX and Sent each, one message in INBOX).

After an initial pass (connections opened, folders found, cursors written),
every mailbox is checked R times (default 5 rounds). Per check it reports the
IMAP commands sent (aim: at most 2) and the connector's CPU time (aim: at most
1 ms), measured with time.process_time() over whole rounds. It also reports
a cold check (connect, log in, LIST, STATUS x2, LOGOUT) on a sample, for when
a profile's connection limit does not let every mailbox keep its connection.

Nothing changes between checks, so no event reaches Kafka: the emitter and
cursor store here count calls (and the script asserts none happened).

    python bench/idle_poll.py [--mailboxes N] [--rounds R] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import CountingEmitter
from connectors.auth import secret_provider
from connectors.claimcheck import ClaimCheck
from connectors.gate import ServerGate
from connectors.imap import ImapMailbox
from connectors.source import SourceWiring
from schemas.base import RecordRef, RecordType
from schemas.blobs import DirectoryBlobStore
from schemas.config import ConnectorConfig
from schemas.mailbox import (
    Credentials,
    MailboxConfig,
    Protocol,
)
from schemas.secret import SecretRef
from tests.mailserver import Dovecot

PASSWORD = "idle-pw"
RESULTS = Path(__file__).resolve().parent / "results" / "idle_poll.json"
SAMPLE = (
    b"From: a@contoso.example\r\nSubject: hi\r\nMessage-ID: <idle@contoso.example>\r\n\r\nhi\r\n"
)


class CountingStore:
    """Stands in for connector.cursors: counts saves."""

    def __init__(self) -> None:
        self.saves = 0

    async def save(self, *args: Any) -> None:
        self.saves += 1


def commands(sources: list[ImapMailbox]) -> int:
    return sum(s.session.commands for s in sources if s.session is not None)


async def run(dovecot: Dovecot, count: int, rounds: int, tls: bool, blobs: Path) -> dict[str, Any]:
    os.environ["BENCH_IDLE_PASSWORD"] = PASSWORD
    profile = dovecot.profile(tls=tls, max_connections=count, use_idle=False)
    gate = ServerGate("bench", count)
    claim_check = ClaimCheck(DirectoryBlobStore(blobs), ConnectorConfig())
    emitter, store = CountingEmitter(), CountingStore()
    sources = []
    for n in range(count):
        config = MailboxConfig(
            mailbox_id=f"mb-{n}",
            owner=RecordRef(type=RecordType.USER, id=f"u{n}"),
            email_address=f"u{n}@northwind.example",
            protocol=Protocol.IMAP,
            server_profile="bench",
            credentials=Credentials(
                username=f"u{n}", password=SecretRef(env="BENCH_IDLE_PASSWORD")
            ),
        )
        sources.append(
            ImapMailbox(
                SourceWiring(
                    config=config,
                    profile=profile,
                    partition=0,
                    cursors={},
                    emitter=emitter,  # type: ignore[arg-type]
                    store=store,  # type: ignore[arg-type]
                    gate=gate,
                    claim_check=claim_check,
                    max_batch_items=500,
                ),
                secret=secret_provider(config, profile),
            )
        )
    started = time.perf_counter()
    await asyncio.gather(*(s.sync_pass() for s in sources))
    initial_s = time.perf_counter() - started
    created = emitter.events
    emitter.events = emitter.errors = store.saves = 0

    before_commands = commands(sources)
    cpu = time.process_time()
    wall = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(s.sync_pass() for s in sources))
    cpu_s = time.process_time() - cpu
    wall_s = time.perf_counter() - wall
    warm_commands = commands(sources) - before_commands
    published = emitter.events + emitter.errors + store.saves
    assert published == 0, "an idle check published something"
    checks = count * rounds

    sample = sources[: min(100, count)]
    for source in sample:
        await source.close()
    cpu = time.process_time()
    wall = time.perf_counter()
    cold_commands = 0
    for source in sample:
        await source.sync_pass()
        assert source.session is not None
        cold_commands += source.session.commands + 1  # + LOGOUT
        await source.close()
    cold_cpu_s = time.process_time() - cpu
    cold_wall_s = time.perf_counter() - wall
    for source in sources:
        await source.close()
    return {
        "mailboxes": count,
        "rounds": rounds,
        "initial_pass": {"seconds": round(initial_s, 2), "events": created},
        "warm_check": {
            "imap_commands_per_check": round(warm_commands / checks, 3),
            "cpu_ms_per_check": round(cpu_s * 1000 / checks, 3),
            "wall_s_per_round": round(wall_s / rounds, 3),
        },
        "cold_check_sample": {
            "mailboxes": len(sample),
            "imap_commands_per_check": round(cold_commands / len(sample), 2),
            "cpu_ms_per_check": round(cold_cpu_s * 1000 / len(sample), 3),
            "wall_ms_per_check": round(cold_wall_s * 1000 / len(sample), 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tls", action="store_true", help="IMAPS instead of plaintext loopback")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-idle-") as tmp:
        root = Path(tmp)
        with Dovecot(root / "dovecot", max_connections=args.mailboxes + 200) as dovecot:
            for n in range(args.mailboxes):
                dovecot.add_user(f"u{n}", PASSWORD)
                dovecot.deliver_many(f"u{n}", "INBOX", [SAMPLE])
                dovecot.deliver_many(f"u{n}", "Sent", [])
            figures = asyncio.run(
                run(dovecot, args.mailboxes, args.rounds, args.tls, root / "blobs")
            )
    figures = {
        "benchmark": "idle_poll",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "transport": "imaps" if args.tls else "imap (plaintext, loopback)",
        **figures,
        "aim": {"imap_commands_per_check": "<= 2", "cpu_ms_per_check": "<= 1"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    warm = figures["warm_check"]
    cold = figures["cold_check_sample"]
    print(f"mailboxes                {args.mailboxes} x {args.rounds} rounds, nothing new")
    print(
        f"warm check               {warm['imap_commands_per_check']} commands, "
        f"{warm['cpu_ms_per_check']} ms CPU  (aim <= 2, <= 1 ms)"
    )
    print(f"one round of all         {warm['wall_s_per_round']} s wall")
    print(
        f"cold check (sample)      {cold['imap_commands_per_check']} commands, "
        f"{cold['cpu_ms_per_check']} ms CPU, {cold['wall_ms_per_check']} ms wall"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
