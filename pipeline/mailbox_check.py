"""`tidings mailbox test ID` (Dynamics' "Test & Enable"): check a mailbox against its
real servers and say in one line per part what passed or why it failed.

- incoming: connect, secure, authenticate and open every folder the connector
  reads (the same source code the connector runs: its `list_server_items`);
- outgoing: send a test message to the mailbox's own address through its SMTP
  profile (not run when the mailbox has no outgoing settings);
- appointments, contacts and tasks: not run (no protocol tidings reads has them yet).

Nothing here writes to the mailbox except the outgoing test message, and no
message carries a secret (the connectors' error messages never do).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime

import msgspec
from aiokafka import AIOKafkaProducer

from connectors import smtp
from connectors.auth import secret_provider
from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.errors import ConnectorError
from connectors.source import ServerListing
from connectors.sources import SourceKit, open_source
from schemas.base import utc_now
from schemas.blobs import open_blob_store
from schemas.config import TidingsConfig
from schemas.mailbox import (
    MailboxConfig,
    MailboxTest,
    Protocol,
    RunStatus,
    ServerProfile,
    StepResult,
)

TEST_HEADER = "X-Tidings-Test"
"""Header on the outgoing test message, naming the mailbox it tested."""


def success(reason: str) -> StepResult:
    """A step that passed, with what it checked."""
    return StepResult(status=RunStatus.SUCCESS, reason=_one_line(reason))


def failure(reason: str) -> StepResult:
    """A step that failed, with why."""
    return StepResult(status=RunStatus.FAILURE, reason=_one_line(reason))


def not_run(reason: str) -> StepResult:
    """A step that did not apply, with why."""
    return StepResult(status=RunStatus.NOT_RUN, reason=_one_line(reason))


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe_listing(config: MailboxConfig, listing: ServerListing) -> str:
    """What the incoming check opened, for its reason: the folders and their item counts."""
    folders = ", ".join(f"{name} ({len(items)})" for name, items in sorted(listing.items.items()))
    if config.protocol == Protocol.MAILDIR and config.maildir is not None:
        return f"Maildir {config.maildir.path} read: {folders or 'no folders'}"
    user = config.credentials.username if config.credentials else "?"
    return f"logged in as {user} on profile {config.server_profile}; opened {folders}"


def probe_message(config: MailboxConfig, now: datetime) -> tuple[str, bytes]:
    """The outgoing test message to the mailbox's own address: (Message-ID, bytes)."""
    address = config.email_address
    domain = address.rpartition("@")[2] or "localhost"
    message_id = f"tidings-test-{uuid.uuid4().hex[:16]}@{domain}"
    mail = EmailMessage()
    mail["From"] = address
    mail["To"] = address
    mail["Subject"] = f"tidings test message for mailbox {config.mailbox_id}"
    mail["Date"] = format_datetime(now)
    mail["Message-ID"] = f"<{message_id}>"
    mail[TEST_HEADER] = config.mailbox_id
    mail.set_content(
        "tidings sent this message to test that this mailbox can send email "
        "(`tidings mailbox test`). You can delete it.\n"
    )
    return message_id, mail.as_bytes()


async def _step(check: Callable[[], Awaitable[StepResult]], timeout_s: float) -> StepResult:
    """Run one check; turn its failure into a failed step with a one-line reason."""
    try:
        async with asyncio.timeout(timeout_s):
            return await check()
    except ConnectorError as exc:
        return failure(f"{exc.code}: {exc.message}")
    except LookupError as exc:
        return failure(f"Configuration: {exc}")
    except TimeoutError:
        return failure(f"Timeout: no answer within {timeout_s:g}s")
    except OSError as exc:
        return failure(f"ConnectionFailed: {exc.strerror or type(exc).__name__}")


async def check_incoming(
    tidings: TidingsConfig, config: MailboxConfig, profiles: Mapping[str, ServerProfile]
) -> StepResult:
    """Connect, authenticate and open every folder the connector reads."""
    producer = AIOKafkaProducer(**tidings.kafka.producer_options(linger_ms=0))
    await producer.start()
    try:
        kit = SourceKit(
            emitter=Emitter(producer, tidings.topic_prefix, tidings.connectors.ack_timeout_s),
            store=CursorStore(tidings.kafka, tidings.topic_prefix, producer),
            claim_check=ClaimCheck(
                open_blob_store(tidings.blob_url(), tidings.blobs), tidings.connectors
            ),
            settings=tidings.connectors,
            profiles=dict(profiles),
        )
        source = open_source(config, 0, {}, kit)
        try:
            listing = await source.list_server_items()
        finally:
            await source.close()
    finally:
        await producer.stop()
    return success(describe_listing(config, listing))


async def check_outgoing(
    config: MailboxConfig, profiles: Mapping[str, ServerProfile], now: datetime, timeout_s: float
) -> StepResult:
    """Send the test message to the mailbox's own address through its SMTP profile."""
    outgoing = config.outgoing
    if outgoing is None:
        return not_run("no outgoing settings (outgoing.server_profile)")
    profile = profiles.get(outgoing.server_profile)
    if profile is None or profile.protocol != Protocol.SMTP:
        return failure(
            f"Configuration: outgoing profile {outgoing.server_profile!r} is not an smtp "
            "server profile (see `tidings profile list`)"
        )
    credentials = outgoing.credentials or config.credentials
    login = None
    if credentials is not None:
        as_mailbox = msgspec.structs.replace(config, credentials=credentials)
        required = outgoing.credentials is not None
        login = smtp.Login(credentials.username, secret_provider(as_mailbox, profile), required)
    message_id, message = probe_message(config, now)

    async def before_data(accepted: list[str]) -> None:
        return None

    await smtp.send(
        profile,
        login,
        config.email_address,
        [config.email_address],
        message,
        before_data,
        timeout_s,
    )
    where = f"{profile.host}:{profile.effective_port()}"
    return success(f"test message <{message_id}> sent to {config.email_address} through {where}")


async def check_mailbox(
    tidings: TidingsConfig,
    config: MailboxConfig,
    profiles: Mapping[str, ServerProfile],
    timeout_s: float = 60.0,
) -> MailboxTest:
    """Test a mailbox: incoming, then outgoing; the result to store on its configuration."""
    now = utc_now()
    incoming = await _step(lambda: check_incoming(tidings, config, profiles), timeout_s)
    outgoing = await _step(lambda: check_outgoing(config, profiles, now, timeout_s), timeout_s)
    return MailboxTest(
        tested_at=now,
        incoming=incoming,
        outgoing=outgoing,
        act=not_run("appointments, contacts and tasks need Exchange or Microsoft 365"),
    )
