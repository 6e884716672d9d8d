"""Requests to the connector that owns a mailbox (topic mail.track): promote one
message whatever the mailbox's incoming filter says (manual tracking), or poll the
mailbox now (manual sync)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from schemas.base import Record
from schemas.ids import normalize_message_id
from schemas.mail import ManualTrack


class RequestKind(StrEnum):
    """What a mail.track request asks."""

    TRACK = "track"  # find one message and send it on marked as tracked by hand
    SYNC = "sync"  # poll the mailbox now (`tidings mailbox sync`); message_id unused


class TrackRequest(Record, frozen=True, kw_only=True):
    """Ask the connector that owns `mailbox_id` to find the message whose Message-ID
    is `message_id` and send it to the processors marked as tracked by hand.

    `message_id` is normalized the way the parser normalizes Message-IDs (see
    `track_message_id`); readers normalize it again, so a sender may also pass
    it as written in the header. `request_id` is the sender's name for the
    request: the decision's explanation and any error quote it, and sending the
    same request again yields the same events and errors (stable ids), so it is
    harmless. `requested_by` is who asked, for the explanation ("" when
    unknown). Keyed by `mailbox_id` on mail.track.

    `item_id` (the server's item id, as `tidings mailbox reconcile` and the change
    events show it) or `ical_uid` (a meeting's iCalendar UID) asks instead for an
    appointment, contact or task of the mailbox's ACT folders (docs/act.md): at most
    one of `message_id`, `item_id` and `ical_uid` is set (see `track_target`).

    `kind` "sync" asks instead for an immediate poll of the mailbox (its
    `message_id` is empty and ignored); the connector that owns the mailbox
    wakes its loop, or publishes a notice on sync.errors saying why it cannot.
    """

    request_id: str
    mailbox_id: str
    message_id: str = ""
    kind: RequestKind = RequestKind.TRACK
    requested_by: str = ""
    requested_at: datetime
    item_id: str = ""
    ical_uid: str = ""

    @property
    def mark(self) -> ManualTrack:
        """The mark the item's change event carries for this request."""
        return ManualTrack(
            request_id=self.request_id,
            requested_by=self.requested_by,
            requested_at=self.requested_at,
        )


def track_message_id(raw: str) -> str:
    """`raw` as a normalized Message-ID (angle brackets and white space dropped, domain
    lower-cased); ValueError saying why when it cannot be one.

    A Message-ID is printable ASCII (RFC 5322); anything else could not be
    searched for on an IMAP server either.
    """
    normalized = normalize_message_id(raw)
    if normalized is None:
        raise ValueError(f"{raw!r} is not a Message-ID: it is empty")
    if not all("!" <= char <= "~" for char in normalized):
        raise ValueError(
            f"{raw!r} is not a Message-ID: only printable ASCII without spaces is allowed"
        )
    return normalized


class TrackTarget(StrEnum):
    """What a track request looks for, so which lookup the owning connector runs."""

    MESSAGE = "message"  # an email, by Message-ID (`MailboxSource.find_message`)
    ITEM = "item"  # an appointment, contact or task, by item id or iCalendar UID


def track_target(message_id: str, item_id: str, ical_uid: str) -> TrackTarget:
    """Which lookup a track request asks for; ValueError saying why when it names
    none or more than one of Message-ID, item id and iCalendar UID, or when the item
    id or UID is not printable ASCII without spaces (as servers issue them)."""
    given = [name for name, value in (
        ("a Message-ID", message_id), ("an item id", item_id), ("an iCalendar UID", ical_uid)
    ) if value]  # fmt: skip
    if not given:
        raise ValueError("it names nothing to track: give a Message-ID, an item id or a UID")
    if len(given) > 1:
        raise ValueError(f"it names {' and '.join(given)}: give only one")
    if message_id:
        return TrackTarget.MESSAGE
    value = item_id or ical_uid
    if not all("!" <= char <= "~" for char in value):
        raise ValueError(
            f"{value!r} is not an item id or UID: only printable ASCII without spaces is allowed"
        )
    return TrackTarget.ITEM
