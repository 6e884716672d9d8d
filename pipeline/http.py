"""The per-process HTTP endpoint: /metrics (Prometheus), /healthz, and in the process
that owns ClickHouse, POST /query (read-only SQL for the CLI).

Binds to loopback by default; the chosen port is recorded in
`<data_dir>/run/<role>.json` so the CLI can find it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.config import MetricsConfig
from sinks.store import ClickHouseStore, StoreError


def record_endpoint(run_dir: Path, role: str, host: str, port: int) -> None:
    """Write `<run_dir>/<role>.json` naming this process and its HTTP port."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "host": host, "port": port, "role": role}
    (run_dir / f"{role}.json").write_text(json.dumps(record))


def read_endpoint(run_dir: Path, role: str) -> tuple[str, int] | None:
    """(host, port) of the live process recorded for `role`, or None."""
    try:
        record = json.loads((run_dir / f"{role}.json").read_text())
        os.kill(int(record["pid"]), 0)
        return str(record["host"]), int(record["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Endpoint:
    """An aiohttp server with the standard routes; `start` returns the bound port."""

    def __init__(
        self,
        config: MetricsConfig,
        role: str,
        run_dir: Path,
        store: ClickHouseStore | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.role = role
        self.run_dir = run_dir
        self.store = store
        self.health = health or (lambda: {"ok": True})
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        """Serve on the configured host/port (0 = any free port) and record it."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        if self.store is not None:
            app.router.add_post("/query", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "host": self.config.host,
            "port": self.port,
            "role": self.role,
        }
        self._record_path.write_text(json.dumps(record))
        return self.port

    @property
    def _record_path(self) -> Path:
        return self.run_dir / f"{self.role}.json"

    async def stop(self) -> None:
        """Stop serving and remove the record."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        try:
            record = json.loads(self._record_path.read_text())
            if record.get("pid") == os.getpid():
                self._record_path.unlink()
        except (OSError, ValueError):
            pass

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        report = self.health()
        return web.json_response(report, status=200 if report.get("ok", True) else 503)

    async def _query(self, request: web.Request) -> web.Response:
        assert self.store is not None
        sql = (await request.text()).strip()
        if not sql:
            return web.json_response({"error": "empty query"}, status=400)
        try:
            result = await self.store.query(sql, readonly=True)
        except StoreError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        body = json.dumps({"columns": result.columns, "rows": result.rows}, default=str)
        return web.Response(body=body, content_type="application/json")
