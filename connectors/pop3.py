"""One POP3 mailbox, synchronized pass by pass (RFC 1939, RFC 2449 response codes).

POP3 has one folder, INBOX, and identifies messages by UIDL. A pass opens one
connection (holding a slot of the server profile's gate), lists UIDL and LIST,
diffs the UIDLs against the cursor (the set already emitted) and emits:

- `created` for a UIDL not in the cursor, with the message from RETR (inline
  or by claim-check); a message over the profile's `max_message_bytes` is not
  retrieved: its headers come from TOP n 0 and its event says `TooLarge`;
- `deleted` for a UIDL in the cursor the server no longer lists (a message
  deleted on the server is simply no longer listed).

Events go out in batches; the cursor moves only after Kafka acknowledged a
batch, so a crash re-emits at most one batch, with the same event ids. The
pass ends with QUIT. poplib is blocking: every call runs in a worker thread,
under the profile's timeout; RETR / TOP / DELE are pipelined when the server
offers PIPELINING (RFC 2449). A message the server lists but refuses to return
is still reported (`Unreadable`), so it is accounted for.

Reading never modifies the mailbox. With `leave_on_server = false` a message
is deleted (DELE) only after its event was acknowledged and the cursor saved;
QUIT commits the deletions. Before QUIT the deleted UIDLs leave the cursor
(saved again), so our own deletions are never reported as `deleted` events:
if QUIT then fails, the messages are still on the server and are emitted
again with the same event ids (harmless), and deleted again. A pass that fails
closes the connection without QUIT, which leaves every message in place.

`process_email_from`: a new message's headers are read with TOP n 0 and a
message whose Date is before the window is skipped: not emitted, not stored in
the cursor (the window is a filter, not progress), and never deleted. A message
without a parseable Date is included. Skipped UIDLs are remembered in memory,
so each is read once per source instance rather than once per pass.

Errors are `ConnectorError`s built from host names, the user name, commands
and RFC 2449 / RFC 3206 response codes ("[AUTH]", "[IN-USE]"), never from the
server's free text or the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import logging
import poplib
import re
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, NamedTuple, TypeVar

from connectors.claimcheck import MessagePayload, header_block
from connectors.cursors import pack_names, unpack_names
from connectors.errors import (
    AUTHENTICATION_FAILED,
    CONFIGURATION,
    CONNECTION_LOST,
    PROTOCOL_ERROR,
    SERVER_BUSY,
    TLS_FAILED,
    ConnectorError,
    from_os_error,
    permanent,
    transient,
)
from connectors.source import (
    BatchCallback,
    PassResult,
    ServerListing,
    SourceWiring,
    deleted_event,
    fold_counters,
    item_event,
)
from connectors.tracking import header_message_id
from connectors.transport import check_transport, tls_context
from schemas.base import utc_now
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    AuthMethod,
    FolderRole,
    MailboxCounters,
    Pop3Position,
    Protocol,
    TransportSecurity,
    cursor_key,
)

PROTOCOL = "pop3"
FOLDER = "INBOX"

BATCH_BYTES = 64 * 1024 * 1024
"""A batch holds at most this many message bytes (by LIST size), besides `max_batch_items`."""

PIPELINE_DEPTH = 64
"""Commands sent before reading their answers, when the server offers PIPELINING."""

BUSY_CODES = frozenset({"IN-USE", "SYS/TEMP", "LOGIN-DELAY"})
"""Response codes saying "not now": the mailbox is locked or the server has a temporary fault."""

_LOGIN_COMMANDS = frozenset({"USER", "PASS"})
_TLS_COMMANDS = frozenset({"STLS"})
_STATUS_LINE_MAX = 2048
_READ_CHUNK = 64 * 1024
_CODE = re.compile(rb"^-ERR\s*\[([A-Za-z0-9/_-]{1,40})\]")
_DATE_FIELD = re.compile(rb"^date[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.IGNORECASE | re.MULTILINE)
_PERMANENT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION"}
)
_EOF = "-ERR EOF"  # what poplib raises when the server closed the connection

log = logging.getLogger(__name__)

T = TypeVar("T")


# --- pure logic -------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedMessage:
    """One message the server lists: its number in this session, its UIDL, its LIST size."""

    number: int
    uidl: str
    size: int


@dataclass(frozen=True)
class Pop3Changes:
    """What changed since the cursor: messages new to it (server order), UIDLs gone (sorted)."""

    created: list[ListedMessage]
    deleted: list[str]


def _numbered(lines: Iterable[bytes]) -> Iterable[tuple[int, bytes]]:
    for line in lines:
        number, _, rest = line.strip().partition(b" ")
        if number.isdigit() and rest.strip():
            yield int(number), rest.strip()


def parse_listing(uidl_lines: Iterable[bytes], list_lines: Iterable[bytes]) -> list[ListedMessage]:
    """Join the UIDL and LIST answers ("n uidl", "n size") into messages in server order.

    A UIDL is printable ASCII by the RFC; other bytes are kept (decoded as
    latin-1, which round-trips). A UIDL listed twice (a broken server) keeps its
    first message; a message missing from LIST has size 0.
    """
    sizes = {n: int(s) for n, s in _numbered(list_lines) if s.isdigit()}
    messages: list[ListedMessage] = []
    seen: set[str] = set()
    for number, raw_uidl in sorted(_numbered(uidl_lines)):
        uidl = raw_uidl.decode("latin-1")
        if uidl not in seen:
            seen.add(uidl)
            messages.append(ListedMessage(number, uidl, sizes.get(number, 0)))
    return messages


def changes_since(seen: set[str], listed: Sequence[ListedMessage]) -> Pop3Changes:
    """Messages listed now but not in the cursor, and cursor UIDLs no longer listed."""
    present = {m.uidl for m in listed}
    return Pop3Changes(
        created=[m for m in listed if m.uidl not in seen],
        deleted=sorted(seen - present),
    )


def plan_batches(
    messages: Sequence[ListedMessage], max_items: int, max_bytes: int, max_message_bytes: int
) -> list[list[ListedMessage]]:
    """Cut `messages` into batches of at most `max_items` and (roughly) `max_bytes`.

    A message over `max_message_bytes` is not retrieved, so it weighs nothing; a
    message larger than `max_bytes` forms a batch alone.
    """
    batches: list[list[ListedMessage]] = []
    current: list[ListedMessage] = []
    weight = 0
    for message in messages:
        size = 0 if message.size > max_message_bytes else message.size
        if current and (len(current) >= max_items or weight + size > max_bytes):
            batches.append(current)
            current, weight = [], 0
        current.append(message)
        weight += size
    if current:
        batches.append(current)
    return batches


def encode_position(uidls: set[str]) -> Pop3Position:
    """The cursor position for a set of UIDLs."""
    return Pop3Position(uidls_z=pack_names(uidls), count=len(uidls))


def decode_position(position: Pop3Position) -> set[str]:
    """The set of UIDLs a cursor position holds."""
    return unpack_names(position.uidls_z, position.count)


def header_date(headers: bytes) -> datetime | None:
    """The Date header of a message (or of its header block), timezone-aware; None when
    missing or unparseable. A date without a zone ("-0000") is taken as UTC.

    The first Date field of the header block wins (folded lines are unfolded); the
    message is not parsed further, which keeps this cheap on every message.
    """
    found = _DATE_FIELD.search(header_block(headers))
    if found is None:
        return None
    value = b" ".join(found.group(1).split()).decode("latin-1")
    try:
        date = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return date if date.tzinfo is not None else date.replace(tzinfo=UTC)


def in_window(sent: datetime | None, since: datetime | None) -> bool:
    """True when a message dated `sent` is processed under "process email from `since`".

    No window, or no date on the message, includes it; naive datetimes are UTC.
    """
    if since is None or sent is None:
        return True
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    return sent >= since


def response_of(exc: poplib.error_proto) -> bytes:
    """The server response line an `error_proto` carries (poplib raises str or bytes)."""
    value = exc.args[0] if exc.args else b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "replace")


def response_code(response: bytes) -> str | None:
    """The RFC 2449 response code of an -ERR line ("-ERR [IN-USE] ..." → "IN-USE")."""
    match = _CODE.match(response)
    return match.group(1).decode("ascii").upper() if match else None


def is_item_refusal(response: bytes) -> bool:
    """True when an -ERR to RETR / TOP concerns that message alone (not a busy server,
    not a dropped connection)."""
    return (
        response.startswith(b"-ERR")
        and response != _EOF.encode()
        and response_code(response) not in BUSY_CODES
    )


def classify_response(
    response: bytes, *, command: str, server: str, account: str
) -> ConnectorError:
    """The ConnectorError for a negative (or broken) answer to `command`.

    The message names the account ("user@host:port"), the command and the
    response code, never the server's free text (it could echo what was sent).
    """
    code = response_code(response)
    tag = f" [{code}]" if code else ""
    if response == _EOF.encode():
        return transient(CONNECTION_LOST, f"{server} closed the connection during {command}")
    if not response.startswith(b"-ERR"):
        return transient(
            PROTOCOL_ERROR, f"{server} sent an answer to {command} that is not POP3 (+OK / -ERR)"
        )
    if code in BUSY_CODES:
        reason = {
            "IN-USE": "the mailbox is in use by another POP3 session",
            "LOGIN-DELAY": "the server asks to wait longer between logins",
        }.get(code or "", "the server has a temporary problem")
        return transient(SERVER_BUSY, f"{account}@{server}: {reason} ({command}{tag})")
    if command in _LOGIN_COMMANDS:
        return permanent(
            AUTHENTICATION_FAILED,
            f"{account}@{server} rejected the login (POP3 {command}{tag}); "
            "check the mailbox's user name and password",
        )
    if command in _TLS_COMMANDS:
        return permanent(
            TLS_FAILED,
            f"{server} does not offer STLS; use security = tls or enable STLS on the server",
        )
    return transient(PROTOCOL_ERROR, f"{server} answered {command} with -ERR{tag}")


def classify_os_error(exc: OSError, server: str) -> ConnectorError:
    """Classify a socket or TLS failure talking to `server` ("host:port").

    A certificate that does not verify, or a TLS handshake against a port that
    does not speak TLS, is permanent (a person must fix the profile or the server);
    any other TLS error is transient; the rest is `errors.from_os_error`.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = (
            getattr(exc, "verify_message", None)
            or getattr(exc, "reason", None)
            or "verification failed"
        )
        return permanent(
            TLS_FAILED,
            f"cannot verify the TLS certificate of {server}: {detail}; "
            "set ca_file on the server profile to trust its certificate authority",
        )
    if isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    ):
        reason = getattr(exc, "reason", None) or type(exc).__name__
        if reason in _PERMANENT_TLS_REASONS:
            return permanent(
                TLS_FAILED,
                f"TLS handshake with {server} failed ({reason}); "
                "check the port and the profile's security mode",
            )
        return transient(TLS_FAILED, f"TLS with {server} failed ({reason})")
    return from_os_error(exc, server)


def read_multiline(stream: BinaryIO, cap: int) -> tuple[bytes, bool]:
    """The body of a multi-line POP3 answer, read up to its terminating ".".

    Byte-stuffing is undone and line endings are kept as the server sent them,
    so the message comes back byte for byte. At most `cap` bytes are kept; the
    rest is read and dropped (the session stays in step). Returns the bytes and
    whether anything was dropped. Raises ConnectionResetError when the
    connection closes before the terminator.
    """
    out = bytearray()
    truncated = False
    at_line_start = True
    while True:
        piece = stream.readline(_READ_CHUNK)
        if not piece:
            raise ConnectionResetError(errno.ECONNRESET, "the server closed the connection")
        if at_line_start and piece[:1] == b".":
            if piece in (b".\r\n", b".\n"):
                return bytes(out), truncated
            piece = piece[1:]
        at_line_start = piece.endswith(b"\n")
        room = cap - len(out)
        if len(piece) > room:
            out += piece[: max(room, 0)]
            truncated = True
        else:
            out += piece


# --- one connection (blocking; every method runs in a worker thread) ---------------------


@dataclass(frozen=True)
class Fetched:
    """What RETR / TOP returned for one message.

    `raw` is the message when it was retrieved; `headers` its header block when
    only headers were read (too large); `refused` when the server answered -ERR.
    """

    raw: bytes | None = None
    headers: bytes | None = None
    refused: bool = False


class Answer(NamedTuple):
    """The body of a multi-line answer, and whether it was cut at its cap."""

    body: bytes
    truncated: bool


class Pop3Session:
    """One POP3 connection. Blocking: call every method through `asyncio.to_thread`."""

    def __init__(self, conn: poplib.POP3) -> None:
        self.conn = conn
        self.open = True
        self.pipelining = False

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        implicit_tls: bool,
        timeout: float,
    ) -> Pop3Session:
        if implicit_tls:
            return cls(poplib.POP3_SSL(host, port, timeout=timeout, context=context))
        return cls(poplib.POP3(host, port, timeout=timeout))

    def _live(self) -> poplib.POP3:
        """The connection; raises ConnectionAbortedError once it was dropped."""
        if not self.open:
            raise ConnectionAbortedError(errno.ECONNABORTED, "the connection was closed")
        return self.conn

    def starttls(self, context: ssl.SSLContext) -> None:
        self._live().stls(context)

    def user(self, name: str) -> None:
        self._live().user(name)

    def password(self, secret: str) -> None:
        self._live().pass_(secret)

    def listing(self) -> list[ListedMessage]:
        _, uidl_lines, _ = self._live().uidl()
        _, list_lines, _ = self.conn.list()
        return parse_listing(uidl_lines, list_lines)

    def capabilities(self) -> None:
        """Ask CAPA (after login) whether commands may be pipelined; -ERR means no."""
        try:
            self.pipelining = "PIPELINING" in self._live().capa()
        except poplib.error_proto as exc:
            if response_of(exc) == _EOF.encode():
                raise
            self.pipelining = False

    def _status(self) -> bytes:
        status = self.conn.file.readline(_STATUS_LINE_MAX + 1)
        if not status:
            raise ConnectionResetError(errno.ECONNRESET, "the server closed the connection")
        return status.rstrip(b"\r\n")[:_STATUS_LINE_MAX]

    def _pipeline(self, commands: Sequence[tuple[str, int | None]]) -> list[Answer | None]:
        """Send `commands` and read their answers in order; pipelined (RFC 2449) up to
        PIPELINE_DEPTH at a time when the server offers PIPELINING, else one by one.

        Each command comes with the cap of its multi-line answer (None: a one-line
        answer). An answer is None when a multi-line command was refused for that
        message alone; any other -ERR raises `poplib.error_proto` (the session is then
        out of step: drop it).
        """
        conn = self._live()
        depth = PIPELINE_DEPTH if self.pipelining else 1
        answers: list[Answer | None] = []
        for start in range(0, len(commands), depth):
            chunk = commands[start : start + depth]
            conn.sock.sendall(b"".join(f"{c}\r\n".encode("ascii") for c, _ in chunk))
            for _, cap in chunk:
                status = self._status()
                if not status.startswith(b"+OK"):
                    if cap is not None and is_item_refusal(status):
                        answers.append(None)
                        continue
                    raise poplib.error_proto(status)
                if cap is None:
                    answers.append(Answer(b"", truncated=False))
                else:
                    answers.append(Answer(*read_multiline(conn.file, cap)))
        return answers

    def headers_of(self, numbers: Sequence[int], cap: int) -> list[bytes | None]:
        """The header block of each message (TOP n 0), None where the server refused."""
        answers = self._pipeline([(f"TOP {n} 0", cap) for n in numbers])
        return [None if a is None else a.body for a in answers]

    def fetch(
        self, messages: Sequence[ListedMessage], max_message_bytes: int, header_cap: int
    ) -> list[Fetched]:
        """RETR each message; headers only (TOP n 0) for one over `max_message_bytes`."""
        too_large = [m.size > max_message_bytes for m in messages]
        answers = self._pipeline(
            [
                (f"TOP {m.number} 0", header_cap)
                if big
                else (f"RETR {m.number}", max_message_bytes)
                for m, big in zip(messages, too_large, strict=True)
            ]
        )
        fetched: list[Fetched] = []
        for big, answer in zip(too_large, answers, strict=True):
            if answer is None:
                fetched.append(Fetched(refused=not big))
            elif big:
                fetched.append(Fetched(headers=answer.body))
            elif answer.truncated:  # the server sent more than it listed: too large
                fetched.append(Fetched(headers=header_block(answer.body)[:header_cap]))
            else:
                fetched.append(Fetched(raw=answer.body))
        return fetched

    def delete(self, numbers: Sequence[int]) -> None:
        """DELE each message (QUIT commits them)."""
        self._pipeline([(f"DELE {n}", None) for n in numbers])

    def quit(self) -> None:
        """QUIT: the server commits deletions and closes (on -ERR, `abort` still closes)."""
        self._live().quit()
        self.open = False

    def abort(self) -> None:
        """Close the socket without QUIT: the server commits nothing (no deletions)."""
        if not self.open:
            return
        self.open = False
        # Already closed, or closed under a reader thread: nothing left to release.
        with contextlib.suppress(OSError, AttributeError):
            self.conn.close()


# --- the source -------------------------------------------------------------------------


class Pop3Mailbox:
    """Synchronizes one POP3 mailbox (its INBOX) into mail.changes."""

    protocol = PROTOCOL

    def __init__(self, wiring: SourceWiring, *, password: Callable[[], str]) -> None:
        config = wiring.config
        self.config = config
        profile, self.gate = wiring.server()
        self.profile = profile
        self.partition = wiring.partition
        self.emitter = wiring.emitter
        self.store = wiring.store
        self.claim_check = wiring.claim_check
        self.max_batch_items = max(1, wiring.max_batch_items)
        self.password = password
        self.server = f"{profile.host}:{profile.effective_port()}"
        self.account = config.credentials.username if config.credentials else config.email_address
        self.leave_on_server = config.pop3.leave_on_server if config.pop3 else True
        cursor = wiring.cursors.get(cursor_key(config.mailbox_id, FOLDER))
        self.seen: set[str] = (
            decode_position(cursor.position)
            if cursor is not None and isinstance(cursor.position, Pop3Position)
            else set()
        )
        self.before_window: set[str] = set()
        """UIDLs whose Date is before `process_email_from` (read once, kept in memory)."""
        self.counters = MailboxCounters()
        self._session: Pop3Session | None = None
        self._closes = 0

    # MailboxSource ---------------------------------------------------------------------

    async def sync_pass(self, on_batch: BatchCallback | None = None) -> PassResult:
        """Emit every change since the cursor over one connection, then QUIT."""
        result = PassResult()
        async with self.gate.slot():
            session = await self._open()
            try:
                await self._sync(session, result, on_batch)
                await self._call("QUIT", session.quit)
            finally:
                self._drop(session)
        self.counters = fold_counters(self.counters, result)
        result.counters = self.counters
        return result

    async def wait_for_change(self, timeout_s: float) -> None:
        """POP3 has no push: just wait (the runtime polls on its server clock)."""
        await asyncio.sleep(timeout_s)

    async def list_server_items(self) -> ServerListing:
        """The UIDLs the server lists now, within the "process email from" window."""
        async with self.gate.slot():
            session = await self._open()
            try:
                listed = await self._call("UIDL", session.listing)
                await self._learn_window(session, listed)
                await self._call("QUIT", session.quit)
            finally:
                self._drop(session)
        return ServerListing({FOLDER: {m.uidl for m in listed} - self.before_window})

    async def find_message(self, message_id: str) -> list[MailItemChanged]:
        """Every message whose Message-ID is `message_id`, as the created event a sync
        emits: the headers of every listed message (TOP n 0, pipelined), then RETR
        of the matches, over one connection ended by QUIT (nothing is deleted)."""
        async with self.gate.slot():
            session = await self._open()
            try:
                listed = await self._call("UIDL", session.listing)
                headers = await self._headers(session, listed)
                matches = [
                    m
                    for m, block in zip(listed, headers, strict=True)
                    if block is not None and header_message_id(block) == message_id
                ]
                events: list[MailItemChanged] = []
                if matches:
                    fetched = await self._call(
                        "RETR",
                        session.fetch,
                        matches,
                        self.profile.max_message_bytes,
                        self.claim_check.header_limit,
                    )
                    now = utc_now()
                    pairs = zip(matches, fetched, strict=True)
                    events = [await self._created(m, f, now) for m, f in pairs]
                await self._call("QUIT", session.quit)
            finally:
                self._drop(session)
        return events

    async def close(self) -> None:
        """Drop the open connection, if any (no QUIT: nothing is committed); idempotent.
        A pass still running then fails with a transient ConnectionLost."""
        if self._session is not None:
            self._closes += 1
            self._drop(self._session)

    # connection -------------------------------------------------------------------------

    async def _call(self, command: str, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking call in a thread; classify what it raises as a ConnectorError."""
        closes = self._closes
        try:
            return await asyncio.to_thread(fn, *args)
        except poplib.error_proto as exc:
            raise classify_response(
                response_of(exc), command=command, server=self.server, account=self.account
            ) from None
        except OSError as exc:
            raise classify_os_error(exc, self.server) from exc
        except Exception:
            if self._closes != closes:  # close() pulled the connection from under the call
                raise transient(
                    CONNECTION_LOST, f"the connection to {self.server} was closed during {command}"
                ) from None
            raise

    def _check_profile(self) -> str:
        """The user name to log in as; raise permanent Configuration / PlaintextRefused."""
        profile = self.profile
        if profile.protocol != Protocol.POP3:
            raise permanent(
                CONFIGURATION,
                f"mailbox {self.config.mailbox_id} uses a {profile.protocol} server profile "
                "for POP3",
            )
        if profile.auth == AuthMethod.XOAUTH2:
            raise permanent(
                CONFIGURATION,
                f"XOAUTH2 is not supported for POP3 ({self.server}); use auth = password",
            )
        check_transport(profile)
        if self.config.credentials is None:
            raise permanent(
                CONFIGURATION, f"mailbox {self.config.mailbox_id} has no credentials for POP3"
            )
        return self.config.credentials.username

    async def _open(self) -> Pop3Session:
        """Connect, secure, log in. The session is closed again if any step fails."""
        username = self._check_profile()
        try:
            secret = self.password()
        except LookupError as exc:
            raise permanent(
                CONFIGURATION, f"cannot read the password of {username}@{self.server}: {exc}"
            ) from None
        profile = self.profile
        context: ssl.SSLContext | None = None
        if profile.security != TransportSecurity.PLAIN:
            context = tls_context(profile)
        session = await self._call(
            "connect",
            Pop3Session.connect,
            profile.host,
            profile.effective_port(),
            context,
            profile.security == TransportSecurity.TLS,
            profile.timeout_s,
        )
        self._session = session
        try:
            if profile.security == TransportSecurity.STARTTLS:
                assert context is not None
                await self._call("STLS", session.starttls, context)
            await self._call("USER", session.user, username)
            await self._call("PASS", session.password, secret)
            await self._call("CAPA", session.capabilities)
        except BaseException:
            self._drop(session)
            raise
        return session

    def _drop(self, session: Pop3Session) -> None:
        session.abort()
        if self._session is session:
            self._session = None

    # the pass ---------------------------------------------------------------------------

    async def _sync(
        self, session: Pop3Session, result: PassResult, on_batch: BatchCallback | None
    ) -> None:
        listed = await self._call("UIDL", session.listing)
        leftover = [m for m in listed if m.uidl in self.seen]
        if leftover and not self.leave_on_server:
            # Emitted and saved by an earlier pass whose QUIT did not happen.
            await self._call("DELE", session.delete, [m.number for m in leftover])
        await self._learn_window(session, listed)
        changes = changes_since(self.seen, listed)
        created = [m for m in changes.created if m.uidl not in self.before_window]
        result.listed = sum(1 for m in listed if m.uidl not in self.before_window)
        result.pending = len(created)
        deleted_here = set() if self.leave_on_server else {m.uidl for m in leftover}
        for batch in plan_batches(
            created, self.max_batch_items, BATCH_BYTES, self.profile.max_message_bytes
        ):
            fetched = await self._call(
                "RETR",
                session.fetch,
                batch,
                self.profile.max_message_bytes,
                self.claim_check.header_limit,
            )
            now = utc_now()
            events = [await self._created(m, f, now) for m, f in zip(batch, fetched, strict=True)]
            await self.emitter.emit_changes(events, PROTOCOL)
            await self._save(self.seen | {m.uidl for m in batch})
            if not self.leave_on_server:
                await self._call("DELE", session.delete, [m.number for m in batch])
                deleted_here.update(m.uidl for m in batch)
            result.created += len(events)
            result.unreadable += sum(1 for e in events if e.unreadable_code)
            result.pending -= len(batch)
            if on_batch is not None:
                await on_batch(result)
        for start in range(0, len(changes.deleted), self.max_batch_items):
            gone = changes.deleted[start : start + self.max_batch_items]
            now = utc_now()
            await self.emitter.emit_changes([self._deleted(uidl, now) for uidl in gone], PROTOCOL)
            await self._save(self.seen - set(gone))
            result.deleted += len(gone)
            if on_batch is not None:
                await on_batch(result)
        if deleted_here:
            # Our own deletions leave the cursor before QUIT commits them.
            await self._save(self.seen - deleted_here)

    async def _learn_window(self, session: Pop3Session, listed: Sequence[ListedMessage]) -> None:
        """Read the Date of every new message not yet known to be before the window."""
        since = self.config.process_email_from
        present = {m.uidl for m in listed}
        self.before_window &= present
        if since is None:
            self.before_window.clear()
            return
        unknown = [
            m for m in listed if m.uidl not in self.seen and m.uidl not in self.before_window
        ]
        headers = await self._headers(session, unknown)
        for message, block in zip(unknown, headers, strict=True):
            sent = header_date(block) if block is not None else None
            if not in_window(sent, since):
                self.before_window.add(message.uidl)

    async def _headers(
        self, session: Pop3Session, messages: Sequence[ListedMessage]
    ) -> list[bytes | None]:
        """The header block of each message (TOP n 0, `max_batch_items` per pipeline),
        None where the server refused it."""
        blocks: list[bytes | None] = []
        for start in range(0, len(messages), self.max_batch_items):
            chunk = messages[start : start + self.max_batch_items]
            blocks.extend(
                await self._call(
                    "TOP",
                    session.headers_of,
                    [m.number for m in chunk],
                    self.claim_check.header_limit,
                )
            )
        return blocks

    async def _save(self, uidls: set[str]) -> None:
        """Store the cursor (after its events were acknowledged), then adopt it."""
        await self.store.save(
            self.config.mailbox_id, FOLDER, encode_position(uidls), self.partition, utc_now()
        )
        self.seen = uidls

    async def _created(
        self, message: ListedMessage, fetched: Fetched, now: datetime
    ) -> MailItemChanged:
        unreadable: tuple[str, str] | None = None
        payload = MessagePayload()
        if fetched.raw is not None:
            payload = await self.claim_check.payload(fetched.raw, PROTOCOL)
            sent = header_date(fetched.raw)
        elif fetched.refused:
            sent = None
            unreadable = (
                "Unreadable",
                "the server refused to return the message (RETR answered -ERR); "
                "another client may have deleted it",
            )
        else:
            payload = MessagePayload(headers=fetched.headers)
            sent = header_date(fetched.headers) if fetched.headers is not None else None
            unreadable = (
                "TooLarge",
                f"the message is {message.size} bytes, over the server profile's "
                f"max_message_bytes ({self.profile.max_message_bytes}); raise it or "
                "remove the message",
            )
        return item_event(
            self.config.mailbox_id,
            FOLDER,
            message.uidl,
            ChangeKind.CREATED,
            now,
            payload=payload,
            server_time=sent,
            size=message.size,
            folder_role=FolderRole.INBOX,
            unreadable=unreadable,
        )

    def _deleted(self, uidl: str, now: datetime) -> MailItemChanged:
        return deleted_event(self.config.mailbox_id, FOLDER, uidl, now, FolderRole.INBOX)
