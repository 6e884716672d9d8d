"""How the outgoing sender hands one message to a server: SMTP, EWS or Graph.

Which transport a mailbox sends through (`choose`, documented in docs/exchange.md
and docs/graph.md):

1. `outgoing.server_profile` names a profile: its protocol decides — smtp
   (aiosmtplib), ews (CreateItem with SendAndSaveCopy, as the mailbox) or graph
   (sendMail with the MIME message, as the mailbox). EWS and Graph use the
   mailbox's own `ews` / `graph` settings and credentials (or
   `outgoing.credentials` for EWS).
2. No outgoing settings, and the mailbox is itself an EWS or Graph mailbox: it
   sends through its own server profile (an Exchange mailbox sends through
   Exchange, as Dynamics' server-side sync does).
3. Anything else cannot send (OutgoingNotConfigured).

Every transport keeps the sender's rule: `before_data` (which records and
acknowledges `sending`) runs just before the message leaves, and every failure
is a ConnectorError with an Outgoing* code — definite refusals transient or
permanent, and a failure once the message may have reached the server
OutgoingOutcomeUnknown, never retried blindly. `already_sent` answers the crash
question (is the Message-ID in Sent Items?): for EWS and Graph the server files
its own copy there, so the answer is reliable; for SMTP it is the mailbox's IMAP
Sent folder when it has one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import msgspec
from exchangelib.items import Message

from connectors import smtp
from connectors.auth import secret_provider
from connectors.errors import ConnectorError
from connectors.ews_client import EwsClient, make_account
from connectors.gate import GateRegistry
from connectors.graph_auth import GraphTokens
from connectors.graph_client import GraphClient, error_code
from connectors.imap_session import SecretProvider
from connectors.outgoing import envelope_recipients
from connectors.sent_copy import find_in_sent
from schemas import metrics
from schemas.errors import OutgoingErrorCode as Code
from schemas.errors import Severity
from schemas.ids import normalize_message_id
from schemas.mailbox import (
    AuthMethod,
    EwsSettings,
    GraphSettings,
    MailboxConfig,
    ServerProfile,
)
from schemas.mailbox import (
    Protocol as MailProtocol,
)
from schemas.outgoing import OutgoingEmail

log = logging.getLogger(__name__)
BeforeData = Callable[[list[str]], Awaitable[None]]
"""Called with the recipients just before the message leaves; the send stops if it raises."""
SENDING_PROTOCOLS = (MailProtocol.SMTP, MailProtocol.EWS, MailProtocol.GRAPH)


@dataclass(frozen=True)
class SendOutcome:
    """What the server took: the recipients it accepted, those it refused (address →
    reason), and whether it filed the copy in Sent Items itself (EWS, Graph)."""

    accepted: list[str]
    refused: dict[str, str] = field(default_factory=dict)
    saved_copy: bool = False


class SendTransport(Protocol):
    """One way to send a mailbox's email."""

    protocol: str
    profile_name: str

    async def send(
        self, email: OutgoingEmail, mime: bytes, before_data: BeforeData, timeout_s: float
    ) -> SendOutcome:
        """Send `mime` for `email`; raise ConnectorError with an Outgoing* code."""
        ...

    async def already_sent(self, message_id: str) -> bool | None:
        """Whether Sent Items holds `message_id` (None: cannot be checked); raises
        ConnectorError when the server cannot answer now."""
        ...


# -- choosing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The transport for a mailbox: its protocol and server profile."""

    protocol: MailProtocol
    profile_name: str
    profile: ServerProfile


def not_configured(message: str) -> ConnectorError:
    return ConnectorError(str(Code.NOT_CONFIGURED), message, Severity.PERMANENT)


def choose(config: MailboxConfig, profiles: dict[str, ServerProfile]) -> Choice | ConnectorError:
    """Which transport sends `config`'s email (see the module doc), or why none can."""
    mailbox = config.mailbox_id
    if config.outgoing is not None:
        name = config.outgoing.server_profile
        profile = profiles.get(name)
        if profile is None or profile.protocol not in SENDING_PROTOCOLS:
            known = ", ".join(
                sorted(n for n, p in profiles.items() if p.protocol in SENDING_PROTOCOLS)
            )
            return not_configured(
                f"mailbox {mailbox} sends through profile {name!r}, which is not an smtp, ews "
                f"or graph profile (such profiles: {known or 'none'})"
            )
        if profile.protocol == MailProtocol.GRAPH and profile.graph is None:
            return not_configured(f"profile {name!r} has no graph settings")
        return Choice(profile.protocol, name, profile)
    own = profiles.get(config.server_profile or "")
    if (
        config.protocol in (MailProtocol.EWS, MailProtocol.GRAPH)
        and own is not None
        and own.protocol == config.protocol
        and (own.protocol != MailProtocol.GRAPH or own.graph is not None)
    ):
        return Choice(own.protocol, config.server_profile or "", own)
    return not_configured(
        f"mailbox {mailbox} has no outgoing settings (outgoing.server_profile) and is not an "
        "ews or graph mailbox that could send through its own profile"
    )


def open_transport(
    config: MailboxConfig,
    choice: Choice,
    profiles: dict[str, ServerProfile],
    gates: GateRegistry,
) -> SendTransport:
    """The transport `choice` names, for `config`."""
    if choice.protocol == MailProtocol.EWS:
        return EwsTransport(config, choice, gates)
    if choice.protocol == MailProtocol.GRAPH:
        return GraphTransport(config, choice, gates)
    return SmtpTransport(config, choice, profiles, gates)


def outgoing_error(code: Code, message: str, severity: Severity) -> ConnectorError:
    return ConnectorError(str(code), message, severity)


def with_bcc(mime: bytes, email: OutgoingEmail) -> bytes:
    """`mime` with a Bcc header naming the email's Bcc recipients (EWS and Graph take
    the recipients from the MIME headers and strip Bcc before delivery; SMTP gets
    them as RCPT TO instead, so its message never carries the header)."""
    addresses = [b.address.strip() for b in email.bcc if b.address.strip()]
    if not addresses:
        return mime
    return b"Bcc: " + ", ".join(addresses).encode() + b"\r\n" + mime


# -- SMTP ---------------------------------------------------------------------------


class SmtpTransport:
    """SMTP through connectors/smtp.py; Sent-folder checks through the mailbox's IMAP."""

    protocol = "smtp"

    def __init__(
        self,
        config: MailboxConfig,
        choice: Choice,
        profiles: dict[str, ServerProfile],
        gates: GateRegistry,
    ) -> None:
        self.config = config
        self.profile_name = choice.profile_name
        self.profile = choice.profile
        self.profiles = profiles
        self.gates = gates

    async def send(
        self, email: OutgoingEmail, mime: bytes, before_data: BeforeData, timeout_s: float
    ) -> SendOutcome:
        gate = self.gates.gate(self.profile_name, self.profile.max_connections)
        async with gate.slot():
            delivery = await smtp.send(
                self.profile,
                smtp_login(self.config, self.profile),
                email.sender.address,
                envelope_recipients(email),
                mime,
                before_data,
                timeout_s,
            )
        return SendOutcome(delivery.accepted, dict(delivery.refused))

    async def already_sent(self, message_id: str) -> bool | None:
        imap = imap_access(self.config, self.profiles)
        if imap is None:
            return None
        profile, username, secret = imap
        gate = self.gates.gate(self.config.server_profile or "", profile.max_connections)
        async with gate.slot():
            return await find_in_sent(profile, self.config, username, secret, message_id)


def smtp_login(config: MailboxConfig, profile: ServerProfile) -> smtp.Login | None:
    """Who to log in to SMTP as: the outgoing credentials (AUTH required), else the
    mailbox's (used when the server offers AUTH)."""
    assert config.outgoing is not None
    credentials = config.outgoing.credentials or config.credentials
    if credentials is None:
        return None
    as_mailbox = msgspec.structs.replace(config, credentials=credentials)
    required = config.outgoing.credentials is not None
    return smtp.Login(credentials.username, secret_provider(as_mailbox, profile), required)


def imap_access(
    config: MailboxConfig | None, profiles: dict[str, ServerProfile]
) -> tuple[ServerProfile, str, SecretProvider] | None:
    """The IMAP profile, user and secret of a mailbox, or None when it has no IMAP."""
    if config is None or config.protocol != MailProtocol.IMAP or config.credentials is None:
        return None
    profile = profiles.get(config.server_profile or "")
    if profile is None or profile.protocol != MailProtocol.IMAP:
        return None
    return profile, config.credentials.username, secret_provider(config, profile)


# -- EWS ----------------------------------------------------------------------------

EWS_PERMANENT: dict[str, Code] = {
    "UnauthorizedError": Code.AUTHENTICATION_FAILED,
    "ErrorAccessDenied": Code.AUTHENTICATION_FAILED,
    "ErrorImpersonateUserDenied": Code.AUTHENTICATION_FAILED,
    "ErrorImpersonationFailed": Code.AUTHENTICATION_FAILED,
    "ErrorSendAsDenied": Code.SENDER_REFUSED,
    "ErrorNonExistentMailbox": Code.NOT_CONFIGURED,
    "ErrorInvalidRecipients": Code.NO_RECIPIENTS,
    "ErrorInvalidSmtpAddress": Code.NO_RECIPIENTS,
    "ErrorRecipientNotFound": Code.NO_RECIPIENTS,
    "ErrorMessageSizeExceeded": Code.REJECTED,
    "ErrorMimeContentConversionFailed": Code.REJECTED,
    "ErrorMimeContentInvalid": Code.REJECTED,
    "ErrorInvalidRequest": Code.REJECTED,
    "ErrorQuotaExceeded": Code.REJECTED,
    "InsecureTransportError": Code.TLS_FAILED,
    "SSLError": Code.TLS_FAILED,
}
"""Definite EWS refusals that retrying cannot fix, by exchangelib exception name."""
EWS_TRANSIENT = frozenset(
    {
        "ErrorServerBusy",
        "ErrorInternalServerTransientError",
        "ErrorTooManyObjectsOpened",
        "ErrorMailboxStoreUnavailable",
        "ErrorMailboxMoveInProgress",
        "ErrorConnectionFailed",
        "ErrorInternalServerError",
        "ErrorTimeoutExpired",
        "ConnectionError",
        "ConnectTimeout",
        "Timeout",
    }
)
"""Definite EWS answers (or no connection at all) meaning "not now": nothing was sent."""
_NOT_CONNECTED = ("NewConnectionError", "ConnectTimeout", "Connection refused", "Name or service")


def ews_failure(name: str, text: str, *, sent: bool, where: str) -> ConnectorError:
    """An exchangelib failure as an Outgoing* error. `sent`: the CreateItem request
    was (or may have been) on its way, so a lost connection or a timeout leaves the
    outcome unknown; a definite EWS error answer never does."""
    if name in EWS_PERMANENT:
        code = EWS_PERMANENT[name]
        return outgoing_error(
            code, f"{where}: the server refused the send ({name})", Severity.PERMANENT
        )
    connection = name in ("ErrorTimeoutExpired", "ConnectionError", "Timeout", "ReadTimeout") or (
        "Reraised from" in text
    )
    if connection and sent and not any(marker in text for marker in _NOT_CONNECTED):
        return outgoing_error(
            Code.OUTCOME_UNKNOWN,
            f"{where}: the message was sent but the server's answer was lost ({name}); it "
            "may have been delivered",
            Severity.PERMANENT,
        )
    if name in EWS_TRANSIENT or connection:
        return outgoing_error(Code.TRANSIENT, f"{where}: {name}; will retry", Severity.TRANSIENT)
    if name.startswith("Error"):  # another definite answer: nothing was sent
        return outgoing_error(
            Code.TRANSIENT, f"{where}: the server answered {name}; will retry", Severity.TRANSIENT
        )
    if sent:
        return outgoing_error(
            Code.OUTCOME_UNKNOWN,
            f"{where}: the send failed without a definite answer ({name}); it may have been "
            "delivered",
            Severity.PERMANENT,
        )
    return outgoing_error(Code.TRANSIENT, f"{where}: {name}; will retry", Severity.TRANSIENT)


class EwsTransport:
    """CreateItem (SendAndSaveCopy) as the mailbox: Exchange files the copy in Sent
    Items; crash checks list Sent Items with InternetMessageId."""

    protocol = "ews"

    def __init__(self, config: MailboxConfig, choice: Choice, gates: GateRegistry) -> None:
        outgoing = config.outgoing
        credentials = (outgoing.credentials if outgoing else None) or config.credentials
        self.config = msgspec.structs.replace(config, credentials=credentials)
        self.profile_name = choice.profile_name
        self.profile = choice.profile
        self.settings = config.ews or EwsSettings()
        self.gates = gates
        self.where = f"EWS {self.settings.server_url or self.profile.host}"

    async def _account(self) -> Any:
        """An exchangelib Account with Sent Items resolved (a request: nothing sent yet)."""
        if self.config.credentials is None and self.profile.auth != AuthMethod.XOAUTH2:
            raise not_configured(f"mailbox {self.config.mailbox_id} has no credentials for EWS")
        try:
            secret = await secret_provider(self.config, self.profile)()
        except LookupError as exc:
            raise not_configured(f"mailbox {self.config.mailbox_id}: {exc}") from None
        oauth = self.profile.auth == AuthMethod.XOAUTH2

        def connect() -> Any:
            account = make_account(self.config, self.profile, self.settings, secret, 1, oauth)
            account.sent.id  # noqa: B018 (GetFolder: resolves and caches Sent Items)
            return account

        try:
            return await asyncio.to_thread(connect)
        except ConnectorError as exc:
            raise outgoing_error(Code.NOT_CONFIGURED, exc.message, Severity.PERMANENT) from None
        except Exception as exc:
            raise ews_failure(type(exc).__name__, str(exc), sent=False, where=self.where) from None

    async def send(
        self, email: OutgoingEmail, mime: bytes, before_data: BeforeData, timeout_s: float
    ) -> SendOutcome:
        recipients = envelope_recipients(email)
        gate = self.gates.gate(self.profile_name, self.profile.max_connections)
        async with gate.slot():
            account = await self._account()

            def create() -> None:
                Message(
                    account=account, folder=account.sent, mime_content=with_bcc(mime, email)
                ).send_and_save()

            await before_data(recipients)
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.to_thread(create)
            except TimeoutError:
                raise ews_failure(
                    "Timeout", f"no answer within {timeout_s}s", sent=True, where=self.where
                ) from None
            except Exception as exc:
                raise ews_failure(
                    type(exc).__name__, str(exc), sent=True, where=self.where
                ) from None
        return SendOutcome(recipients, saved_copy=True)

    async def already_sent(self, message_id: str) -> bool | None:
        wanted = normalize_message_id(message_id)
        gate = self.gates.gate(self.profile_name, self.profile.max_connections)
        async with gate.slot():
            account = await self._account()

            def look() -> bool:
                client = EwsClient(account, self.settings, self.where)
                listed = client.list_folder(account.sent, ["message_id"])
                return any(normalize_message_id(i.message_id) == wanted for i in listed)

            try:
                return await asyncio.to_thread(look)
            except Exception as exc:
                raise ews_failure(
                    type(exc).__name__, str(exc), sent=False, where=self.where
                ) from None


# -- Graph --------------------------------------------------------------------------

GRAPH_PERMANENT: dict[str, Code] = {
    "ErrorInvalidRecipients": Code.NO_RECIPIENTS,
    "ErrorRecipientNotFound": Code.NO_RECIPIENTS,
    "ErrorMessageSizeExceeded": Code.REJECTED,
    "ErrorMimeContentInvalidBase64String": Code.REJECTED,
    "ErrorMimeContentConversionFailed": Code.REJECTED,
    "ErrorSendAsDenied": Code.SENDER_REFUSED,
    "ErrorAccessDenied": Code.AUTHENTICATION_FAILED,
    "ErrorQuotaExceeded": Code.REJECTED,
}
"""Graph error codes that retrying cannot fix."""


def graph_failure(status: int, code: str, where: str) -> ConnectorError:
    """A final sendMail answer other than 202 as an Outgoing* error: 429 and 503 say
    "not now" (nothing sent); 500, 502 and 504 leave the outcome unknown (the
    request may have been processed); 4xx are permanent."""
    said = f"{where}: HTTP {status}" + (f" {code}" if code else "")
    if status in (429, 503):
        return outgoing_error(Code.TRANSIENT, f"{said}; will retry", Severity.TRANSIENT)
    if status >= 500:
        return outgoing_error(
            Code.OUTCOME_UNKNOWN,
            f"{said}: the server may have sent the message before failing",
            Severity.PERMANENT,
        )
    if code in GRAPH_PERMANENT:
        return outgoing_error(GRAPH_PERMANENT[code], said, Severity.PERMANENT)
    if status == 401:
        return outgoing_error(
            Code.AUTHENTICATION_FAILED, f"{said}; the token was refused", Severity.PERMANENT
        )
    if status == 403:
        return outgoing_error(
            Code.AUTHENTICATION_FAILED,
            f"{said}; grant the app Mail.Send for this mailbox",
            Severity.PERMANENT,
        )
    if status == 404:
        return outgoing_error(Code.NOT_CONFIGURED, f"{said}; check the user", Severity.PERMANENT)
    if status == 413:
        return outgoing_error(
            Code.REJECTED, f"{said}; the message is too large", Severity.PERMANENT
        )
    return outgoing_error(Code.REJECTED, said, Severity.PERMANENT)


class GraphTransport:
    """sendMail with the MIME message as the mailbox (Exchange files it in Sent
    Items); crash checks `$filter` Sent Items on internetMessageId."""

    protocol = "graph"
    lookups = 3
    lookup_pause_s = 2.0
    """sendMail is asynchronous: the Sent Items copy may lag; looked for this many times."""

    def __init__(self, config: MailboxConfig, choice: Choice, gates: GateRegistry) -> None:
        self.config = config
        self.profile_name = choice.profile_name
        self.profile = choice.profile
        self.settings = config.graph or GraphSettings()
        self.user = self.settings.user or config.email_address
        self.gates = gates
        self.where = f"graph sendMail for {self.user}"

    def _client(self) -> GraphClient:
        return GraphClient(
            self.profile, GraphTokens(self.profile, self.settings, self.user), self.user
        )

    async def _token(self, client: GraphClient) -> str:
        try:
            return await client.tokens.token()
        except ConnectorError as exc:
            code = Code.AUTHENTICATION_FAILED if exc.permanent else Code.TRANSIENT
            raise outgoing_error(code, f"{self.where}: {exc.message}", exc.severity) from None

    async def send(
        self, email: OutgoingEmail, mime: bytes, before_data: BeforeData, timeout_s: float
    ) -> SendOutcome:
        recipients = envelope_recipients(email)
        client = self._client()
        url = client.url(f"/users/{quote(self.user, safe='@')}/sendMail")
        gate = self.gates.gate(self.profile_name, self.profile.max_connections)
        try:
            async with gate.slot():
                token = await self._token(client)
                http = client._client()
                headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
                await before_data(recipients)
                try:
                    async with asyncio.timeout(timeout_s):
                        response = await http.post(
                            url, content=base64.b64encode(with_bcc(mime, email)), headers=headers
                        )
                except httpx.ConnectError:
                    raise outgoing_error(
                        Code.TRANSIENT,
                        f"{self.where}: cannot connect; will retry",
                        Severity.TRANSIENT,
                    ) from None
                except (httpx.TransportError, TimeoutError) as exc:
                    raise outgoing_error(
                        Code.OUTCOME_UNKNOWN,
                        f"{self.where}: the request was sent but the answer was lost "
                        f"({type(exc).__name__}); it may have been delivered",
                        Severity.PERMANENT,
                    ) from None
                metrics.CONNECTOR_HTTP_REQUESTS.labels("graph", "send").inc()
        finally:
            await client.close()
        if response.status_code == 202 or 200 <= response.status_code < 300:
            return SendOutcome(recipients, saved_copy=True)
        raise graph_failure(response.status_code, error_code(response.content), self.where)

    async def already_sent(self, message_id: str) -> bool | None:
        literal = f"<{normalize_message_id(message_id)}>".replace("'", "''")
        client = self._client()
        path = f"/users/{quote(self.user, safe='@')}/mailFolders/sentitems/messages"
        params = {"$filter": f"internetMessageId eq '{literal}'", "$select": "id"}
        try:
            for attempt in range(self.lookups):
                gate = self.gates.gate(self.profile_name, self.profile.max_connections)
                async with gate.slot():
                    body = await client.get(path, kind="find", params=params)
                found = msgspec.json.decode(body, type=dict[str, Any]).get("value") or []
                if found:
                    return True
                if attempt + 1 < self.lookups:
                    await asyncio.sleep(self.lookup_pause_s)
            return False
        finally:
            await client.close()
