"""Microsoft Graph initial-sync benchmark: one mailbox of N messages in the Graph
simulator (tests/graph_sim.py, its own process, HTTPS on loopback), synced through
the Graph connector into Kafka, next to bare httpx issuing the same calls, in the
same run.

* bare httpx: one app-only token (msal), the Inbox delta pages
  (`Prefer: odata.maxpagesize`, the connector's `$select`), and each page's
  MIME by `$value`, twenty to a JSON batch as one dependsOn chain, at most four
  requests in flight (Exchange's per-mailbox limit), overlapping the pages;
* tidings: GraphMailbox.sync_pass — the same delta and batches, MailItemChanged
  events produced to the embedded broker (tansu) and acknowledged, the cursor
  saved after each batch.

Token acquisition is warmed up and excluded for both. Prints both rates and
their ratio (aim: tidings >= 0.5 x bare); figures go to
bench/results/exchange_graph.json. `run(args)` is what bench/exchange.py calls.

    python bench/exchange_graph.py [--messages N] [--repeat R] [--storage memory|s3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SyncRun, comparison_figures, timed_syncs
from connectors.graph import GraphMailbox
from connectors.graph_auth import GraphTokens, forget_apps
from connectors.graph_client import ssl_context
from connectors.graph_items import DELTA_SELECT
from schemas.base import RecordRef, RecordType
from schemas.mailbox import GraphApp, GraphSettings, MailboxConfig, Protocol, ServerProfile
from schemas.secret import SecretRef

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "exchange_graph.json"
USER = "user0@contoso.example"
CLIENT_ID, SECRET, SECRET_ENV = "bench-app", "bench-secret", "BENCH_GRAPH_SECRET"
CONCURRENCY = 4
BATCH = 20


def parser() -> argparse.ArgumentParser:
    """The benchmark's options (bench/exchange.py reuses them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=500, help="bytes of body per message")
    parser.add_argument("--page-size", type=int, default=100, help="odata.maxpagesize")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians reported")
    parser.add_argument(
        "--storage",
        choices=["s3", "memory"],
        default="memory",
        help="embedded broker storage (memory, the default here, or s3 = localbucket)",
    )
    return parser


class Simulator:
    """The Graph simulator in a child process, populated with one mailbox."""

    def __init__(self, root: Path, messages: int, size: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.graph_sim",
                "--root",
                str(root),
                "--messages",
                str(messages),
                "--size",
                str(size),
                "--client-id",
                CLIENT_ID,
                "--secret",
                SECRET,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        self.port, self.ca_file = int(ready["port"]), str(ready["ca_file"])

    def profile(self, page_size: int) -> ServerProfile:
        base = f"https://127.0.0.1:{self.port}"
        app = GraphApp(
            tenant_id="contoso-tenant",
            client_id=CLIENT_ID,
            client_secret=SecretRef(env=SECRET_ENV),
            authority_host=base,
            graph_url=f"{base}/v1.0",
            page_size=page_size,
        )
        return ServerProfile(
            protocol=Protocol.GRAPH,
            host="127.0.0.1",
            port=self.port,
            ca_file=self.ca_file,
            timeout_s=60.0,
            graph=app,
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def bare_sync(profile: ServerProfile, page_size: int) -> tuple[float, int]:
    """Seconds and messages: bare httpx following the delta and batching $value."""
    tokens = GraphTokens(profile, GraphSettings(), USER)
    token = await tokens.token()  # warm: excluded, as for the connector
    assert profile.graph is not None
    base = profile.graph.graph_url
    headers = {"Authorization": f"Bearer {token}"}
    slots = asyncio.Semaphore(CONCURRENCY)
    fetched = 0
    async with httpx.AsyncClient(
        verify=ssl_context(profile),
        timeout=60.0,
        limits=httpx.Limits(max_connections=CONCURRENCY),
    ) as client:

        async def batch(ids: list[str]) -> int:
            requests = []
            for n, item in enumerate(ids):
                member: dict[str, Any] = {
                    "id": str(n),
                    "method": "GET",
                    "url": f"/users/{USER}/messages/{item}/$value",
                }
                if n:
                    member["dependsOn"] = [str(n - 1)]
                requests.append(member)
            async with slots:
                response = await client.post(
                    f"{base}/$batch",
                    content=msgspec.json.encode({"requests": requests}),
                    headers={**headers, "Content-Type": "application/json"},
                )
            answers = msgspec.json.decode(response.content)["responses"]
            return sum(1 for a in answers if a["status"] == 200 and base64.b64decode(a["body"]))

        started = time.perf_counter()
        url: str | None = f"{base}/users/{USER}/mailFolders/inbox/messages/delta"
        params: dict[str, str] | None = {"$select": DELTA_SELECT}
        pending: list[asyncio.Task[int]] = []
        while url is not None:
            async with slots:
                response = await client.get(
                    url,
                    params=params,
                    headers={**headers, "Prefer": f"odata.maxpagesize={page_size}"},
                )
            page = msgspec.json.decode(response.content)
            ids = [item["id"] for item in page["value"] if "@removed" not in item]
            for start in range(0, len(ids), BATCH):
                pending.append(asyncio.create_task(batch(ids[start : start + BATCH])))
            url, params = page.get("@odata.nextLink"), None
        fetched = sum(await asyncio.gather(*pending))
        return time.perf_counter() - started, fetched


async def connector_syncs(
    profile: ServerProfile, data_dir: Path, storage: str, repeat: int
) -> list[SyncRun]:
    """Initial syncs into Kafka through GraphMailbox (a fresh source and cursor each)."""
    mailbox = MailboxConfig(
        mailbox_id="mb-bench-graph",
        owner=RecordRef(type=RecordType.USER, id="bench"),
        email_address=USER,
        protocol=Protocol.GRAPH,
        server_profile="bench",
        graph=GraphSettings(include_sent=False),
    )

    async def warm(source: GraphMailbox) -> None:
        await source.client.tokens.token()  # excluded from the timing, as for bare

    return await timed_syncs(
        mailbox,
        profile,
        GraphMailbox,
        data_dir=data_dir,
        storage=storage,
        repeat=repeat,
        connections=10,
        warm=warm,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run both sides against one simulator and return the figures (also written to
    bench/results/exchange_graph.json)."""
    os.environ[SECRET_ENV] = SECRET
    forget_apps()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-graph-") as tmp:
        root = Path(tmp)
        sim = Simulator(root / "sim", args.messages, args.size)
        try:
            profile = sim.profile(args.page_size)
            asyncio.run(bare_sync(profile, args.page_size))  # warm the simulator
            bare_runs = [
                asyncio.run(bare_sync(profile, args.page_size)) for _ in range(args.repeat)
            ]
            ours = asyncio.run(connector_syncs(profile, root / "data", args.storage, args.repeat))
        finally:
            sim.stop()
    figures: dict[str, Any] = {
        "benchmark": "exchange_graph",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages": args.messages,
        "message_body_bytes": args.size,
        "page_size": args.page_size,
        "batch": BATCH,
        "concurrency": CONCURRENCY,
        "broker_storage": args.storage,
        "runs_each": args.repeat,
        **comparison_figures(bare_runs, ours, args.messages, "bare_httpx"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    figures = run(parser().parse_args())
    table = Table(title=f"Graph initial sync, {figures['messages']} messages")
    table.add_column("client")
    table.add_column("msgs/s", justify="right")
    table.add_column("median s", justify="right")
    for name, key in (
        ("bare httpx", "bare_httpx"),
        ("tidings → Kafka", "tidings_connector_into_kafka"),
    ):
        table.add_row(
            name, f"{figures[key]['messages_per_s']:,}", str(figures[key]["median_seconds"])
        )
    console = Console()
    console.print(table)
    console.print(f"ratio {figures['ratio']} (aim {figures['aim']}); written to {RESULTS}")


if __name__ == "__main__":
    main()
