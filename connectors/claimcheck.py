"""Fitting a message into an event: inline when small, by claim-check when large.

A message over `claim_check_bytes` is stored in the blob store; its event
carries the reference, the raw header block and a plain-text preview, each
trimmed so the encoded event stays under `max_event_bytes`.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
from dataclasses import dataclass

from schemas import metrics
from schemas.blobs import BlobStore
from schemas.config import ConnectorConfig

_HEADER_END = (b"\r\n\r\n", b"\n\n")
_ENVELOPE_RESERVE = 16 * 1024
"""Bytes kept free in an event for everything but the message (ids, flags, JSON)."""


@dataclass(frozen=True)
class MessagePayload:
    """What of a message travels in its event: `raw`, or `blob_ref` + `headers` + `preview`."""

    raw: bytes | None = None
    blob_ref: str | None = None
    headers: bytes | None = None
    preview: str | None = None


class ClaimCheck:
    """Decides inline versus claim-check and stores large messages."""

    def __init__(self, store: BlobStore, settings: ConnectorConfig) -> None:
        self.store = store
        budget = settings.max_event_bytes - _ENVELOPE_RESERVE
        # JSON carries bytes as base64: 4 characters per 3 bytes.
        self.inline_limit = min(settings.claim_check_bytes, budget * 3 // 4)
        self.header_limit = budget * 3 // 8
        # a control character costs up to 6 bytes as JSON ("\u0001")
        self.preview_chars = min(settings.preview_chars, budget // 12)

    def fits_inline(self, size: int) -> bool:
        """True when a message of `size` bytes travels in its event."""
        return size <= self.inline_limit

    def inline(self, raw: bytes) -> MessagePayload | None:
        """`raw` as it travels in its event, or None when it needs the claim-check."""
        return MessagePayload(raw=raw) if self.fits_inline(len(raw)) else None

    async def payload(self, raw: bytes, protocol: str) -> MessagePayload:
        """Inline `raw`, or store it and return the reference with headers and preview."""
        inline = self.inline(raw)
        if inline is not None:
            return inline
        ref = await asyncio.to_thread(self.store.put, raw)
        metrics.CONNECTOR_CLAIM_CHECKS.labels(protocol).inc()
        return MessagePayload(
            blob_ref=ref,
            headers=header_block(raw)[: self.header_limit],
            preview=text_preview(raw, self.preview_chars),
        )


def header_block(raw: bytes) -> bytes:
    """The raw header block of a message (up to and including the blank line)."""
    ends = [i + len(sep) for sep in _HEADER_END if (i := raw.find(sep)) != -1]
    return raw[: min(ends)] if ends else raw


def text_preview(raw: bytes, limit: int) -> str:
    """The start of the message's first text/plain part (or of its body), at most `limit` chars.

    Never raises: a message that cannot be parsed yields its raw body start.
    """
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
        for part in message.walk():
            if part.get_content_type() == "text/plain":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    charset = part.get_content_charset() or "utf-8"
                    try:
                        return payload.decode(charset, "replace")[:limit]
                    except LookupError:
                        return payload.decode("utf-8", "replace")[:limit]
    except Exception:  # a preview must never fail the sync
        pass
    body = raw[len(header_block(raw)) :]
    return body[: limit * 4].decode("utf-8", "replace")[:limit]
