"""One IMAP connection through aioimaplib: connect safely, log in, and the few
commands the connector needs, each under the profile's timeout and each
counted (tidings_connector_imap_commands_total).

Two things about aioimaplib are adjusted by subclassing its protocol (see
`_FastProtocol`): it parses a response recursively, one stack frame per line,
so a large FETCH answer raised RecursionError; and it re-scanned every line of
a FETCH answer for each new line, which made a batch quadratic. The
subclass parses iteratively with the same line handler. FETCH ranges stay
bounded anyway (ServerProfile.fetch_batch).

Failures become ConnectorError with a one-line message naming the server and
user, never a password or token.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aioimaplib import aioimaplib

from connectors import errors
from connectors.errors import ConnectorError
from connectors.imap_protocol import (
    FetchedMessage,
    FolderState,
    ListedFolder,
    parse_fetch,
    parse_list,
    parse_search,
    parse_select,
    parse_status,
    quote_mailbox,
    response_code,
    take_whole_item,
)
from connectors.transport import check_transport, tls_context
from schemas import metrics
from schemas.mailbox import AuthMethod, ServerProfile, TransportSecurity

log = logging.getLogger(__name__)

SecretProvider = Callable[[], Awaitable[str]]
"""Returns the password (or, for XOAUTH2, a bearer token) when the session logs in."""

_CHANGE_WORDS = (b"EXISTS", b"EXPUNGE", b"FETCH", b"VANISHED")
_PERMANENT_CODES = {
    "AUTHENTICATIONFAILED": errors.AUTHENTICATION_FAILED,
    "AUTHORIZATIONFAILED": errors.AUTHENTICATION_FAILED,
    "EXPIRED": errors.AUTHENTICATION_FAILED,
    "NOPERM": errors.FORBIDDEN,
    "NONEXISTENT": errors.MAILBOX_MISSING,
    "PRIVACYREQUIRED": errors.PLAINTEXT_REFUSED,
}
_TRANSIENT_CODES = {"UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "CONTACTADMIN", "OVERQUOTA"}


class _FetchCommand(aioimaplib.FetchCommand):  # type: ignore[misc]
    """FETCH that tracks parenthesis depth as lines arrive instead of re-scanning them.

    Items the protocol parsed whole as they arrived are in `items`; the rest
    stay response lines. `messages()` returns both, in UID order.
    """

    _expected_size: int
    _resp_literal_data: bytearray
    _resp_lines: list[bytes | bytearray]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._depth = 0
        self.items: list[FetchedMessage] = []

    def messages(self) -> list[FetchedMessage]:
        """Every FETCH item of the answer that carries a UID."""
        rest = parse_fetch(self.response.lines)
        if not rest:
            return self.items
        if not self.items:
            return rest
        return sorted(self.items + rest, key=lambda item: item.uid)

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        self._resp_result = result
        self._resp_lines.append(line)
        if type(line) is bytes:  # literals arrive as bytearray and do not count
            # Between items the depth is 0, so an item's first line starts afresh.
            self._depth = max(self._depth, 0) + line.count(b"(") - line.count(b")")
        if self._timeout is not None:
            self._reset_timer()

    def wait_data(self) -> bool:
        return bool(self._depth > 0)

    def append_literal_data(self, data: bytes) -> bytes:
        """Collect a literal; once complete it becomes one bytearray response item."""
        need = self._expected_size - len(self._resp_literal_data)
        if not self._resp_literal_data and len(data) >= need:
            self._resp_lines.append(bytearray(data[:need]))
            self._expected_size = 0
            return data[need:]
        self._resp_literal_data.extend(data[:need])
        if len(self._resp_literal_data) == self._expected_size:
            self._resp_lines.append(self._resp_literal_data)
            self._expected_size = 0
            self._resp_literal_data = bytearray()
        return data[need:]


class _FastProtocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol with an iterative, linear-time response loop."""

    incomplete_line: bytes
    current_command: Any

    def data_received(self, d: bytes) -> None:
        """aioimaplib's, without its debug log: that formats every chunk received as
        text whatever the log level, which cost a seventh of a backfill's CPU."""
        try:
            self._handle_responses(
                self.incomplete_line + d, self._handle_line, self.current_command
            )
            self.incomplete_line = b""
            self.current_command = None
        except aioimaplib.IncompleteRead as incomplete_read:
            self.current_command = incomplete_read.cmd
            self.incomplete_line = incomplete_read.data

    def _handle_responses(
        self,
        data: bytes,
        line_handler: Callable[[bytes, Any], Any],
        current_cmd: Any = None,
    ) -> None:
        pos = 0
        end_of_data = len(data)
        fetch = self._bulk_fetch()
        while True:
            if pos >= end_of_data:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
                return
            if current_cmd is None and fetch is not None:
                taken = take_whole_item(data, pos, fetch.items)
                if taken > pos:
                    pos = taken
                    continue
                if taken < 0:  # an ordinary item, not all here yet: wait for the rest
                    raise aioimaplib.IncompleteRead(None, data[pos:])
            if current_cmd is not None and current_cmd.wait_literal_data():
                need = current_cmd._expected_size - len(current_cmd._resp_literal_data)
                chunk = data[pos : pos + need]
                current_cmd.append_literal_data(chunk)
                pos += len(chunk)
                if current_cmd.wait_literal_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
                continue
            newline = data.find(aioimaplib.CRLF, pos)
            if newline == -1:
                raise aioimaplib.IncompleteRead(current_cmd, data[pos:])
            line = data[pos:newline]
            pos = newline + 2
            cmd = self._fetch_data(line, current_cmd) or line_handler(line, current_cmd)
            fetch = self._bulk_fetch()
            size = _literal_size(line)
            if size is not None:
                if cmd is None:
                    cmd = aioimaplib.Command("NIL", "unused")
                cmd.begin_literal_data(size)
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None

    def _continuation(self, line: bytes) -> None:
        """During AUTHENTICATE (always sent with its initial response) a continuation is
        the server's error challenge (XOAUTH2, RFC 7628): answer it with an empty
        response so the server sends its NO, instead of waiting until the timeout."""
        command = self.pending_sync_command
        if command is not None and command.name == "AUTHENTICATE":
            self.transport.write(aioimaplib.CRLF)
            return
        super()._continuation(line)

    def _bulk_fetch(self) -> _FetchCommand | None:
        """The FETCH whose answer is streaming in, when no other command is pending."""
        fetch: object = self.pending_async_commands.get("FETCH")
        if isinstance(fetch, _FetchCommand) and self.pending_sync_command is None:
            return fetch
        return None

    def _fetch_data(self, line: bytes, current_cmd: Any) -> _FetchCommand | None:
        """Fast path for the bulk of a FETCH answer: its untagged FETCH lines and the
        rest of an item after a literal go straight to the pending FETCH (what
        aioimaplib's general line handler would do, without its per-line work)."""
        fetch = self._bulk_fetch()
        if fetch is None:
            return None
        if current_cmd is not fetch:
            if not (line.startswith(b"* ") and _FETCH_DATA.match(line, 2)):
                return None
            line = line[2:]
        fetch.append_to_resp(line)
        return fetch


def _literal_size(line: bytes) -> int | None:
    """The size of the literal a line announces ("... {123}"), else None."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    digits = line[start + 1 : -1]
    return int(digits) if start != -1 and digits.isdigit() else None


_FETCH_DATA = re.compile(rb"\d+ FETCH \(")


class _Client(aioimaplib.IMAP4_SSL):  # type: ignore[misc]
    """An aioimaplib client on the fast protocol; TLS only when a context is given."""

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        running = loop or asyncio.get_running_loop()
        self.protocol = _FastProtocol(running, conn_lost_cb)
        self._client_task = running.create_task(
            running.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


def classify_refusal(what: str, lines: Sequence[bytes | bytearray], where: str) -> ConnectorError:
    """A NO/BAD answer as a ConnectorError, by its response code (RFC 5530)."""
    code = response_code(lines) or ""
    if code in _PERMANENT_CODES:
        return errors.permanent(_PERMANENT_CODES[code], f"{where}: {what} refused ({code})")
    if code in _TRANSIENT_CODES:
        return errors.transient(errors.SERVER_BUSY, f"{where}: {what} refused ({code}), try later")
    return errors.transient(errors.PROTOCOL_ERROR, f"{where}: {what} failed ({code or 'NO'})")


class ImapSession:
    """A logged-in IMAP connection. Create with `ImapSession.open(...)`."""

    def __init__(self, client: _Client, profile: ServerProfile, where: str) -> None:
        self.client = client
        self.profile = profile
        self.where = where
        self.selected: str | None = None
        self.commands = 0
        self.broken = False

    # -- opening ---------------------------------------------------------------

    @classmethod
    async def open(
        cls, profile: ServerProfile, username: str, secret: SecretProvider
    ) -> ImapSession:
        """Connect, secure, log in and enable QRESYNC where offered."""
        check_transport(profile)
        port = profile.effective_port()
        where = f"{username}@{profile.host}:{port}"
        context = tls_context(profile) if profile.security == TransportSecurity.TLS else None
        try:
            client = _Client(
                host=profile.host, port=port, timeout=profile.timeout_s, ssl_context=context
            )
            await client.wait_hello_from_server()
        except ssl.SSLCertVerificationError as exc:
            raise errors.permanent(
                errors.TLS_FAILED,
                f"{profile.host}:{port} certificate rejected: {exc.verify_message}",
            ) from None
        except ssl.SSLError as exc:
            raise errors.permanent(
                errors.TLS_FAILED, f"TLS with {profile.host}:{port} failed: {exc.reason}"
            ) from None
        except OSError as exc:
            raise errors.from_os_error(exc, f"{profile.host}:{port}") from None
        except (TimeoutError, aioimaplib.AioImapException):
            raise errors.transient(
                errors.TIMEOUT, f"{profile.host}:{port} sent no IMAP greeting in time"
            ) from None
        session = cls(client, profile, where)
        try:
            if profile.security == TransportSecurity.STARTTLS:
                await session._starttls()
            await session._login(username, secret)
            if "QRESYNC" in session.capabilities:
                await session._command("ENABLE", "QRESYNC")
        except BaseException:
            await session.close()
            raise
        return session

    async def _starttls(self) -> None:
        if "STARTTLS" not in self.capabilities:
            raise errors.permanent(
                errors.TLS_FAILED, f"{self.where}: the server does not offer STARTTLS"
            )
        protocol = self.client.protocol
        response = await self._run(
            "STARTTLS", protocol.execute(aioimaplib.Command("STARTTLS", protocol.new_tag()))
        )
        if response.result != "OK":
            raise classify_refusal("STARTTLS", response.lines, self.where)
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                protocol.transport,
                protocol,
                tls_context(self.profile),
                server_hostname=self.profile.host,
            )
        except ssl.SSLCertVerificationError as exc:
            raise errors.permanent(
                errors.TLS_FAILED, f"{self.where}: certificate rejected: {exc.verify_message}"
            ) from None
        protocol.transport = transport
        await self._run("CAPABILITY", protocol.capability())

    async def _login(self, username: str, secret: SecretProvider) -> None:
        try:
            credential = await secret()
        except LookupError as exc:
            raise errors.permanent(errors.CONFIGURATION, f"{self.where}: {exc}") from None
        if self.profile.auth == AuthMethod.XOAUTH2:
            response = await self._run(
                "AUTHENTICATE", self.client.protocol.xoauth2(username, credential)
            )
        elif self.profile.auth == AuthMethod.PLAIN or "LOGINDISABLED" in self.capabilities:
            response = await self._authenticate_plain(username, credential)
        else:
            response = await self._run("LOGIN", self.client.protocol.login(username, credential))
        if response.result != "OK":
            code = response_code(response.lines)
            if code in _TRANSIENT_CODES:
                raise errors.transient(
                    errors.SERVER_BUSY, f"{self.where}: login refused for now ({code})"
                )
            raise errors.permanent(
                errors.AUTHENTICATION_FAILED,
                f"{self.where}: authentication failed; check the mailbox's credentials",
            )
        if not any(b"CAPABILITY" in bytes(line) for line in response.lines):
            await self._run("CAPABILITY", self.client.protocol.capability())

    async def _authenticate_plain(self, username: str, password: str) -> Any:
        """SASL PLAIN with an initial response (RFC 4616, RFC 4959)."""
        protocol = self.client.protocol
        if "AUTH=PLAIN" not in self.capabilities:
            raise errors.permanent(
                errors.CONFIGURATION, f"{self.where}: the server does not offer AUTH=PLAIN"
            )
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
        command = aioimaplib.Command("AUTHENTICATE", protocol.new_tag(), "PLAIN", token)
        response = await self._run("AUTHENTICATE", protocol.execute(command, scrub=token))
        if response.result == "OK":
            protocol.state = aioimaplib.AUTH
        return response

    # -- commands --------------------------------------------------------------

    @property
    def capabilities(self) -> set[str]:
        """The server's capabilities (upper-case)."""
        return {str(c).upper() for c in self.client.protocol.capabilities}

    @property
    def condstore(self) -> bool:
        """True when flag changes can be read by mod-sequence."""
        return "CONDSTORE" in self.capabilities or "QRESYNC" in self.capabilities

    @property
    def qresync(self) -> bool:
        """True when expunges are reported as VANISHED UIDs."""
        return "QRESYNC" in self.capabilities

    async def _run(self, name: str, call: Awaitable[Any]) -> Any:
        self.commands += 1
        metrics.CONNECTOR_IMAP_COMMANDS.labels(name).inc()
        try:
            async with asyncio.timeout(self.profile.timeout_s):
                return await call
        except TimeoutError:
            self.broken = True
            raise errors.transient(
                errors.TIMEOUT, f"{self.where}: {name} got no answer in {self.profile.timeout_s}s"
            ) from None
        except aioimaplib.Abort as exc:
            self.broken = True
            raise errors.transient(errors.CONNECTION_LOST, f"{self.where}: {name}: {exc}") from None
        except OSError as exc:
            self.broken = True
            raise errors.from_os_error(exc, self.where) from None

    async def _command(self, name: str, *args: str) -> Sequence[bytes | bytearray]:
        protocol = self.client.protocol
        return await self._execute(aioimaplib.Command(name, protocol.new_tag(), *args))

    async def _execute(self, command: Any) -> Sequence[bytes | bytearray]:
        """Send a prepared command; its response lines, or a ConnectorError for a
        closed connection or a NO/BAD answer."""
        protocol = self.client.protocol
        if protocol.transport is None or protocol.transport.is_closing():
            self.broken = True
            raise errors.transient(errors.CONNECTION_LOST, f"{self.where}: connection closed")
        response = await self._run(command.name, protocol.execute(command))
        if response.result != "OK":
            raise classify_refusal(command.name, response.lines, self.where)
        lines: Sequence[bytes | bytearray] = response.lines
        return lines

    async def list_folders(self) -> list[ListedFolder]:
        """Every folder, with SPECIAL-USE attributes where the server has them."""
        if "SPECIAL-USE" in self.capabilities and "LIST-EXTENDED" in self.capabilities:
            lines = await self._command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
        else:
            lines = await self._command("LIST", '""', '"*"')
        return [f for f in parse_list(lines) if f.selectable]

    async def status(self, folder: str) -> dict[str, int]:
        """UIDVALIDITY, UIDNEXT, MESSAGES (and HIGHESTMODSEQ with CONDSTORE) of a folder."""
        items = "UIDVALIDITY UIDNEXT MESSAGES" + (" HIGHESTMODSEQ" if self.condstore else "")
        return parse_status(await self._command("STATUS", quote_mailbox(folder), f"({items})"))

    async def examine(self, folder: str, known: tuple[int, int, str] | None = None) -> FolderState:
        """Open `folder` read-only (EXAMINE never changes flags or \\Recent).

        `known` (uidvalidity, modseq, uid set) asks QRESYNC for what vanished
        and what changed since; ignored without QRESYNC.
        """
        args = [quote_mailbox(folder)]
        if known is not None and self.qresync and known[1] > 0:
            uidvalidity, modseq, uids = known
            args.append(f"(QRESYNC ({uidvalidity} {modseq}{' ' + uids if uids else ''}))")
        lines = await self._command("EXAMINE", *args)
        self.client.protocol.state = aioimaplib.SELECTED
        self.selected = folder
        return parse_select(lines)

    async def uid_search(self, *criteria: str) -> list[int]:
        """UID SEARCH in the selected folder."""
        tag = self.client.protocol.new_tag()
        return parse_search(
            await self._execute(aioimaplib.Command("SEARCH", tag, *criteria, prefix="UID"))
        )

    async def uid_fetch(self, uid_set: str, items: str) -> list[FetchedMessage]:
        """UID FETCH a bounded set in the selected folder."""
        tag = self.client.protocol.new_tag()
        command = _FetchCommand(tag, uid_set, items, prefix="UID")
        await self._execute(command)
        return command.messages()

    async def idle(self, timeout_s: float, interrupt: asyncio.Event) -> bool:
        """IDLE in the selected folder until the server reports a change (True), or
        `timeout_s` passes or `interrupt` is set (False). Ends IDLE before returning."""
        self.commands += 1
        metrics.CONNECTOR_IMAP_COMMANDS.labels("IDLE").inc()
        try:
            async with asyncio.timeout(self.profile.timeout_s):
                idle_done = await self.client.idle_start(timeout=timeout_s + self.profile.timeout_s)
        except (TimeoutError, aioimaplib.Abort) as exc:
            self.broken = True
            raise errors.transient(
                errors.PROTOCOL_ERROR, f"{self.where}: IDLE failed: {exc}"
            ) from None
        push = asyncio.ensure_future(self._wait_push())
        stop = asyncio.ensure_future(interrupt.wait())
        try:
            done, _ = await asyncio.wait(
                {push, stop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            changed = push in done and not push.cancelled() and push.result()
        finally:
            push.cancel()
            stop.cancel()
            if self.client.has_pending_idle():
                self.client.idle_done()
            try:
                async with asyncio.timeout(self.profile.timeout_s):
                    await idle_done
            except (TimeoutError, aioimaplib.AioImapException):
                self.broken = True
        return bool(changed)

    async def _wait_push(self) -> bool:
        while True:
            lines = await self.client.protocol.idle_queue.get()
            if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                return False
            if any(word in line for line in lines for word in _CHANGE_WORDS):
                return True

    async def close(self) -> None:
        """LOGOUT (best effort) and drop the connection."""
        protocol = self.client.protocol
        try:
            if not self.broken and protocol.transport is not None:
                async with asyncio.timeout(min(self.profile.timeout_s, 5.0)):
                    await protocol.logout()
        except Exception:  # the connection is going away either way
            pass
        finally:
            if protocol.transport is not None:
                protocol.transport.close()
            self.broken = True
