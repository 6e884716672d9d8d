"""The compose stack's dashboards and alert rules against a live pipeline and a real
Prometheus (Debian's `prometheus` package).

One run: `tidings demo --follow` (tansu, chDB, the demo Maildirs) keeps connectors,
processors and sinks running; a mailbox whose Maildir does not exist (an error, a
disabled mailbox) and one undecodable decision (a dead letter) make the error paths
report too. Prometheus scrapes the three processes every second under the job names
compose uses and loads compose/prometheus/alerts.yml. Then:

- every PromQL target of every dashboard must name only metrics some process exports
  (checked against /api/v1/label/__name__/values) and must return data;
- every alert rule must load and evaluate without error, and every series selector in
  its expression must match series. The full alert expressions are evaluated too but
  may be empty: an alert expression is empty unless it fires, and a healthy pipeline
  should fire nothing. Selectors are what a renamed metric or label would break;
- every ClickHouse target (and the mailbox variable) must run against the real schema
  in chDB and return rows;
- `promtool check config` and `promtool check rules` accept the compose files.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from schemas.topics import PROMOTION_DECISIONS
from tests.integration.test_processes import endpoint, produce_raw
from tests.workspace import Workspace

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
DASHBOARDS = sorted((COMPOSE / "grafana" / "dashboards").glob("*.json"))
ALERTS = COMPOSE / "prometheus" / "alerts.yml"
ROLES = ("connectors", "processors", "sinks")
SCRAPE_INTERVAL_S = 1
# Grafana's macros, as Grafana would expand them for a short look at a fresh pipeline.
GRAFANA_MACROS = {"$__rate_interval": "15s", "$__interval": "2s", "$__range": "5m"}
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "or", "and", "unless", "offset", "on", "ignoring", "bool",
    "group_left", "group_right", "vector", "time", "le", "topk", "bottomk",
}  # fmt: skip


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A real Prometheus on a loopback port, scraping the given targets per job."""

    def __init__(self, root: Path, targets: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(ALERTS, root / "alerts.yml")
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
            },
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        log = (self.root / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant-query result of `expr` (raises on a PromQL error)."""
        try:
            data = self.api("query", query=expr)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr}: {exc.read().decode()}") from None
        return list(data["result"])

    def wait_until_scraped(self, jobs: list[str], timeout: float = 60) -> None:
        """Until every job's target is up and has been scraped a few times."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                up = self.query("count_over_time(up[1m]) and up == 1")
            except (OSError, AssertionError):
                up = []
            if {r["metric"]["job"] for r in up if float(r["value"][1]) >= 5} >= set(jobs):
                return
            time.sleep(0.5)
        log = (self.root / "prometheus.log").read_text(errors="replace")[-3000:]
        raise TimeoutError(f"Prometheus did not scrape {jobs} within {timeout}s\n{log}")


def dashboard_targets(datasource_type: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(dashboard file, panel title, target) of every target on `datasource_type`."""
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel.get("datasource") or {}
                if source.get("type") == datasource_type:
                    yield path.name, panel["title"], target


def expand_macros(expr: str) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    return expr


def selectors(expr: str) -> list[str]:
    """The series selectors (`name{matchers}`) of a PromQL expression."""
    found = []
    for name, matchers in SELECTOR.findall(expr):
        if name in PROMQL_WORDS or not (name.startswith("tidings_") or name == "up"):
            continue
        found.append(name + matchers)
    return found


def expand_sql(sql: str, mailbox: str) -> str:
    """A ClickHouse target as Grafana's ClickHouse plugin would send it."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 1 DAY", sql)
    return sql.replace("${mailbox}", mailbox.replace("'", "''"))


@pytest.fixture
def live_pipeline(workspace: Workspace, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The demo pipeline running, with an error and a dead letter; yields
    {role: "host:port"} of each process's /metrics."""
    log = tmp_path / "demo.log"
    demo = workspace.start("demo", "--follow", log=log)
    try:
        deadline = time.monotonic() + 180
        while "following" not in log.read_text(errors="replace"):
            assert demo.poll() is None, log.read_text()[-3000:] + workspace.logs()
            assert time.monotonic() < deadline, log.read_text()[-3000:] + workspace.logs()
            time.sleep(0.5)
        targets = {role: endpoint(workspace, role).removeprefix("http://") for role in ROLES}
        # A mailbox whose Maildir is missing: a permanent error, the mailbox disabled.
        workspace.cli(
            "mailbox", "add", "--id", "mb-broken", "--owner", "user:broken",
            "--path", str(tmp_path / "no-such-maildir"),
        )  # fmt: skip
        # An undecodable decision: the sink sends it to the DLQ and goes on.
        infra = bring_up(load_config(env={"TIDINGS_DATA_DIR": str(workspace.data_dir)}))
        try:
            decisions = PROMOTION_DECISIONS.name(infra.config.topic_prefix)
            asyncio.run(produce_raw(infra.config, decisions, b"poison", b"\x00 not json"))
        finally:
            infra.close()
        yield targets
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGTERM)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)


def wait_for_series(prometheus: Prometheus, exprs: list[str], timeout: float = 60) -> None:
    """Until every expression returns data (the error paths report within seconds)."""
    deadline = time.monotonic() + timeout
    missing = exprs
    while time.monotonic() < deadline:
        missing = [e for e in exprs if not prometheus.query(e)]
        if not missing:
            return
        time.sleep(1)
    raise AssertionError(f"no data within {timeout}s for: {missing}")


def test_compose_prometheus_files_pass_promtool() -> None:
    config = promtool("check", "config", str(COMPOSE / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout


def test_every_dashboard_query_and_alert_rule_has_data(
    live_pipeline: dict[str, str], workspace: Workspace, tmp_path: Path
) -> None:
    with Prometheus(tmp_path / "prometheus", live_pipeline) as prometheus:
        prometheus.wait_until_scraped(list(ROLES))
        wait_for_series(
            prometheus,
            [
                'tidings_connector_mailboxes{state="disabled"} > 0',
                "tidings_dlq_messages_total",
                "tidings_connector_errors_total",
                "tidings_consumer_lag",
            ],
        )
        time.sleep(3)  # a few more scrapes after the error paths reported
        exported = set(prometheus.api("label/__name__/values"))

        panels = list(dashboard_targets("prometheus"))
        assert len(panels) >= 25
        problems = []
        for board, title, target in panels:
            expr = expand_macros(target["expr"])
            for selector in selectors(expr):
                name = selector.split("{")[0]
                if name not in exported:
                    problems.append(f"{board} / {title}: no process exports {name}")
            if not prometheus.query(expr):
                problems.append(f"{board} / {title}: no data for {expr}")

        rules = [
            rule
            for group in prometheus.api("rules")["groups"]
            for rule in group["rules"]
            if rule["type"] == "alerting"
        ]
        assert len(rules) == 8, rules
        for rule in rules:
            assert rule["health"] == "ok", rule
            prometheus.query(rule["query"])  # evaluates (may be empty: nothing fires)
            for selector in selectors(rule["query"]):
                if not prometheus.query(selector):
                    problems.append(f"alert {rule['name']}: no series for {selector}")
        assert problems == []

    # Grafana's ClickHouse panels and the mailbox variable, on the real schema.
    sql_targets = list(dashboard_targets("grafana-clickhouse-datasource"))
    assert len(sql_targets) >= 8
    variable = json.loads((COMPOSE / "grafana" / "dashboards" / "mailbox.json").read_text())
    mailboxes = [row[0] for row in workspace.query(variable["templating"]["list"][0]["query"])]
    assert "mb-alice" in mailboxes and "mb-broken" in mailboxes
    for mailbox in ("mb-alice", "mb-broken"):
        sqls = [
            expand_sql(t["rawSql"], mailbox)
            for _, _, t in sql_targets
            if "${mailbox}" in t["rawSql"] or mailbox == "mb-alice"
        ]
        results = workspace.query_many(*sqls)
        empty = [sql for sql, rows in zip(sqls, results, strict=True) if not rows]
        if mailbox == "mb-broken":  # it never synced: no passes, no decisions
            empty = [sql for sql in empty if "poll_stats" not in sql and "decisions" not in sql]
        assert empty == [], f"{mailbox}: no rows for {empty}"
