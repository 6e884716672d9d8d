"""`tidings track`: the request to track one message by hand, checked before it is sent."""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Mapping
from datetime import datetime

from schemas.mailbox import MailboxConfig
from schemas.track import TrackRequest, TrackTarget, track_message_id, track_target


class TrackRefusedError(ValueError):
    """The request cannot be served; the message says why and what to do."""


def new_track_request(
    configs: Mapping[str, MailboxConfig],
    mailbox_id: str,
    message_id: str,
    requested_by: str | None,
    now: datetime,
    *,
    item_id: str = "",
    ical_uid: str = "",
) -> TrackRequest:
    """A request with a fresh id and a normalized Message-ID, for a mailbox tidings
    reads; raises TrackRefusedError for an invalid Message-ID or a mailbox that is
    unknown, not approved or disabled (the connector would refuse it too).

    With `item_id` or `ical_uid` instead (`message_id` ""), the request asks for an
    appointment, contact or task; the mailbox must sync them (`act.enabled`)."""
    try:
        target = track_target(message_id, item_id, ical_uid)
    except ValueError as exc:
        raise TrackRefusedError(f"the request: {exc}") from None
    normalized = ""
    if target == TrackTarget.MESSAGE:
        try:
            normalized = track_message_id(message_id)
        except ValueError as exc:
            raise TrackRefusedError(f"--message-id: {exc}") from None
    config = configs.get(mailbox_id)
    if config is None:
        raise TrackRefusedError(f"no mailbox {mailbox_id!r}; list them with `tidings mailbox list`")
    if not config.approved:
        raise TrackRefusedError(
            f"mailbox {mailbox_id} is not approved, so tidings does not read it; approve it first"
        )
    if not config.enabled:
        raise TrackRefusedError(f"mailbox {mailbox_id} is disabled, so tidings does not read it")
    if target == TrackTarget.ITEM and (config.act is None or not config.act.enabled):
        raise TrackRefusedError(
            f"mailbox {mailbox_id} does not sync appointments, contacts and tasks; "
            "set act.enabled in its configuration first (docs/act.md)"
        )
    return TrackRequest(
        request_id=f"t-{uuid.uuid4().hex[:12]}",
        mailbox_id=mailbox_id,
        message_id=normalized,
        item_id=item_id,
        ical_uid=ical_uid,
        requested_by=requested_by if requested_by is not None else _user(),
        requested_at=now,
    )


def _user() -> str:
    """Who runs the command, for the decision's explanation ("" when unknown)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""
