"""What a mailbox's loop does between passes (connectors/runtime.py `pause` and
`wait_for_change`): a wake-up that arrives while a pass runs (a stop, a manual
sync, a track request) is not lost; the wait after the pass ends at once."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import cast

from connectors.runtime import OwnedMailbox, pause, wait_for_change
from connectors.schedule import PollDecision, PollReason
from connectors.source import MailboxSource
from connectors.tracking import PendingTrack
from schemas.track import TrackRequest
from tests.connector_harness import mailbox

AN_HOUR = PollDecision(3600.0, PollReason.IDLE)
SOON = PollDecision(0.2, PollReason.ACTIVE)


class QuietSource:
    """A source whose push answers `pushes` in turn after `after_s`, then nothing."""

    protocol = "test"

    def __init__(self, *pushes: bool, after_s: float = 0.01) -> None:
        self.pushes = list(pushes)
        self.after_s = after_s
        self.waits = 0

    async def wait_for_change(self, timeout_s: float) -> bool:
        self.waits += 1
        if not self.pushes:
            await asyncio.sleep(timeout_s)
            return False
        await asyncio.sleep(min(self.after_s, timeout_s))
        return self.pushes.pop(0)


def owned() -> OwnedMailbox:
    return OwnedMailbox(config=mailbox("mb", "alice"), partition=0)


def source(*pushes: bool) -> MailboxSource:
    return cast(MailboxSource, QuietSource(*pushes))


async def stopped_during_pass(box: OwnedMailbox) -> None:
    """What `_stop_mailboxes` does while the loop is inside a pass."""
    box.stop.set()
    box.wake.set()


async def test_a_stop_during_the_pass_ends_the_wait_for_push_at_once() -> None:
    box = owned()
    await stopped_during_pass(box)
    started = time.monotonic()
    async with asyncio.timeout(5):
        assert await wait_for_change(box, source(), AN_HOUR) == PollReason.MANUAL
    assert time.monotonic() - started < 1


async def test_a_stop_during_a_failed_pass_ends_the_retry_pause_at_once() -> None:
    box = owned()
    await stopped_during_pass(box)
    async with asyncio.timeout(5):
        assert await pause(box, AN_HOUR) == PollReason.MANUAL


async def test_a_wake_up_while_waiting_ends_the_wait() -> None:
    box = owned()
    asyncio.get_running_loop().call_later(0.05, box.wake.set)
    async with asyncio.timeout(5):
        assert await wait_for_change(box, source(), AN_HOUR) == PollReason.MANUAL


async def test_a_waiting_track_request_polls_at_once() -> None:
    box = owned()
    request = TrackRequest(
        request_id="t-1", mailbox_id="mb", message_id="m1@contoso.example",
        requested_by="alice", requested_at=datetime.now(UTC),
    )  # fmt: skip
    box.tracks.append(PendingTrack(request, partition=0, offset=0, epoch=0))
    quiet = QuietSource()
    async with asyncio.timeout(5):
        assert await wait_for_change(box, cast(MailboxSource, quiet), AN_HOUR) == PollReason.MANUAL
    assert quiet.waits == 0


async def test_a_push_ends_the_wait() -> None:
    async with asyncio.timeout(5):
        assert await wait_for_change(owned(), source(True), AN_HOUR) == PollReason.PUSH


async def test_a_source_back_without_a_push_waits_the_rest_of_the_delay() -> None:
    quiet = QuietSource(False, False)
    started = time.monotonic()
    async with asyncio.timeout(5):
        reason = await wait_for_change(owned(), cast(MailboxSource, quiet), SOON)
    assert reason == PollReason.ACTIVE
    assert quiet.waits == 3  # two IDLE re-issues, then the rest of the delay
    assert time.monotonic() - started >= SOON.delay_s


async def test_with_nothing_happening_the_poll_comes_when_due() -> None:
    async with asyncio.timeout(5):
        assert await pause(owned(), SOON) == PollReason.ACTIVE
