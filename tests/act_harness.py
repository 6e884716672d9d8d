"""What the appointment/contact/task (ACT) and outgoing-mail tests share: the Exchange
simulators as fixtures, their profiles and mailboxes, the act writer and the outgoing
sender running on a ConnectorHarness, publishing to them and polling for results, and
the CRM's changes of the CRM → Exchange stories.

    with ews_simulator(SVC, PASSWORD, {PASSWORD_ENV: PASSWORD}) as sim: ...
    async with ConnectorHarness.up(tmp_path, {"exchange": ews_profile(sim)}) as h:
        await h.add_mailbox(ews_mailbox("mb-alice", ALICE, SVC, PASSWORD_ENV))
        async with act_writer(h, "group-1") as w:
            await send_act(h, crm_meeting(ALICE, "Review", t0))
            await until(lambda: w.stats.created, "the meeting is created")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from typing import Protocol as TypingProtocol

from connectors.act_writer import ActWriter
from connectors.graph_auth import forget_apps
from connectors.outgoing_sender import OutgoingSender
from pipeline.publish import publish
from schemas.act import (
    ActRecord,
    ActType,
    Appointment,
    Attendee,
    Contact,
    OccurrenceChange,
    Recurrence,
    Task,
)
from schemas.act_changes import CrmActChange
from schemas.act_sync import ActWriterSettings
from schemas.base import RecordRef
from schemas.config import OutgoingConfig
from schemas.ids import change_event_id
from schemas.mail import ChangeKind, ItemType, MailItemChanged
from schemas.mailbox import (
    Credentials,
    EwsAccess,
    EwsAuth,
    EwsSettings,
    MailboxConfig,
    Protocol,
    RetryPolicy,
    ServerProfile,
    TransportSecurity,
)
from schemas.outgoing import OutgoingEmail, OutgoingStatus, SendStatus
from schemas.secret import SecretRef
from schemas.topics import CRM_ACT, CRM_ACT_CHANGES, OUTGOING_MAIL, OUTGOING_STATUS
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator
from tests.graph_sim import GraphSimulator

DANA = "dana@fabrikam.example"
"""The CRM meetings' attendee and the CRM contact's address."""
WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
START = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=7)
"""When the CRM meeting starts: a week ahead, on the hour (a future meeting)."""
FIRST = START + timedelta(hours=3)
"""The first occurrence of the CRM's weekly series."""
MOVED = OccurrenceChange(
    original_start=FIRST + timedelta(weeks=1),
    start=FIRST + timedelta(weeks=1, hours=1),
    end=FIRST + timedelta(weeks=1, hours=1, minutes=30),
    subject="Weekly sync (moved)",
)
CANCELLED = OccurrenceChange(original_start=FIRST + timedelta(weeks=3), cancelled=True)
OWNER = RecordRef("user", "alice")
EWS_RETRY = RetryPolicy(max_retries=3, retry_interval_s=1.0, reconnect_base_s=0.2)

S = TypeVar("S", bound="_Service")


class _Service(TypingProtocol):
    async def run(self, stop: asyncio.Event) -> None: ...


# -- the simulators ---------------------------------------------------------------------


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (the secrets profiles reference) for the block."""
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            os.environ.pop(name, None)


@contextlib.contextmanager
def ews_simulator(user: str, password: str, env: dict[str, str]) -> Iterator[EwsSimulator]:
    """The EWS simulator (in its own thread) with one impersonating service account,
    `env` set while it runs."""
    with environ(env), EwsSimulator() as server:
        server.add_user(user, password, impersonator=True)
        yield server


@contextlib.asynccontextmanager
async def graph_simulator(
    root: Path, app: str, secret: str, users: Iterable[str] = (), env: dict[str, str] | None = None
) -> AsyncIterator[GraphSimulator]:
    """The Graph simulator with one confidential app and `users`, `env` set while it
    runs; cached app tokens are forgotten before and after."""
    forget_apps()
    with environ(env or {}):
        async with GraphSimulator.running(root) as server:
            server.add_app(app, secret)
            for upn in users:
                server.add_user(upn)
            yield server
    forget_apps()


def ews_profile(sim: EwsSimulator, retry: RetryPolicy = EWS_RETRY) -> ServerProfile:
    """A plaintext loopback EWS profile for the simulator."""
    return ServerProfile(
        protocol=Protocol.EWS,
        host="127.0.0.1",
        port=sim.port,
        security=TransportSecurity.PLAIN,
        allow_plaintext=True,
        retry=retry,
        timeout_s=10.0,
    )


def _owner(address: str) -> RecordRef:
    return RecordRef("user", address.split("@", maxsplit=1)[0])


def ews_mailbox(
    mailbox_id: str, address: str, username: str, password_env: str, **changes: Any
) -> MailboxConfig:
    """An EWS mailbox on profile "exchange" reached by impersonation (no Sent Items
    reading, no streaming), owned by the address's user; `changes` add settings."""
    settings: dict[str, Any] = {
        "mailbox_id": mailbox_id,
        "owner": _owner(address),
        "email_address": address,
        "protocol": Protocol.EWS,
        "server_profile": "exchange",
        "credentials": Credentials(username=username, password=SecretRef(env=password_env)),
        "ews": EwsSettings(
            auth=EwsAuth.BASIC, access=EwsAccess.IMPERSONATION, include_sent=False, streaming=False
        ),
    }
    return MailboxConfig(**(settings | changes))


def graph_mailbox(mailbox_id: str, address: str, **changes: Any) -> MailboxConfig:
    """A Microsoft 365 mailbox on profile "graph", owned by the address's user."""
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=_owner(address),
        email_address=address,
        protocol=Protocol.GRAPH,
        server_profile="graph",
        **changes,
    )


# -- services on the harness ------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(service: S) -> AsyncIterator[S]:
    """`service.run(stop)` as a task of this loop until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def act_writer(
    h: ConnectorHarness, group: str, settings: ActWriterSettings | None = None
) -> contextlib.AbstractAsyncContextManager[ActWriter]:
    """The act writer of consumer group `group` (its worker name too), running, with
    `settings`' retries, else the default ones with a 0.2 s pause between attempts."""
    return running(
        ActWriter(
            h.config.kafka,
            h.config.topic_prefix,
            h.config.server_profiles,
            group_id=group,
            ack_timeout_s=30,
            worker=group,
            settings=settings,
            retry_pause_s=None if settings else 0.2,
        )
    )


def outgoing_sender(
    h: ConnectorHarness, settings: OutgoingConfig
) -> contextlib.AbstractAsyncContextManager[OutgoingSender]:
    """The outgoing sender with `settings`, running."""
    return running(
        OutgoingSender(
            h.config.kafka,
            h.config.topic_prefix,
            settings,
            h.config.processors.correlation,
            h.config.server_profiles,
            ack_timeout_s=30,
            worker="test-sender",
        )
    )


async def send_act(h: ConnectorHarness, *changes: CrmActChange) -> None:
    """Publish CRM changes on crm.act.changes, keyed by record id."""
    await publish(
        h.config.kafka, h.config.topic_prefix, CRM_ACT_CHANGES, [(c.record_id, c) for c in changes]
    )


async def queue_mail(h: ConnectorHarness, *emails: OutgoingEmail) -> None:
    """Queue emails on outgoing.mail, keyed by activity id."""
    await publish(
        h.config.kafka, h.config.topic_prefix, OUTGOING_MAIL, [(e.activity_id, e) for e in emails]
    )


async def outgoing_statuses(
    h: ConnectorHarness, activity_id: str, final: bool = True
) -> list[OutgoingStatus]:
    """Every status of an activity, once there is one (`final`: once the last is sent
    or failed)."""

    def done(values: list[OutgoingStatus]) -> bool:
        if not final:
            return bool(values)
        return bool(values) and values[-1].status in (SendStatus.SENT, SendStatus.FAILED)

    return await h.wait_for(OUTGOING_STATUS, activity_id, done, timeout_s=90)


async def until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy, and return that; TimeoutError
    after `timeout_s` (`what` names what was awaited)."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = check()
            if found:
                return found
            await asyncio.sleep(0.1)
    raise AssertionError(what)  # pragma: no cover


async def processed(w: ActWriter, step: Callable[[], Awaitable[None]]) -> None:
    """Run `step` and wait until the writer handled one more change."""

    def count() -> int:
        s = w.stats
        return s.created + s.updated + s.deleted + s.unchanged + s.failed

    start = count()
    await step()
    await until(lambda: count() > start, "the writer handled the change")


async def reached_crm(h: ConnectorHarness, record_id: str, **fields: object) -> ActRecord:
    """Wait until crm.act holds a record `record_id` the mailbox side wrote (origin
    "exchange") whose payload has `fields`; that record."""

    def took(record: ActRecord) -> bool:
        payload = record.payload
        return record.origin == "exchange" and all(
            getattr(payload, name, None) == value for name, value in fields.items()
        )

    found = await h.wait_for(CRM_ACT, record_id, lambda v: any(took(r) for r in v))
    return next(r for r in found if took(r))


async def replay_changes_nothing(h: ConnectorHarness, group: str, changes: int) -> None:
    """A new writer group replays crm.act.changes from its start: all `changes` are
    read and none creates, updates or deletes anything."""
    async with act_writer(h, group) as replay:
        await until(lambda: replay.stats.unchanged >= changes, "the replay was read", 45)
        assert replay.stats.created == replay.stats.updated == replay.stats.deleted == 0


# -- the CRM's changes ------------------------------------------------------------------


def crm_change(record_id: str, kind: ActType, at: datetime, payload: Any = None) -> CrmActChange:
    """Alice's CRM record `record_id` as of `at`; without a payload, its deletion."""
    return CrmActChange(
        record_id=record_id,
        record_type=kind,
        owner=OWNER,
        payload=payload,
        deleted=payload is None,
        crm_change_time=at,
    )


def crm_meeting(organizer: str, subject: str, at: datetime, **changes: Any) -> CrmActChange:
    """CRM appointment "appt-1" at START, organized by `organizer`, Dana invited."""
    payload = Appointment(
        ical_uid="crm-meeting-1",
        subject=subject,
        body=changes.pop("body", "Agenda"),
        start=START,
        end=START + timedelta(hours=1),
        location=changes.pop("location", "Room 1"),
        organizer=Attendee(address=organizer, name="Alice"),
        attendees=[Attendee(address=DANA, name="Dana")],
        **changes,
    )
    return crm_change("appt-1", ActType.APPOINTMENT, at, payload)


def crm_series(at: datetime) -> CrmActChange:
    """CRM appointment "series-1": weekly from FIRST, five times, one occurrence MOVED
    and one CANCELLED."""
    payload = Appointment(
        ical_uid="crm-series-1",
        subject="Weekly sync",
        start=FIRST,
        end=FIRST + timedelta(minutes=30),
        recurrence=Recurrence(
            rrule=f"FREQ=WEEKLY;BYDAY={WEEKDAYS[FIRST.weekday()]}",
            start_date=FIRST.date(),
            count=5,
        ),
        exceptions=[MOVED, CANCELLED],
    )
    return crm_change("series-1", ActType.APPOINTMENT, at, payload)


def crm_contact(at: datetime) -> CrmActChange:
    """CRM contact "contact-1": Dana Ng of Fabrikam's sales."""
    contact = Contact(
        given_name="Dana",
        surname="Ng",
        display_name="Dana Ng",
        emails=[DANA],
        company="Fabrikam",
        department="Sales",
    )
    return crm_change("contact-1", ActType.CONTACT, at, contact)


# -- the connector's change events (unit tests) -----------------------------------------


def act_change(
    box: MailboxConfig,
    item_id: str,
    payload: Appointment | Contact | Task | None,
    change: ChangeKind = ChangeKind.CREATED,
    kind: ItemType | None = None,
    version: str = "v1",
    observed_at: datetime = datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
) -> MailItemChanged:
    """The connector's event for an item of `box` (folder "Calendar"); the item type
    follows the payload unless `kind` names it (a delete carries no payload)."""
    if kind is None:
        kinds = {Contact: ItemType.CONTACT, Task: ItemType.TASK}
        kind = kinds.get(type(payload), ItemType.APPOINTMENT)
    return MailItemChanged(
        event_id=change_event_id(box.mailbox_id, "Calendar", item_id, change, version),
        mailbox_id=box.mailbox_id,
        folder="Calendar",
        item_id=item_id,
        change=change,
        item_type=kind,
        version=version,
        observed_at=observed_at,
        act=payload,
    )
