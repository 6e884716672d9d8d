"""Parse raw MIME into a `ParsedEmail`: normalized headers, addresses, body text.

Pure: bytes and metadata in, a ParsedEmail or a ParseFailure out. Never raises
on bad input; broken structure becomes a ParseFailure with a code and a message
a person can act on, smaller defects are listed on the email.

A claim-checked message is parsed from its blob's bytes (read by the caller);
when the blob is unavailable, `parse_headers_and_preview` builds the email from
the header block and text preview its event carries.

Parsing uses the compat32 policy and decodes only the headers tidings reads:
the modern policy parses every header through the header registry, which was
measured at four fifths of the processors' time (py-spy, bench/e2e.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import errors as email_errors
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser

from schemas.ids import normalize_message_id
from schemas.mail import (
    AttachmentInfo,
    AutoReplyKind,
    EmailAddress,
    MailItemChanged,
    ParsedEmail,
)
from schemas.mailbox import FolderRole

_PARSER = BytesParser(policy=policy.compat32)
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")
_MSGID_TOKEN = re.compile(r"<([^<>\s]+)>")
_FATAL_DEFECTS = (
    email_errors.NoBoundaryInMultipartDefect,
    email_errors.StartBoundaryNotFoundDefect,
)
_AUTO_REPLY_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress-Autoreply")


@dataclass(frozen=True)
class ParseFailure:
    """Why an item could not become an email: a stable code and a one-line message."""

    code: str
    message: str


def parse_item(
    event: MailItemChanged,
    folder_role: FolderRole,
    max_description_chars: int,
    content: bytes | None = None,
) -> ParsedEmail | ParseFailure:
    """Parse the MIME of a created/updated email event: `event.raw`, else `content`
    (the bytes of its claim-check blob, read by the caller)."""
    raw = event.raw if event.raw is not None else content
    if event.unreadable_code:
        return ParseFailure(event.unreadable_code, event.unreadable_reason or "unreadable")
    if raw is None:
        return ParseFailure("BlobUnavailable", "the message content is not in the event")
    failure = _check_structure(raw)
    if failure is not None:
        return failure
    try:
        msg = _PARSER.parsebytes(_strip_mbox_line(raw).lstrip(b"\r\n"))
    except Exception as exc:  # the stdlib parser should not raise; be safe anyway
        return ParseFailure("Malformed", f"MIME parser failed: {type(exc).__name__}")
    fatal = _fatal_defect(msg)
    if fatal is not None:
        return ParseFailure("Malformed", fatal)
    defects: list[str] = [type(d).__name__ for d in msg.defects]
    text, has_html = _body_text(msg, defects)
    body = _Body(
        text=text[:max_description_chars],
        truncated=len(text) > max_description_chars,
        has_html=has_html,
        attachments=_attachments(msg),
        size=len(raw),
    )
    return _build(event, folder_role, msg, body, defects)


def forwarded_messages(raw: bytes) -> list[bytes]:
    """The messages attached to `raw` whole (message/rfc822 parts), in order, as bytes;
    empty when there are none or `raw` cannot be parsed. Attachments of the
    attached messages are not unwrapped."""
    try:
        msg = _PARSER.parsebytes(_strip_mbox_line(raw).lstrip(b"\r\n"))
    except Exception:  # the stdlib parser should not raise; be safe anyway
        return []
    found: list[bytes] = []
    for part in _leaves(msg):
        if part.get_content_type() != "message/rfc822":
            continue
        inner = part.get_payload()
        for message in inner if isinstance(inner, list) else []:
            if isinstance(message, Message):
                try:
                    found.append(message.as_bytes())
                except (UnicodeError, LookupError, ValueError):
                    continue
    return found


def parse_headers_and_preview(
    event: MailItemChanged, folder_role: FolderRole, max_description_chars: int, note: str
) -> ParsedEmail | ParseFailure:
    """Parse a claim-checked event without its blob: addresses, ids, threading and
    auto-reply markers from `event.headers`, the body from `event.preview`.

    The body is marked truncated, attachments are unknown (none listed), and `note`
    (why the blob was not used) is recorded as a defect. Without a usable header
    block the result is a BlobUnavailable failure carrying `note`.
    """
    headers = event.headers or b""
    if event.unreadable_code:
        return ParseFailure(event.unreadable_code, event.unreadable_reason or "unreadable")
    if _check_structure(headers) is not None:
        return ParseFailure("BlobUnavailable", f"{note}; the event carries no header block")
    try:
        msg = _PARSER.parsebytes(_strip_mbox_line(headers).lstrip(b"\r\n"))
    except Exception as exc:  # the stdlib parser should not raise; be safe anyway
        return ParseFailure(
            "BlobUnavailable", f"{note}; header parser failed: {type(exc).__name__}"
        )
    # Only the header block is here, so a multipart body's boundary is missing by design.
    defects = [type(d).__name__ for d in msg.defects if not isinstance(d, _FATAL_DEFECTS)]
    defects.append(note)
    body = (event.preview or "").replace("\r\n", "\n").replace("\r", "\n").strip()
    return _build(
        event,
        folder_role,
        msg,
        _Body(
            text=body[:max_description_chars],
            truncated=True,
            has_html=msg.get_content_type() == "text/html",
            attachments=[],
            size=event.size,
        ),
        defects,
    )


@dataclass(frozen=True)
class _Body:
    """What of a message's body becomes part of the email."""

    text: str
    truncated: bool
    has_html: bool
    attachments: list[AttachmentInfo]
    size: int


def _check_structure(raw: bytes) -> ParseFailure | None:
    if not raw.strip():
        return ParseFailure("Malformed", "the message is empty")
    first_line = _strip_mbox_line(raw).lstrip(b"\r\n").split(b"\n", 1)[0]
    if not _HEADER_LINE.match(first_line):
        return ParseFailure(
            "Malformed", "the message has no header block (it does not start with a header field)"
        )
    return None


def _strip_mbox_line(raw: bytes) -> bytes:
    if raw.startswith(b"From "):
        return raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return raw


def _fatal_defect(msg: Message) -> str | None:
    for part in msg.walk():
        for defect in part.defects:
            if isinstance(defect, _FATAL_DEFECTS):
                boundary = part.get_boundary() or "?"
                return f"multipart structure is broken: boundary {boundary!r} never appears"
    return None


def _build(
    event: MailItemChanged,
    folder_role: FolderRole,
    msg: Message,
    body: _Body,
    defects: list[str],
) -> ParsedEmail:
    subject = _header_text(msg, "Subject", defects)
    sender = _first_address(msg, "From", defects)
    sent_at = _date(msg, defects)
    # Some senders (Python's email package among them) fold long ids into encoded
    # words; decoding first keeps those threads intact.
    references = _msgid_list(_header_text(msg, "References", defects))
    in_reply_to_ids = _msgid_list(_header_text(msg, "In-Reply-To", defects))
    in_reply_to = in_reply_to_ids[0] if in_reply_to_ids else None
    message_id = normalize_message_id(_header_text(msg, "Message-ID", defects))
    synthetic = message_id is None
    if message_id is None:
        message_id = _synthetic_message_id(sender, sent_at, subject, body.text)
    thread_key = references[0] if references else (in_reply_to or message_id)
    auto_reply = _auto_reply_kind(msg)
    bounce = _bounce(msg) if auto_reply == AutoReplyKind.BOUNCE else None
    if bounce is not None and bounce.thread_key:
        # The bounce meets the message it reports on, on that conversation's partition.
        thread_key = bounce.thread_key
    return ParsedEmail(
        event_id=event.event_id,
        mailbox_id=event.mailbox_id,
        folder=event.folder,
        folder_role=folder_role,
        item_id=event.item_id,
        observed_at=event.observed_at,
        message_id=message_id,
        message_id_synthetic=synthetic,
        thread_key=thread_key,
        subject=subject,
        sender=sender,
        to=_addresses(msg, "To", defects),
        cc=_addresses(msg, "Cc", defects),
        bcc=_addresses(msg, "Bcc", defects),
        sent_at=sent_at,
        in_reply_to=in_reply_to,
        references=references,
        thread_index=_raw_text(msg, "Thread-Index") or None,
        auto_reply=auto_reply,
        bounced_message_id=bounce.message_id if bounce else None,
        bounce_detail=bounce.detail if bounce else "",
        body_text=body.text,
        body_truncated=body.truncated,
        has_html=body.has_html,
        attachments=body.attachments,
        size=body.size,
        defects=sorted(set(defects)),
        manual_track=event.manual_track,
    )


# -- headers -------------------------------------------------------------------


def _raw_values(msg: Message, name: str) -> list[str]:
    """Every raw value of a header, unfolded; raw 8-bit bytes read as UTF-8 (else Latin-1)."""
    wanted = name.lower()
    return [_from_8bit(" ".join(str(v).split())) for k, v in msg.raw_items() if k.lower() == wanted]


def _from_8bit(text: str) -> str:
    """Headers parsed from bytes keep non-ASCII bytes as surrogates; decode them."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    data = text.encode("ascii", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _raw_text(msg: Message, name: str) -> str:
    """A header's first raw value, unfolded ('' when absent)."""
    values = _raw_values(msg, name)
    return values[0] if values else ""


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; unknown charsets and bad bytes degrade to U+FFFD."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError, email_errors.HeaderParseError):
        parts = []
        for chunk, charset in decode_header(value):
            if isinstance(chunk, bytes):
                parts.append(_decode_bytes(chunk, charset))
            else:
                parts.append(chunk)
        return "".join(parts)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def _header_text(msg: Message, name: str, defects: list[str]) -> str:
    """A header's decoded text ('' when absent)."""
    try:
        return " ".join(decode_words(_raw_text(msg, name)).split())
    except Exception:
        defects.append(f"Undecodable{name.replace('-', '')}Header")
        return _raw_text(msg, name)


def _msgid_list(text: str) -> list[str]:
    """Every Message-ID in a References/In-Reply-To value, normalized, in order, unique."""
    tokens = _MSGID_TOKEN.findall(text) or text.split()
    seen: set[str] = set()
    ids: list[str] = []
    for token in tokens:
        normalized = normalize_message_id(token)
        if normalized and "@" in normalized and normalized not in seen:
            seen.add(normalized)
            ids.append(normalized)
    return ids


def normalize_address(address: str) -> str | None:
    """Lower-cased addr-spec, or None when it has no local part or domain."""
    text = address.strip().strip("<>").strip().lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or " " in text:
        return None
    return text


def _addresses(msg: Message, name: str, defects: list[str]) -> list[EmailAddress]:
    """Addresses of a header, display names decoded after splitting (an encoded name
    may hide a comma), each address once."""
    values = _raw_values(msg, name)
    found: list[EmailAddress] = []
    seen: set[str] = set()
    for display, addr in getaddresses(values):
        normalized = normalize_address(addr)
        if normalized is None:
            if addr.strip():
                defects.append(f"Invalid{name}Address")
            continue
        if normalized not in seen:
            seen.add(normalized)
            found.append(
                EmailAddress(address=normalized, name=" ".join(decode_words(display).split()))
            )
    return found


def _first_address(msg: Message, name: str, defects: list[str]) -> EmailAddress | None:
    addresses = _addresses(msg, name, defects)
    return addresses[0] if addresses else None


def _date(msg: Message, defects: list[str]) -> datetime | None:
    text = _raw_text(msg, "Date")
    if not text:
        return None
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        defects.append("InvalidDateHeader")
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class _Bounce:
    """What a delivery status notification says of the message it returns."""

    message_id: str | None
    thread_key: str | None
    detail: str


def _bounce(msg: Message) -> _Bounce:
    """The returned message's id and thread key (from its attached message or headers,
    RFC 3462), and a one-line summary of the failed recipients (RFC 3464)."""
    original: Message | None = None
    failures: list[str] = []
    for part in msg.walk():
        kind = part.get_content_type()
        payload = part.get_payload()
        if kind == "message/delivery-status" and isinstance(payload, list):
            blocks = [block for block in payload[1:] if isinstance(block, Message)]
            failures.extend(_failure(block) for block in blocks if _failed(block))
        elif kind == "message/rfc822" and original is None and isinstance(payload, list):
            original = payload[0] if payload and isinstance(payload[0], Message) else None
        elif kind == "text/rfc822-headers" and original is None:
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                original = _PARSER.parsebytes(text, headersonly=True)
    detail = "; ".join(failures[:5]) or "delivery failed"
    if original is None:
        return _Bounce(None, None, detail)
    ignored: list[str] = []
    message_id = normalize_message_id(_header_text(original, "Message-ID", ignored))
    references = _msgid_list(_header_text(original, "References", ignored))
    in_reply_to = _msgid_list(_header_text(original, "In-Reply-To", ignored))
    key = references[0] if references else (in_reply_to[0] if in_reply_to else message_id)
    return _Bounce(message_id, key, detail)


def _failed(block: Message) -> bool:
    return str(block.get("Action", "")).strip().lower() in ("failed", "")


def _failure(block: Message) -> str:
    recipient = str(block.get("Final-Recipient", "")).split(";")[-1].strip() or "?"
    status = str(block.get("Status", "")).strip() or "?"
    diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split(";")[-1].split())
    return f"{status} {recipient}" + (f" ({diagnostic[:120]})" if diagnostic else "")


def _auto_reply_kind(msg: Message) -> AutoReplyKind:
    content_type = msg.get_content_type()
    report_type = str(msg.get_param("report-type", "") or "").lower()
    if content_type == "multipart/report" and report_type == "delivery-status":
        return AutoReplyKind.BOUNCE
    auto_submitted = _raw_text(msg, "Auto-Submitted").lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return AutoReplyKind.AUTO_REPLY
    if any(_raw_values(msg, name) for name in _AUTO_REPLY_HEADERS):
        return AutoReplyKind.AUTO_REPLY
    if _raw_text(msg, "Precedence").lower() == "auto_reply":
        return AutoReplyKind.AUTO_REPLY
    return AutoReplyKind.NONE


def _synthetic_message_id(
    sender: EmailAddress | None, sent_at: datetime | None, subject: str, body: str
) -> str:
    basis = "\x1f".join(
        [sender.address if sender else "", sent_at.isoformat() if sent_at else "", subject, body]
    )
    digest = hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"synthetic-{digest}@tidings.invalid"


# -- body ----------------------------------------------------------------------


def _leaves(msg: Message) -> Iterator[Message]:
    """Non-multipart parts in order, not descending into attached messages."""
    if msg.is_multipart() and msg.get_content_maintype() == "multipart":
        for part in msg.get_payload():
            if isinstance(part, Message):
                yield from _leaves(part)
    else:
        yield msg


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("Content-Disposition", "")).strip().lower()
    return (
        disposition.startswith("attachment")
        or part.get_filename() is not None
        or part.get_content_maintype() == "message"
        or part.get_content_type() == "text/rfc822-headers"
    )


def _body_text(msg: Message, defects: list[str]) -> tuple[str, bool]:
    """The text to store as the activity description, and whether an HTML part exists."""
    plain: Message | None = None
    html: Message | None = None
    for part in _leaves(msg):
        if _is_attachment(part):
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain" and plain is None:
            plain = part
        elif content_type == "text/html" and html is None:
            html = part
    chosen = plain or html
    if chosen is None:
        return "", html is not None
    text = _part_text(chosen, defects).replace("\r\n", "\n").replace("\r", "\n")
    if chosen is html:
        text = html_to_text(text)
    return text.strip(), html is not None


def _part_text(part: Message, defects: list[str]) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        defects.append("UnknownCharset")
        return payload.decode("utf-8", errors="replace")


class _TextExtractor(HTMLParser):
    _BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "table", "blockquote"}
    )
    _SKIP = frozenset({"script", "style", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BLOCK:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.chunks.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML body: tags dropped, blocks on their own lines."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = (" ".join(line.split()) for line in "".join(extractor.chunks).splitlines())
    return "\n".join(line for line in lines if line)


def _message_size(message: Message) -> int:
    try:
        return len(message.as_bytes())
    except (UnicodeError, LookupError, ValueError):
        return 0


def _attachments(msg: Message) -> list[AttachmentInfo]:
    """Metadata of every attachment (attached messages count as one)."""
    if not msg.is_multipart():
        return []
    found: list[AttachmentInfo] = []
    for part in _leaves(msg):
        if not _is_attachment(part):
            continue
        inner = part.get_payload()
        if isinstance(inner, list):  # message/*: the enclosed message(s)
            size = sum(_message_size(m) for m in inner if isinstance(m, Message))
        else:
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, bytes) else 0
        found.append(
            AttachmentInfo(
                filename=decode_words(part.get_filename() or ""),
                content_type=part.get_content_type(),
                size=size,
            )
        )
    return found
