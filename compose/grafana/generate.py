"""Write the tidings Grafana dashboards (compose/grafana/dashboards/*.json).

The panels are declared here, once, so every dashboard has the same shape; edit this
file and run `python compose/grafana/generate.py`. tests/unit/test_compose.py fails
when the JSON files differ from what this script writes, and
tests/integration/test_observability.py runs every query against a live pipeline.

Prometheus panels filter by `job` (connectors, processors, sinks: the scrape jobs of
compose/prometheus/prometheus.yml), since every process exports every tidings metric
name. Per-mailbox panels query ClickHouse: Prometheus labels never carry mailbox ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}
RATE = "[$__rate_interval]"


@dataclass
class Panel:
    """One panel: PromQL (`exprs`, legend per expr) or ClickHouse SQL (`sql`)."""

    title: str
    description: str
    exprs: list[tuple[str, str]] = field(default_factory=list)
    sql: str | None = None
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8


def prom(title: str, description: str, *exprs: tuple[str, str], **kw: Any) -> Panel:
    return Panel(title, description, exprs=list(exprs), **kw)


def clickhouse(title: str, description: str, sql: str, **kw: Any) -> Panel:
    return Panel(title, description, sql=" ".join(sql.split()), **kw)


def render_panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
    }
    if panel.sql is not None:
        fmt = 0 if panel.kind == "timeseries" else 1
        body["datasource"] = CLICKHOUSE
        body["targets"] = [
            {
                "refId": "A",
                "datasource": CLICKHOUSE,
                "editorType": "sql",
                "format": fmt,
                "queryType": "timeseries" if fmt == 0 else "table",
                "rawSql": panel.sql,
            }
        ]
    else:
        body["datasource"] = PROMETHEUS
        body["targets"] = [
            {"refId": chr(ord("A") + n), "datasource": PROMETHEUS, "expr": e, "legendFormat": lg}
            for n, (e, lg) in enumerate(panel.exprs)
        ]
    if panel.kind == "stat":
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return body


def dashboard(
    uid: str, title: str, description: str, panels: list[Panel], templating: list[Any] | None = None
) -> dict[str, Any]:
    rendered, x, y, row_height = [], 0, 0, 0
    for n, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        rendered.append(render_panel(panel, n, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["tidings"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "templating": {"list": templating or []},
        "annotations": {"list": []},
        "links": [
            {"type": "dashboards", "tags": ["tidings"], "asDropdown": True, "title": "tidings"}
        ],
        "panels": rendered,
    }


FLEET = dashboard(
    "tidings-fleet",
    "tidings / fleet overview",
    "Every mailbox the connectors own: how many, in which state, overdue or not, and how "
    "long polls take.",
    [
        prom(
            "Mailboxes owned",
            "Mailboxes the connector workers own through their consumer-group assignment.",
            ('sum(tidings_connector_mailboxes_owned{job="connectors"})', "owned"),
            kind="stat",
            width=6,
            height=4,
        ),
        prom(
            "Disabled mailboxes",
            "Disabled by a permanent error or by a person; alert TidingsMailboxDisabled. "
            "`tidings mailbox list` says why.",
            ('sum(tidings_connector_mailboxes{job="connectors", state="disabled"})', "disabled"),
            kind="stat",
            width=6,
            height=4,
        ),
        prom(
            "Polls overdue",
            "Enabled mailboxes more than 5 minutes past their next poll (stuck or "
            "overloaded worker); alert TidingsPollOverdue.",
            ('sum(tidings_connector_poll_overdue_mailboxes{job="connectors"})', "overdue"),
            kind="stat",
            width=6,
            height=4,
        ),
        prom(
            "Connector workers up",
            "Connector processes answering Prometheus (scale with --scale connectors=N).",
            ('sum(up{job="connectors"})', "up"),
            kind="stat",
            width=6,
            height=4,
        ),
        prom(
            "Mailboxes by state",
            "Owned mailboxes by state: pending-approval, approved, tested, enabled, disabled.",
            ('sum by (state) (tidings_connector_mailboxes{job="connectors"})', "{{state}}"),
        ),
        prom(
            "Mailboxes per worker",
            "How the fleet is spread over connector workers (a rebalance moves them).",
            ('tidings_connector_mailboxes_owned{job="connectors"}', "{{instance}}"),
        ),
        prom(
            "Poll duration by protocol",
            "Time to list a folder and read its new items: median and 95th percentile.",
            (
                "histogram_quantile(0.5, sum by (le, protocol) "
                f'(rate(tidings_connector_poll_seconds_bucket{{job="connectors"}}{RATE})))',
                "p50 {{protocol}}",
            ),
            (
                "histogram_quantile(0.95, sum by (le, protocol) "
                f'(rate(tidings_connector_poll_seconds_bucket{{job="connectors"}}{RATE})))',
                "p95 {{protocol}}",
            ),
            unit="s",
        ),
        prom(
            "Polls per second by protocol",
            "Sync passes completed per second.",
            (
                "sum by (protocol) "
                f'(rate(tidings_connector_poll_seconds_count{{job="connectors"}}{RATE}))',
                "{{protocol}}",
            ),
            unit="ops",
        ),
        prom(
            "Polls by reason",
            "Polls started per second and why then: the adaptive scheduler's reason "
            "(active, idle, push, manual, ...).",
            (
                f'sum by (reason) (rate(tidings_connector_polls_total{{job="connectors"}}{RATE}))',
                "{{reason}}",
            ),
            unit="ops",
        ),
        prom(
            "Next poll delay by reason",
            "Median delay the scheduler chose before a mailbox's next poll (idle mailboxes "
            "back off).",
            (
                "histogram_quantile(0.5, sum by (le, reason) "
                f'(rate(tidings_connector_next_poll_delay_seconds_bucket{{job="connectors"}}{RATE})))',
                "{{reason}}",
            ),
            unit="s",
        ),
        prom(
            "Backpressure from processor lag",
            "1 while processor lag slows polling down; the lag connectors read (-1: unknown).",
            ('max(tidings_connector_backpressure{job="connectors"})', "backpressure"),
            ('max(tidings_connector_processor_lag{job="connectors"})', "processor lag"),
        ),
        prom(
            "Items waiting to be emitted",
            "Items listed by polls but not yet emitted (backlog), summed over mailboxes.",
            ('sum(tidings_connector_items_pending{job="connectors"})', "pending"),
        ),
        prom(
            "Process health",
            "1 when Prometheus could scrape the process, 0 when it is down.",
            ('up{job=~"connectors|processors|sinks"}', "{{job}} {{instance}}"),
        ),
    ],
)

PIPELINE = dashboard(
    "tidings-pipeline",
    "tidings / pipeline throughput and lag",
    "Items through each stage per second, stage latencies and how far each consumer group "
    "is behind.",
    [
        prom(
            "Change events emitted",
            "Change events connectors emitted to mail.changes (acknowledged by Kafka).",
            (
                f'sum by (change) (rate(tidings_connector_events_total{{job="connectors"}}{RATE}))',
                "{{change}}",
            ),
            unit="ops",
        ),
        prom(
            "Decisions",
            "Promotion decisions per second by status (promoted, skipped, errored, removed).",
            (
                "sum by (status) "
                f'(rate(tidings_processor_decisions_total{{job="processors"}}{RATE}))',
                "{{status}}",
            ),
            unit="ops",
        ),
        prom(
            "Rows into ClickHouse",
            "Rows inserted and confirmed per second, by table.",
            (
                f'sum by (table) (rate(tidings_sink_rows_inserted_total{{job="sinks"}}{RATE}))',
                "{{table}}",
            ),
            unit="ops",
        ),
        prom(
            "Consumer lag",
            "Messages each consumer group has not committed yet; alert TidingsConsumerLag.",
            ('max by (group) (tidings_consumer_lag{job="sinks"})', "{{group}}"),
        ),
        prom(
            "Mailbox to decision latency",
            "From a connector observing an item to its promotion decision.",
            (
                "histogram_quantile(0.5, sum by (le) "
                f'(rate(tidings_processor_latency_seconds_bucket{{job="processors"}}{RATE})))',
                "p50",
            ),
            (
                "histogram_quantile(0.95, sum by (le) "
                f'(rate(tidings_processor_latency_seconds_bucket{{job="processors"}}{RATE})))',
                "p95",
            ),
            unit="s",
        ),
        prom(
            "Kafka acknowledgement and ClickHouse insert time (p95)",
            "Time for Kafka to acknowledge a connector batch; time of one ClickHouse insert.",
            (
                "histogram_quantile(0.95, sum by (le) "
                f'(rate(tidings_connector_ack_seconds_bucket{{job="connectors"}}{RATE})))',
                "Kafka ack",
            ),
            (
                "histogram_quantile(0.95, sum by (le, table) "
                f'(rate(tidings_sink_insert_seconds_bucket{{job="sinks"}}{RATE})))',
                "insert {{table}}",
            ),
            unit="s",
        ),
        prom(
            "Correlations by method",
            "Activities linked to earlier ones per second, by correlation method.",
            (
                "sum by (method) "
                f'(rate(tidings_processor_correlations_total{{job="processors"}}{RATE}))',
                "{{method}}",
            ),
            unit="ops",
        ),
        prom(
            "Held for late correlation",
            "Items processors hold because mail they refer to may still arrive.",
            ('sum(tidings_processor_held_items{job="processors"})', "held"),
        ),
        prom(
            "Sink buffer and backpressure",
            "Rows consumed but not confirmed by ClickHouse; paused = 1 while ClickHouse fails.",
            ('sum(tidings_sink_buffered_rows{job="sinks"})', "buffered rows"),
            ('max(tidings_sink_paused{job="sinks"})', "paused"),
        ),
        prom(
            "Re-decisions",
            "Held items decided again because the mail they waited for became tracked.",
            (
                f'sum(rate(tidings_processor_redecisions_total{{job="processors"}}{RATE}))',
                "re-decided",
            ),
            unit="ops",
        ),
        prom(
            "Processor batch size",
            "Mean events an agent takes per batch (processors.batch_max_events at most); "
            "small batches under load mean the agent waits on its input, not on its work.",
            (
                "sum by (agent) "
                f'(rate(tidings_processor_batch_events_sum{{job="processors"}}{RATE})) / '
                "sum by (agent) "
                f'(rate(tidings_processor_batch_events_count{{job="processors"}}{RATE}))',
                "{{agent}}",
            ),
        ),
    ],
)

ERRORS = dashboard(
    "tidings-errors",
    "tidings / errors",
    "What went wrong and where: mail-server errors, unreadable items, disabled mailboxes, "
    "dead letters, and the latest sync errors from ClickHouse.",
    [
        prom(
            "Connector errors by code",
            "Errors connectors met per second, by code and severity (each is a sync.errors "
            "event); alert TidingsConnectorErrorRate.",
            (
                "sum by (code, severity) "
                f'(rate(tidings_connector_errors_total{{job="connectors"}}{RATE}))',
                "{{code}} ({{severity}})",
            ),
            unit="ops",
        ),
        prom(
            "Errored decisions by reason",
            "Items that ended as errors instead of decisions; alert TidingsParseFailureRate.",
            (
                "sum by (reason) (rate(tidings_processor_decisions_total"
                f'{{job="processors", status="errored"}}{RATE}))',
                "{{reason}}",
            ),
            (
                "sum by (code) "
                f'(rate(tidings_processor_parse_failures_total{{job="processors"}}{RATE}))',
                "parse failure {{code}}",
            ),
            unit="ops",
        ),
        prom(
            "Mailboxes disabled by errors",
            "Mailboxes connectors disabled on a permanent error since they started, by code.",
            (
                'sum by (code) (tidings_connector_mailboxes_disabled_total{job="connectors"})',
                "{{code}}",
            ),
        ),
        prom(
            "Dead letters",
            "Messages sent to the dead-letter topic, by source topic and consumer; alert "
            "TidingsDlqGrowth. Inspect with `tidings dlq list`.",
            (
                "sum by (topic, consumer) (tidings_dlq_messages_total)",
                "{{consumer}} ← {{topic}}",
            ),
        ),
        clickhouse(
            "Latest sync errors",
            "The newest error events of every part (ClickHouse sync_errors).",
            """SELECT occurred_at, mailbox_id, component, severity, code, message
            FROM tidings.sync_errors FINAL WHERE $__timeFilter(occurred_at)
            ORDER BY occurred_at DESC LIMIT 100""",
            kind="table",
            width=24,
            height=10,
        ),
        clickhouse(
            "Errors by mailbox and code",
            "Which mailboxes fail most in the time range.",
            """SELECT mailbox_id, code, count() AS errors, max(occurred_at) AS last
            FROM tidings.sync_errors FINAL WHERE $__timeFilter(occurred_at)
            GROUP BY mailbox_id, code ORDER BY errors DESC LIMIT 50""",
            kind="table",
            width=24,
        ),
    ],
)

MAILBOX_VARIABLE = {
    "name": "mailbox",
    "label": "Mailbox",
    "type": "query",
    "datasource": CLICKHOUSE,
    "query": "SELECT DISTINCT mailbox_id FROM tidings.mailbox_status FINAL ORDER BY mailbox_id",
    "definition": "SELECT DISTINCT mailbox_id FROM tidings.mailbox_status FINAL "
    "ORDER BY mailbox_id",
    "refresh": 1,
    "includeAll": False,
    "multi": False,
    "current": {},
    "options": [],
}
WHERE_MAILBOX = "mailbox_id = '${mailbox}'"

MAILBOX = dashboard(
    "tidings-mailbox",
    "tidings / one mailbox",
    "One mailbox in detail, from ClickHouse (mailbox_status, poll_stats, "
    "promotion_decisions, sync_errors): its state, every sync pass, what became of its "
    "mail and its errors.",
    [
        clickhouse(
            "Status",
            "The mailbox's latest status as its connector published it.",
            f"""SELECT state, incoming_status, last_sync_at, last_success_at, next_poll_at,
            pending_items, items_listed, created_events, updated_events, deleted_events,
            errors, last_error_code, last_error, worker
            FROM tidings.mailbox_status FINAL WHERE {WHERE_MAILBOX}""",
            kind="table",
            width=24,
            height=5,
        ),
        clickhouse(
            "Sync pass duration",
            "How long each sync pass took (poll_stats).",
            f"""SELECT finished_at AS time, duration_ms / 1000 AS seconds
            FROM tidings.poll_stats FINAL
            WHERE {WHERE_MAILBOX} AND $__timeFilter(finished_at) ORDER BY time""",
            unit="s",
        ),
        clickhouse(
            "Change events per pass",
            "Items created, updated and deleted that each sync pass emitted.",
            f"""SELECT finished_at AS time, created_events, updated_events, deleted_events
            FROM tidings.poll_stats FINAL
            WHERE {WHERE_MAILBOX} AND $__timeFilter(finished_at) ORDER BY time""",
        ),
        clickhouse(
            "Decisions by reason",
            "What became of the mailbox's items: promoted or skipped (with the reason) or errored.",
            f"""SELECT status, reason, count() AS items FROM tidings.promotion_decisions FINAL
            WHERE {WHERE_MAILBOX} AND $__timeFilter(decided_at)
            GROUP BY status, reason ORDER BY items DESC""",
            kind="table",
        ),
        clickhouse(
            "Sync passes",
            "The latest sync passes: when, how long, what they found, and errors.",
            f"""SELECT finished_at, duration_ms, state, items_listed, created_events,
            pending_items, errors, error_code, next_poll_at, worker
            FROM tidings.poll_stats FINAL WHERE {WHERE_MAILBOX}
            AND $__timeFilter(finished_at) ORDER BY finished_at DESC LIMIT 50""",
            kind="table",
        ),
        clickhouse(
            "Errors",
            "The mailbox's error events, newest first.",
            f"""SELECT occurred_at, component, severity, code, message, folder, item_id
            FROM tidings.sync_errors FINAL
            WHERE {WHERE_MAILBOX} AND $__timeFilter(occurred_at)
            ORDER BY occurred_at DESC LIMIT 100""",
            kind="table",
            width=24,
        ),
    ],
    templating=[MAILBOX_VARIABLE],
)

DASHBOARDS = {
    "fleet-overview.json": FLEET,
    "pipeline.json": PIPELINE,
    "errors.json": ERRORS,
    "mailbox.json": MAILBOX,
}


def render(board: dict[str, Any]) -> str:
    """The dashboard as the file holds it."""
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for name, board in DASHBOARDS.items():
        (out / name).write_text(render(board), encoding="utf-8")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
