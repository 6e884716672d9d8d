"""Connector failures, classified: permanent ones disable the mailbox at once,
transient ones are retried (reconnect with backoff, then on the retry clock).

Messages are one line a person can act on and never carry a secret: build them
from host names, folder names and server response codes, never from
credentials or raw server text that could echo them.
"""

from __future__ import annotations

from schemas.errors import Severity


class ConnectorError(Exception):
    """A failure reading a mailbox, with a stable `code` and a severity."""

    def __init__(
        self,
        code: str,
        message: str,
        severity: Severity,
        *,
        folder: str | None = None,
        item_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.severity = severity
        self.folder = folder
        self.item_id = item_id

    @property
    def permanent(self) -> bool:
        """True when retrying cannot help (a person must fix something)."""
        return self.severity == Severity.PERMANENT


def permanent(code: str, message: str, **where: str | None) -> ConnectorError:
    """A failure retrying cannot fix: bad credentials, missing mailbox, forbidden, TLS refused."""
    return ConnectorError(code, message, Severity.PERMANENT, **where)


def transient(code: str, message: str, **where: str | None) -> ConnectorError:
    """A failure that may pass: connection refused or lost, timeout, server busy."""
    return ConnectorError(code, message, Severity.TRANSIENT, **where)


AUTHENTICATION_FAILED = "AuthenticationFailed"
MAILBOX_MISSING = "MailboxMissing"
FORBIDDEN = "Forbidden"
PLAINTEXT_REFUSED = "PlaintextRefused"
TLS_FAILED = "TlsFailed"
CONFIGURATION = "Configuration"
CONNECTION_REFUSED = "ConnectionRefused"
CONNECTION_LOST = "ConnectionLost"
TIMEOUT = "Timeout"
SERVER_BUSY = "ServerBusy"
PROTOCOL_ERROR = "ProtocolError"
RETRIES_EXHAUSTED = "RetriesExhausted"
INTERNAL_ERROR = "InternalError"  # an unexpected exception in tidings itself (a bug)


def from_os_error(exc: OSError, server: str) -> ConnectorError:
    """Classify a socket-level failure talking to `server` ("host:port")."""
    if isinstance(exc, ConnectionRefusedError):
        return transient(CONNECTION_REFUSED, f"{server} refused the connection; is it running?")
    if isinstance(exc, TimeoutError):
        return transient(TIMEOUT, f"{server} did not answer in time")
    reason = exc.strerror or type(exc).__name__
    return transient(CONNECTION_LOST, f"connection to {server} failed: {reason}")
