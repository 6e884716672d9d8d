"""One SMTP transaction through aiosmtplib: connect safely, log in, MAIL FROM, RCPT TO,
then — only after the caller's `before_data` hook returned (the sender records
`sending` there) — DATA.

Failures become ConnectorError with an Outgoing* code (schemas/errors.py):

- before DATA nothing can have been delivered: a 4xx answer, a refused or lost
  connection or a timeout is transient; a 5xx answer, refused credentials or
  a TLS problem is permanent;
- an answer to DATA is definite too (250 accepted, 4xx transient, 5xx
  rejected);
- anything else once DATA began — the connection lost, no answer in time —
  leaves the outcome unknown (the server may have queued the message), so it
  is `OutgoingOutcomeUnknown` and the caller must not simply send again.

Messages name the server, the user and the SMTP reply code, never a password
or token, and never the server's answer to AUTH.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiosmtplib

from connectors.errors import ConnectorError
from connectors.imap_session import SecretProvider
from connectors.transport import check_transport, tls_context
from schemas import metrics
from schemas.errors import OutgoingErrorCode as Code
from schemas.errors import Severity
from schemas.mailbox import AuthMethod, ServerProfile, TransportSecurity

BeforeData = Callable[[list[str]], Awaitable[None]]
"""Called with the accepted recipients just before DATA; the send stops if it raises."""

_REPLY_TEXT_CHARS = 160


@dataclass(frozen=True)
class Login:
    """Who to authenticate as, and where the password (or XOAUTH2 token) comes from."""

    username: str
    secret: SecretProvider
    required: bool = True
    """False: skip AUTH when the server offers none (credentials inherited from the
    mailbox, e.g. a relay on loopback that takes mail without login)."""


@dataclass(frozen=True)
class Delivery:
    """What the server accepted: the recipients it took, and those it refused
    (address → "code text")."""

    accepted: list[str]
    refused: dict[str, str] = field(default_factory=dict)


def outgoing_error(code: Code, message: str, severity: Severity) -> ConnectorError:
    """A ConnectorError carrying an Outgoing* code."""
    return ConnectorError(str(code), message, severity)


def classify_reply(code: int, what: str, where: str, text: str = "") -> ConnectorError:
    """A definite SMTP refusal: 4xx transient, 5xx permanent with the code of `what`
    ("MAIL FROM", "RCPT TO", "DATA")."""
    detail = f"{where}: {what} refused ({code}{' ' + _short(text) if text else ''})"
    if 400 <= code < 500:
        return outgoing_error(Code.TRANSIENT, detail + "; will retry", Severity.TRANSIENT)
    permanent = {"MAIL FROM": Code.SENDER_REFUSED, "RCPT TO": Code.NO_RECIPIENTS}
    return outgoing_error(permanent.get(what, Code.REJECTED), detail, Severity.PERMANENT)


def no_recipients(refused: dict[str, int], where: str) -> ConnectorError:
    """Every recipient refused: transient when any refusal was temporary (4xx)."""
    codes = ", ".join(f"{address} {code}" for address, code in sorted(refused.items()))
    if any(400 <= code < 500 for code in refused.values()):
        return outgoing_error(
            Code.TRANSIENT,
            f"{where}: no recipient accepted for now ({codes}); will retry",
            Severity.TRANSIENT,
        )
    message = f"{where}: every recipient refused ({codes})" if refused else "no recipients"
    return outgoing_error(Code.NO_RECIPIENTS, message, Severity.PERMANENT)


def _offers(client: aiosmtplib.SMTP, mechanism: str) -> bool:
    return mechanism in {m.lower() for m in client.server_auth_methods}


def _short(text: str) -> str:
    return " ".join(text.split())[:_REPLY_TEXT_CHARS]


async def send(
    profile: ServerProfile,
    login: Login | None,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    before_data: BeforeData,
    timeout_s: float,
) -> Delivery:
    """Deliver `message` to the profile's server for `recipients`; see the module doc
    for what each failure means. `timeout_s` bounds the whole transaction."""
    if not recipients:
        raise no_recipients({}, "")
    where = f"{login.username + '@' if login else ''}{profile.host}:{profile.effective_port()}"
    transaction = _Transaction(profile, login, where)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            await transaction.open()
            accepted, refused = await transaction.envelope(sender, recipients)
            await before_data(accepted)
            await transaction.data(message)
    except TimeoutError:
        raise transaction.interrupted(f"no answer within {timeout_s}s") from None
    finally:
        transaction.close()
        metrics.OUTGOING_SEND_SECONDS.observe(time.monotonic() - started)
    return Delivery(accepted, {a: f"{c} {_short(t)}".strip() for a, (c, t) in refused.items()})


class _Transaction:
    """The steps of one SMTP session, each turning aiosmtplib's exceptions into
    ConnectorErrors; `in_data` tells whether DATA began (the outcome turns
    uncertain there)."""

    def __init__(self, profile: ServerProfile, login: Login | None, where: str) -> None:
        self.profile = profile
        self.login = login
        self.where = where
        self.in_data = False
        self.client: aiosmtplib.SMTP | None = None

    async def open(self) -> None:
        """Connect (TLS or STARTTLS as the profile says) and authenticate."""
        profile = self.profile
        try:
            check_transport(profile)
            context = tls_context(profile) if profile.security != TransportSecurity.PLAIN else None
        except ConnectorError as exc:
            raise outgoing_error(Code.TLS_FAILED, exc.message, Severity.PERMANENT) from None
        self.client = aiosmtplib.SMTP(
            hostname=profile.host,
            port=profile.effective_port(),
            use_tls=profile.security == TransportSecurity.TLS,
            start_tls=profile.security == TransportSecurity.STARTTLS,
            tls_context=context,
            timeout=profile.timeout_s,
        )
        try:
            await self.client.connect()
        except ssl.SSLCertVerificationError as exc:
            raise self._tls(f"certificate rejected: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise self._tls(f"TLS failed: {exc.reason}") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise classify_reply(exc.code, "connection", self.where, exc.message) from None
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost(exc) from None
        except aiosmtplib.SMTPException as exc:  # e.g. STARTTLS not offered
            raise self._tls(_short(str(exc))) from None
        if self.login is not None:
            await self._authenticate(self.login)

    async def _greet(self) -> None:
        """EHLO unless connecting (STARTTLS) already did: AUTH needs its answer."""
        assert self.client is not None
        if self.client.last_ehlo_response is None:
            try:
                await self.client.ehlo()
            except aiosmtplib.SMTPResponseException as exc:
                raise classify_reply(exc.code, "EHLO", self.where, exc.message) from None

    async def _authenticate(self, login: Login) -> None:
        assert self.client is not None
        await self._greet()
        if not login.required and not self.client.server_auth_methods:
            return
        try:
            secret = await login.secret()
        except LookupError as exc:
            raise outgoing_error(
                Code.NOT_CONFIGURED, f"{self.where}: {exc}", Severity.PERMANENT
            ) from None
        try:
            if self.profile.auth == AuthMethod.XOAUTH2:
                await self.client.auth_xoauth2(login.username, secret)
            elif self.profile.auth == AuthMethod.PLAIN or _offers(self.client, "plain"):
                # One mechanism, not each in turn: a refused password is refused once
                # (servers lock accounts out after a few failures).
                await self.client.auth_plain(login.username, secret)
            elif _offers(self.client, "login"):
                await self.client.auth_login(login.username, secret)
            else:
                await self.client.login(login.username, secret)
        except aiosmtplib.SMTPAuthenticationError as exc:
            if 400 <= exc.code < 500:
                raise outgoing_error(
                    Code.TRANSIENT,
                    f"{self.where}: login refused for now ({exc.code}); will retry",
                    Severity.TRANSIENT,
                ) from None
            raise outgoing_error(
                Code.AUTHENTICATION_FAILED,
                f"{self.where}: authentication failed ({exc.code}); check the credentials",
                Severity.PERMANENT,
            ) from None
        except (aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost(exc) from None
        except aiosmtplib.SMTPException:
            raise outgoing_error(
                Code.AUTHENTICATION_FAILED,
                f"{self.where}: the server offers no usable AUTH method "
                "(use TLS or STARTTLS, or send without credentials)",
                Severity.PERMANENT,
            ) from None

    async def envelope(
        self, sender: str, recipients: Sequence[str]
    ) -> tuple[list[str], dict[str, tuple[int, str]]]:
        """MAIL FROM and one RCPT TO per recipient: the accepted ones and the refused
        ones with their reply; raises when none is accepted."""
        assert self.client is not None
        try:
            await self.client.mail(sender)
        except aiosmtplib.SMTPSenderRefused as exc:
            raise classify_reply(exc.code, "MAIL FROM", self.where, exc.message) from None
        except (aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost(exc) from None
        accepted: list[str] = []
        refused: dict[str, tuple[int, str]] = {}
        for recipient in recipients:
            try:
                await self.client.rcpt(recipient)
                accepted.append(recipient)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[recipient] = (exc.code, exc.message)
            except (aiosmtplib.SMTPServerDisconnected, OSError) as exc:
                raise self._lost(exc) from None
        if not accepted:
            raise no_recipients({a: code for a, (code, _) in refused.items()}, self.where)
        return accepted, refused

    async def data(self, message: bytes) -> None:
        """DATA: returns when the server accepted the message (250)."""
        assert self.client is not None
        self.in_data = True
        try:
            await self.client.data(message)
        except aiosmtplib.SMTPDataError as exc:
            raise classify_reply(exc.code, "DATA", self.where, exc.message) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self.interrupted(_short(str(exc)) or type(exc).__name__) from None
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            async with asyncio.timeout(min(self.profile.timeout_s, 5.0)):
                await self.client.quit()

    def interrupted(self, why: str) -> ConnectorError:
        """A failure without a definite answer: transient before DATA, unknown after."""
        if not self.in_data:
            return outgoing_error(
                Code.TRANSIENT, f"{self.where}: {why}; will retry", Severity.TRANSIENT
            )
        return outgoing_error(
            Code.OUTCOME_UNKNOWN,
            f"{self.where}: the message data was sent but the server's answer was lost "
            f"({why}); it may have been delivered",
            Severity.PERMANENT,
        )

    def _lost(self, exc: BaseException) -> ConnectorError:
        if isinstance(exc, ConnectionRefusedError):
            return self.interrupted("connection refused; is the server running?")
        reason = getattr(exc, "strerror", None) or _short(str(exc)) or type(exc).__name__
        return self.interrupted(f"connection failed: {reason}")

    def _tls(self, why: str) -> ConnectorError:
        return outgoing_error(Code.TLS_FAILED, f"{self.where}: {why}", Severity.PERMANENT)

    def close(self) -> None:
        """Drop the connection (after QUIT when the transaction completed)."""
        if self.client is not None and self.client.is_connected:
            self.client.close()
