"""Every metric tidings exports, with its meaning and deliberate buckets.

Labels stay low-cardinality (protocol, table, reason, ...); per-mailbox detail
lives on the mailbox.status topic and in ClickHouse, not in Prometheus series.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Poll latency ranges from a local Maildir scan (ms) to a slow IMAP server (tens of s).
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Kafka acks and ClickHouse inserts: a few ms when healthy, seconds when struggling.
IO_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Mailbox-to-decision latency: the product promise is "within seconds".
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
# Delays the poll scheduler chooses: a push (0) to the idle ceiling (6 h by default).
DELAY_BUCKETS = (0, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 21600, 43200)

# --- connectors -------------------------------------------------------------
CONNECTOR_POLL_SECONDS = Histogram(
    "tidings_connector_poll_seconds",
    "Time to list one mailbox folder and read its new items.",
    ["protocol"],
    buckets=POLL_BUCKETS,
)
CONNECTOR_EVENTS = Counter(
    "tidings_connector_events_total",
    "Change events emitted to mail.changes and acknowledged by Kafka.",
    ["protocol", "change"],
)
CONNECTOR_ERRORS = Counter(
    "tidings_connector_errors_total",
    "Errors a connector met, by code and severity (each is also a sync.errors event).",
    ["protocol", "code", "severity"],
)
CONNECTOR_ACK_SECONDS = Histogram(
    "tidings_connector_ack_seconds",
    "Time from sending a batch of change events to Kafka acknowledging all of them.",
    buckets=IO_BUCKETS,
)
CONNECTOR_MAILBOXES_OWNED = Gauge(
    "tidings_connector_mailboxes_owned",
    "Mailboxes this connector worker owns through its consumer-group assignment.",
)
CONNECTOR_ITEMS_PENDING = Gauge(
    "tidings_connector_items_pending",
    "Items listed by the last polls that are not yet emitted (backlog), summed over mailboxes.",
)
CONNECTOR_CONNECTIONS = Gauge(
    "tidings_connector_connections",
    "Mail-server connections held now, per email server profile (capped by max_connections).",
    ["profile"],
)
CONNECTOR_RETRIES = Counter(
    "tidings_connector_retries_total",
    "Reconnects and mailbox retries after transient failures.",
    ["protocol", "kind"],
)
CONNECTOR_MAILBOXES_DISABLED = Counter(
    "tidings_connector_mailboxes_disabled_total",
    "Mailboxes a connector disabled on a permanent error (each also an alert on sync.errors).",
    ["protocol", "code"],
)
CONNECTOR_SYNC_REQUESTS = Counter(
    "tidings_connector_sync_requests_total",
    "Manual sync requests (mail.track, kind sync): woken (polled at once) or refused.",
    ["outcome"],
)
CONNECTOR_IMAP_COMMANDS = Counter(
    "tidings_connector_imap_commands_total",
    "IMAP commands sent, by command name (the cost a poll puts on the server).",
    ["command"],
)
CONNECTOR_PUSH_WAKEUPS = Counter(
    "tidings_connector_push_wakeups_total",
    "Times a server push (IMAP IDLE, EWS streaming, Graph notification) woke a mailbox "
    "before its poll was due.",
    ["protocol"],
)
CONNECTOR_PUSH_FAILURES = Counter(
    "tidings_connector_push_failures_total",
    "Times a push channel (EWS streaming, Graph subscription) failed and its mailbox "
    "fell back to polling until the next attempt.",
    ["protocol"],
)
CONNECTOR_PUSH_NOTIFICATIONS = Counter(
    "tidings_connector_push_notifications_total",
    "Graph notifications received by the webhook, by verdict (accepted, "
    "bad_client_state, unknown_subscription, validation; an accepted lifecycle "
    "notification by its event: reauthorizationRequired, subscriptionRemoved, missed, "
    "lifecycle_unknown).",
    ["verdict"],
)
CONNECTOR_PUSH_SUBSCRIPTIONS = Counter(
    "tidings_connector_push_subscriptions_total",
    "Push subscriptions made, by protocol and action (created, renewed, reauthorized, deleted).",
    ["protocol", "action"],
)
CONNECTOR_CLAIM_CHECKS = Counter(
    "tidings_connector_claim_checks_total",
    "Messages too large for an event, stored in the claim-check blob store instead.",
    ["protocol"],
)
CONNECTOR_HTTP_REQUESTS = Counter(
    "tidings_connector_http_requests_total",
    "HTTP requests to a mail-server API (Microsoft Graph), by kind (delta, batch, ...).",
    ["protocol", "kind"],
)
CONNECTOR_THROTTLED = Counter(
    "tidings_connector_throttled_total",
    "Server throttling answers (HTTP 429, 503) a connector waited out before retrying.",
    ["protocol"],
)
CONNECTOR_THROTTLE_WAIT_SECONDS = Counter(
    "tidings_connector_throttle_wait_seconds_total",
    "Seconds connectors waited because the server said so (Retry-After).",
    ["protocol"],
)
CONNECTOR_POLLS = Counter(
    "tidings_connector_polls_total",
    "Polls (sync passes) started, by protocol and why then (active, idle, push, manual, ...).",
    ["protocol", "reason"],
)
CONNECTOR_NEXT_POLL_SECONDS = Histogram(
    "tidings_connector_next_poll_delay_seconds",
    "Delay the poll scheduler chose before a mailbox's next poll, by the reason it gave.",
    ["reason"],
    buckets=DELAY_BUCKETS,
)
CONNECTOR_BACKPRESSURE = Gauge(
    "tidings_connector_backpressure",
    "1 while processor lag over a profile's lag_threshold slows polling down, else 0.",
)
CONNECTOR_PROCESSOR_LAG = Gauge(
    "tidings_connector_processor_lag",
    "mail.changes messages the processors have not committed, as last read (-1: unknown).",
)
CONNECTOR_CONCURRENCY_LIMIT = Gauge(
    "tidings_connector_concurrency_limit",
    "Connections the adaptive limit allows now, per server profile (<= max_connections).",
    ["profile"],
)
CONNECTOR_THROTTLING_ANSWERS = Counter(
    "tidings_connector_throttling_answers_total",
    "Throttling answers (server busy, connection refused, too many connections) per profile.",
    ["profile", "code"],
)

# --- outgoing sender (connectors) ------------------------------------------
OUTGOING_EMAILS = Counter(
    "tidings_outgoing_emails_total",
    "Outgoing emails that reached a final status, by status (sent, failed).",
    ["status"],
)
OUTGOING_ATTEMPTS = Counter(
    "tidings_outgoing_attempts_total",
    "SMTP send attempts, by outcome (accepted, transient, permanent, unknown).",
    ["outcome"],
)
OUTGOING_SEND_SECONDS = Histogram(
    "tidings_outgoing_send_seconds",
    "Time of one SMTP transaction, from connecting to the server's answer to DATA.",
    buckets=POLL_BUCKETS,
)
OUTGOING_IN_FLIGHT = Gauge(
    "tidings_outgoing_in_flight",
    "Outgoing emails read but not yet sent or failed (being sent or waiting for a retry).",
)
OUTGOING_SENT_COPIES = Counter(
    "tidings_outgoing_sent_copies_total",
    "Copies of sent email for the Sent folder, by result (appended, present, failed).",
    ["result"],
)

# --- processors -------------------------------------------------------------
PROCESSOR_DECISIONS = Counter(
    "tidings_processor_decisions_total",
    "Promotion decisions emitted, by status and reason code (re-decisions included).",
    ["status", "reason"],
)
PROCESSOR_CORRELATIONS = Counter(
    "tidings_processor_correlations_total",
    "Activities linked to earlier ones, by correlation method.",
    ["method"],
)
PROCESSOR_REDECISIONS = Counter(
    "tidings_processor_redecisions_total",
    "Held items decided again because mail they waited for became tracked.",
)
PROCESSOR_HELD_ITEMS = Gauge(
    "tidings_processor_held_items",
    "Items held for late correlation on this worker's partitions.",
)
PROCESSOR_LATENCY_SECONDS = Histogram(
    "tidings_processor_latency_seconds",
    "Time from a connector observing an item to its promotion decision.",
    buckets=E2E_BUCKETS,
)
PROCESSOR_BATCH_EVENTS = Histogram(
    "tidings_processor_batch_events",
    "Events a processor agent took in one batch (processors.batch_max_events at most), by agent.",
    ["agent"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
PROCESSOR_PARSE_FAILURES = Counter(
    "tidings_processor_parse_failures_total",
    "Items whose MIME could not be parsed into an email (each is a sync.errors event).",
    ["code"],
)

# --- sinks ------------------------------------------------------------------
SINK_ROWS = Counter(
    "tidings_sink_rows_inserted_total",
    "Rows inserted into ClickHouse and confirmed, by table.",
    ["table"],
)
SINK_INSERT_SECONDS = Histogram(
    "tidings_sink_insert_seconds",
    "Time of one confirmed ClickHouse insert, by table.",
    ["table"],
    buckets=IO_BUCKETS,
)
SINK_INSERT_FAILURES = Counter(
    "tidings_sink_insert_failures_total",
    "ClickHouse inserts that failed or timed out (retried; partitions paused meanwhile).",
    ["table"],
)
SINK_BUFFERED_ROWS = Gauge(
    "tidings_sink_buffered_rows",
    "Rows consumed but not yet confirmed by ClickHouse.",
)
SINK_PAUSED = Gauge(
    "tidings_sink_paused",
    "1 while the sink has paused its partitions (backpressure from ClickHouse), else 0.",
)

# --- CRM → Exchange act writer (connectors) ---------------------------------
ACT_WRITER_RETRIES = Counter(
    "tidings_act_writer_retries_total",
    "Parked CRM changes of the act writer (act.retry), by outcome: parked (after the "
    "immediate attempts), retried (a later attempt made), written (a retry landed), "
    "superseded (a newer CRM change replaced it), failed (a permanent error), gave_up "
    "(past give_up_after_s), dropped (the mailbox no longer takes the record).",
    ["outcome"],
)
ACT_WRITER_PARKED = Gauge(
    "tidings_act_writer_parked",
    "CRM changes parked on act.retry in the partitions this writer owns.",
)

# --- every consumer ---------------------------------------------------------
DLQ_MESSAGES = Counter(
    "tidings_dlq_messages_total",
    "Messages sent to the dead-letter topic, by source topic and consumer.",
    ["topic", "consumer"],
)

# --- fleet health (compose/prometheus/alerts.yml alerts on these) -----------
CONNECTOR_MAILBOXES = Gauge(
    "tidings_connector_mailboxes",
    "Owned mailboxes by the state of their last published status (enabled, disabled, ...).",
    ["state"],
)
CONNECTOR_POLL_OVERDUE = Gauge(
    "tidings_connector_poll_overdue_mailboxes",
    "Owned enabled mailboxes whose next poll is more than a grace period past due (stuck).",
)
CONSUMER_LAG = Gauge(
    "tidings_consumer_lag",
    "Messages on a consumer group's input topics it has not committed yet (sinks report it).",
    ["group"],
)
