"""The blocking side of the EWS connector: exchangelib calls, each run in a worker
thread by connectors/ews.py, and the translation of exchangelib's failures into
ConnectorErrors.

exchangelib is configured fail-fast (`FailFast`): it never sleeps on a throttling
answer itself, so the asynchronous side can wait out ErrorServerBusy's back-off
hint without holding a thread, count it, and give up on the runtime's retry clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests.exceptions
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    OAUTH2,
    Account,
    Build,
    Configuration,
    Credentials,
    FailFast,
    OAuth2AuthorizationCodeCredentials,
    Version,
)
from exchangelib import errors as ews_errors
from exchangelib.autodiscover import AutodiscoverProtocol, autodiscover_cache
from exchangelib.folders import BaseFolder, FolderCollection
from exchangelib.items import ID_ONLY, Message
from exchangelib.properties import FieldPath, ItemId
from exchangelib.services import SyncFolderItems
from oauthlib.oauth2 import OAuth2Token

from connectors import errors
from connectors.errors import ConnectorError
from connectors.ews_act import UnsupportedItem, modified_occurrence_ids, to_payload
from connectors.ews_items import EwsMessage, SyncChange, SyncKind
from schemas.act import ActPayload, ActType
from schemas.mailbox import (
    ActSettings,
    EwsAccess,
    EwsAuth,
    EwsSettings,
    ExchangeVersion,
    FolderRole,
    MailboxConfig,
    ServerProfile,
    TransportSecurity,
)

FULL_FIELDS = (
    "mime_content",
    "message_id",
    "in_reply_to",
    "references",
    "conversation_index",
    "categories",
    "is_read",
    "datetime_received",
    "size",
)
"""What GetItem reads of a new message."""
PROPERTY_FIELDS = tuple(f for f in FULL_FIELDS if f != "mime_content")
"""What GetItem reads of a changed one (no MIME: updated events carry no body)."""
SYNC_FIELDS = ("size",)
"""What SyncFolderItems returns besides ItemId/ChangeKey (Size decides MIME or not)."""

_BUILDS = {
    ExchangeVersion.EXCHANGE_2010: Build(14, 3),
    ExchangeVersion.EXCHANGE_2013: Build(15, 0),
    ExchangeVersion.EXCHANGE_2016: Build(15, 1),
    ExchangeVersion.EXCHANGE_2019: Build(15, 2),
    ExchangeVersion.SUBSCRIPTION: Build(15, 2),
    ExchangeVersion.ONLINE: Build(15, 20),
}


class SyncStateExpired(Exception):
    """SyncFolderItems refused the sync state (ErrorInvalidSyncStateData)."""


class ServerBusy(Exception):
    """ErrorServerBusy: the server asks to wait `back_off_s` seconds (None: no hint)."""

    def __init__(self, back_off_s: float | None) -> None:
        super().__init__(f"server busy, back off {back_off_s}s")
        self.back_off_s = back_off_s


@dataclass(frozen=True)
class SyncPage:
    """One SyncFolderItems answer."""

    changes: list[SyncChange]
    sizes: dict[str, int]
    sync_state: str
    last: bool


@dataclass(frozen=True)
class EwsFolder:
    """A folder the connector reads: its name in events and cursors, role and EWS object."""

    name: str
    role: FolderRole
    folder: Any
    act: ActType | None = None  # an appointments / contacts / tasks folder (ews_act.py)


def endpoint(config: MailboxConfig, profile: ServerProfile, settings: EwsSettings) -> str:
    """The EWS URL: the setting, else https://HOST[:PORT]/EWS/Exchange.asmx (http
    only when the profile is plaintext and allows it); permanent error otherwise."""
    url = settings.server_url
    if url is None:
        plain = profile.security == TransportSecurity.PLAIN
        scheme = "http" if plain else "https"
        port = f":{profile.port}" if profile.port is not None else ""
        url = f"{scheme}://{profile.host}{port}/EWS/Exchange.asmx"
    return _checked_url(config, profile, url, "the EWS URL (ews.server_url)")


def occurrence_details(account: Any, items: Sequence[Any]) -> dict[str, Any]:
    """The modified occurrences of every series master in `items`, by item id, read
    with one GetItem for their subject and location (what `to_payload` needs besides
    the master); empty when no item is a series with modified occurrences."""
    occurrence_ids = modified_occurrence_ids(items)
    if not occurrence_ids:
        return {}
    details: dict[str, Any] = {}
    for got in account.fetch(
        [ItemId(id=i) for i in occurrence_ids],
        only_fields=["subject", "location"],
        chunk_size=len(occurrence_ids),
    ):
        if not isinstance(got, Exception):
            details[got.id] = got
    return details


def make_account(
    config: MailboxConfig,
    profile: ServerProfile,
    settings: EwsSettings,
    secret: str,
    concurrency: int,
    oauth: bool,
) -> Account:
    """An exchangelib Account for the mailbox (no request is sent yet unless
    autodiscover is on). `secret` is the password, or the bearer token when `oauth`."""
    username = config.credentials.username if config.credentials else config.email_address
    credentials: Any
    if oauth:
        token = OAuth2Token({"access_token": secret, "token_type": "Bearer"})
        credentials = OAuth2AuthorizationCodeCredentials(access_token=token)
        auth_type = OAUTH2
    else:
        credentials = Credentials(username, secret)
        auth_type = BASIC if settings.auth == EwsAuth.BASIC else NTLM
    version = Version(build=_BUILDS[settings.version])
    access = IMPERSONATION if settings.access == EwsAccess.IMPERSONATION else DELEGATE
    if settings.autodiscover:
        auto = Configuration(
            credentials=credentials,
            auth_type=auth_type,
            version=version,
            retry_policy=FailFast(),
            max_connections=concurrency,
        )
        return discovered_account(config, profile, settings, auto, access)
    configuration = Configuration(
        service_endpoint=endpoint(config, profile, settings),
        credentials=credentials,
        auth_type=auth_type,
        version=version,
        retry_policy=FailFast(),
        max_connections=concurrency,
    )
    return Account(
        config.email_address, config=configuration, autodiscover=False, access_type=access
    )


def discovered_account(
    config: MailboxConfig,
    profile: ServerProfile,
    settings: EwsSettings,
    auto: Configuration,
    access: str,
) -> Account:
    """An Account whose EWS URL exchangelib's Autodiscovery finds (SOAP GetUserSettings).

    With `autodiscover_url`, exchangelib's autodiscover cache is primed with that
    service for the address's domain, so Autodiscovery asks it first (and, should it
    stop answering, drops it and walks the documented steps: the domain, the
    autodiscover host, the http redirect, the DNS SRV record). Finding nothing is a
    permanent Configuration error naming the settings to use instead; an address
    the service does not know, a permanent MailboxMissing; a discovered http URL
    the profile does not allow, PlaintextRefused."""
    mailbox, address = config.mailbox_id, config.email_address
    if settings.autodiscover_url is not None:
        service = _checked_url(config, profile, settings.autodiscover_url, "autodiscover_url")
        prime_autodiscover(address, service, auto)
    try:
        account = Account(address, config=auto, autodiscover=True, access_type=access)
    except ews_errors.ErrorNonExistentMailbox:
        raise errors.permanent(
            errors.MAILBOX_MISSING,
            f"mailbox {mailbox}: Autodiscover does not know {address}; check the mailbox address",
        ) from None
    except (ews_errors.AutoDiscoverFailed, ews_errors.AutoDiscoverCircularRedirect) as exc:
        asked = f" (asked {settings.autodiscover_url} first)" if settings.autodiscover_url else ""
        raise errors.permanent(
            errors.CONFIGURATION,
            f"mailbox {mailbox}: Autodiscover found no EWS URL for {address}{asked}: "
            f"{_autodiscover_reason(exc)}. Set ews.server_url to the EWS URL (e.g. "
            "https://mail.example.com/EWS/Exchange.asmx) with autodiscover = false, or "
            "ews.autodiscover_url to the Autodiscover service",
        ) from None
    _checked_url(config, profile, account.protocol.service_endpoint, "the discovered EWS URL")
    return account


def prime_autodiscover(address: str, service: str, auto: Configuration) -> None:
    """Make `service` the Autodiscover endpoint exchangelib asks first for `address`'s
    domain (its autodiscover cache: in-process, and the shelve file it shares between
    processes)."""
    domain = address.rpartition("@")[2].lower()
    protocol = AutodiscoverProtocol(
        config=Configuration(
            service_endpoint=service,
            credentials=auto.credentials,
            auth_type=auto.auth_type,
            retry_policy=FailFast(),
        )
    )
    with autodiscover_cache:
        autodiscover_cache[(domain, auto.credentials)] = protocol


def _checked_url(config: MailboxConfig, profile: ServerProfile, url: str, what: str) -> str:
    """`url` when it is https, or http and the profile allows plaintext; else permanent."""
    if url.startswith("http://") and not profile.allow_plaintext:
        raise errors.permanent(
            errors.PLAINTEXT_REFUSED,
            f"mailbox {config.mailbox_id}: {what} is http (no TLS) and the server profile "
            "does not set allow_plaintext",
        )
    if not url.startswith(("http://", "https://")):
        raise errors.permanent(
            errors.CONFIGURATION, f"mailbox {config.mailbox_id}: {what} must be http(s)"
        )
    return url


def _autodiscover_reason(exc: Exception) -> str:
    """exchangelib's Autodiscover failure in a few words (its own text points at
    Microsoft's connectivity analyzer)."""
    text = str(exc).split(". If you think", maxsplit=1)[0].strip().rstrip(".")
    return text or type(exc).__name__


class EwsClient:
    """One mailbox's exchangelib Account and the calls the connector makes (blocking)."""

    def __init__(self, account: Account, settings: EwsSettings, where: str) -> None:
        self.account = account
        self.settings = settings
        self.where = where
        self._sync_fields = {
            FieldPath(field=Message.get_field_by_fieldname(name)) for name in SYNC_FIELDS
        }

    def folders(self) -> list[EwsFolder]:
        """Inbox, Sent Items (unless left out) and the configured folders; a permanent
        MailboxMissing for a configured folder the mailbox does not have."""
        account = self.account
        chosen = [EwsFolder(account.inbox.name or "Inbox", FolderRole.INBOX, account.inbox)]
        if self.settings.include_sent:
            chosen.append(
                EwsFolder(account.sent.name or "Sent Items", FolderRole.SENT, account.sent)
            )
        for path in self.settings.folders:
            folder = self._find_path(path)
            if all(folder.id != f.folder.id for f in chosen):
                chosen.append(EwsFolder(path, FolderRole.OTHER, folder))
        return chosen

    def _find_path(self, path: str) -> Any:
        parent: Any = self.account.msg_folder_root
        for part in [p for p in path.split("/") if p]:
            children = FolderCollection(account=self.account, folders=[parent]).find_folders()
            match = next(
                (c for c in children if isinstance(c, BaseFolder) and c.name == part), None
            )
            if match is None:
                raise errors.permanent(
                    errors.MAILBOX_MISSING,
                    f"folder {path!r} is configured but the mailbox has no such folder",
                    folder=path,
                )
            parent = match
        return parent

    def sync_page(self, folder: Any, sync_state: str | None) -> SyncPage:
        """One SyncFolderItems call (at most `sync_page` changes, ids and sizes)."""
        service = SyncFolderItems(account=self.account)
        changes: list[SyncChange] = []
        sizes: dict[str, int] = {}
        for kind, item in service.call(
            folder=folder,
            shape=ID_ONLY,
            additional_fields=self._sync_fields,
            sync_state=sync_state,
            ignore=None,
            max_changes_returned=self.settings.sync_page,
            sync_scope=None,
        ):
            if isinstance(item, Exception):
                raise item
            if kind == SyncFolderItems.READ_FLAG_CHANGE:
                item_id = item[0]
                changes.append(SyncChange(SyncKind.READ_FLAG, item_id.id, item_id.changekey or ""))
            elif kind == SyncFolderItems.DELETE:
                changes.append(SyncChange(SyncKind.DELETE, item.id, item.changekey or ""))
            else:
                changes.append(SyncChange(SyncKind(kind), item.id, item.changekey or ""))
                if getattr(item, "size", None):
                    sizes[item.id] = int(item.size)
        return SyncPage(
            changes, sizes, service.sync_state, bool(service.includes_last_item_in_range)
        )

    def get_messages(
        self, ids: Sequence[tuple[str, str]], full: bool
    ) -> list[EwsMessage | tuple[str, str]]:
        """GetItem for `ids` (id, ChangeKey) in one request: each an EwsMessage, or
        (id, EWS error code) for an item the server could not return."""
        fields = FULL_FIELDS if full else PROPERTY_FIELDS
        out: list[EwsMessage | tuple[str, str]] = []
        fetched = self.account.fetch(
            [ItemId(id=i, changekey=ck or None) for i, ck in ids],
            only_fields=list(fields),
            chunk_size=len(ids) or 1,
        )
        for (item_id, _), item in zip(ids, fetched, strict=True):
            if isinstance(item, Exception):
                out.append((item_id, type(item).__name__))
            else:
                out.append(to_message(item))
        return out

    def list_folder(self, folder: Any, fields: Sequence[str]) -> list[Any]:
        """Every item of a folder (SyncFolderItems from scratch) with `fields`."""
        extra = {FieldPath(field=Message.get_field_by_fieldname(name)) for name in fields}
        state: str | None = None
        items: list[Any] = []
        while True:
            service = SyncFolderItems(account=self.account)
            for kind, item in service.call(
                folder=folder,
                shape=ID_ONLY,
                additional_fields=extra,
                sync_state=state,
                ignore=None,
                max_changes_returned=self.settings.sync_page,
                sync_scope=None,
            ):
                if isinstance(item, Exception):
                    raise item
                if kind == SyncFolderItems.CREATE:
                    items.append(item)
            if service.includes_last_item_in_range or service.sync_state == state:
                return items
            state = service.sync_state

    def send(self, raw: bytes, save_copy: bool) -> None:
        """CreateItem with the MIME message: SendAndSaveCopy (a copy in Sent Items) or
        SendOnly."""
        message = Message(account=self.account, folder=self.account.sent, mime_content=raw)
        if save_copy:
            message.send_and_save()
        else:
            message.send()

    # -- appointments, contacts, tasks (connectors/ews_act.py maps them) ----------

    def act_folders(self, act: ActSettings) -> list[EwsFolder]:
        """The Calendar, Contacts and Tasks folders `act` enables: the distinguished
        folder, or the top-level folder named in the settings (permanent MailboxMissing
        when the mailbox has no such folder)."""
        chosen: list[EwsFolder] = []
        for kind, on, name, default in (
            (ActType.APPOINTMENT, act.appointments, act.calendar_folder, "calendar"),
            (ActType.CONTACT, act.contacts, act.contacts_folder, "contacts"),
            (ActType.TASK, act.tasks, act.tasks_folder, "tasks"),
        ):
            if not on:
                continue
            folder = self._find_path(name) if name else getattr(self.account, default)
            label = name or folder.name or default.title()
            chosen.append(EwsFolder(label, FolderRole.OTHER, folder, kind))
        return chosen

    def get_act_items(self, ids: Sequence[tuple[str, str]]) -> list[ActPayload | tuple[str, str]]:
        """GetItem (all properties) for appointments, contacts or tasks: each a payload,
        or (id, EWS error code or "UnsupportedItem") for an item that could not be read
        or mapped. A series master's modified occurrences are read too (one more
        GetItem) for their subject and location."""
        fetched = list(
            self.account.fetch(
                [ItemId(id=i, changekey=ck or None) for i, ck in ids], chunk_size=len(ids) or 1
            )
        )
        details = occurrence_details(
            self.account, [i for i in fetched if not isinstance(i, Exception)]
        )
        out: list[ActPayload | tuple[str, str]] = []
        for (item_id, _), item in zip(ids, fetched, strict=True):
            if isinstance(item, Exception):
                out.append((item_id, type(item).__name__))
                continue
            try:
                out.append(to_payload(item, details))
            except UnsupportedItem as exc:
                out.append((item_id, f"UnsupportedItem: {exc}"))
        return out

    def close(self) -> None:
        """Nothing to release per account: exchangelib pools HTTP sessions per endpoint
        and credentials, shared by every Account using them."""


def to_message(item: Any) -> EwsMessage:
    """An exchangelib Message (or other item) as the connector's EwsMessage."""
    mime = item.mime_content
    if isinstance(mime, str):
        mime = mime.encode()
    stamp = item.datetime_received
    # EWSDateTime is a datetime subclass; events carry plain UTC datetimes.
    received = datetime.fromtimestamp(stamp.timestamp(), UTC) if stamp is not None else None
    index = getattr(item, "conversation_index", None)
    return EwsMessage(
        item_id=item.id,
        change_key=item.changekey or "",
        mime=mime,
        message_id=getattr(item, "message_id", None),
        in_reply_to=item.in_reply_to,
        references=getattr(item, "references", None),
        conversation_index=bytes(index) if index else None,
        categories=tuple(item.categories or ()),
        is_read=bool(getattr(item, "is_read", False)),
        received=received,
        size=int(item.size or (len(mime) if mime else 0)),
    )


def classify(
    exc: BaseException, where: str, user: str
) -> ConnectorError | ServerBusy | SyncStateExpired:
    """What an exchangelib failure means for the connector: a ServerBusy to wait
    out, an expired sync state, or a permanent or transient ConnectorError whose
    message names the server and user (never a credential or the server's text)."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, ews_errors.ErrorInvalidSyncStateData):
        return SyncStateExpired()
    if isinstance(exc, ews_errors.ErrorServerBusy):
        text = str(exc)
        if "ErrorTimeoutExpired" in text:
            return _connection_error(text, where)
        return ServerBusy(exc.back_off)
    if isinstance(exc, ews_errors.ErrorTimeoutExpired):
        return _connection_error(str(exc), where)
    if isinstance(exc, ews_errors.UnauthorizedError):
        return errors.permanent(
            errors.AUTHENTICATION_FAILED,
            f"{where} refused the credentials of {user} (HTTP 401); fix the mailbox's "
            "credentials or the profile's auth",
        )
    if isinstance(
        exc,
        ews_errors.ErrorImpersonateUserDenied
        | ews_errors.ErrorImpersonationFailed
        | ews_errors.ErrorAccessDenied,
    ):
        return errors.permanent(
            errors.FORBIDDEN,
            f"{where}: {user} may not open this mailbox ({type(exc).__name__}); grant "
            "ApplicationImpersonation or delegate access, or change the access setting",
        )
    if isinstance(exc, ews_errors.ErrorNonExistentMailbox | ews_errors.ErrorFolderNotFound):
        return errors.permanent(
            errors.MAILBOX_MISSING, f"{where}: {type(exc).__name__}; check the mailbox address"
        )
    if type(exc).__name__ == "InsecureTransportError":  # oauthlib: OAuth over http
        return errors.permanent(
            errors.PLAINTEXT_REFUSED, f"{where}: OAuth tokens are only sent over https"
        )
    if isinstance(exc, requests.exceptions.SSLError) or (
        isinstance(exc, ews_errors.TransportError)
        and not isinstance(exc, ews_errors.ResponseMessageError)
        and "SSL" in str(exc)
    ):
        return errors.permanent(errors.TLS_FAILED, f"TLS with {where} failed; check ca_file")
    if isinstance(exc, requests.exceptions.Timeout):
        return errors.transient(errors.TIMEOUT, f"{where} did not answer in time")
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        return _connection_error(str(exc), where)
    if isinstance(
        exc, ews_errors.ErrorInternalServerTransientError | ews_errors.ErrorTooManyObjectsOpened
    ):
        return ServerBusy(None)
    return errors.transient(
        errors.PROTOCOL_ERROR, f"{where} answered {type(exc).__name__}; retrying later"
    )


def _connection_error(text: str, where: str) -> ConnectorError:
    if "refused" in text.lower():
        return errors.transient(
            errors.CONNECTION_REFUSED, f"{where} refused the connection; is it running?"
        )
    if "timed out" in text.lower() or "timeout" in text.lower():
        return errors.transient(errors.TIMEOUT, f"{where} did not answer in time")
    return errors.transient(errors.CONNECTION_LOST, f"connection to {where} failed")
