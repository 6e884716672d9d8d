"""`tidings status`: one row per mailbox (state, last sync, next poll, items in the
last sync, errors, last error or why it is disabled) and the pipeline's lag.

Everything comes from Kafka — mailbox.config and mailbox.status (both compacted)
and the consumer groups' committed offsets — so it works without ClickHouse and
while the sinks are down. Row building is pure (`status_rows`); reading
(`read_snapshot`) and drawing (`render`) are thin shells around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pipeline.idle import drain, group_lag, groups_for, read_compacted, topic_partitions
from pipeline.mailboxes import disabled_reason, mailbox_state
from schemas.base import utc_now
from schemas.codec import decode_key, encode_key
from schemas.config import TidingsConfig
from schemas.errors import DecodeError, SyncError
from schemas.mailbox import MailboxConfig, MailboxStatus, SyncState
from schemas.topics import MAILBOX_CONFIG, MAILBOX_STATUS, SYNC_ERRORS, codec

LAG_ROLES = ("connectors", "processors", "sinks")
ERROR_CHARS = 60


@dataclass(frozen=True)
class StatusRow:
    """One mailbox as `tidings status` shows it."""

    mailbox_id: str
    owner: str
    state: SyncState
    last_sync: datetime | None
    next_poll: datetime | None
    items: int | None
    errors: int
    last_error: str
    worker: str


@dataclass
class StatusSnapshot:
    """One look at the fleet: its rows, and the lag of each consumer group (None where
    it could not be read, with `lag_problem` saying why)."""

    taken_at: datetime
    rows: list[StatusRow] = field(default_factory=list)
    lag: dict[str, int | None] = field(default_factory=dict)
    lag_problem: str | None = None


def shorten(text: str, limit: int = ERROR_CHARS) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def status_row(config: MailboxConfig, status: MailboxStatus | None) -> StatusRow:
    """The row of one mailbox: its state, its last sync and next poll as its connector
    reported them, and the last error (or, when disabled, why)."""
    state = mailbox_state(config, status)
    why = disabled_reason(config, status)
    if why is not None:
        last_error = why
    elif status is not None and status.last_error_code:
        last_error = f"{status.last_error_code}: {status.last_error or ''}".strip()
    else:
        last_error = ""
    running = state == SyncState.ENABLED
    return StatusRow(
        mailbox_id=config.mailbox_id,
        owner=str(config.owner),
        state=state,
        last_sync=status.last_sync_at if status else None,
        next_poll=status.next_poll_at if status and running else None,
        items=status.last_pass_items if status else None,
        errors=status.counters.errors if status else 0,
        last_error=shorten(last_error),
        worker=status.worker or "" if status else "",
    )


def status_rows(
    configs: Mapping[str, MailboxConfig], statuses: Mapping[str, MailboxStatus]
) -> list[StatusRow]:
    """One row per configured mailbox, by id (statuses of removed mailboxes are left out)."""
    return [status_row(config, statuses.get(mid)) for mid, config in sorted(configs.items())]


def relative(moment: datetime | None, now: datetime) -> str:
    """A moment as a short distance from `now`: "12s ago", "in 4m", "never"."""
    if moment is None:
        return "never"
    seconds = int((moment - now).total_seconds())
    size = abs(seconds)
    if size < 60:
        amount = f"{size}s"
    elif size < 3600:
        amount = f"{size // 60}m"
    elif size < 86400:
        amount = f"{size // 3600}h{size % 3600 // 60:02d}m"
    else:
        amount = f"{size // 86400}d"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


_STATE_STYLE = {
    SyncState.ENABLED: "green",
    SyncState.DISABLED: "bold red",
    SyncState.PENDING_APPROVAL: "yellow",
    SyncState.APPROVED: "cyan",
    SyncState.TESTED: "cyan",
}


def render(snapshot: StatusSnapshot) -> RenderableType:
    """The mailbox table and the lag line, ready for a console or a Live display."""
    now = snapshot.taken_at
    table = Table(header_style="bold", title=f"tidings status at {now:%Y-%m-%d %H:%M:%S} UTC")
    for column in ("mailbox", "owner", "state", "last sync", "next poll"):
        table.add_column(column)
    table.add_column("items", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("last error / why disabled", overflow="fold")
    for row in snapshot.rows:
        next_poll = relative(row.next_poll, now) if row.next_poll else "-"
        if row.state == SyncState.ENABLED and row.next_poll is not None and row.next_poll < now:
            next_poll = "due"
        table.add_row(
            row.mailbox_id,
            row.owner,
            Text(row.state.value, style=_STATE_STYLE[row.state]),
            relative(row.last_sync, now),
            next_poll,
            "" if row.items is None else str(row.items),
            str(row.errors),
            escape(row.last_error),
        )
    parts: list[RenderableType] = [table]
    if not snapshot.rows:
        parts.append(Text("no mailboxes yet: add one with `tidings mailbox add`"))
    lag = ", ".join(
        f"{group} {'?' if count is None else count}" for group, count in snapshot.lag.items()
    )
    line = f"pipeline lag (messages not yet committed): {lag or 'none'}"
    if snapshot.lag_problem:
        line += f" — {snapshot.lag_problem}"
    parts.append(Text(line))
    return Group(*parts)


async def read_lag(
    config: TidingsConfig, timeout_s: float = 10.0
) -> tuple[dict[str, int | None], str | None]:
    """The lag of the connectors', processors' and sinks' groups (None each where the
    broker did not answer within `timeout_s`, with why)."""
    lag: dict[str, int | None] = {}
    problem = None
    for group, topics in groups_for(config, LAG_ROLES).items():
        try:
            async with asyncio.timeout(timeout_s):
                lag[group] = await group_lag(config, group, topics)
        except (KafkaError, TimeoutError, OSError) as exc:
            lag[group] = None
            problem = f"lag of {group} unknown: {type(exc).__name__} {exc}".strip()
    return lag, problem


async def read_snapshot(config: TidingsConfig, timeout_s: float = 30.0) -> StatusSnapshot:
    """Read mailbox.config, mailbox.status and the groups' lag (each bounded in time)."""
    async with asyncio.timeout(timeout_s):
        configs = await read_compacted(config, MAILBOX_CONFIG)
        statuses = await read_compacted(config, MAILBOX_STATUS)
    lag, problem = await read_lag(config, timeout_s / 3)
    return StatusSnapshot(
        taken_at=utc_now(),
        rows=status_rows(configs, statuses),
        lag=lag,
        lag_problem=problem,
    )


# -- one mailbox (`tidings mailbox show`) ---------------------------------------------


async def recent_errors(
    config: TidingsConfig, mailbox_id: str, limit: int = 5, timeout_s: float = 30.0
) -> list[SyncError]:
    """The last `limit` errors and notices of a mailbox on sync.errors (its partition
    read from the start: the topic's retention bounds the work)."""
    if limit <= 0:
        return []
    topic = SYNC_ERRORS.name(config.topic_prefix)
    partitions = await topic_partitions(config, topic)
    if not partitions:
        return []
    numbers = [tp.partition for tp in partitions]
    chosen = DefaultPartitioner()(encode_key(mailbox_id), numbers, numbers)
    tp = TopicPartition(topic, chosen)
    consumer = AIOKafkaConsumer(**config.kafka.consumer_options())
    await consumer.start()
    found: list[SyncError] = []
    value_codec = codec(SYNC_ERRORS)
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        async for _, message in drain(consumer, [tp], timeout_s):
            if decode_key(message.key) != mailbox_id or not message.value:
                continue
            try:
                found.append(value_codec.decode(message.value, topic, tp.partition, message.offset))
            except DecodeError:
                continue
            del found[:-limit]
    finally:
        await consumer.stop()
    return found


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment is not None else "never"


def mailbox_facts(config: MailboxConfig, status: MailboxStatus | None) -> list[tuple[str, str]]:
    """(label, value) lines describing one mailbox: configuration, state, last test,
    latest status."""
    state = mailbox_state(config, status)
    facts = [
        ("mailbox", config.mailbox_id),
        ("owner", str(config.owner)),
        ("address", config.email_address),
        ("protocol", config.protocol.value),
    ]
    if config.maildir is not None:
        facts.append(("path", config.maildir.path))
    if config.server_profile is not None:
        user = config.credentials.username if config.credentials else "?"
        facts.append(("server", f"profile {config.server_profile}, user {user}"))
    if config.outgoing is not None:
        facts.append(("outgoing", f"profile {config.outgoing.server_profile}"))
    facts += [
        ("filter", config.incoming_filter.value),
        ("state", state.value),
        ("approved / enabled", f"{_yes(config.approved)} / {_yes(config.enabled)}"),
    ]
    why = disabled_reason(config, status)
    if why is not None:
        facts.append(("why disabled", why))
    if config.test is None:
        facts.append(("last test", "never (`tidings mailbox test`)"))
    else:
        test = config.test
        verdict = "passed" if test.passed else "failed"
        facts.append(("last test", f"{verdict} at {_when(test.tested_at)}"))
        for name, step in (("incoming", test.incoming), ("outgoing", test.outgoing)):
            facts.append((f"  {name}", f"{step.status.value}: {step.reason}".rstrip(": ")))
        facts.append(("  appointments etc.", test.act.status.value))
    if status is None:
        facts.append(("status", "no connector has reported on it yet"))
        return facts
    facts += [
        ("incoming status", status.incoming_status.value),
        ("outgoing status", status.outgoing_status.value),
        ("worker", status.worker or "?"),
        ("last sync", _when(status.last_sync_at)),
        ("last success", _when(status.last_success_at)),
        ("next poll", _when(status.next_poll_at) if state == SyncState.ENABLED else "-"),
        ("syncs", str(status.sync_generation)),
        ("items in last sync", str(status.last_pass_items)),
        ("pending", str(status.pending_items)),
        ("items listed", str(status.counters.items_listed)),
        ("errors", str(status.counters.errors)),
    ]
    if status.last_error_code:
        facts.append(("last error", f"{status.last_error_code}: {status.last_error or ''}"))
    return facts


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def show_mailbox(
    config: MailboxConfig, status: MailboxStatus | None, errors: list[SyncError]
) -> RenderableType:
    """One screen about one mailbox: its facts, then its last errors."""
    facts = Table(show_header=False, box=None, title=f"mailbox {config.mailbox_id}")
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    for label, value in mailbox_facts(config, status):
        facts.add_row(label, escape(value))
    if not errors:
        return Group(facts, Text("no errors on sync.errors"))
    recent = Table(header_style="bold", title="last errors")
    for column in ("at", "severity", "code", "message"):
        recent.add_column(column, overflow="fold")
    for error in errors:
        severity = f"{error.severity.value}{' (alert)' if error.alert else ''}"
        recent.add_row(
            f"{error.occurred_at:%Y-%m-%d %H:%M:%S}",
            severity,
            error.code,
            escape(error.message),
        )
    return Group(facts, recent)
