"""Exchange initial-sync benchmark: each Exchange connector against its simulator, next
to the bare client library issuing the same calls in the same run.

EWS: one mailbox of N messages spread over Inbox, Sent Items and a custom folder, in
the EWS SOAP simulator (tests/ews_sim.py, its own process, http on loopback).

* bare exchangelib: per folder, SyncFolderItems pages (ids and sizes, 512 changes a
  page), each page's items read with GetItem (MIME and the connector's properties),
  `--get-item-batch` ids a request, the requests of a page spread over a thread pool
  of the same concurrency the connector uses;
* tidings: EwsMailbox.sync_pass — the same calls, MailItemChanged events produced to
  the embedded broker (tansu) and acknowledged, the cursor saved after each page.

Graph: bench/exchange_graph.py's `run(args)` when that file is there (its own
simulator, bare httpx against GraphMailbox), unless `--skip-graph`.

Prints a table of rates and ratios (aim: tidings >= 0.5 x bare) and writes
bench/results/exchange.json.

    python bench/exchange.py [--messages N] [--repeat R] [--concurrency C] [--skip-graph]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exchangelib import (
    BASIC,
    DELEGATE,
    Account,
    Build,
    Configuration,
    Credentials,
    FailFast,
    Version,
)

from bench.harness import SyncRun, comparison_figures, timed_syncs
from connectors.ews import EwsMailbox
from connectors.ews_client import FULL_FIELDS, SYNC_FIELDS
from schemas.base import RecordRef, RecordType
from schemas.mailbox import (
    Credentials as MailboxCredentials,
)
from schemas.mailbox import (
    EwsAuth,
    EwsSettings,
    MailboxConfig,
    Protocol,
    ServerProfile,
    TransportSecurity,
)
from schemas.secret import SecretRef

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "exchange.json"
USER = "bench@northwind.example"
PASSWORD = "bench-pw"
PASSWORD_ENV = "TIDINGS_BENCH_EWS_PASSWORD"
FOLDERS = ["Inbox", "Sent Items", "Projects"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000, help="messages in the mailbox")
    p.add_argument("--size", type=int, default=500, help="body bytes per message")
    p.add_argument("--repeat", type=int, default=2, help="runs of each side (median)")
    p.add_argument("--concurrency", type=int, default=4, help="EWS requests in flight")
    p.add_argument("--get-item-batch", type=int, default=100, help="ids per GetItem")
    p.add_argument("--storage", default="memory", choices=["memory", "s3"])
    p.add_argument("--skip-graph", action="store_true", help="EWS only")
    return p


class Simulator:
    """tests/ews_sim.py in its own process, populated with the benchmark's mailbox."""

    def __init__(self, messages: int, size: int) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.ews_sim",
                "--user",
                USER,
                "--password",
                PASSWORD,
                "--messages",
                str(messages),
                "--size",
                str(size),
                "--folders",
                ",".join(FOLDERS),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError("the EWS simulator did not start")

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


def account(url: str, concurrency: int) -> Account:
    config = Configuration(
        service_endpoint=url,
        credentials=Credentials(USER, PASSWORD),
        auth_type=BASIC,
        version=Version(build=Build(15, 1)),
        retry_policy=FailFast(),
        max_connections=concurrency,
    )
    return Account(USER, config=config, autodiscover=False, access_type=DELEGATE)


def bare_sync(url: str, concurrency: int, batch: int) -> tuple[float, int]:
    """Seconds for the bare exchangelib initial sync, and messages read."""
    acct = account(url, concurrency)
    started = time.perf_counter()
    folders = [acct.inbox, acct.sent]
    folders += [f for f in acct.msg_folder_root.children if f.name == "Projects"]
    read = 0
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for folder in folders:
            ids: list[Any] = []
            changes = folder.sync_items(only_fields=list(SYNC_FIELDS), max_changes_returned=512)
            for _, item in changes:
                ids.append((item.id, item.changekey))
                if len(ids) == 512:
                    read += _fetch(acct, pool, ids, batch)
                    ids = []
            read += _fetch(acct, pool, ids, batch)
    return time.perf_counter() - started, read


def _fetch(acct: Account, pool: concurrent.futures.Executor, ids: list[Any], batch: int) -> int:
    def one(chunk: list[Any]) -> int:
        got = list(acct.fetch(chunk, only_fields=list(FULL_FIELDS), chunk_size=batch))
        return sum(1 for item in got if item.mime_content)

    chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
    return sum(pool.map(one, chunks))


async def connector_syncs(
    url: str, data_dir: Path, storage: str, repeat: int, concurrency: int, batch: int
) -> list[SyncRun]:
    """Initial syncs into Kafka through EwsMailbox (a fresh source and cursor each)."""
    profile = ServerProfile(
        protocol=Protocol.EWS,
        host="127.0.0.1",
        security=TransportSecurity.PLAIN,
        allow_plaintext=True,
        max_connections=concurrency,
    )
    mailbox = MailboxConfig(
        mailbox_id="mb-bench-ews",
        owner=RecordRef(type=RecordType.USER, id="bench"),
        email_address=USER,
        protocol=Protocol.EWS,
        server_profile="bench",
        credentials=MailboxCredentials(username=USER, password=SecretRef(env=PASSWORD_ENV)),
        ews=EwsSettings(
            server_url=url,
            auth=EwsAuth.BASIC,
            folders=["Projects"],
            max_concurrency=concurrency,
            get_item_batch=batch,
        ),
    )

    async def secret() -> str:
        return PASSWORD

    return await timed_syncs(
        mailbox,
        profile,
        lambda wiring: EwsMailbox(wiring, secret=secret),
        data_dir=data_dir,
        storage=storage,
        repeat=repeat,
        connections=concurrency,
    )


def run_ews(args: argparse.Namespace) -> dict[str, Any]:
    """Both EWS sides against one simulator process; the figures."""
    os.environ[PASSWORD_ENV] = PASSWORD
    sim = Simulator(args.messages, args.size)
    try:
        with tempfile.TemporaryDirectory(prefix="tidings-bench-ews-") as tmp:
            bare_sync(sim.url, args.concurrency, args.get_item_batch)  # warm the simulator
            bare_runs = [
                bare_sync(sim.url, args.concurrency, args.get_item_batch)
                for _ in range(args.repeat)
            ]
            ours = asyncio.run(
                connector_syncs(
                    sim.url,
                    Path(tmp) / "data",
                    args.storage,
                    args.repeat,
                    args.concurrency,
                    args.get_item_batch,
                )
            )
    finally:
        sim.stop()
    return {
        "messages": args.messages,
        "message_body_bytes": args.size,
        "folders": FOLDERS,
        "concurrency": args.concurrency,
        "get_item_batch": args.get_item_batch,
        "broker_storage": args.storage,
        "runs_each": args.repeat,
        **comparison_figures(bare_runs, ours, args.messages, "bare_exchangelib"),
    }


def run_graph(args: argparse.Namespace) -> dict[str, Any] | None:
    """bench/exchange_graph.py's figures for the same message count, if it exists."""
    path = ROOT / "bench" / "exchange_graph.py"
    if args.skip_graph or not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("exchange_graph", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph_args = module.parser().parse_args(
        ["--messages", str(args.messages), "--repeat", str(args.repeat)]
    )
    figures: dict[str, Any] = module.run(graph_args)
    return figures


RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any] | None]] = {
    "ews": run_ews,
    "graph": run_graph,
}
"""One runner per Exchange protocol; each returns its figures (None: not run)."""


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    args = parser().parse_args()
    sections = {name: runner(args) for name, runner in RUNNERS.items()}
    figures: dict[str, Any] = {
        "benchmark": "exchange",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **{name: section for name, section in sections.items() if section is not None},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    table = Table(title=f"Exchange initial sync, {args.messages} messages")
    for column in ("protocol", "bare client", "bare msgs/s", "tidings msgs/s", "ratio"):
        table.add_column(column, justify="left" if column == "protocol" else "right")
    for name, section in sections.items():
        if section is None:
            continue
        bare_key = next(k for k in section if k.startswith("bare_"))
        table.add_row(
            name,
            bare_key.removeprefix("bare_"),
            f"{section[bare_key]['messages_per_s']:,}",
            f"{section['tidings_connector_into_kafka']['messages_per_s']:,}",
            str(section["ratio"]),
        )
    console = Console()
    console.print(table)
    console.print(f"aim: ratio >= 0.5; written to {RESULTS}")


if __name__ == "__main__":
    main()
