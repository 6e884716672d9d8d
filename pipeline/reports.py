"""Summary queries (over FINAL, so replays never double-count) and their rendering."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from sinks.store import QueryResult

Query = Callable[[str], QueryResult]


@dataclass(frozen=True)
class Summary:
    """What the pipeline produced, as the demo prints it."""

    items: int
    promoted: int
    skipped: int
    errored: int
    activities: int
    by_reason: list[tuple[str, str, int]]
    errors_by_code: list[tuple[str, int]]
    correlated_by_method: list[tuple[str, int]]
    by_mailbox: list[tuple[str, int, int, int]]


def summarize(query: Query, database: str) -> Summary:
    """Query the decision, activity and error tables."""
    db = database
    totals = query(
        f"SELECT countIf(status != 'removed'), countIf(status = 'promoted'), "
        f"countIf(status = 'skipped'), countIf(status = 'errored') "
        f"FROM {db}.promotion_decisions FINAL"
    ).rows[0]
    activities = query(f"SELECT count() FROM {db}.activities FINAL").rows[0][0]
    by_reason = query(
        f"SELECT status, reason, count() AS n FROM {db}.promotion_decisions FINAL "
        f"WHERE status != 'removed' GROUP BY status, reason ORDER BY status, n DESC, reason"
    ).rows
    errors = query(
        f"SELECT code, count() AS n FROM {db}.sync_errors FINAL GROUP BY code ORDER BY n DESC"
    ).rows
    methods = query(
        f"SELECT correlation_method, count() AS n FROM {db}.activities FINAL "
        f"GROUP BY correlation_method ORDER BY n DESC"
    ).rows
    mailboxes = query(
        f"SELECT mailbox_id, countIf(status != 'removed'), countIf(status = 'promoted'), "
        f"countIf(status = 'errored') FROM {db}.promotion_decisions FINAL "
        f"GROUP BY mailbox_id ORDER BY mailbox_id"
    ).rows
    return Summary(
        items=int(totals[0]),
        promoted=int(totals[1]),
        skipped=int(totals[2]),
        errored=int(totals[3]),
        activities=int(activities),
        by_reason=[(str(s), str(r), int(n)) for s, r, n in by_reason],
        errors_by_code=[(str(c), int(n)) for c, n in errors],
        correlated_by_method=[(str(m), int(n)) for m, n in methods],
        by_mailbox=[(str(m), int(a), int(b), int(c)) for m, a, b, c in mailboxes],
    )


def render_summary(summary: Summary, console: Console) -> None:
    """Print the summary as tables."""
    overview = Table(title="Items", show_header=True, header_style="bold")
    for column in ("seen", "promoted", "skipped", "errored", "activities"):
        overview.add_column(column, justify="right")
    overview.add_row(
        *(
            str(v)
            for v in (
                summary.items,
                summary.promoted,
                summary.skipped,
                summary.errored,
                summary.activities,
            )
        )
    )
    console.print(overview)

    reasons = Table(title="Decisions by reason", header_style="bold")
    reasons.add_column("status")
    reasons.add_column("reason")
    reasons.add_column("items", justify="right")
    for status, reason, count in summary.by_reason:
        reasons.add_row(status, reason, str(count))
    console.print(reasons)

    methods = Table(title="Activities by correlation method", header_style="bold")
    methods.add_column("method")
    methods.add_column("activities", justify="right")
    for method, count in summary.correlated_by_method:
        methods.add_row(method, str(count))
    console.print(methods)

    errors = Table(title="Errors", header_style="bold")
    errors.add_column("code")
    errors.add_column("count", justify="right")
    for code, count in summary.errors_by_code or [("none", 0)]:
        errors.add_row(code, str(count))
    console.print(errors)

    mailboxes = Table(title="Mailboxes", header_style="bold")
    for column in ("mailbox", "items", "promoted", "errored"):
        mailboxes.add_column(column, justify="left" if column == "mailbox" else "right")
    for mailbox_id, items, promoted, errored in summary.by_mailbox:
        mailboxes.add_row(mailbox_id, str(items), str(promoted), str(errored))
    console.print(mailboxes)


def render_result(result: QueryResult, console: Console, fmt: str) -> None:
    """Print a query result: a table, JSON Lines (one object per row) or CSV.

    JSON and CSV go to standard output unwrapped, for scripts.
    """
    if fmt == "json":
        for row in result.rows:
            record = dict(zip(result.columns, row, strict=True))
            sys.stdout.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
        return
    table = Table(header_style="bold")
    for column in result.columns:
        table.add_column(column, overflow="fold")
    for row in result.rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
    console.print(f"{len(result.rows)} rows", style="dim")
