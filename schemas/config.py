"""Typed configuration shared by every part. Loaded by pipeline/ from `tidings.toml`
plus `TIDINGS_*` environment overrides; the parts receive the sections they need.

Secrets are never values here: a `SecretRef` names an environment variable or a
file that holds them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from schemas.act_sync import ActWriterSettings
from schemas.mailbox import ServerProfile
from schemas.secret import SecretRef

__all__ = ["SecretRef", "ServerProfile"]

_TOKEN_PREFIX = re.compile(r"[A-Za-z0-9]{1,20}")


_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")


class KafkaConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The broker. No bootstrap servers means: start the embedded tansu broker.

    `broker` says what answers: "kafka" or "tansu" (None: tansu when embedded,
    else kafka). tansu needs client-side fixes (see pipeline/tansu_compat.py).
    `idempotence` None chooses for you: on for Kafka, off for tansu (it does not
    answer InitProducerId); ids make replays harmless anyway. `compression` is
    the producers' record-batch codec: "zstd" by default (mail compresses well,
    so the broker stores and moves a fraction of the bytes, for less CPU than
    aiokafka's lz4, which it runs at level 9); "none" turns it off.
    """

    bootstrap_servers: list[str] = msgspec.field(default_factory=list)
    broker: str | None = None
    client_id: str = "tidings"
    partitions: int = 4
    replication_factor: int = 1
    idempotence: bool | None = None
    linger_ms: int = 20
    compression: str = "zstd"
    max_batch_bytes: int = 1024 * 1024
    max_request_bytes: int = 8 * 1024 * 1024
    request_timeout_ms: int = 30_000
    fetch_max_wait_ms: int = 500
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretRef | None = None

    def __post_init__(self) -> None:
        if self.compression not in _COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {', '.join(_COMPRESSIONS)}, not {self.compression!r}"
            )

    @property
    def embedded(self) -> bool:
        """True when tidings runs its own broker."""
        return not self.bootstrap_servers

    @property
    def is_tansu(self) -> bool:
        """True when the broker is tansu (configured, or embedded by default)."""
        return self.broker == "tansu" if self.broker else self.embedded

    def common_options(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client takes (bootstrap, security)."""
        options: dict[str, Any] = {
            "bootstrap_servers": ",".join(self.bootstrap_servers),
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                options["sasl_plain_password"] = self.sasl_password.resolve()
        return options

    def producer_options(self, linger_ms: int | None = None) -> dict[str, Any]:
        """Keyword arguments for an aiokafka producer: acks=all, batching, idempotence.

        `linger_ms` overrides the configured linger for producers that wait for
        each batch's acknowledgement anyway (connectors): lingering would only
        add latency there, since a batch sent in one go is one request already.
        """
        idempotent = self.idempotence if self.idempotence is not None else not self.is_tansu
        return {
            **self.common_options(),
            "acks": "all",
            "enable_idempotence": idempotent,
            "linger_ms": self.linger_ms if linger_ms is None else linger_ms,
            "compression_type": None if self.compression == "none" else self.compression,
            "max_batch_size": self.max_batch_bytes,
            "max_request_size": self.max_request_bytes,
        }

    def consumer_options(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka consumer (manual commits, read from the start).

        fetch_max_wait_ms stays at 500 by default: tansu on object storage
        returns nothing for large batches when the wait is much shorter.
        """
        return {
            **self.common_options(),
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "max_partition_fetch_bytes": self.max_request_bytes,
            "fetch_max_bytes": 4 * self.max_request_bytes,
        }


class EmbeddedConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The embedded broker: tansu storing through localbucket in the data directory.

    Port 0 picks a free loopback port. `storage` "memory" keeps nothing across runs.
    """

    host: str = "127.0.0.1"
    broker_port: int = 0
    bucket_port: int = 0
    storage: str = "s3"
    start_timeout_s: float = 30.0


class ClickHouseConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The analytics store. No DSN means embedded chDB in `<data_dir>/clickhouse`.

    A production DSN looks like `clickhouse://user@host:8123/tidings`; its
    password comes from `password`, a secret reference.
    """

    dsn: str | None = None
    database: str = "tidings"
    password: SecretRef | None = None
    insert_timeout_s: float = 30.0
    query_timeout_s: float = 30.0


class InternalEmailPolicy(StrEnum):
    """Email between two CRM users: tracked once, once per direction, or not at all."""

    ONE = "one"
    TWO = "two"
    REJECT = "reject"


class SmartMatchingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Smart matching's rule (used when `CorrelationConfig.smart_matching` is on).

    The subject loses what `subject_filter` matches at its start ("RE:", "FW: AW:"),
    is case-folded, and its first `max_hashes` words are hashed; each unique
    address is hashed. A tracked email sent within `window_days` before matches
    when at most `subject_delta` subject hashes differ and at least
    `min_common_addresses` address hashes are shared (Dynamics' defaults).
    """

    subject_filter: str = r"^[\s]*([\w]+\s?:[\s]*)+"
    max_hashes: int = 20
    subject_delta: int = 0
    min_common_addresses: int = 2
    window_days: float = 90.0

    def __post_init__(self) -> None:
        try:
            re.compile(self.subject_filter)
        except re.error as exc:
            raise ValueError(f"smart matching subject_filter is not a regex: {exc}") from None
        if not 1 <= self.max_hashes <= 100:
            raise ValueError("smart matching max_hashes must be between 1 and 100")
        if self.subject_delta < 0 or self.min_common_addresses < 1 or self.window_days <= 0:
            raise ValueError(
                "smart matching needs subject_delta >= 0, min_common_addresses >= 1 "
                "and window_days > 0"
            )


class CorrelationConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Correlation methods (applied in this order) and the tracking token format.

    A token is PREFIX:BBB…UUUCCC — the deployment base number, then user-number
    digits and counter digits, e.g. `CRM:0001001`.
    """

    in_reply_to: bool = True
    tracking_token: bool = True
    conversation_index: bool = True
    smart_matching: bool = False
    token_prefix: str = "CRM"
    earlier_token_prefixes: list[str] = msgspec.field(default_factory=list)
    token_base_number: int = 0
    token_user_digits: int = 3
    token_counter_digits: int = 3
    smart: SmartMatchingConfig = msgspec.field(default_factory=SmartMatchingConfig)

    def __post_init__(self) -> None:
        for prefix in (self.token_prefix, *self.earlier_token_prefixes):
            if not _TOKEN_PREFIX.fullmatch(prefix):
                raise ValueError(
                    f"tracking token prefix {prefix!r} must be 1-20 ASCII letters or digits"
                )
        if self.token_base_number < 0 or min(self.token_user_digits, self.token_counter_digits) < 1:
            raise ValueError("token base number must be >= 0 and digit counts >= 1")


class ProcessingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How processors decide: correlation, internal email, auto-replies, limits.

    Party resolution: the sender resolves to one record (user, queue, contact,
    account, lead, then other types); a recipient lists every record its
    address matches, or none when it matches several and
    `leave_ambiguous_recipients_unresolved` is on.

    `mark_bounces`: a delivery failure report about tracked email is skipped as
    `Bounce` and its decision names that email (correlated_activity_id) instead
    of becoming an activity itself.

    `late_correlation_window_s`: an item whose decision could still improve
    (it referenced mail not yet tracked, or a copy elsewhere may be tracked) is
    re-decided when that mail arrives within this window — so the result does
    not depend on which mailbox was read first.

    State (the faust tables and the activity index) lives on disk under
    `<data_dir>/processors/<worker_id()>`, so a worker restarted with the same
    name resumes with it; each worker on one host needs its own name (or web
    port). `state_cache_mb` is the RocksDB block cache of the activity index;
    each table partition gets an eighth of it.

    An agent takes its input `batch_max_events` at a time, or what arrived
    within `batch_max_wait_ms`, and publishes what a batch produced together
    (one producer batch per topic partition): larger batches cost less CPU per
    event, and a quiet stream waits at most the wait for its batch. A batch's
    publish waits while the producer's request before it is still with the
    broker (aiokafka sends one at a time per broker): on tansu storing in S3,
    batches of 10 ms spent a third of a worker's time so; 50 ms halves it.

    `max_poll_records` bounds the records the consumer hands to the streams per
    poll (Kafka's `max.poll.records`). A stream's queue holds 4,096 events
    (faust's default); its partitions stop being fetched at four fifths of
    that, and what one poll returned still goes in. Unbounded (faust's
    default), a poll of a backlog fills the queue, and every event that then
    waits for room costs its hand-off several tasks (about 65 µs); at most
    800, what one poll returned fits in the last fifth.
    """

    group_id: str = "tidings-processors"
    correlation: CorrelationConfig = msgspec.field(default_factory=CorrelationConfig)
    internal_email: InternalEmailPolicy = InternalEmailPolicy.ONE
    process_only_approved: bool = True
    leave_ambiguous_recipients_unresolved: bool = False
    skip_uncorrelated_auto_replies: bool = True
    mark_bounces: bool = True
    max_description_chars: int = 256 * 1024
    late_correlation_window_s: float = 900.0
    dlq_max_consecutive: int = 100
    dlq_max_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    dlq_ratio_window: Annotated[int, msgspec.Meta(ge=1)] = 200
    dlq_ratio_min_messages: Annotated[int, msgspec.Meta(ge=1)] = 50
    web_port: int = 0
    worker_name: str | None = None
    state_cache_mb: int = 64
    batch_max_events: Annotated[int, msgspec.Meta(ge=1)] = 500
    batch_max_wait_ms: Annotated[int, msgspec.Meta(ge=1)] = 50
    max_poll_records: Annotated[int, msgspec.Meta(ge=1, le=800)] = 500

    def worker_id(self) -> str:
        """The name of this worker's state directory: `worker_name`, else one derived
        from a fixed web port (two workers on one host never share one), else
        "default"."""
        if self.worker_name:
            return self.worker_name
        return f"worker-{self.web_port}" if self.web_port else "default"


class GraphNotificationsConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """Microsoft Graph change notifications (the push path of Graph mailboxes).

    Off by default: Graph delivers notifications only to a public HTTPS URL.
    When `enabled`, the connectors process serves a webhook on `host`:`port`
    (behind a reverse proxy that terminates TLS) and subscribes each Graph
    mailbox's synced folders with `public_url` as the notificationUrl (https,
    or http on loopback for tests). Subscriptions ask for `lifetime_minutes`
    (Graph caps message subscriptions at 10080) and are renewed once
    `renew_fraction` of the lifetime Graph granted has passed. A subscription
    that cannot be made leaves the mailbox polling its delta, tried again after
    `retry_s`. Mailboxes that sync appointments, contacts and tasks subscribe
    those collections too (To Do tasks at most 4230 minutes, Graph's cap).

    With `lifecycle` on (the default) subscriptions carry a
    lifecycleNotificationUrl, `public_url` + "/lifecycle", served by the same
    webhook: reauthorizationRequired, subscriptionRemoved and missed are
    answered (docs/graph.md). Turn it off only when the reverse proxy cannot
    route that path.
    """

    enabled: bool = False
    public_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8443
    lifetime_minutes: Annotated[int, msgspec.Meta(ge=1, le=10080)] = 4230
    renew_fraction: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.75
    retry_s: float = 600.0
    lifecycle: bool = True

    def __post_init__(self) -> None:
        if self.enabled and not self.public_url:
            raise ValueError("connectors.graph_notifications.enabled needs public_url")


class ConnectorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The connector runtime: polling, batching, acknowledgements, message size.

    A message larger than `claim_check_bytes` goes to the claim-check blob store
    and its event carries the reference, the header block and a text preview;
    no event is ever larger than `max_event_bytes` (keep it under the broker's
    message.max.bytes; Kafka's default is 1 MiB).

    Local Maildirs are polled every `poll_interval_s`. Mailboxes on servers are
    polled adaptively by their profile's `polling` settings (docs/polling.md),
    unless `server_poll_interval_s` fixes one interval for all of them.

    Every `lag_interval_s` the connectors read how far the processors' consumer
    group is behind on mail.changes (`processors_group_id`; unset, the
    configuration's processors.group_id)
    (each read bounded by `lag_timeout_s`; a failed read is logged and the lag
    is unknown, which slows nothing); past a profile's `lag_threshold` polling
    slows down.
    """

    group_id: str = "tidings-connectors"
    poll_interval_s: float = 0.25
    server_poll_interval_s: float | None = None
    processors_group_id: str | None = None
    lag_interval_s: float = 15.0
    lag_timeout_s: float = 10.0
    max_batch_items: int = 500
    ack_timeout_s: float = 60.0
    claim_check_bytes: int = 512 * 1024
    max_event_bytes: int = 1_000_000
    preview_chars: int = 2000
    worker_name: str | None = None
    graph_notifications: GraphNotificationsConfig = msgspec.field(
        default_factory=GraphNotificationsConfig
    )
    act_writer: ActWriterSettings = msgspec.field(default_factory=ActWriterSettings)
    """The CRM → Exchange writer's immediate and later retries (schemas/act_sync.py)."""


class SinkConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ClickHouse sink: batch by rows and age per partition, bounded buffering."""

    group_id: str = "tidings-sinks"
    batch_max_rows: int = 5000
    batch_max_age_s: float = 0.2
    max_buffered_rows: int = 100_000
    dlq_max_consecutive: int = 100
    dlq_max_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    dlq_ratio_window: Annotated[int, msgspec.Meta(ge=1)] = 200
    dlq_ratio_min_messages: Annotated[int, msgspec.Meta(ge=1)] = 50


class OutgoingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The outgoing sender (runs in the connectors process): outgoing.mail → SMTP.

    A transient failure (4xx, connection refused or lost, timeout) is retried
    every `retry_interval_s` (±10% jitter) until `max_retries` retries failed
    too; then the email fails with OutgoingRetriesExhausted (Dynamics: 10 times,
    5 minutes apart). At most `max_in_flight` emails are held (waiting for a
    retry or being sent) before the sender pauses its partitions;
    `send_timeout_s` bounds one SMTP transaction.
    """

    enabled: bool = True
    group_id: str = "tidings-outgoing"
    max_retries: int = 10
    retry_interval_s: float = 300.0
    max_in_flight: int = 1000
    send_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.retry_interval_s < 0 or self.max_in_flight < 1:
            raise ValueError(
                "outgoing needs max_retries >= 0, retry_interval_s >= 0 and max_in_flight >= 1"
            )


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The per-process HTTP endpoint (/metrics, /healthz, /status). Port 0 picks a free one."""

    host: str = "127.0.0.1"
    port: int = 0


class BlobStoreConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The claim-check store for messages too large for a topic.

    `url` None means the directory `<data_dir>/blobs`; `file:///path` another
    directory; `s3://bucket/prefix` an S3-compatible store at `endpoint` (None:
    AWS) with keys from `access_key_id` / `secret_access_key` references.
    """

    url: str | None = None
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None


class TidingsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything tidings is configured with; every field has a working default.

    `server_profiles` are the email server profiles mailboxes name
    (`[server_profiles.NAME]` in tidings.toml).
    """

    data_dir: str = ".tidings"
    topic_prefix: str = "tidings."
    # What a role process (`tidings run ROLE`) logs: "info" adds faust's rebalances,
    # assignments and table recovery, the first place to look after a restart.
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    embedded: EmbeddedConfig = msgspec.field(default_factory=EmbeddedConfig)
    clickhouse: ClickHouseConfig = msgspec.field(default_factory=ClickHouseConfig)
    connectors: ConnectorConfig = msgspec.field(default_factory=ConnectorConfig)
    processors: ProcessingConfig = msgspec.field(default_factory=ProcessingConfig)
    sinks: SinkConfig = msgspec.field(default_factory=SinkConfig)
    outgoing: OutgoingConfig = msgspec.field(default_factory=OutgoingConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    blobs: BlobStoreConfig = msgspec.field(default_factory=BlobStoreConfig)
    server_profiles: dict[str, ServerProfile] = msgspec.field(default_factory=dict)

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()

    def clickhouse_dsn(self) -> str:
        """The configured DSN, or the embedded chDB one inside the data directory."""
        return self.clickhouse.dsn or f"chdb://{self.data_path / 'clickhouse'}"

    def blob_url(self) -> str:
        """The claim-check store's URL, or the directory inside the data directory."""
        return self.blobs.url or (self.data_path / "blobs").as_uri()
