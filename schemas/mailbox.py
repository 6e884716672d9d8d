"""Mailbox configuration, status and connector cursors (topics mailbox.config,
mailbox.status, connector.cursors)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum

import msgspec

from schemas.act_sync import ActSyncSettings
from schemas.base import Record, RecordRef
from schemas.secret import SecretRef


class Protocol(StrEnum):
    """How tidings reaches a mailbox."""

    MAILDIR = "maildir"
    IMAP = "imap"
    POP3 = "pop3"
    EWS = "ews"
    GRAPH = "graph"
    SMTP = "smtp"  # outgoing only: a profile an `OutgoingSettings` names


class IncomingFilter(StrEnum):
    """Which incoming email of a mailbox becomes a CRM activity (Dynamics' options)."""

    ALL = "all"
    RESPONSES = "responses"  # email in response to tracked email (the default)
    CRM_RECORDS = "crm-records"  # from contacts, accounts and leads
    EMAIL_ENABLED = "email-enabled"  # from any email-enabled record
    NONE = "none"


class AutoCreate(StrEnum):
    """What tidings creates for the unknown sender of email it tracks (Dynamics'
    "automatically create records" option): nothing, a contact or a lead."""

    NONE = "none"
    CONTACT = "contact"
    LEAD = "lead"


class FolderRole(StrEnum):
    """What a folder holds, which decides the direction of its email."""

    INBOX = "inbox"
    SENT = "sent"
    OTHER = "other"


class MaildirSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where a Maildir mailbox lives and which of its folders to read.

    `folders` names Maildir++ folders: "INBOX" is the Maildir root, any other
    name N is the sub-directory ".N". `sent_folders` lists which of them hold
    sent mail.
    """

    path: str
    folders: list[str] = msgspec.field(default_factory=lambda: ["INBOX", "Sent"])
    sent_folders: list[str] = msgspec.field(
        default_factory=lambda: ["Sent", "Sent Items", "Sent Messages"]
    )


class TransportSecurity(StrEnum):
    """How a connection to a mail server is protected."""

    TLS = "tls"  # TLS from the first byte (IMAPS 993, POP3S 995)
    STARTTLS = "starttls"  # plaintext greeting, then STARTTLS / STLS before login
    PLAIN = "plain"  # no encryption: refused unless the profile sets allow_plaintext


class AuthMethod(StrEnum):
    """How a connector logs in."""

    # IMAP LOGIN (AUTHENTICATE PLAIN where the server disables LOGIN) / POP3 USER+PASS
    PASSWORD = "password"
    PLAIN = "plain"  # SASL PLAIN (IMAP AUTHENTICATE PLAIN) with the mailbox's credentials
    XOAUTH2 = "xoauth2"  # SASL XOAUTH2 with a bearer token from a token provider


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Transient failures: reconnect quickly a few times, then retry the mailbox on a
    slow clock, then give up (Dynamics: 10 times, 5 minutes apart, then permanent).

    Reconnect delays grow exponentially from `reconnect_base_s` up to
    `reconnect_max_s`, each with full jitter.
    """

    max_retries: int = 10
    retry_interval_s: float = 300.0
    reconnect_attempts: int = 3
    reconnect_base_s: float = 1.0
    reconnect_max_s: float = 30.0


class PollingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How often tidings polls the mailboxes of one server profile, and how hard it
    may push the server (connectors/schedule.py applies it; docs/polling.md explains).

    A mailbox is *active* while its last poll that found items is less than
    `active_window_s` old: it is polled `min_interval_s` after a poll that found
    items, each empty poll multiplies the delay by `active_backoff`, up to
    `max_active_interval_s`. After that it is *idle*: it waits `backoff_factor - 1`
    times as long as it has been quiet (so successive delays grow by about
    `backoff_factor`), from `max_active_interval_s` up to `idle_max_s` (6 h). A
    server push (IMAP IDLE) or `tidings mailbox sync ID` polls at once whatever
    the schedule says. Every delay is spread by +-`jitter` (a fraction) so a
    fleet does not poll in lockstep, and is at least the mailbox's poll time
    divided by `max_busy_fraction` (a slow server is polled less often).

    A throttling answer (server busy, connection refused, too many connections)
    waits `throttle_delay_s`, doubling per throttled poll in a row, and halves the
    profile's connection limit (never below `concurrency_floor`); after
    `recovery_streak` healthy polls in a row the limit grows by `recovery_step`,
    never above `max_connections` (AIMD).

    When the processors' consumer lag on mail.changes passes `lag_threshold`
    messages, scheduled delays are multiplied by `lag_slowdown` (backpressure,
    capped at `idle_max_s`; a push still polls at once).
    """

    min_interval_s: float = 30.0
    max_active_interval_s: float = 120.0
    active_window_s: float = 7200.0
    active_backoff: float = 2.0
    backoff_factor: float = 2.0
    idle_max_s: float = 6 * 3600.0
    jitter: float = 0.1
    max_busy_fraction: float = 0.1
    throttle_delay_s: float = 60.0
    lag_threshold: int = 10_000
    lag_slowdown: float = 4.0
    concurrency_floor: int = 1
    recovery_streak: int = 20
    recovery_step: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.min_interval_s <= self.max_active_interval_s <= self.idle_max_s:
            raise ValueError(
                "polling needs 0 < min_interval_s <= max_active_interval_s <= idle_max_s"
            )
        if self.active_backoff < 1 or self.backoff_factor < 1 or self.lag_slowdown < 1:
            raise ValueError("polling active_backoff, backoff_factor and lag_slowdown must be >= 1")
        if not 0 <= self.jitter < 1 or not 0 < self.max_busy_fraction <= 1:
            raise ValueError("polling needs 0 <= jitter < 1 and 0 < max_busy_fraction <= 1")
        if self.active_window_s < 0 or self.throttle_delay_s <= 0 or self.lag_threshold < 1:
            raise ValueError(
                "polling needs active_window_s >= 0, throttle_delay_s > 0, lag_threshold >= 1"
            )
        if self.concurrency_floor < 1 or self.recovery_streak < 1 or self.recovery_step < 1:
            raise ValueError(
                "polling concurrency_floor, recovery_streak and recovery_step must be >= 1"
            )

    def fixed(self, interval_s: float) -> PollingSettings:
        """These settings polling every `interval_s` whatever the mailbox does or how
        long its polls take (Maildir, or an operator's fixed `server_poll_interval_s`);
        throttling, backpressure and jitter still apply."""
        return msgspec.structs.replace(
            self,
            min_interval_s=interval_s,
            max_active_interval_s=interval_s,
            idle_max_s=interval_s,
            max_busy_fraction=1.0,
        )


class ServerProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An email server profile: where the server is, how to reach it safely, and how
    hard tidings may use it. Mailboxes name a profile; its `max_connections` is
    enforced across every mailbox that uses it (per connector worker).

    `port` None takes the protocol's default for the security mode. `ca_file`
    names the certificate authorities to trust instead of the system's;
    `verify_certificates` is on by default and turning it off is logged at
    every connection. `token_provider` ("module:function",
    called with the mailbox's user name, returning a bearer token, sync or async)
    is required for XOAUTH2.

    One IMAP FETCH reads at most `fetch_batch` messages and, reckoned from
    their size classes, at most `fetch_bytes`; a message over 128 KiB is read
    alone, and one over `max_message_bytes` only as headers.

    `polling` says how often its mailboxes are polled and how the connection
    limit adapts to throttling (PollingSettings; `[server_profiles.NAME.polling]`).
    """

    protocol: Protocol
    host: str
    port: int | None = None
    security: TransportSecurity = TransportSecurity.TLS
    allow_plaintext: bool = False
    verify_certificates: bool = True
    ca_file: str | None = None
    auth: AuthMethod = AuthMethod.PASSWORD
    token_provider: str | None = None
    max_connections: int = 10
    timeout_s: float = 30.0
    use_idle: bool = True
    idle_reissue_s: float = 25 * 60.0
    fetch_batch: int = 1000
    fetch_bytes: int = 16 * 1024 * 1024
    max_message_bytes: int = 50 * 1024 * 1024
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    graph: GraphApp | None = None
    polling: PollingSettings = msgspec.field(default_factory=PollingSettings)

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.auth == AuthMethod.XOAUTH2 and not self.token_provider:
            raise ValueError("auth = xoauth2 needs token_provider = 'module:function'")
        if not 1 <= self.fetch_batch <= 1000:
            raise ValueError("fetch_batch must be between 1 and 1000")
        if self.fetch_bytes < 1024 * 1024:
            raise ValueError("fetch_bytes must be at least 1 MiB (1048576)")

    def effective_port(self) -> int:
        """The configured port, or the protocol's well-known one for the security mode."""
        if self.port is not None:
            return self.port
        tls = self.security == TransportSecurity.TLS
        if self.protocol == Protocol.SMTP:
            return 465 if tls else 587 if self.security == TransportSecurity.STARTTLS else 25
        if self.protocol == Protocol.POP3:
            return 995 if tls else 110
        return 993 if tls else 143


class ServerProfileConfig(Record, frozen=True, kw_only=True):
    """An email server profile as published on `server.profiles` (a tombstone removes it).

    Profiles in tidings.toml (`[server_profiles.NAME]`) are the base every process
    starts from; a published profile of the same name replaces the file's.
    """

    name: str
    profile: ServerProfile
    updated_at: datetime | None = None


def merged_profiles(
    base: Mapping[str, ServerProfile], published: Mapping[str, ServerProfile]
) -> dict[str, ServerProfile]:
    """The profiles in force: tidings.toml's (`base`), each replaced by a published one
    of the same name, plus the published ones the file lacks."""
    return {**base, **published}


class Credentials(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who a connector logs in as. The password is a reference, never the value."""

    username: str
    password: SecretRef | None = None


class ImapSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Which IMAP folders to read besides INBOX and Sent.

    Sent is found by its SPECIAL-USE attribute (`\\Sent`), else by one of
    `sent_names`; `folders` adds any other folder by name.
    """

    folders: list[str] = msgspec.field(default_factory=list)
    sent_names: list[str] = msgspec.field(
        default_factory=lambda: ["Sent", "Sent Items", "Sent Messages", "INBOX.Sent"]
    )
    include_sent: bool = True


class Pop3Settings(msgspec.Struct, frozen=True, kw_only=True):
    """POP3 reads one folder, INBOX. Messages stay on the server unless
    `leave_on_server` is turned off (then they are deleted only after Kafka
    acknowledged their events)."""

    leave_on_server: bool = True


class OutgoingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a mailbox sends email the CRM queued on outgoing.mail.

    `server_profile` names a profile with protocol "smtp" (TLS, STARTTLS or,
    on loopback, plaintext, as any profile). `credentials` are required to log
    in; None logs in with the mailbox's own credentials where the server offers
    AUTH, and sends without AUTH where it offers none (or the mailbox has none).
    `save_to_sent` appends a copy of each sent email to the
    mailbox's IMAP Sent folder (`sent_folder`, else the folder the IMAP
    connector reads as Sent); it needs the mailbox to be an IMAP one.
    `token_user_number` is the user-number part of the tracking tokens this
    mailbox's email gets (None: derived from the owner id).
    """

    server_profile: str
    credentials: Credentials | None = None
    save_to_sent: bool = False
    sent_folder: str | None = None
    token_user_number: int | None = None


class GraphAuthFlow(StrEnum):
    """How the Graph connector gets its tokens."""

    APP_ONLY = "app-only"  # client credentials: the app reads every mailbox it was granted
    DELEGATED = "delegated"  # on behalf of the mailbox's user, from a refresh token


class GraphApp(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A Microsoft Entra app registration and where Microsoft Graph is, for every
    mailbox of a Graph server profile.

    App-only (`flow = "app-only"`, the default) needs `client_secret` or
    `certificate` (a PEM private key file whose certificate has
    `certificate_thumbprint`) and the application permission Mail.Read (Mail.Send
    to send). Delegated reads as the mailbox's user with a refresh token the
    mailbox's `GraphSettings.refresh_token` references (`client_secret` optional:
    a public client otherwise). `authority_host` and `graph_url` are overridable
    for national clouds and for tests (both must be https).
    """

    tenant_id: str
    client_id: str
    flow: GraphAuthFlow = GraphAuthFlow.APP_ONLY
    client_secret: SecretRef | None = None
    certificate: SecretRef | None = None
    certificate_thumbprint: str | None = None
    authority_host: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    delegated_scopes: list[str] = msgspec.field(
        default_factory=lambda: ["https://graph.microsoft.com/Mail.ReadWrite"]
    )
    max_concurrent_requests: int = 4
    page_size: int = 100

    def __post_init__(self) -> None:
        if self.flow == GraphAuthFlow.APP_ONLY and not (self.client_secret or self.certificate):
            raise ValueError("graph flow app-only needs client_secret or certificate")
        if self.certificate is not None and not self.certificate_thumbprint:
            raise ValueError("graph certificate needs certificate_thumbprint")
        if not 1 <= self.max_concurrent_requests <= 4:
            raise ValueError("graph max_concurrent_requests must be between 1 and 4")
        if not 1 <= self.page_size <= 1000:
            raise ValueError("graph page_size must be between 1 and 1000")


class GraphSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which mailbox the Graph connector reads and which of its folders.

    `user` is the user id or UPN (None: the mailbox's email address).
    `folders` are well-known folder names ("inbox", "sentitems", "archive", ...)
    or top-level folder display names; Sent Items is read unless
    `include_sent` is off. `refresh_token` is for the delegated flow.
    """

    user: str | None = None
    folders: list[str] = msgspec.field(default_factory=list)
    include_sent: bool = True
    refresh_token: SecretRef | None = None


class ExchangeVersion(StrEnum):
    """Which Exchange an EWS mailbox lives on (decides the EWS schema version and
    the default EWSMaxConcurrency)."""

    EXCHANGE_2010 = "2010"
    EXCHANGE_2013 = "2013"
    EXCHANGE_2016 = "2016"
    EXCHANGE_2019 = "2019"
    SUBSCRIPTION = "se"  # Exchange Server Subscription Edition
    ONLINE = "online"  # Exchange Online (Microsoft 365) through EWS


def ews_max_concurrency(version: ExchangeVersion) -> int:
    """Exchange's documented default EWSMaxConcurrency (concurrent EWS requests per
    user): 10 on Exchange 2010, 27 on Exchange 2013 and later and on Exchange Online."""
    return 10 if version == ExchangeVersion.EXCHANGE_2010 else 27


class EwsAccess(StrEnum):
    """How the logged-on account opens the mailbox."""

    DELEGATE = "delegate"  # the mailbox's own user, or one granted delegate access
    IMPERSONATION = "impersonation"  # a service account with ApplicationImpersonation


class EwsAuth(StrEnum):
    """HTTP authentication for EWS with a password (the profile's auth = password);
    a profile with auth = xoauth2 sends OAuth bearer tokens instead."""

    NTLM = "ntlm"
    BASIC = "basic"


class EwsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the EWS connector reaches an Exchange mailbox and which folders it reads.

    `server_url` is the EWS endpoint (None: https://HOST[:PORT]/EWS/Exchange.asmx
    from the server profile; http only where the profile allows plaintext);
    `autodiscover` finds it from the mailbox address instead (exchangelib's SOAP
    Autodiscover: https://DOMAIN/autodiscover/autodiscover.svc, then
    https://autodiscover.DOMAIN/..., the http redirect and the DNS SRV record), asking
    `autodiscover_url` first when set (a known Autodiscover service, e.g.
    https://mail.example.com/autodiscover/autodiscover.svc). `access` is
    delegate (the credentials' user owns the mailbox or is its delegate) or
    impersonation (a service account). Inbox and, unless `include_sent` is off,
    Sent Items are read, plus `folders` (display names below the top of the
    information store; "Parent/Child" for deeper ones).

    At most `max_concurrency` EWS requests run at once for the mailbox (None: the
    version's EWSMaxConcurrency, 10 on 2010 and 27 later; never above it nor the
    profile's max_connections). SyncFolderItems returns at most `sync_page`
    changes per call (1-512) and GetItem reads `get_item_batch` items per call.

    `streaming` listens for EWS streaming notifications on the synced folders
    between passes (Exchange 2010 SP1 and later): a change wakes the mailbox at
    once; when the server refuses or the stream fails, the mailbox polls and
    tries streaming again after `streaming_retry_s`.
    """

    server_url: str | None = None
    autodiscover: bool = False
    autodiscover_url: str | None = None
    access: EwsAccess = EwsAccess.DELEGATE
    auth: EwsAuth = EwsAuth.NTLM
    version: ExchangeVersion = ExchangeVersion.EXCHANGE_2016
    folders: list[str] = msgspec.field(default_factory=list)
    include_sent: bool = True
    max_concurrency: int | None = None
    sync_page: int = 512
    get_item_batch: int = 100
    streaming: bool = True
    streaming_retry_s: float = 600.0

    def __post_init__(self) -> None:
        if not 1 <= self.sync_page <= 512:
            raise ValueError("ews sync_page must be between 1 and 512")
        if not 1 <= self.get_item_batch <= 500:
            raise ValueError("ews get_item_batch must be between 1 and 500")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("ews max_concurrency must be at least 1")
        if self.autodiscover and self.server_url is not None:
            raise ValueError(
                "ews: set server_url (an explicit EWS URL) or autodiscover = true, not both"
            )
        if self.autodiscover_url is not None and not self.autodiscover:
            raise ValueError("ews autodiscover_url is set but autodiscover is off")

    def concurrency(self, max_connections: int) -> int:
        """Concurrent EWS requests allowed: the setting (or the version's
        EWSMaxConcurrency), never above the version's limit nor `max_connections`."""
        limit = ews_max_concurrency(self.version)
        wanted = self.max_concurrency or limit
        return max(1, min(wanted, limit, max_connections))


CALENDAR_WINDOW_MAX_DAYS = 1825
"""The most days the Graph calendar window reaches back or ahead (five years): every
renewal reads the whole window again, so it is kept bounded."""


class ActSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Appointments, contacts and tasks of an Exchange (EWS) or Microsoft 365 (Graph)
    mailbox (docs/act.md).

    When `enabled`, the connector also reads the mailbox's calendar, contacts and
    tasks (each switchable) and the processors turn the items that carry
    `tracked_category` (or were tracked by hand) into CRM records on crm.act.
    Folder names None mean the well-known default folder (EWS Calendar / Contacts /
    Tasks; Graph the default calendar, the default contact folder and the default
    To Do list); otherwise a top-level folder's display name (EWS) or the calendar /
    contact folder / To Do list's display name (Graph).
    """

    enabled: bool = True
    tracked_category: str = "Tracked to CRM"
    appointments: bool = True
    contacts: bool = True
    tasks: bool = True
    calendar_folder: str | None = None
    contacts_folder: str | None = None
    tasks_folder: str | None = None
    crm_to_exchange: ActSyncSettings = msgspec.field(default_factory=ActSyncSettings)
    """CRM records written to the mailbox, and the two-way rules once linked
    (schemas/act_sync.py)."""
    calendar_past_days: int = 90
    """Graph only: days before today the calendar window starts (Graph v1.0 tracks
    calendar changes only through calendarView delta over a fixed window; older
    meetings are not read). 0..CALENDAR_WINDOW_MAX_DAYS."""
    calendar_future_days: int = 365
    """Graph only: days after today the calendar window ends (later occurrences are
    not read). 1..CALENDAR_WINDOW_MAX_DAYS."""

    def __post_init__(self) -> None:
        if not self.tracked_category.strip():
            raise ValueError("act tracked_category must not be empty")
        if not 0 <= self.calendar_past_days <= CALENDAR_WINDOW_MAX_DAYS:
            raise ValueError(
                f"act calendar_past_days must be 0..{CALENDAR_WINDOW_MAX_DAYS}, "
                f"not {self.calendar_past_days}"
            )
        if not 1 <= self.calendar_future_days <= CALENDAR_WINDOW_MAX_DAYS:
            raise ValueError(
                f"act calendar_future_days must be 1..{CALENDAR_WINDOW_MAX_DAYS}, "
                f"not {self.calendar_future_days}"
            )


class MailboxConfig(Record, frozen=True, kw_only=True):
    """One mailbox: its owner (a user or a queue), where it lives and how its mail is filtered.

    `auto_create` makes tidings create a contact or lead (published on
    crm.records, marked `created_by_tidings`) for the sender of incoming email
    it tracks when that address matches no CRM record.

    A `forward_mailbox` receives the messages users' server rules forward to it
    as attachments: each attached message is decided as if the mailbox of the
    user who forwarded it (the wrapper's From address) had received it.

    States (Dynamics' server-side sync): not `approved` is pending approval;
    approved and not `enabled` is approved, or tested once `test` passed;
    approved and enabled is enabled: connectors read only approved and enabled
    mailboxes. `disabled` says why a mailbox is not enabled (a person, or a
    permanent error the connector met, which also clears `enabled`).

    Keyed by `mailbox_id` on mailbox.config; a tombstone removes the mailbox.
    """

    mailbox_id: str
    owner: RecordRef
    email_address: str
    protocol: Protocol
    incoming_filter: IncomingFilter = IncomingFilter.RESPONSES
    auto_create: AutoCreate = AutoCreate.NONE
    forward_mailbox: bool = False
    approved: bool = True
    enabled: bool = True
    server_profile: str | None = None
    credentials: Credentials | None = None
    maildir: MaildirSettings | None = None
    imap: ImapSettings | None = None
    pop3: Pop3Settings | None = None
    graph: GraphSettings | None = None
    ews: EwsSettings | None = None
    outgoing: OutgoingSettings | None = None
    act: ActSettings | None = None  # appointments, contacts, tasks (EWS, Graph)
    process_email_from: datetime | None = None
    test: MailboxTest | None = None
    disabled: MailboxDisabled | None = None
    updated_at: datetime | None = None

    def folder_role(self, folder: str) -> FolderRole:
        """The role of `folder` in this mailbox."""
        if folder.upper() == "INBOX":
            return FolderRole.INBOX
        sent = self.maildir.sent_folders if self.maildir else ["Sent", "Sent Items"]
        if folder.casefold() in {name.casefold() for name in sent}:
            return FolderRole.SENT
        return FolderRole.OTHER


class SyncState(StrEnum):
    """Where a mailbox stands (Dynamics: pending approval → approved → tested → enabled)."""

    PENDING_APPROVAL = "pending-approval"
    APPROVED = "approved"
    TESTED = "tested"
    ENABLED = "enabled"
    DISABLED = "disabled"


class RunStatus(StrEnum):
    """Outcome of the last incoming / outgoing / appointments-contacts-tasks run."""

    NOT_RUN = "not-run"
    SUCCESS = "success"
    FAILURE = "failure"


class StepResult(msgspec.Struct, frozen=True, kw_only=True):
    """One part of a mailbox test (incoming, outgoing or appointments-contacts-tasks):
    its outcome and one line saying what was checked or why it failed (never a secret)."""

    status: RunStatus = RunStatus.NOT_RUN
    reason: str = ""


class MailboxTest(msgspec.Struct, frozen=True, kw_only=True):
    """The result of the last `tidings mailbox test` (Dynamics' "Test & Enable").

    `incoming`: connect, authenticate, open the folders read. `outgoing`: send a
    test message to the mailbox's own address through its SMTP profile (not run
    without outgoing settings). `act`: appointments, contacts and tasks (not
    run: no protocol tidings reads has them yet). The test passes when nothing
    failed and incoming succeeded.
    """

    tested_at: datetime
    incoming: StepResult = msgspec.field(default_factory=StepResult)
    outgoing: StepResult = msgspec.field(default_factory=StepResult)
    act: StepResult = msgspec.field(default_factory=StepResult)

    @property
    def passed(self) -> bool:
        """True when incoming succeeded and no step failed."""
        steps = (self.incoming, self.outgoing, self.act)
        return self.incoming.status == RunStatus.SUCCESS and all(
            step.status != RunStatus.FAILURE for step in steps
        )

    @property
    def reason(self) -> str:
        """One line: the first failure's reason, else what passed."""
        for name, step in (("incoming", self.incoming), ("outgoing", self.outgoing)):
            if step.status == RunStatus.FAILURE:
                return f"{name}: {step.reason}"
        return "; ".join(
            f"{name}: {step.reason}"
            for name, step in (("incoming", self.incoming), ("outgoing", self.outgoing))
            if step.reason
        )


class MailboxDisabled(msgspec.Struct, frozen=True, kw_only=True):
    """Why a mailbox is disabled: by a person (`tidings mailbox disable`) or by the
    connector that met a permanent error (`by` names the worker, `code` the error).
    `tidings mailbox enable` clears it."""

    code: str
    reason: str
    by: str = ""
    at: datetime


class MailboxCounters(msgspec.Struct, frozen=True, kw_only=True):
    """Running totals a connector keeps for a mailbox since it first synced it."""

    items_listed: int = 0
    created_events: int = 0
    updated_events: int = 0
    deleted_events: int = 0
    errors: int = 0


class MailboxStatus(Record, frozen=True, kw_only=True):
    """The latest known state of a mailbox, as the connector that owns it sees it.

    `sync_generation` counts completed sync passes; `pending_items` is what the
    last pass saw but has not yet emitted; `last_pass_items` the change events
    (created, updated, deleted) the last pass emitted (so far, while it runs).
    Keyed by `mailbox_id` on mailbox.status.
    """

    mailbox_id: str
    state: SyncState
    incoming_status: RunStatus = RunStatus.NOT_RUN
    outgoing_status: RunStatus = RunStatus.NOT_RUN
    act_status: RunStatus = RunStatus.NOT_RUN
    last_sync_started_at: datetime | None = None
    last_sync_at: datetime | None = None
    last_success_at: datetime | None = None
    next_poll_at: datetime | None = None
    sync_generation: int = 0
    pending_items: int = 0
    last_pass_items: int = 0
    counters: MailboxCounters = msgspec.field(default_factory=MailboxCounters)
    last_error_code: str | None = None
    last_error: str | None = None
    worker: str | None = None
    updated_at: datetime


class MaildirPosition(msgspec.Struct, frozen=True, kw_only=True, tag="maildir"):
    """What a Maildir folder held at the last acknowledged sync.

    `names_z` is the zlib-compressed, newline-joined, sorted list of the unique
    names (the part of a Maildir file name before ':'); `count` is its length.
    """

    names_z: bytes
    count: int


class ImapFolderPosition(msgspec.Struct, frozen=True, kw_only=True, tag="imap"):
    """What an IMAP folder held at the last acknowledged sync.

    `uids` is the set of UIDs emitted (and not since expunged) in IMAP sequence-set
    form ("1:500,502"), valid for `uidvalidity`; `count` its size; `uidnext`
    the server's UIDNEXT when they were read (every UID below it is handled);
    `highestmodseq` the CONDSTORE mod-sequence flag changes were read up to (0
    without CONDSTORE); `exists` how many messages the folder held then.
    """

    uidvalidity: int
    uidnext: int
    highestmodseq: int = 0
    uids: str = ""
    count: int = 0
    exists: int = 0


class Pop3Position(msgspec.Struct, frozen=True, kw_only=True, tag="pop3"):
    """The UIDLs of a POP3 mailbox already emitted (zlib, newline-joined, sorted)."""

    uidls_z: bytes
    count: int


class GraphFolderPosition(msgspec.Struct, frozen=True, kw_only=True, tag="graph"):
    """Where a Microsoft Graph folder's message delta stands.

    `delta_link` is the `@odata.deltaLink` of the last completed round (None
    while the first round is under way); `next_link` the `@odata.nextLink` to
    resume a round from, when one was interrupted. `known_z` holds the ids
    emitted and not since removed, each with a short hash of its changeKey
    ("id\tckhash" lines, sorted, zlib; see connectors/graph_items.py), `count`
    how many; `folder_id` is the folder the links belong to.
    """

    folder_id: str
    delta_link: str | None = None
    next_link: str | None = None
    known_z: bytes = b""
    count: int = 0


class EwsFolderPosition(msgspec.Struct, frozen=True, kw_only=True, tag="ews"):
    """Where an EWS folder's SyncFolderItems stands.

    `sync_state` is the SyncState of the last acknowledged page (None before the
    first); `folder_id` the EWS folder id it belongs to. `known_z` holds the item
    ids emitted and not since deleted, each with a short hash of its ChangeKey
    ("id\tckhash" lines, sorted, zlib; see connectors/ews_items.py), `count` how
    many: an expired sync state is followed by a full resync compared against it,
    so nothing is emitted twice.
    """

    folder_id: str
    sync_state: str | None = None
    known_z: bytes = b""
    count: int = 0


CursorPosition = (
    MaildirPosition | ImapFolderPosition | Pop3Position | GraphFolderPosition | EwsFolderPosition
)


class Cursor(Record, frozen=True, kw_only=True):
    """A protocol-specific watermark for one folder of one mailbox.

    Written to connector.cursors (key `mailbox_id|folder`) only after Kafka
    acknowledged every event the position covers.
    """

    mailbox_id: str
    folder: str
    position: CursorPosition
    updated_at: datetime


def cursor_key(mailbox_id: str, folder: str) -> str:
    """The connector.cursors key of one folder of one mailbox."""
    return f"{mailbox_id}|{folder}"
