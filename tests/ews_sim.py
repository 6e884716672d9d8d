"""An Exchange Web Services (EWS) SOAP endpoint on loopback, holding mailboxes in memory,
for connector tests and benchmarks. Neither Exchange nor Microsoft 365 runs here: this
answers the operations the EWS connector uses with the documented XML, so the real
client library (exchangelib) drives it exactly as it drives Exchange.

    with EwsSimulator() as sim:
        sim.add_user("svc", "pw", impersonator=True)
        box = sim.add_mailbox("alice@northwind.example", password="pw")
        box.deliver("Inbox", raw_mime)                 # a created item
        sim.url                                        # http://127.0.0.1:PORT/EWS/Exchange.asmx

Operations: GetFolder and FindFolder (distinguished ids, shallow traversal),
SyncFolderItems (Create / Update / Delete / ReadFlagChange, SyncState,
MaxChangesReturned paging, IncludesLastItemInRange), GetItem (MimeContent,
InternetMessageId, InReplyTo, References, ConversationIndex, Categories, IsRead, Size,
DateTimeReceived, ItemId/ChangeKey) and CreateItem (SendAndSaveCopy / SendOnly /
SaveOnly with MimeContent: delivered to simulated recipients, a copy in Sent Items).

Knobs: `expire_sync_states()` (the next SyncFolderItems with an older state answers
ErrorInvalidSyncStateData), `throttle(n, backoff_ms)` (the next n requests get the SOAP
fault ErrorServerBusy with BackOffMilliseconds in MessageXml), wrong credentials (HTTP
401), `ExchangeImpersonation` checked against users granted the ApplicationImpersonation
role (else ErrorImpersonateUserDenied), delegate access checked against each mailbox's
delegates (else ErrorAccessDenied). Authentication: HTTP Basic, OAuth bearer tokens
(`add_token`) and a genuine NTLMv2 handshake per connection (see the NTLM section).
`hold_sends(at)` holds the next sending CreateItem so a test can kill the client
there (see SendHold).

SOAP Autodiscover (Exchange 2010 and later) on the same port: GetUserSettings at
/autodiscover/autodiscover.svc (`sim.autodiscover_url`), authenticated like EWS,
answers each known mailbox's ExternalEwsUrl (this simulator's EWS URL, or
`autodiscover_ews_url`), InternalEwsUrl, AutoDiscoverSMTPAddress,
EwsSupportedSchemas, UserDisplayName and CasVersion (other requested settings as
UserSettingErrors SettingIsNotAvailable), an unknown one InvalidUser.

Run alone (for benchmarks in another process):
    python -m tests.ews_sim --user alice@northwind.example --password pw --messages 5000
prints the URL on its first line and serves until stdin closes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.parser
import email.policy
import email.utils
import hashlib
import hmac
import http.server
import itertools
import os
import socketserver
import struct
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from xml.sax.saxutils import escape

from lxml import etree
from spnego._ntlm_raw.crypto import hmac_md5, md4, ntowfv2
from spnego._ntlm_raw.messages import (
    Authenticate,
    AvId,
    Challenge,
    FileTime,
    MessageType,
    Negotiate,
    NegotiateFlags,
    TargetInfo,
)

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
PATH = "/EWS/Exchange.asmx"
AUTODISCOVER_PATH = "/autodiscover/autodiscover.svc"

DISTINGUISHED = {
    "root": ("Root", None),
    "msgfolderroot": ("Top of Information Store", "root"),
    "inbox": ("Inbox", "msgfolderroot"),
    "sentitems": ("Sent Items", "msgfolderroot"),
    "deleteditems": ("Deleted Items", "msgfolderroot"),
    "drafts": ("Drafts", "msgfolderroot"),
    "calendar": ("Calendar", "msgfolderroot"),
    "contacts": ("Contacts", "msgfolderroot"),
    "tasks": ("Tasks", "msgfolderroot"),
}

_HEAD = (
    '<?xml version="1.0" encoding="utf-8"?>'
    f'<s:Envelope xmlns:s="{SOAP}"><s:Header>'
    '<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" '
    f'MinorBuildNumber="6" Version="V2017_07_11" xmlns:h="{T}"/></s:Header><s:Body>'
)
_TAIL = "</s:Body></s:Envelope>"
_BUSY_TEXT = "The server cannot service this request right now. Try again later."


def _t(name: str) -> str:
    return f"{{{T}}}{name}"


def _m(name: str) -> str:
    return f"{{{M}}}{name}"


class SoapFault(Exception):
    """An answer as a SOAP fault (HTTP 500) with an EWS response code."""

    def __init__(self, code: str, text: str, message_xml: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.message_xml = message_xml


class ResponseError(Exception):
    """A response message with ResponseClass="Error" (the request itself was fine)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass
class SimItem:
    """One message in a folder; `version` bumps on every change (the ChangeKey)."""

    item_id: str
    mime: bytes
    received: datetime
    message_id: str = ""
    in_reply_to: str = ""
    references: str = ""
    conversation_index: bytes = b""
    subject: str = ""
    categories: list[str] = field(default_factory=list)
    is_read: bool = False
    version: int = 1
    created_seq: int = 0
    changed_seq: int = 0  # last content change (an Update)
    read_seq: int = 0  # last read-flag change (a ReadFlagChange)
    deleted_seq: int = 0  # 0 while the item exists

    @property
    def change_key(self) -> str:
        return (
            "CQAAABYAAAD"
            + base64.b64encode(f"{self.item_id[-12:]}v{self.version}".encode()).decode()
        )

    @property
    def last_seq(self) -> int:
        return max(self.created_seq, self.changed_seq, self.read_seq, self.deleted_seq)


@dataclass
class SimFolder:
    """A mail folder: items (deleted ones kept as tombstones for sync) and a change clock."""

    folder_id: str
    name: str
    parent_id: str | None
    distinguished: str | None = None
    items: dict[str, SimItem] = field(default_factory=dict)
    seq: int = 0
    epoch: int = 0

    def live(self) -> list[SimItem]:
        return [i for i in self.items.values() if not i.deleted_seq]


def _mime_headers(raw: bytes) -> dict[str, str]:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    return {k.lower(): str(v) for k, v in parsed.items()}


class SimMailbox:
    """One mailbox: folders by id, its owner's address, who may open it as a delegate."""

    def __init__(self, sim: EwsSimulator, address: str) -> None:
        self.sim = sim
        self.address = address
        self.delegates: set[str] = set()
        self.folders: dict[str, SimFolder] = {}
        self.by_distinguished: dict[str, SimFolder] = {}
        for did, (name, parent) in DISTINGUISHED.items():
            parent_id = self.by_distinguished[parent].folder_id if parent else None
            folder = SimFolder(sim.new_id("AQMk", address), name, parent_id, did)
            self.folders[folder.folder_id] = folder
            self.by_distinguished[did] = folder

    def folder(self, name: str) -> SimFolder:
        """A folder by display name (or distinguished id)."""
        if name.lower() in self.by_distinguished:
            return self.by_distinguished[name.lower()]
        for folder in self.folders.values():
            if folder.name == name:
                return folder
        raise KeyError(name)

    def add_folder(self, name: str, parent: str = "msgfolderroot") -> SimFolder:
        """A custom folder below `parent` (a distinguished id or display name)."""
        with self.sim.lock:
            folder = SimFolder(
                self.sim.new_id("AQMk", self.address), name, self.folder(parent).folder_id
            )
            self.folders[folder.folder_id] = folder
            return folder

    def deliver(
        self,
        folder: str,
        raw: bytes,
        *,
        categories: Iterable[str] = (),
        conversation_index: bytes = b"",
        received: datetime | None = None,
        is_read: bool = False,
    ) -> SimItem:
        """Put a message into `folder`; its Message-ID etc. come from the MIME headers."""
        headers = _mime_headers(raw)
        with self.sim.lock:
            target = self.folder(folder)
            target.seq += 1
            index = conversation_index
            if not index and headers.get("thread-index"):
                try:
                    index = base64.b64decode(headers["thread-index"])
                except binascii.Error:
                    index = b""
            item = SimItem(
                item_id=self.sim.new_id("AAMk", self.address),
                mime=raw,
                received=received or datetime.now(UTC),
                message_id=headers.get("message-id", "").strip(),
                in_reply_to=headers.get("in-reply-to", "").strip(),
                references=" ".join(headers.get("references", "").split()),
                conversation_index=index,
                subject=headers.get("subject", ""),
                categories=list(categories),
                is_read=is_read,
                created_seq=target.seq,
            )
            target.items[item.item_id] = item
            self.sim.streaming.notify(self, target, item, "NewMailEvent", "CreatedEvent")
            return item

    def _find(self, item_id: str) -> tuple[SimFolder, SimItem]:
        for folder in self.folders.values():
            item = folder.items.get(item_id)
            if item is not None and not item.deleted_seq:
                return folder, item
        raise KeyError(item_id)

    def update(
        self, item_id: str, *, categories: list[str] | None = None, is_read: bool | None = None
    ) -> SimItem:
        """Change an item: categories are a content change (Update, new ChangeKey), the
        read flag alone a ReadFlagChange."""
        with self.sim.lock:
            folder, item = self._find(item_id)
            folder.seq += 1
            item.version += 1
            if categories is not None:
                item.categories = list(categories)
                item.changed_seq = folder.seq
            if is_read is not None:
                item.is_read = is_read
                item.read_seq = folder.seq
            self.sim.streaming.notify(self, folder, item, "ModifiedEvent")
            return item

    def delete(self, item_id: str) -> None:
        """Hard-delete an item (a Delete change for synced clients)."""
        with self.sim.lock:
            folder, item = self._find(item_id)
            folder.seq += 1
            item.deleted_seq = folder.seq
            self.sim.streaming.notify(self, folder, item, "DeletedEvent")

    def move(self, item_id: str, target: str) -> SimItem:
        """Move an item: deleted from its folder, created (new id) in `target`."""
        with self.sim.lock:
            _, item = self._find(item_id)
            self.delete(item_id)
            return self.deliver(
                target,
                item.mime,
                categories=item.categories,
                conversation_index=item.conversation_index,
                received=item.received,
                is_read=item.is_read,
            )


HOLD_MAX_S = 60.0
"""The longest a held send waits for its release."""


@dataclass
class SendHold:
    """The next sending CreateItem (SendAndSaveCopy or SendOnly), held at `at`:

    - "answer": the server has taken the message (sent, its copy filed in Sent
      Items) and holds the HTTP answer;
    - "arrival": the request is held unprocessed, then dropped without an answer
      and without sending anything (as a request that never reached Exchange).

    `reached` is set once the request is held; the handler waits for `release`
    (at most HOLD_MAX_S); `dropped` counts requests dropped at arrival."""

    at: str
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    dropped: int = 0


@dataclass
class RequestRecord:
    """What one request was: the operation, who authenticated, whom it impersonated."""

    operation: str
    user: str
    impersonated: str | None


class EwsSimulator:
    """The endpoint: users, mailboxes and the HTTP server thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.lock = threading.RLock()
        self.users: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.impersonators: set[str] = set()
        self.mailboxes: dict[str, SimMailbox] = {}
        self.requests: list[RequestRecord] = []
        self.sent: list[bytes] = []
        self.ntlm_logons: list[tuple[str, str]] = []  # (user, domain) per NTLM handshake
        self.busy_remaining = 0
        self.busy_backoff_ms = 0
        self.busy_operations: set[str] | None = None
        self.busy_answers = 0
        self.state_epoch_floor: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._server = _Server((host, port), _Handler)
        self._server.sim = self
        self.streaming = StreamingState(self)
        self.act_invitations: list[tuple[str, str]] = []  # (attendee, subject): write side
        self.act_cancellations: list[tuple[str, str]] = []
        self.send_hold: SendHold | None = None
        self.autodiscover_ews_url: str | None = None  # None: this simulator's EWS URL
        self._thread: threading.Thread | None = None

    # -- setup -------------------------------------------------------------------

    def new_id(self, prefix: str, address: str) -> str:
        """An opaque EWS id (base64 like Exchange's), unique in this simulator."""
        n = next(self._counter)
        digest = hashlib.blake2b(f"{address}/{n}".encode(), digest_size=48).digest()
        return prefix + base64.b64encode(n.to_bytes(6, "big") + digest).decode()

    def add_user(self, name: str, password: str, *, impersonator: bool = False) -> None:
        """A logon (user name for Basic or NTLM auth); `impersonator` grants
        ApplicationImpersonation."""
        with self.lock:
            self.users[name.lower()] = password
            if impersonator:
                self.impersonators.add(name.lower())

    def add_token(self, token: str, user: str) -> None:
        """An OAuth bearer token that authenticates as `user`."""
        with self.lock:
            self.tokens[token] = user.lower()

    def add_mailbox(
        self, address: str, password: str | None = None, delegates: Iterable[str] = ()
    ) -> SimMailbox:
        """A mailbox; with `password` its owner can log on as `address`."""
        with self.lock:
            box = SimMailbox(self, address.lower())
            box.delegates.update(d.lower() for d in delegates)
            self.mailboxes[address.lower()] = box
            if password is not None:
                self.users[address.lower()] = password
            return box

    def expire_sync_states(self) -> None:
        """Every sync state handed out so far becomes invalid (ErrorInvalidSyncStateData)."""
        with self.lock:
            for box in self.mailboxes.values():
                for folder in box.folders.values():
                    folder.epoch += 1

    def throttle(
        self, requests: int, backoff_ms: int, operations: Iterable[str] | None = None
    ) -> None:
        """Answer the next `requests` requests (of `operations`, or any) with ErrorServerBusy."""
        with self.lock:
            self.busy_remaining = requests
            self.busy_backoff_ms = backoff_ms
            self.busy_operations = set(operations) if operations is not None else None

    def hold_sends(self, at: str = "answer") -> SendHold:
        """Hold the next sending CreateItem at `at` ("answer" or "arrival", see SendHold)."""
        if at not in ("answer", "arrival"):
            raise ValueError(f"hold_sends: at must be 'answer' or 'arrival', not {at!r}")
        with self.lock:
            self.send_hold = SendHold(at)
            return self.send_hold

    def take_send_hold(self, body: bytes) -> SendHold | None:
        """The pending hold when `body` is a sending CreateItem (the hold is used up)."""
        if self.send_hold is None or b"CreateItem" not in body:
            return None
        try:
            envelope = etree.fromstring(body)
        except etree.XMLSyntaxError:
            return None
        create = envelope.find(f"{{{SOAP}}}Body/{_m('CreateItem')}")
        sending = ("SendAndSaveCopy", "SendOnly")
        if create is None or create.get("MessageDisposition") not in sending:
            return None
        with self.lock:
            hold, self.send_hold = self.send_hold, None
        return hold

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{PATH}"

    @property
    def autodiscover_url(self) -> str:
        """The SOAP Autodiscover endpoint (GetUserSettings)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{AUTODISCOVER_PATH}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ews-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def operations(self, name: str) -> list[RequestRecord]:
        """The requests of one operation so far."""
        with self.lock:
            return [r for r in self.requests if r.operation == name]

    # -- request handling --------------------------------------------------------

    def authenticate(self, header: str | None) -> str | None:
        """The user an Authorization header proves, or None (answer 401)."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user = user.lower().split("\\")[-1]
            with self.lock:
                return user if self.users.get(user) == password and password else None
        if scheme.lower() == "bearer":
            with self.lock:
                return self.tokens.get(value.strip())
        return None

    def answer(self, user: str, body: bytes) -> tuple[int, bytes]:
        """HTTP status and SOAP envelope for one request."""
        try:
            envelope = etree.fromstring(body)
        except etree.XMLSyntaxError:
            return 500, _fault("ErrorSchemaValidation", "The request is not valid XML.")
        header = envelope.find(f"{{{SOAP}}}Header")
        request = envelope.find(f"{{{SOAP}}}Body")
        if request is None or len(request) == 0:
            return 500, _fault("ErrorSchemaValidation", "The request has no body.")
        operation = etree.QName(request[0]).localname
        impersonated = None
        if header is not None:
            address = header.find(
                f"{_t('ExchangeImpersonation')}/{_t('ConnectingSID')}/{_t('PrimarySmtpAddress')}"
            )
            if address is not None and address.text:
                impersonated = address.text.strip().lower()
        with self.lock:
            self.requests.append(RequestRecord(operation, user, impersonated))
            busy = self.busy_remaining > 0 and (
                self.busy_operations is None or operation in self.busy_operations
            )
            if busy:
                self.busy_remaining -= 1
                self.busy_answers += 1
                message_xml = (
                    f'<t:MessageXml xmlns:t="{T}"><t:Value Name="BackOffMilliseconds">'
                    f"{self.busy_backoff_ms}</t:Value></t:MessageXml>"
                )
                return 500, _fault("ErrorServerBusy", _BUSY_TEXT, message_xml)
        handler = _OPERATIONS.get(operation)
        if handler is None:
            return 500, _fault(
                "ErrorInvalidRequest", f"{operation} is not supported by this simulator."
            )
        try:
            if impersonated is not None and user not in self.impersonators:
                raise SoapFault(
                    "ErrorImpersonateUserDenied",
                    "The account does not have permission to impersonate the requested user.",
                )
            context = _Context(self, user, impersonated)
            with self.lock:
                messages = handler(context, request[0])
        except SoapFault as fault:
            return 500, _fault(fault.code, fault.text, fault.message_xml)
        return 200, (
            f'{_HEAD}<m:{operation}Response xmlns:m="{M}" xmlns:t="{T}"><m:ResponseMessages>'
            f"{messages}</m:ResponseMessages></m:{operation}Response>{_TAIL}"
        ).encode()


def _fault(code: str, text: str, message_xml: str = "") -> bytes:
    return (
        f'{_HEAD}<s:Fault><faultcode xmlns:a="{T}">a:{code}</faultcode>'
        f'<faultstring xml:lang="en-US">{escape(text)}</faultstring><detail>'
        f'<e:ResponseCode xmlns:e="{E}">{code}</e:ResponseCode>'
        f'<e:Message xmlns:e="{E}">{escape(text)}</e:Message>{message_xml}'
        f"</detail></s:Fault>{_TAIL}"
    ).encode()


def _success(operation: str, inner: str) -> str:
    return (
        f'<m:{operation}ResponseMessage ResponseClass="Success">'
        f"<m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{operation}ResponseMessage>"
    )


def _error(operation: str, error: ResponseError, empty: str = "") -> str:
    return (
        f'<m:{operation}ResponseMessage ResponseClass="Error">'
        f"<m:MessageText>{escape(error.text)}</m:MessageText>"
        f"<m:ResponseCode>{error.code}</m:ResponseCode>"
        f"<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{empty}</m:{operation}ResponseMessage>"
    )


@dataclass
class _Context:
    """One request: the simulator, the authenticated user and whom it impersonates."""

    sim: EwsSimulator
    user: str
    impersonated: str | None

    def mailbox_for(self, address: str | None) -> SimMailbox:
        """The mailbox a request addresses, checked against the caller's rights."""
        target = (address or self.impersonated or self.user).lower()
        box = self.sim.mailboxes.get(target)
        if box is None:
            raise ResponseError(
                "ErrorNonExistentMailbox", f"No mailbox with SMTP address {target}."
            )
        if self.impersonated is not None:
            if target != self.impersonated:
                raise ResponseError(
                    "ErrorAccessDenied", "Access is denied. Check credentials and try again."
                )
            return box
        if target != self.user and self.user not in box.delegates:
            raise ResponseError(
                "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        return box

    def folder(self, elem: etree._Element) -> tuple[SimMailbox, SimFolder]:
        """The folder a FolderId / DistinguishedFolderId element names."""
        if etree.QName(elem).localname == "DistinguishedFolderId":
            address = elem.findtext(f"{_t('Mailbox')}/{_t('EmailAddress')}")
            box = self.mailbox_for(address)
            folder = box.by_distinguished.get(elem.get("Id", ""))
            if folder is None:
                raise ResponseError(
                    "ErrorFolderNotFound", "The specified folder could not be found in the store."
                )
            return box, folder
        folder_id = elem.get("Id", "")
        for box in self.sim.mailboxes.values():
            found = box.folders.get(folder_id)
            if found is not None:
                return self.mailbox_for(box.address), found
        raise ResponseError(
            "ErrorFolderNotFound", "The specified folder could not be found in the store."
        )

    def item(self, item_id: str) -> tuple[SimMailbox, SimFolder, SimItem]:
        for box in self.sim.mailboxes.values():
            for folder in box.folders.values():
                item = folder.items.get(item_id)
                if item is not None and not item.deleted_seq:
                    return self.mailbox_for(box.address), folder, item
        raise ResponseError("ErrorItemNotFound", "The specified object was not found in the store.")


def _children(request: etree._Element, name: str) -> list[etree._Element]:
    found = request.find(_m(name))
    return list(found) if found is not None else []


def _folder_xml(box: SimMailbox, folder: SimFolder) -> str:
    parent = f'<t:ParentFolderId Id="{folder.parent_id}"/>' if folder.parent_id else ""
    children = sum(1 for f in box.folders.values() if f.parent_id == folder.folder_id)
    live = folder.live()
    unread = sum(1 for i in live if not i.is_read)
    klass = "" if folder.distinguished == "root" else "<t:FolderClass>IPF.Note</t:FolderClass>"
    if folder.distinguished in _ACT_FOLDER_CLASSES:
        klass = f"<t:FolderClass>{_ACT_FOLDER_CLASSES[folder.distinguished]}</t:FolderClass>"
    return (
        f'<t:Folder><t:FolderId Id="{folder.folder_id}" '
        f'ChangeKey="AQAAABYAAAA{folder.seq}"/>{parent}'
        f"{klass}<t:DisplayName>{escape(folder.name)}</t:DisplayName>"
        f"<t:TotalCount>{len(live)}</t:TotalCount><t:ChildFolderCount>{children}</t:ChildFolderCount>"
        f"<t:UnreadCount>{unread}</t:UnreadCount></t:Folder>"
    )


def _get_folder(ctx: _Context, request: etree._Element) -> str:
    out = []
    for elem in _children(request, "FolderIds"):
        try:
            box, folder = ctx.folder(elem)
            out.append(_success("GetFolder", f"<m:Folders>{_folder_xml(box, folder)}</m:Folders>"))
        except ResponseError as error:
            out.append(_error("GetFolder", error, "<m:Folders/>"))
    return "".join(out)


def _find_folder(ctx: _Context, request: etree._Element) -> str:
    out = []
    for elem in _children(request, "ParentFolderIds"):
        try:
            box, parent = ctx.folder(elem)
            deep = request.get("Traversal") == "Deep"
            found = _descendants(box, parent.folder_id, deep)
            body = "".join(_folder_xml(box, f) for f in found)
            out.append(
                _success(
                    "FindFolder",
                    f'<m:RootFolder IndexedPagingOffset="{len(found)}" '
                    f'TotalItemsInView="{len(found)}" '
                    f'IncludesLastItemInRange="true"><t:Folders>{body}</t:Folders></m:RootFolder>',
                )
            )
        except ResponseError as error:
            out.append(_error("FindFolder", error))
    return "".join(out)


def _descendants(box: SimMailbox, parent_id: str, deep: bool) -> list[SimFolder]:
    children = [f for f in box.folders.values() if f.parent_id == parent_id]
    if not deep:
        return children
    return children + [d for c in children for d in _descendants(box, c.folder_id, True)]


def _requested_fields(shape: etree._Element | None) -> list[str]:
    if shape is None:
        return []
    fields = [f.get("FieldURI", "") for f in shape.iter(_t("FieldURI"))]
    if shape.findtext(_t("BaseShape")) in {"Default", "AllProperties"}:
        fields += ["item:Subject", "item:DateTimeReceived", "item:Size", "message:IsRead"]
    return fields


def _item_xml(item: SimItem, folder: SimFolder, fields: Iterable[str]) -> str:
    """A t:Message with the requested properties, in the schema's element order."""
    if isinstance(item, SimActItem):
        return item.xml()
    wanted = set(fields)
    parts = [f'<t:Message><t:ItemId Id="{item.item_id}" ChangeKey="{item.change_key}"/>']
    for uri, render in _ITEM_FIELDS:
        if uri in wanted:
            parts.append(render(item, folder))
    parts.append("</t:Message>")
    return "".join(parts)


def _strings(values: list[str]) -> str:
    return "".join(f"<t:String>{escape(v)}</t:String>" for v in values)


_ITEM_FIELDS: list[tuple[str, Callable[[SimItem, SimFolder], str]]] = [
    (
        "item:MimeContent",
        lambda i, f: (
            f'<t:MimeContent CharacterSet="UTF-8">{base64.b64encode(i.mime).decode()}'
            "</t:MimeContent>"
        ),
    ),
    ("item:ParentFolderId", lambda i, f: f'<t:ParentFolderId Id="{f.folder_id}"/>'),
    ("item:ItemClass", lambda i, f: "<t:ItemClass>IPM.Note</t:ItemClass>"),
    ("item:Subject", lambda i, f: f"<t:Subject>{escape(i.subject)}</t:Subject>"),
    (
        "item:DateTimeReceived",
        lambda i, f: (
            f"<t:DateTimeReceived>{i.received.strftime('%Y-%m-%dT%H:%M:%SZ')}</t:DateTimeReceived>"
        ),
    ),
    ("item:Size", lambda i, f: f"<t:Size>{len(i.mime)}</t:Size>"),
    (
        "item:Categories",
        lambda i, f: (
            f"<t:Categories>{_strings(i.categories)}</t:Categories>" if i.categories else ""
        ),
    ),
    (
        "item:InReplyTo",
        lambda i, f: f"<t:InReplyTo>{escape(i.in_reply_to)}</t:InReplyTo>" if i.in_reply_to else "",
    ),
    (
        "message:ConversationIndex",
        lambda i, f: (
            f"<t:ConversationIndex>{base64.b64encode(i.conversation_index).decode()}</t:ConversationIndex>"
            if i.conversation_index
            else ""
        ),
    ),
    (
        "message:InternetMessageId",
        lambda i, f: (
            f"<t:InternetMessageId>{escape(i.message_id)}</t:InternetMessageId>"
            if i.message_id
            else ""
        ),
    ),
    ("message:IsRead", lambda i, f: f"<t:IsRead>{'true' if i.is_read else 'false'}</t:IsRead>"),
    (
        "message:References",
        lambda i, f: f"<t:References>{escape(i.references)}</t:References>" if i.references else "",
    ),
]


def _encode_state(folder: SimFolder, base: int, position: int) -> str:
    """A sync state: changes are reckoned against `base` (where the client's last
    complete sync ended) for items changed after `position` (what earlier pages of
    this round returned)."""
    text = f"H4sI|{folder.folder_id}|{folder.epoch}|{base}|{position}"
    return base64.b64encode(text.encode()).decode()


def _decode_state(folder: SimFolder, state: str | None) -> tuple[int, int]:
    """(base, position) of a sync state; ResponseError when it is not this folder's or
    it expired."""
    if not state:
        return 0, 0
    try:
        _, folder_id, epoch, base, position = base64.b64decode(state).decode().split("|")
        if folder_id != folder.folder_id or int(epoch) != folder.epoch:
            raise ValueError(state)
        return int(base), int(position)
    except ValueError:
        raise ResponseError(
            "ErrorInvalidSyncStateData",
            "Synchronization state data is corrupt or otherwise invalid.",
        ) from None


def _sync_folder_items(ctx: _Context, request: etree._Element) -> str:
    try:
        target = request.find(_m("SyncFolderId"))
        if target is None or len(target) == 0:
            raise ResponseError("ErrorInvalidRequest", "SyncFolderId is required.")
        _, folder = ctx.folder(target[0])
        base, since = _decode_state(folder, request.findtext(_m("SyncState")))
        limit = max(1, min(512, int(request.findtext(_m("MaxChangesReturned")) or 512)))
        ignore = {e.get("Id") for e in request.iterfind(f"{_m('Ignore')}/{_t('ItemId')}")}
        fields = _requested_fields(request.find(_m("ItemShape")))
    except ResponseError as error:
        # Exchange answers an error with an empty SyncState and IncludesLastItemInRange
        # (both optional in the schema; exchangelib 5 reads them before the code).
        empty = "<m:SyncState/><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>"
        return _error("SyncFolderItems", error, empty)
    touched = sorted(
        (i for i in folder.items.values() if i.last_seq > since and i.item_id not in ignore),
        key=lambda i: i.last_seq,
    )
    changes: list[str] = []
    position = since
    for item in touched:
        change = _change(item, folder, base, fields)
        if change is not None:
            if len(changes) == limit:
                break
            changes.append(change)
        position = item.last_seq
    last = len(changes) < limit or position >= folder.seq
    if last:
        base = position = folder.seq
    return _success(
        "SyncFolderItems",
        f"<m:SyncState>{_encode_state(folder, base, position)}</m:SyncState>"
        f"<m:IncludesLastItemInRange>{'true' if last else 'false'}</m:IncludesLastItemInRange>"
        f"<m:Changes>{''.join(changes)}</m:Changes>",
    )


def _change(item: SimItem, folder: SimFolder, since: int, fields: list[str]) -> str | None:
    """The change an item shows a client synced up to `since` (None: nothing to show)."""
    if item.created_seq > since:
        return (
            None if item.deleted_seq else f"<t:Create>{_item_xml(item, folder, fields)}</t:Create>"
        )
    if item.deleted_seq:
        return f'<t:Delete><t:ItemId Id="{item.item_id}" ChangeKey="{item.change_key}"/></t:Delete>'
    if item.changed_seq > since:
        return f"<t:Update>{_item_xml(item, folder, fields)}</t:Update>"
    return (
        f'<t:ReadFlagChange><t:ItemId Id="{item.item_id}" ChangeKey="{item.change_key}"/>'
        f"<t:IsRead>{'true' if item.is_read else 'false'}</t:IsRead></t:ReadFlagChange>"
    )


def _get_item(ctx: _Context, request: etree._Element) -> str:
    fields = _requested_fields(request.find(_m("ItemShape")))
    out = []
    for elem in request.iterfind(f"{_m('ItemIds')}/{_t('ItemId')}"):
        try:
            _, folder, item = ctx.item(elem.get("Id", ""))
            out.append(_success("GetItem", f"<m:Items>{_item_xml(item, folder, fields)}</m:Items>"))
        except ResponseError as error:
            out.append(_error("GetItem", error, "<m:Items/>"))
    return "".join(out)


def _create_item(ctx: _Context, request: etree._Element) -> str:
    disposition = request.get("MessageDisposition", "SaveOnly")
    out = []
    for message in request.iterfind(f"{_m('Items')}/{_t('Message')}"):
        mime = message.findtext(_t("MimeContent"))
        if not mime:
            out.append(
                _error(
                    "CreateItem",
                    ResponseError(
                        "ErrorInvalidRequest", "Only MimeContent messages are simulated."
                    ),
                    "<m:Items/>",
                )
            )
            continue
        raw = base64.b64decode(mime)
        try:
            sender = ctx.mailbox_for(None)
            saved = request.find(f"{_m('SavedItemFolderId')}")
            if disposition in {"SendAndSaveCopy", "SaveOnly"}:
                folder_name = "drafts" if disposition == "SaveOnly" else "sentitems"
                if saved is not None and len(saved):
                    sender, folder = ctx.folder(saved[0])
                    folder_name = folder.distinguished or folder.name
                sender.deliver(folder_name, raw, is_read=True)
        except ResponseError as error:
            out.append(_error("CreateItem", error, "<m:Items/>"))
            continue
        if disposition != "SaveOnly":
            ctx.sim.sent.append(raw)
            headers = _mime_headers(raw)
            recipients = email.utils.getaddresses([headers.get(h, "") for h in ("to", "cc", "bcc")])
            for _, address in recipients:
                box = ctx.sim.mailboxes.get(address.lower())
                if box is not None:
                    box.deliver("inbox", raw)
        out.append(_success("CreateItem", "<m:Items/>"))
    return "".join(out)


_OPERATIONS: dict[str, Callable[[_Context, Any], str]] = {
    "GetFolder": _get_folder,
    "FindFolder": _find_folder,
    "SyncFolderItems": _sync_folder_items,
    "GetItem": _get_item,
    "CreateItem": _create_item,
}


# -- appointments, contacts, tasks (Exchange → CRM) ------------------------------
#
# Calendar, Contacts and Tasks are distinguished folders; their items are
# `SimActItem`s holding their properties (`props`), rendered as t:CalendarItem,
# t:Contact or t:Task with the documented elements whatever shape is asked for
# (SyncFolderItems Create/Update, GetItem). A recurring series is one master
# item with t:Recurrence, t:ModifiedOccurrences (each occurrence also an item
# GetItem can read, kept in a hidden folder no sync lists, as Exchange keeps
# exceptions out of SyncFolderItems) and t:DeletedOccurrences.
#   item = add_calendar_item(box, uid="040000...", subject="Review", start=..., end=...,
#                            organizer=("alice@x", "Alice"), required=[("bob@x", "Bob")],
#                            categories=["Tracked to CRM"], recurrence=weekly(...))
#   update_act_item(box, item.item_id, subject="New")   # an Update, new ChangeKey

_ACT_FOLDER_CLASSES = {
    "calendar": "IPF.Appointment",
    "contacts": "IPF.Contact",
    "tasks": "IPF.Task",
}
_ACT_ELEMENTS = {"calendar": "CalendarItem", "contacts": "Contact", "tasks": "Task"}
Person = tuple[str, str]  # (address, display name)


def _ews_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SimActItem(SimItem):
    """An appointment, contact or task: its EWS element name and properties."""

    element: str = "CalendarItem"
    props: dict[str, Any] = field(default_factory=dict)
    modified_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def xml(self) -> str:
        render = {"CalendarItem": _calendar_xml, "Contact": _contact_xml, "Task": _task_xml}
        inner = render[self.element](self)
        return (
            f'<t:{self.element}><t:ItemId Id="{self.item_id}" ChangeKey="{self.change_key}"/>'
            f"{inner}</t:{self.element}>"
        )


def _text(name: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    return f"<t:{name}>{escape(str(value))}</t:{name}>"


def _item_common(item: SimActItem) -> str:
    props = item.props
    body = props.get("body", "")
    parts = [
        _text("Subject", props.get("subject", "")),
        _text("Sensitivity", props.get("sensitivity", "Normal")),
        f'<t:Body BodyType="Text">{escape(body)}</t:Body>' if body else "",
        f"<t:Categories>{_strings(item.categories)}</t:Categories>" if item.categories else "",
        _text("Importance", props.get("importance")),
        _extended_xml(item),
        _text("LastModifiedTime", _ews_time(item.modified_at)),
    ]
    return "".join(parts)


def _mailbox_xml(person: Person) -> str:
    address, name = person
    return (
        f"<t:Mailbox><t:Name>{escape(name)}</t:Name><t:EmailAddress>{escape(address)}"
        "</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType></t:Mailbox>"
    )


def _attendees_xml(name: str, people: list[tuple[str, str, str]]) -> str:
    if not people:
        return ""
    inner = "".join(
        f"<t:Attendee>{_mailbox_xml((a, n))}<t:ResponseType>{r}</t:ResponseType></t:Attendee>"
        for a, n, r in people
    )
    return f"<t:{name}>{inner}</t:{name}>"


def weekly(days: str, start: str, *, count: int | None = None, end: str | None = None) -> str:
    """A t:Recurrence: weekly on `days` ("Monday Wednesday") from `start` (YYYY-MM-DD),
    `count` occurrences, until `end`, or without end."""
    pattern = (
        f"<t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>{days}</t:DaysOfWeek>"
        "<t:FirstDayOfWeek>Monday</t:FirstDayOfWeek></t:WeeklyRecurrence>"
    )
    if count is not None:
        bound = (
            f"<t:NumberedRecurrence><t:StartDate>{start}</t:StartDate>"
            f"<t:NumberOfOccurrences>{count}</t:NumberOfOccurrences></t:NumberedRecurrence>"
        )
    elif end is not None:
        bound = (
            f"<t:EndDateRecurrence><t:StartDate>{start}</t:StartDate>"
            f"<t:EndDate>{end}</t:EndDate></t:EndDateRecurrence>"
        )
    else:
        bound = f"<t:NoEndRecurrence><t:StartDate>{start}</t:StartDate></t:NoEndRecurrence>"
    return f"<t:Recurrence>{pattern}{bound}</t:Recurrence>"


def _calendar_xml(item: SimActItem) -> str:
    props = item.props
    organizer = props.get("organizer")
    modified = "".join(
        f'<t:Occurrence><t:ItemId Id="{occ_id}" ChangeKey="CQAAAA{occ_id[-6:]}"/>'
        f"<t:Start>{_ews_time(start)}</t:Start><t:End>{_ews_time(end)}</t:End>"
        f"<t:OriginalStart>{_ews_time(original)}</t:OriginalStart></t:Occurrence>"
        for occ_id, start, end, original in props.get("modified", [])
    )
    deleted = "".join(
        f"<t:DeletedOccurrence><t:Start>{_ews_time(start)}</t:Start></t:DeletedOccurrence>"
        for start in props.get("deleted", [])
    )
    recurrence = props.get("recurrence", "")
    kind = props.get("calendar_item_type") or ("RecurringMaster" if recurrence else "Single")
    return "".join(
        [
            _item_common(item),
            _text("UID", props.get("uid")),
            _text("Start", _ews_time(props["start"])),
            _text("End", _ews_time(props["end"])),
            _zone_xml("StartTimeZone", props.get("start_tz")),
            _zone_xml("EndTimeZone", props.get("end_tz") or props.get("start_tz")),
            _text("IsAllDayEvent", "true" if props.get("all_day") else "false"),
            _text("LegacyFreeBusyStatus", props.get("show_as", "Busy")),
            _text("Location", props.get("location", "")),
            _text("IsMeeting", "true" if props.get("required") else "false"),
            _text("IsCancelled", "true" if props.get("cancelled") else "false"),
            _text("IsRecurring", "true" if recurrence else "false"),
            _text("CalendarItemType", kind),
            f"<t:Organizer>{_mailbox_xml(organizer)}</t:Organizer>" if organizer else "",
            _attendees_xml("RequiredAttendees", props.get("required", [])),
            _attendees_xml("OptionalAttendees", props.get("optional", [])),
            _attendees_xml("Resources", props.get("resources", [])),
            recurrence,
            f"<t:ModifiedOccurrences>{modified}</t:ModifiedOccurrences>" if modified else "",
            f"<t:DeletedOccurrences>{deleted}</t:DeletedOccurrences>" if deleted else "",
        ]
    )


def _contact_xml(item: SimActItem) -> str:
    props = item.props
    emails = "".join(
        f'<t:Entry Key="EmailAddress{n}">{escape(a)}</t:Entry>'
        for n, a in enumerate(props.get("emails", []), start=1)
    )
    phones = "".join(
        f'<t:Entry Key="{k}">{escape(v)}</t:Entry>' for k, v in props.get("phones", {}).items()
    )
    addresses = "".join(
        f'<t:Entry Key="{k}"><t:Street>{escape(a.get("street", ""))}</t:Street>'
        f"<t:City>{escape(a.get('city', ''))}</t:City>"
        f"<t:CountryOrRegion>{escape(a.get('country', ''))}</t:CountryOrRegion>"
        f"<t:PostalCode>{escape(a.get('postal_code', ''))}</t:PostalCode></t:Entry>"
        for k, a in props.get("addresses", {}).items()
    )
    return "".join(
        [
            _item_common(item),
            _text("DisplayName", props.get("display_name")),
            _text("GivenName", props.get("given_name")),
            _text("CompanyName", props.get("company")),
            f"<t:EmailAddresses>{emails}</t:EmailAddresses>" if emails else "",
            f"<t:PhysicalAddresses>{addresses}</t:PhysicalAddresses>" if addresses else "",
            f"<t:PhoneNumbers>{phones}</t:PhoneNumbers>" if phones else "",
            _text("Department", props.get("department")),
            _text("JobTitle", props.get("job_title")),
            _text("MiddleName", props.get("middle_name")),
            _text("Surname", props.get("surname")),
        ]
    )


def _task_xml(item: SimActItem) -> str:
    props = item.props
    stamp = {k: _ews_time(props[k]) if props.get(k) else None for k in ("start", "due", "done")}
    return "".join(
        [
            _item_common(item),
            _text("CompleteDate", stamp["done"]),
            _text("DueDate", stamp["due"]),
            _text("PercentComplete", props.get("percent_complete", 0)),
            _text("StartDate", stamp["start"]),
            _text("Status", props.get("status", "NotStarted")),
        ]
    )


def add_act_item(
    box: SimMailbox,
    folder: str,
    categories: Iterable[str] = (),
    **props: Any,
) -> SimActItem:
    """Put an item with `props` into `folder` ("calendar", "contacts", "tasks" or a
    folder of one of those classes): a Create for synced clients."""
    with box.sim.lock:
        target = box.folder(folder)
        element = _ACT_ELEMENTS.get(target.distinguished or "", props.pop("element", ""))
        target.seq += 1
        item = SimActItem(
            item_id=box.sim.new_id("AAMk", box.address),
            mime=b"",
            received=datetime.now(UTC),
            subject=str(props.get("subject", "")),
            categories=list(categories),
            created_seq=target.seq,
            element=element,
            props=dict(props),
        )
        target.items[item.item_id] = item
        box.sim.streaming.notify(box, target, item, "CreatedEvent")
        return item


def add_calendar_item(
    box: SimMailbox,
    *,
    categories: Iterable[str] = (),
    modified: Iterable[tuple[datetime, datetime, datetime, dict[str, Any]]] = (),
    **props: Any,
) -> SimActItem:
    """A calendar item (props: uid, subject, start, end, location, body, organizer
    (address, name), required / optional / resources [(address, name, ResponseType)],
    recurrence (see `weekly`), deleted [original starts], all_day, cancelled,
    start_tz / end_tz: Windows zone ids, e.g. "Eastern Standard Time", in which
    Exchange expands the series and which GetItem answers as StartTimeZone).
    `modified` lists changed occurrences of a series: (new start, new end, original
    start, their own props such as subject or location)."""
    occurrences = []
    with box.sim.lock:
        hidden = _occurrence_folder(box)
        for start, end, original, own in modified:
            occ = SimActItem(
                item_id=box.sim.new_id("AAMk", box.address),
                mime=b"",
                received=datetime.now(UTC),
                element="CalendarItem",
                props={
                    **props,
                    "recurrence": "",
                    "deleted": [],
                    **own,
                    "start": start,
                    "end": end,
                    "calendar_item_type": "Exception",
                },
            )
            hidden.items[occ.item_id] = occ
            occurrences.append((occ.item_id, start, end, original))
        return add_act_item(box, "calendar", categories, modified=occurrences, **props)


def _occurrence_folder(box: SimMailbox) -> SimFolder:
    """The hidden folder holding a mailbox's changed occurrences (no parent: no
    FindFolder or SyncFolderItems reaches it; GetItem does)."""
    for folder in box.folders.values():
        if folder.name == "(occurrences)":
            return folder
    folder = SimFolder(box.sim.new_id("AQMk", box.address), "(occurrences)", None)
    box.folders[folder.folder_id] = folder
    return folder


def update_act_item(
    box: SimMailbox, item_id: str, *, categories: list[str] | None = None, **props: Any
) -> SimActItem:
    """Change an item's properties (and categories): an Update with a new ChangeKey
    and LastModifiedTime."""
    with box.sim.lock:
        folder, item = box._find(item_id)
        assert isinstance(item, SimActItem)
        folder.seq += 1
        item.version += 1
        item.changed_seq = folder.seq
        item.modified_at = max(datetime.now(UTC), item.modified_at)
        item.props.update(props)
        if categories is not None:
            item.categories = list(categories)
        box.sim.streaming.notify(box, folder, item, "ModifiedEvent")
        return item


# -- NTLM ------------------------------------------------------------------------
# NTLM authenticates a connection, not a request: the client sends a Type 1
# (NEGOTIATE), the server answers 401 with a Type 2 (CHALLENGE: an 8-byte server
# challenge and target info AV pairs with a timestamp), the client retries on the
# same connection with a Type 3 (AUTHENTICATE) holding the NTLMv2 response. The
# server checks it against the configured password:
#   NTOWFv2     = HMAC-MD5(MD4(UTF-16LE(password)), UTF-16LE(upper(user) + domain))
#   NTProofStr  = HMAC-MD5(NTOWFv2, server_challenge + blob)
# where the NT response is NTProofStr (16 bytes) followed by the client's blob.
# The message (un)packing and the MD4/HMAC-MD5/NTOWFv2 primitives are pyspnego's
# (spnego._ntlm_raw; hashlib has no md4 here), the library requests_ntlm, and so
# exchangelib, uses on the client side; the verification itself is done here. Only
# NTLMv2 is accepted (an NTLMv1 24-byte response is refused). Later requests on an
# authenticated connection need no Authorization header, as with IIS.

NTLM_DOMAIN = "NORTHWIND"
NTLM_SERVER = "EXSIM"


@dataclass
class NtlmConnection:
    """One connection's NTLM state: the challenge sent, the user it authenticated."""

    challenge: bytes | None = None
    user: str | None = None


def _ntlm_challenge(negotiate: Negotiate, server_challenge: bytes) -> bytes:
    """The Type 2 message answering a Type 1: Unicode, NTLM, extended session
    security, target info with the NetBIOS/DNS names and the current timestamp."""
    wanted = NegotiateFlags.key_128 | NegotiateFlags.key_56 | NegotiateFlags.key_exch
    wanted |= NegotiateFlags.sign | NegotiateFlags.seal | NegotiateFlags.version
    flags = (
        NegotiateFlags.unicode
        | NegotiateFlags.request_target
        | NegotiateFlags.ntlm
        | NegotiateFlags.always_sign
        | NegotiateFlags.target_type_domain
        | NegotiateFlags.extended_session_security
        | NegotiateFlags.target_info
        | (negotiate.flags & wanted)
    )
    info = TargetInfo()
    info[AvId.nb_domain_name] = NTLM_DOMAIN
    info[AvId.nb_computer_name] = NTLM_SERVER
    info[AvId.dns_domain_name] = "northwind.example"
    info[AvId.dns_computer_name] = "exsim.northwind.example"
    info[AvId.timestamp] = FileTime.now()
    message = Challenge(
        flags=flags,
        server_challenge=server_challenge,
        target_name=NTLM_DOMAIN,
        target_info=info,
    )
    return message.pack()


def ntlm_v2_valid(
    user: str, domain: str, password: str, server_challenge: bytes, nt_response: bytes
) -> bool:
    """Whether `nt_response` (NTProofStr + blob) is the NTLMv2 answer to
    `server_challenge` for `user`/`domain` with `password`."""
    if len(nt_response) <= 24:  # NTLMv1 (or anonymous): not accepted
        return False
    proof, blob = nt_response[:16], nt_response[16:]
    key = ntowfv2(user, md4(password.encode("utf-16-le")), domain)
    return hmac.compare_digest(proof, hmac_md5(key, server_challenge + blob))


def ntlm_step(
    sim: EwsSimulator, state: NtlmConnection, token: bytes
) -> tuple[str | None, bytes | None]:
    """One NTLM step on a connection: a Type 1 gives (None, Type 2 to send); a
    Type 3 that verifies gives (user, None) and marks the connection authenticated;
    anything else gives (None, None) (answer a plain 401)."""
    kind = int.from_bytes(token[8:12], "little") if token[:8] == b"NTLMSSP\0" else 0
    if kind == MessageType.negotiate:
        state.challenge, state.user = os.urandom(8), None
        return None, _ntlm_challenge(Negotiate.unpack(token), state.challenge)
    if kind != MessageType.authenticate or state.challenge is None:
        return None, None
    challenge, state.challenge = state.challenge, None
    message = Authenticate.unpack(token)
    user = (message.user_name or "").lower().split("\\")[-1]
    with sim.lock:
        password = sim.users.get(user)
    valid = password and ntlm_v2_valid(
        message.user_name or "",
        message.domain_name or "",
        password,
        challenge,
        message.nt_challenge_response or b"",
    )
    if not valid:
        return None, None
    state.user = user
    with sim.lock:
        sim.ntlm_logons.append((user, message.domain_name or ""))
    return user, None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    sim: EwsSimulator


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    ntlm: NtlmConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path.split("?")[0].lower()
        if path not in (PATH.lower(), AUTODISCOVER_PATH):
            self._send(404, b"not found", "text/plain")
            return
        header = self.headers.get("Authorization")
        user, challenge = self._ntlm(header)
        if user is None and challenge is None:
            user = self.server.sim.authenticate(header)
        if user is not None and path == AUTODISCOVER_PATH:
            status, answer = autodiscover_answer(self.server.sim, user, body)
            self._send(status, answer, "text/xml; charset=utf-8")
            return
        if user is not None and b"GetStreamingEvents" in body[:4096]:
            stream_events(self, user, body)
            return
        if user is None:
            self.send_response(401)
            if challenge is not None:
                self.send_header("WWW-Authenticate", "NTLM " + base64.b64encode(challenge).decode())
            else:
                self.send_header("WWW-Authenticate", 'Basic realm="127.0.0.1"')
                self.send_header("WWW-Authenticate", "Bearer")
                self.send_header("WWW-Authenticate", "NTLM")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        hold = self.server.sim.take_send_hold(body)
        if hold is not None and hold.at == "arrival":
            hold.reached.set()
            hold.release.wait(HOLD_MAX_S)
            hold.dropped += 1
            self.close_connection = True  # dropped: never processed, never answered
            return
        status, answer = self.server.sim.answer(user, body)
        if hold is not None:
            hold.reached.set()
            hold.release.wait(HOLD_MAX_S)
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client may be gone by now
                self._send(status, answer, "text/xml; charset=utf-8")
            return
        self._send(status, answer, "text/xml; charset=utf-8")

    def _ntlm(self, header: str | None) -> tuple[str | None, bytes | None]:
        """(user, None) on a connection NTLM authenticated (or authenticating now),
        (None, Type 2) mid-handshake, (None, None) when NTLM is not in play."""
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() not in ("ntlm", "negotiate"):
            return (self.ntlm.user if self.ntlm is not None and not header else None), None
        if self.ntlm is None:
            self.ntlm = NtlmConnection()
        try:
            token = base64.b64decode(value.strip())
            return ntlm_step(self.server.sim, self.ntlm, token)
        except (binascii.Error, ValueError, struct.error):
            return None, None

    def do_GET(self) -> None:
        self._send(405, b"use POST", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


socketserver.TCPServer.allow_reuse_address = True


def sample_message(
    n: int, subject: str = "Hello", *, reply_to: int | None = None, size: int = 0
) -> bytes:
    """A small email with Message-ID <ews-n@contoso.example> (In-Reply-To and References
    when `reply_to` is given; the body padded to about `size` bytes)."""
    lines = [
        "From: Dana <dana@contoso.example>",
        "To: alice@northwind.example",
        f"Subject: {subject} {n}",
        f"Message-ID: <ews-{n}@contoso.example>",
        "Date: Mon, 30 Mar 2026 10:15:00 +0000",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    if reply_to is not None:
        lines += [
            f"In-Reply-To: <ews-{reply_to}@contoso.example>",
            f"References: <ews-{reply_to}@contoso.example>",
        ]
    body = f"Body text {n}.\r\n"
    if size > len(body):
        body += "x" * (size - len(body)) + "\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


# -- streaming notifications (Subscribe / GetStreamingEvents / Unsubscribe) -------
#
# A streaming subscription covers folders and event types; deliver / update /
# delete queue an event for every subscription covering the folder. One
# GetStreamingEvents request is answered as a chunked stream of SOAP envelopes,
# as Exchange does: a Notifications message when events are queued, a
# ConnectionStatus OK keep-alive every `keepalive_s`, ConnectionStatus Closed
# after ConnectionTimeout minutes. Knobs: `refuse(code)` (Subscribe answers that
# error), `expire()` (every subscription is forgotten: open streams end with
# ErrorSubscriptionNotFound, as after the server's 30 minutes without a client).
# Calendar, Contacts and Tasks folders are subscribed alike: `add_act_item` and
# `update_act_item` queue Created / Modified events as the write operations do.


@dataclass
class SimSubscription:
    """One streaming subscription: its mailbox, folders, event types, queued events."""

    subscription_id: str
    address: str
    folder_ids: set[str]
    event_types: set[str]
    events: list[str] = field(default_factory=list)


class StreamingState:
    """The simulator's streaming subscriptions (guarded by the simulator's lock)."""

    def __init__(self, sim: EwsSimulator) -> None:
        self.sim = sim
        self.subscriptions: dict[str, SimSubscription] = {}
        self.changed = threading.Condition(sim.lock)
        self.refused: str | None = None
        self.refused_for: set[str] | None = None
        self.keepalive_s = 5.0
        self.open_streams = 0
        self.unsubscribed: list[str] = []

    def refuse(
        self, code: str | None = "ErrorInvalidRequest", addresses: set[str] | None = None
    ) -> None:
        """Subscribe answers `code` from now on (None: accepted again), for the
        mailboxes in `addresses` (None: every one)."""
        with self.sim.lock:
            self.refused = code
            self.refused_for = addresses

    def expire(self) -> None:
        """Forget every subscription (open streams end with ErrorSubscriptionNotFound)."""
        with self.changed:
            self.subscriptions.clear()
            self.changed.notify_all()

    def notify(self, box: SimMailbox, folder: SimFolder, item: SimItem, *event_types: str) -> None:
        """Queue events of `item` in `folder` for the subscriptions covering it."""
        with self.changed:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for sub in self.subscriptions.values():
                if sub.address != box.address or folder.folder_id not in sub.folder_ids:
                    continue
                for kind in event_types:
                    if kind in sub.event_types:
                        sub.events.append(
                            f"<t:{kind}><t:TimeStamp>{stamp}</t:TimeStamp>"
                            f'<t:ItemId Id="{item.item_id}" ChangeKey="{item.change_key}"/>'
                            f'<t:ParentFolderId Id="{folder.folder_id}" ChangeKey="AQAAAA=="/>'
                            f"</t:{kind}>"
                        )
            self.changed.notify_all()


def _subscribe(ctx: _Context, request: etree._Element) -> str:
    state = ctx.sim.streaming
    spec = request.find(_m("StreamingSubscriptionRequest"))
    if spec is None:
        raise ResponseError("ErrorInvalidSubscriptionRequest", "Only streaming is simulated.")
    box: SimMailbox | None = None
    folder_ids: set[str] = set()
    for elem in spec.iterfind(f"{_t('FolderIds')}/*"):
        box, folder = ctx.folder(elem)
        folder_ids.add(folder.folder_id)
    if box is None:
        box = ctx.mailbox_for(None)
        folder_ids = set(box.folders)
    if state.refused is not None and (
        state.refused_for is None or box.address in state.refused_for
    ):
        raise ResponseError(state.refused, "Streaming notifications are not available.")
    types = {e.text or "" for e in spec.iterfind(f"{_t('EventTypes')}/{_t('EventType')}")}
    sub = SimSubscription(ctx.sim.new_id("", box.address)[:32], box.address, folder_ids, types)
    state.subscriptions[sub.subscription_id] = sub
    return _success("Subscribe", f"<m:SubscriptionId>{sub.subscription_id}</m:SubscriptionId>")


def _unsubscribe(ctx: _Context, request: etree._Element) -> str:
    state = ctx.sim.streaming
    subscription = request.findtext(_m("SubscriptionId")) or ""
    if state.subscriptions.pop(subscription, None) is None:
        raise ResponseError("ErrorSubscriptionNotFound", "The subscription was not found.")
    state.unsubscribed.append(subscription)
    state.changed.notify_all()
    return _success("Unsubscribe", "")


def _subscribe_answer(ctx: _Context, request: etree._Element) -> str:
    try:
        return _subscribe(ctx, request)
    except ResponseError as error:
        return _error("Subscribe", error)


def _unsubscribe_answer(ctx: _Context, request: etree._Element) -> str:
    try:
        return _unsubscribe(ctx, request)
    except ResponseError as error:
        return _error("Unsubscribe", error)


_OPERATIONS["Subscribe"] = _subscribe_answer
_OPERATIONS["Unsubscribe"] = _unsubscribe_answer


def _stream_document(inner: str) -> bytes:
    return (
        f'{_HEAD}<m:GetStreamingEventsResponse xmlns:m="{M}" xmlns:t="{T}">'
        f"<m:ResponseMessages>{inner}</m:ResponseMessages></m:GetStreamingEventsResponse>{_TAIL}"
    ).encode()


def _stream_message(body: str, status: str | None = None) -> bytes:
    connection = f"<m:ConnectionStatus>{status}</m:ConnectionStatus>" if status else ""
    return _stream_document(
        '<m:GetStreamingEventsResponseMessage ResponseClass="Success">'
        f"<m:ResponseCode>NoError</m:ResponseCode>{body}{connection}"
        "</m:GetStreamingEventsResponseMessage>"
    )


def _stream_error(subscription: str) -> bytes:
    return _stream_document(
        '<m:GetStreamingEventsResponseMessage ResponseClass="Error">'
        "<m:MessageText>The specified subscription was not found.</m:MessageText>"
        "<m:ResponseCode>ErrorSubscriptionNotFound</m:ResponseCode>"
        "<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
        f"<m:ErrorSubscriptionIds><m:SubscriptionId>{subscription}</m:SubscriptionId>"
        "</m:ErrorSubscriptionIds></m:GetStreamingEventsResponseMessage>"
    )


def _take_events(
    state: StreamingState, ids: list[str]
) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """A subscription of `ids` the server no longer knows, else the queued events
    (waiting up to a keep-alive interval for some)."""
    with state.changed:
        for attempt in range(2):
            missing = next((i for i in ids if i not in state.subscriptions), None)
            if missing is not None:
                return missing, []
            pending = [(i, state.subscriptions[i].events) for i in ids]
            if any(events for _, events in pending):
                for i in ids:
                    state.subscriptions[i].events = []
                return None, [(i, events) for i, events in pending if events]
            if attempt == 0:
                state.changed.wait(state.keepalive_s)
        return None, []


def stream_events(handler: _Handler, user: str, body: bytes) -> None:
    """Answer one GetStreamingEvents request as a chunked stream (see the section doc)."""
    sim = handler.server.sim
    state = sim.streaming
    impersonated: str | None = None
    try:
        envelope = etree.fromstring(body)
        request = envelope.find(f"{{{SOAP}}}Body")
        call = request[0] if request is not None and len(request) else None
        address = envelope.findtext(
            f"{{{SOAP}}}Header/{_t('ExchangeImpersonation')}/{_t('ConnectingSID')}"
            f"/{_t('PrimarySmtpAddress')}"
        )
        impersonated = address.strip().lower() if address else None
    except etree.XMLSyntaxError:
        call = None
    if call is None:
        handler._send(500, _fault("ErrorSchemaValidation", "Not a request."), "text/xml")
        return
    ids = [e.text or "" for e in call.iterfind(f"{_m('SubscriptionIds')}/{_t('SubscriptionId')}")]
    minutes = int(call.findtext(_m("ConnectionTimeout")) or "30")
    with sim.lock:
        sim.requests.append(RequestRecord("GetStreamingEvents", user, impersonated))
    handler.send_response(200)
    handler.send_header("Content-Type", "text/xml; charset=utf-8")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()

    def chunk(data: bytes) -> None:
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()

    deadline = datetime.now(UTC).timestamp() + minutes * 60
    with sim.lock:
        state.open_streams += 1
    try:
        while True:
            missing, pending = _take_events(state, ids)
            if missing is not None:
                chunk(_stream_error(missing))
                break
            if pending:
                notes = "".join(
                    f"<m:Notification><t:SubscriptionId>{i}</t:SubscriptionId>"
                    f"{''.join(events)}</m:Notification>"
                    for i, events in pending
                )
                chunk(_stream_message(f"<m:Notifications>{notes}</m:Notifications>", "OK"))
            elif datetime.now(UTC).timestamp() >= deadline:
                chunk(_stream_message("", "Closed"))
                break
            else:
                chunk(_stream_message("", "OK"))
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
    except OSError:
        handler.close_connection = True
    finally:
        with sim.lock:
            state.open_streams -= 1


# -- appointments, contacts, tasks: the WRITE side (CRM → Exchange) ---------------
#
# CreateItem of t:CalendarItem / t:Contact / t:Task (into SavedItemFolderId, else the
# kind's distinguished folder; the organizer is the mailbox, a UID is made when none
# is given), UpdateItem (t:SetItemField / t:DeleteItemField with FieldURI,
# IndexedFieldURI or ExtendedFieldURI; ConflictResolution NeverOverwrite refuses an
# old ChangeKey with ErrorIrresolvableConflict), DeleteItem, and t:ExtendedProperty
# values kept per item (rendered in t:ExtendedProperty before LastModifiedTime).
# A series' occurrence is addressed as t:OccurrenceItemId (RecurringMasterId +
# InstanceIndex, its 1-based place in the pattern, expanded in UTC from the master's
# start): UpdateItem makes it a modified occurrence (an item in the hidden
# occurrences folder, listed in the master's ModifiedOccurrences), DeleteItem a
# DeletedOccurrence; a deleted or out-of-range index answers
# ErrorCalendarOccurrenceIsDeletedFromRecurrence / ...IndexIsOutOfRecurrenceRange;
# a new Recurrence drops the exceptions, as Exchange does. Every change of an
# occurrence is a change (new ChangeKey, LastModifiedTime) of its master.
# Meeting messages are recorded, not delivered: `sim.act_invitations` gets
# (attendee, subject) for CreateItem with SendMeetingInvitations and UpdateItem with
# SendMeetingInvitationsOrCancellations other than SendToNone; `sim.act_cancellations`
# gets them for DeleteItem with SendMeetingCancellations (a meeting or one occurrence).
# FindItem (Shallow, IdOnly or more) answers a Restriction IsEqualTo on an
# ExtendedFieldURI or item:Subject against a constant, or no Restriction (all items).
#   act_edit(box, item_id, at=when, subject="Outlook subject")   # a user's edit at `when`

_WRITE_ELEMENTS = {"CalendarItem": "calendar", "Contact": "contacts", "Task": "tasks"}
_SENDS = {"SendToAllAndSaveCopy", "SendOnlyToAll", "SendToChangedAndSaveCopy", "SendOnlyToChanged"}
_FIELD_PROPS = {
    "item:Subject": "subject",
    "item:Body": "body",
    "item:Importance": "importance",
    "item:Sensitivity": "sensitivity",
    "calendar:UID": "uid",
    "calendar:Start": "start",
    "calendar:End": "end",
    "calendar:IsAllDayEvent": "all_day",
    "calendar:Location": "location",
    "calendar:LegacyFreeBusyStatus": "show_as",
    "calendar:RequiredAttendees": "required",
    "calendar:OptionalAttendees": "optional",
    "calendar:Resources": "resources",
    "calendar:Recurrence": "recurrence",
    "contacts:DisplayName": "display_name",
    "contacts:GivenName": "given_name",
    "contacts:MiddleName": "middle_name",
    "contacts:Surname": "surname",
    "contacts:CompanyName": "company",
    "contacts:JobTitle": "job_title",
    "contacts:Department": "department",
    "task:DueDate": "due",
    "task:StartDate": "start",
    "task:Status": "status",
    "task:PercentComplete": "percent_complete",
}
"""FieldURI → the SimActItem prop it names (item:Categories is the item's own list)."""
_INDEXED_PROPS = {
    "contacts:EmailAddress": "emails",
    "contacts:PhoneNumber": "phones",
    "contacts:PhysicalAddress": "addresses",
}


def _ext_key(elem: etree._Element) -> str:
    """The identity of an ExtendedFieldURI: property set (or tag), name or id, type."""
    ident = elem.get("PropertyName") or elem.get("PropertyId") or elem.get("PropertyTag") or ""
    space = elem.get("PropertySetId") or elem.get("DistinguishedPropertySetId") or ""
    return f"{space.lower()}|{ident}|{elem.get('PropertyType', '')}"


def _extended_xml(item: SimActItem) -> str:
    """The item's extended properties as t:ExtendedProperty elements."""
    out = []
    for key, value in sorted(item.props.get("extended", {}).items()):
        space, ident, kind = key.split("|")
        name_attr = "PropertyName" if not ident.isdigit() else "PropertyId"
        out.append(
            f'<t:ExtendedProperty><t:ExtendedFieldURI PropertySetId="{space}" '
            f'{name_attr}="{escape(ident)}" PropertyType="{kind}"/>'
            f"<t:Value>{escape(value)}</t:Value></t:ExtendedProperty>"
        )
    return "".join(out)


def _when(text: str | None) -> datetime | None:
    """An xs:dateTime (Z, an offset, or none: UTC) or xs:date as an aware UTC datetime."""
    if not text:
        return None
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _people(elem: etree._Element) -> list[tuple[str, str, str]]:
    out = []
    for attendee in elem.iterfind(_t("Attendee")):
        address = attendee.findtext(f"{_t('Mailbox')}/{_t('EmailAddress')}") or ""
        name = attendee.findtext(f"{_t('Mailbox')}/{_t('Name')}") or ""
        out.append(
            (address.strip().lower(), name, attendee.findtext(_t("ResponseType")) or "Unknown")
        )
    return out


def _entries(elem: etree._Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in elem.iterfind(_t("Entry")):
        key = entry.get("Key", "")
        if len(entry):  # a physical address: sub-elements
            out[key] = {
                {"CountryOrRegion": "country", "PostalCode": "postal_code"}.get(
                    etree.QName(part).localname, etree.QName(part).localname.lower()
                ): part.text or ""
                for part in entry
            }
        else:
            out[key] = entry.text or ""
    return out


def _parse_act(elem: etree._Element) -> tuple[dict[str, Any], list[str] | None]:
    """The props an item element (whole, or the one-field element of a SetItemField)
    holds, and its categories when it names them. Indexed collections come as
    {key: value} maps (`_merge_act` folds them in)."""
    props: dict[str, Any] = {}
    categories: list[str] | None = None
    for child in elem:
        name = etree.QName(child).localname
        text = child.text or ""
        if name == "Categories":
            categories = [s.text or "" for s in child.iterfind(_t("String"))]
        elif name == "ExtendedProperty":
            uri = child.find(_t("ExtendedFieldURI"))
            if uri is not None:
                props.setdefault("extended", {})[_ext_key(uri)] = child.findtext(_t("Value")) or ""
        elif name in ("Start", "End", "DueDate", "StartDate"):
            key = {"Start": "start", "End": "end", "DueDate": "due", "StartDate": "start"}[name]
            props[key] = _when(text)
        elif name == "IsAllDayEvent":
            props["all_day"] = text.strip() == "true"
        elif name in ("StartTimeZone", "EndTimeZone", "MeetingTimeZone"):
            key = "end_tz" if name == "EndTimeZone" else "start_tz"
            props[key] = child.get("Id") or child.get("TimeZoneName") or child.get("Name") or ""
        elif name in ("RequiredAttendees", "OptionalAttendees", "Resources"):
            key = {"RequiredAttendees": "required", "OptionalAttendees": "optional"}.get(
                name, "resources"
            )
            props[key] = _people(child)
        elif name == "Recurrence":
            props["recurrence"] = etree.tostring(child).decode()
        elif name in ("EmailAddresses", "PhoneNumbers", "PhysicalAddresses"):
            key = {"EmailAddresses": "emails", "PhoneNumbers": "phones"}.get(name, "addresses")
            props[key] = _entries(child)
        elif name == "PercentComplete":
            props["percent_complete"] = int(float(text or 0))
        else:
            mapped = {
                "Subject": "subject",
                "Body": "body",
                "Importance": "importance",
                "Sensitivity": "sensitivity",
                "UID": "uid",
                "Location": "location",
                "LegacyFreeBusyStatus": "show_as",
                "DisplayName": "display_name",
                "GivenName": "given_name",
                "MiddleName": "middle_name",
                "Surname": "surname",
                "CompanyName": "company",
                "JobTitle": "job_title",
                "Department": "department",
                "Status": "status",
            }.get(name)
            if mapped is not None:
                props[mapped] = text
    return props, categories


def _merge_act(item: SimActItem, props: dict[str, Any], categories: list[str] | None) -> None:
    """Fold parsed props into an item: indexed collections entry by entry (emails kept
    as a list in EmailAddress1..3 order), everything else replaced."""
    for key, value in props.items():
        if key == "emails":
            current = {f"EmailAddress{n}": a for n, a in enumerate(item.props.get("emails", []), 1)}
            current.update(value)
            item.props["emails"] = [current[k] for k in sorted(current) if current[k]]
        elif key == "phones":
            item.props.setdefault("phones", {}).update(value)
        elif key == "addresses":
            book = item.props.setdefault("addresses", {})
            for label, parts in value.items():
                book.setdefault(label, {}).update(parts)
        elif key == "extended":
            item.props.setdefault("extended", {}).update(value)
        else:
            item.props[key] = value
            if key == "recurrence":  # a new pattern drops the exceptions
                item.props["modified"], item.props["deleted"] = [], []
    if "subject" in props:
        item.subject = str(props["subject"])
    if categories is not None:
        item.categories = categories


def _delete_field(item: SimActItem, uri: etree._Element) -> None:
    """Apply one DeleteItemField."""
    kind = etree.QName(uri).localname
    if kind == "ExtendedFieldURI":
        item.props.get("extended", {}).pop(_ext_key(uri), None)
        return
    field_uri = uri.get("FieldURI", "")
    if kind == "IndexedFieldURI":
        base, _, part = field_uri.partition(":")[2].partition(":")
        key = _INDEXED_PROPS.get(f"contacts:{base}")
        index = uri.get("FieldIndex", "")
        if key == "emails":
            current = {f"EmailAddress{n}": a for n, a in enumerate(item.props.get("emails", []), 1)}
            current.pop(index, None)
            item.props["emails"] = [current[k] for k in sorted(current)]
        elif key == "phones":
            item.props.get("phones", {}).pop(index, None)
        elif key == "addresses":
            entry = item.props.get("addresses", {}).get(index)
            if entry is not None:
                sub = {"CountryOrRegion": "country", "PostalCode": "postal_code"}.get(
                    part, part.lower()
                )
                entry.pop(sub, None)
                if not any(entry.values()):
                    item.props["addresses"].pop(index, None)
        return
    if field_uri == "item:Categories":
        item.categories = []
        return
    key = _FIELD_PROPS.get(field_uri)
    if key is not None:
        item.props.pop(key, None)
        if key == "subject":
            item.subject = ""
        if key == "recurrence":
            item.props["modified"], item.props["deleted"] = [], []


def _touch(folder: SimFolder, item: SimItem, at: datetime | None = None) -> None:
    """A content change of an item: new ChangeKey, LastModifiedTime, an Update for sync."""
    folder.seq += 1
    item.version += 1
    item.changed_seq = folder.seq
    if isinstance(item, SimActItem):
        item.modified_at = at or max(datetime.now(UTC), item.modified_at)


def _attendee_addresses(item: SimActItem) -> list[str]:
    return [
        a for key in ("required", "optional", "resources") for a, _, _ in item.props.get(key, [])
    ]


def _record(
    log: list[tuple[str, str]], item: SimActItem, mode: str | None, subject: str = ""
) -> None:
    if mode in _SENDS:
        for address in _attendee_addresses(item):
            log.append((address, subject or item.subject))


def _sim_zone(ms_id: str | None) -> Any:
    """The ZoneInfo of a Windows time zone id (exchangelib's CLDR map, as Exchange
    knows them; an IANA name is taken as is); UTC for none."""
    from zoneinfo import ZoneInfo

    from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP

    text = ms_id or "UTC"
    return ZoneInfo(MS_TIMEZONE_TO_IANA_MAP.get(text, text))


def _zone_xml(name: str, ms_id: str | None) -> str:
    """A t:StartTimeZone / t:EndTimeZone element as GetItem returns it (Id only)."""
    return f'<t:{name} Id="{escape(ms_id)}" Name="{escape(ms_id)}"/>' if ms_id else ""


def _occurrence_starts(props: dict[str, Any], limit: int = 500) -> list[datetime]:
    """The original starts (UTC) of a series' occurrences, by its t:Recurrence."""
    from dateutil import rrule as du

    recurrence = etree.fromstring(props["recurrence"])
    pattern, bound = recurrence[0], recurrence[1]
    kind = etree.QName(pattern).localname
    days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    weekday = [du.MO, du.TU, du.WE, du.TH, du.FR, du.SA, du.SU]
    interval = int(pattern.findtext(_t("Interval")) or 1)
    names = (pattern.findtext(_t("DaysOfWeek")) or "").split()
    index = {"First": 1, "Second": 2, "Third": 3, "Fourth": 4, "Last": -1}
    classes = {"Day": list(range(7)), "Weekday": list(range(5)), "WeekendDay": [5, 6]}
    options: dict[str, Any] = {"interval": interval}
    freq: Any
    if kind == "DailyRecurrence":
        freq = du.DAILY
    elif kind == "WeeklyRecurrence":
        freq = du.WEEKLY
        options["byweekday"] = [weekday[days.index(n)] for n in names]
    elif kind in ("AbsoluteMonthlyRecurrence", "AbsoluteYearlyRecurrence"):
        freq = du.MONTHLY if kind.startswith("AbsoluteMonthly") else du.YEARLY
        options["bymonthday"] = int(pattern.findtext(_t("DayOfMonth")) or 1)
    else:
        freq = du.MONTHLY if kind.startswith("RelativeMonthly") else du.YEARLY
        name = names[0] if names else "Day"
        options["byweekday"] = [
            weekday[d] for d in classes.get(name, [days.index(name)] if name in days else [0])
        ]
        options["bysetpos"] = index.get(pattern.findtext(_t("DayOfWeekIndex")) or "First", 1)
    month = pattern.findtext(_t("Month"))
    if month:
        months = ("January", "February", "March", "April", "May", "June", "July", "August",
                  "September", "October", "November", "December")  # fmt: skip
        options["bymonth"] = months.index(month) + 1
        options["interval"] = 1
    first = datetime.fromisoformat((bound.findtext(_t("StartDate")) or "")[:10])
    zone = _sim_zone(props.get("start_tz"))  # Exchange expands in the StartTimeZone
    begin = datetime.combine(first.date(), props["start"].astimezone(zone).time())
    if bound.findtext(_t("NumberOfOccurrences")):
        options["count"] = int(bound.findtext(_t("NumberOfOccurrences")) or 1)
    elif bound.findtext(_t("EndDate")):
        end = datetime.fromisoformat((bound.findtext(_t("EndDate")) or "")[:10])
        options["until"] = datetime.combine(end.date(), datetime.max.time())
    out: list[datetime] = []
    for moment in du.rrule(freq, dtstart=begin, **options):
        out.append(moment.replace(tzinfo=zone).astimezone(UTC))
        if len(out) >= limit:
            break
    return out


def _act_target(ctx: _Context, elem: etree._Element) -> tuple[SimMailbox, SimFolder, SimActItem]:
    """The live act item an ItemId names (ErrorItemNotFound otherwise)."""
    box, folder, item = ctx.item(elem.get("Id", ""))
    if not isinstance(item, SimActItem):
        raise ResponseError("ErrorInvalidRequest", "Only calendar items, contacts and tasks.")
    return box, folder, item


def _occurrence(
    ctx: _Context, elem: etree._Element
) -> tuple[SimMailbox, SimFolder, SimActItem, datetime]:
    """The master and original start an OccurrenceItemId names."""
    box, folder, master = _act_target(
        ctx, etree.Element(_t("ItemId"), Id=elem.get("RecurringMasterId", ""))
    )
    if not master.props.get("recurrence"):
        raise ResponseError(
            "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange", "The item is not a series."
        )
    index = int(elem.get("InstanceIndex", "0"))
    starts = _occurrence_starts(master.props)
    if not 1 <= index <= len(starts):
        raise ResponseError(
            "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
            "The occurrence index is out of the recurrence range.",
        )
    original = starts[index - 1]
    if original in master.props.get("deleted", []):
        raise ResponseError(
            "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
            "The occurrence was deleted from the recurrence.",
        )
    return box, folder, master, original


def _ok(operation: str, inner: str = "") -> str:
    return _success(operation, inner)


def _id_xml(item: SimActItem) -> str:
    return (
        f'<m:Items><t:{item.element}><t:ItemId Id="{item.item_id}" '
        f'ChangeKey="{item.change_key}"/></t:{item.element}></m:Items>'
    )


def _create_act(ctx: _Context, request: etree._Element, elem: etree._Element) -> str:
    element = etree.QName(elem).localname
    box = ctx.mailbox_for(None)
    saved = request.find(_m("SavedItemFolderId"))
    if saved is not None and len(saved):
        box, folder = ctx.folder(saved[0])
    else:
        folder = box.by_distinguished[_WRITE_ELEMENTS[element]]
    props, categories = _parse_act(elem)
    for key in ("emails",):
        if isinstance(props.get(key), dict):
            props[key] = [props[key][k] for k in sorted(props[key])]
    if element == "CalendarItem":
        props.setdefault(
            "uid",
            "040000008200E00074C5B7101A82E008"
            + hashlib.md5(box.sim.new_id("", box.address).encode()).hexdigest().upper(),
        )
        props["organizer"] = (box.address, "")
    item = SimActItem(
        item_id=box.sim.new_id("AAMk", box.address),
        mime=b"",
        received=datetime.now(UTC),
        subject=str(props.get("subject", "")),
        categories=categories or [],
        element=element,
        props=props,
    )
    folder.seq += 1
    item.created_seq = folder.seq
    folder.items[item.item_id] = item
    if element == "CalendarItem":
        _record(ctx.sim.act_invitations, item, request.get("SendMeetingInvitations"))
    ctx.sim.streaming.notify(box, folder, item, "CreatedEvent")
    return _ok("CreateItem", _id_xml(item))


def _create_item_any(ctx: _Context, request: etree._Element) -> str:
    """CreateItem: messages as before (`_create_item`), act items here, in order."""
    items = request.find(_m("Items"))
    children = list(items) if items is not None else []
    if not any(etree.QName(c).localname in _WRITE_ELEMENTS for c in children):
        return _create_item(ctx, request)
    out = []
    for child in children:
        if etree.QName(child).localname not in _WRITE_ELEMENTS:
            out.append(
                _error(
                    "CreateItem",
                    ResponseError("ErrorInvalidRequest", "Mixed item kinds are not simulated."),
                    "<m:Items/>",
                )
            )
            continue
        try:
            out.append(_create_act(ctx, request, child))
        except ResponseError as error:
            out.append(_error("CreateItem", error, "<m:Items/>"))
    return "".join(out)


def _apply_updates(item: SimActItem, updates: etree._Element | None) -> None:
    for change in updates if updates is not None else []:
        kind = etree.QName(change).localname
        uri = change[0] if len(change) else None
        if uri is None:
            continue
        if kind == "DeleteItemField":
            _delete_field(item, uri)
            continue
        body = change[1] if len(change) > 1 else None
        if body is None:
            continue
        props, categories = _parse_act(body)
        _merge_act(item, props, categories)


def _update_occurrence(ctx: _Context, change: etree._Element, target: etree._Element) -> SimActItem:
    box, folder, master, original = _occurrence(ctx, target)
    hidden = _occurrence_folder(box)
    entry = next((m for m in master.props.get("modified", []) if m[3] == original), None)
    if entry is not None:
        occurrence = hidden.items[entry[0]]
        assert isinstance(occurrence, SimActItem)
    else:
        span = master.props["end"] - master.props["start"]
        occurrence = SimActItem(
            item_id=box.sim.new_id("AAMk", box.address),
            mime=b"",
            received=datetime.now(UTC),
            subject=master.subject,
            categories=list(master.categories),
            element="CalendarItem",
            props={
                **{
                    k: v
                    for k, v in master.props.items()
                    if k not in ("modified", "deleted", "recurrence", "extended")
                },
                "start": original,
                "end": original + span,
                "calendar_item_type": "Exception",
            },
        )
        hidden.items[occurrence.item_id] = occurrence
    _apply_updates(occurrence, change.find(_t("Updates")))
    _touch(hidden, occurrence)
    modified = [m for m in master.props.get("modified", []) if m[3] != original]
    modified.append(
        (occurrence.item_id, occurrence.props["start"], occurrence.props["end"], original)
    )
    master.props["modified"] = sorted(modified, key=lambda m: m[3])
    _touch(folder, master)
    ctx.sim.streaming.notify(box, folder, master, "ModifiedEvent")
    return occurrence


def _update_item(ctx: _Context, request: etree._Element) -> str:
    resolution = request.get("ConflictResolution", "AutoResolve")
    send = request.get("SendMeetingInvitationsOrCancellations")
    out = []
    for change in request.iterfind(f"{_m('ItemChanges')}/{_t('ItemChange')}"):
        target = change[0] if len(change) else None
        try:
            if target is None:
                raise ResponseError("ErrorInvalidRequest", "ItemChange names no item.")
            if etree.QName(target).localname == "OccurrenceItemId":
                item = _update_occurrence(ctx, change, target)
                _record(ctx.sim.act_invitations, item, send)
            else:
                box, folder, item = _act_target(ctx, target)
                given = target.get("ChangeKey")
                if resolution == "NeverOverwrite" and given and given != item.change_key:
                    raise ResponseError(
                        "ErrorIrresolvableConflict",
                        "The send or update operation could not be performed because the "
                        "change key passed in the request does not match the current change "
                        "key for the item.",
                    )
                _apply_updates(item, change.find(_t("Updates")))
                _touch(folder, item)
                ctx.sim.streaming.notify(box, folder, item, "ModifiedEvent")
                if item.element == "CalendarItem":
                    _record(ctx.sim.act_invitations, item, send)
            out.append(
                _ok(
                    "UpdateItem",
                    _id_xml(item) + "<m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>",
                )
            )
        except ResponseError as error:
            out.append(_error("UpdateItem", error, "<m:Items/>"))
    return "".join(out)


def _delete_item(ctx: _Context, request: etree._Element) -> str:
    send = request.get("SendMeetingCancellations")
    out = []
    for target in request.iterfind(f"{_m('ItemIds')}/*"):
        try:
            if etree.QName(target).localname == "OccurrenceItemId":
                box, folder, master, original = _occurrence(ctx, target)
                master.props["modified"] = [
                    m for m in master.props.get("modified", []) if m[3] != original
                ]
                master.props.setdefault("deleted", []).append(original)
                _touch(folder, master)
                ctx.sim.streaming.notify(box, folder, master, "ModifiedEvent")
                _record(ctx.sim.act_cancellations, master, send)
            else:
                box, folder, item = ctx.item(target.get("Id", ""))
                if isinstance(item, SimActItem) and item.element == "CalendarItem":
                    _record(ctx.sim.act_cancellations, item, send)
                box.delete(item.item_id)
            out.append(_ok("DeleteItem"))
        except ResponseError as error:
            out.append(_error("DeleteItem", error))
    return "".join(out)


def _matches(item: SimItem, restriction: etree._Element | None) -> bool:
    if restriction is None or not len(restriction):
        return True
    test = restriction[0]
    if etree.QName(test).localname != "IsEqualTo" or len(test) < 2:
        raise ResponseError("ErrorInvalidRequest", "Only IsEqualTo restrictions are simulated.")
    uri, constant = test[0], test[1].find(_t("Constant"))
    wanted = constant.get("Value", "") if constant is not None else ""
    if etree.QName(uri).localname == "ExtendedFieldURI":
        if not isinstance(item, SimActItem):
            return False
        return bool(item.props.get("extended", {}).get(_ext_key(uri)) == wanted)
    if uri.get("FieldURI") == "item:Subject":
        return item.subject == wanted
    raise ResponseError(
        "ErrorInvalidRequest", f"Restriction on {uri.get('FieldURI')} is not simulated."
    )


def _find_item(ctx: _Context, request: etree._Element) -> str:
    fields = _requested_fields(request.find(_m("ItemShape")))
    restriction = request.find(_m("Restriction"))
    out = []
    for elem in _children(request, "ParentFolderIds"):
        try:
            _, folder = ctx.folder(elem)
            found = [i for i in folder.live() if _matches(i, restriction)]
            body = "".join(_item_xml(i, folder, fields) for i in found)
            out.append(
                _ok(
                    "FindItem",
                    f'<m:RootFolder IndexedPagingOffset="{len(found)}" '
                    f'TotalItemsInView="{len(found)}" IncludesLastItemInRange="true">'
                    f"<t:Items>{body}</t:Items></m:RootFolder>",
                )
            )
        except ResponseError as error:
            out.append(_error("FindItem", error))
    return "".join(out)


_OPERATIONS["CreateItem"] = _create_item_any
_OPERATIONS["UpdateItem"] = _update_item
_OPERATIONS["DeleteItem"] = _delete_item
_OPERATIONS["FindItem"] = _find_item


def act_edit(
    box: SimMailbox,
    item_id: str,
    *,
    at: datetime,
    categories: list[str] | None = None,
    **props: Any,
) -> SimActItem:
    """A user's edit of an act item at `at` (its LastModifiedTime): props in the
    simulator's form (subject, body, location, start, ...)."""
    with box.sim.lock:
        folder, item = box._find(item_id)
        assert isinstance(item, SimActItem)
        _merge_act(item, props, categories)
        _touch(folder, item, at)
        box.sim.streaming.notify(box, folder, item, "ModifiedEvent")
        return item


# -- SOAP Autodiscover --------------------------------------------------------------
#
# GetUserSettings as documented for Exchange 2010 and later (the operation
# exchangelib 5's Autodiscovery sends): a SOAP 1.1 envelope with WS-Addressing
# headers; the answer carries ServerVersionInfo in the Autodiscover namespace and one
# UserResponse per requested user, with the requested UserSettings that exist and
# UserSettingErrors for the others.

AUTODISCOVER = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
WSA = "http://www.w3.org/2005/08/addressing"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
EWS_SCHEMAS = (
    "Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, Exchange2010_SP2, "
    "Exchange2013, Exchange2013_SP1, Exchange2015, Exchange2016"
)


def _user_settings(sim: EwsSimulator, box: SimMailbox) -> dict[str, str]:
    ews_url = sim.autodiscover_ews_url or sim.url
    return {
        "UserDisplayName": box.address.split("@", maxsplit=1)[0].title(),
        "AutoDiscoverSMTPAddress": box.address,
        "ExternalEwsUrl": ews_url,
        "InternalEwsUrl": ews_url,
        "EwsSupportedSchemas": EWS_SCHEMAS,
        "CasVersion": "15.01.2507.006",
    }


def _user_response(sim: EwsSimulator, address: str, wanted: list[str]) -> str:
    box = sim.mailboxes.get(address.lower())
    if box is None:
        return (
            "<UserResponse><ErrorCode>InvalidUser</ErrorCode>"
            f"<ErrorMessage>Invalid user: '{escape(address)}'</ErrorMessage>"
            '<RedirectTarget i:nil="true"/><UserSettingErrors/><UserSettings/></UserResponse>'
        )
    settings = _user_settings(sim, box)
    found = "".join(
        f'<UserSetting i:type="StringSetting"><Name>{name}</Name>'
        f"<Value>{escape(settings[name])}</Value></UserSetting>"
        for name in wanted
        if name in settings
    )
    missing = "".join(
        f"<UserSettingError><ErrorCode>SettingIsNotAvailable</ErrorCode>"
        f"<ErrorMessage>User setting '{name}' is not available.</ErrorMessage>"
        f"<SettingName>{name}</SettingName></UserSettingError>"
        for name in wanted
        if name not in settings
    )
    return (
        "<UserResponse><ErrorCode>NoError</ErrorCode><ErrorMessage>No error.</ErrorMessage>"
        f'<RedirectTarget i:nil="true"/><UserSettingErrors>{missing}</UserSettingErrors>'
        f"<UserSettings>{found}</UserSettings></UserResponse>"
    )


def autodiscover_answer(sim: EwsSimulator, user: str, body: bytes) -> tuple[int, bytes]:
    """HTTP status and SOAP envelope for one Autodiscover request (GetUserSettings)."""
    try:
        envelope = etree.fromstring(body)
    except etree.XMLSyntaxError:
        return 500, _fault("ErrorSchemaValidation", "The request is not valid XML.")
    request = envelope.find(
        f"{{{SOAP}}}Body/{{{AUTODISCOVER}}}GetUserSettingsRequestMessage/{{{AUTODISCOVER}}}Request"
    )
    if request is None:
        return 500, _fault("ErrorInvalidRequest", "Only GetUserSettings is simulated.")
    a = f"{{{AUTODISCOVER}}}"
    users = [m.text or "" for m in request.iterfind(f"{a}Users/{a}User/{a}Mailbox")]
    wanted = [s.text or "" for s in request.iterfind(f"{a}RequestedSettings/{a}Setting")]
    with sim.lock:
        sim.requests.append(RequestRecord("GetUserSettings", user, None))
        responses = "".join(_user_response(sim, u.strip(), wanted) for u in users)
    answer = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:a="{WSA}"><s:Header>'
        f'<a:Action s:mustUnderstand="1">{AUTODISCOVER}/Autodiscover/GetUserSettingsResponse'
        f'</a:Action><h:ServerVersionInfo xmlns:h="{AUTODISCOVER}" xmlns:i="{XSI}">'
        "<h:MajorVersion>15</h:MajorVersion><h:MinorVersion>1</h:MinorVersion>"
        "<h:MajorBuildNumber>2507</h:MajorBuildNumber><h:MinorBuildNumber>6</h:MinorBuildNumber>"
        "<h:Version>Exchange2015</h:Version></h:ServerVersionInfo></s:Header><s:Body>"
        f'<GetUserSettingsResponseMessage xmlns="{AUTODISCOVER}">'
        f'<Response xmlns:i="{XSI}"><ErrorCode>NoError</ErrorCode><ErrorMessage/>'
        f"<UserResponses>{responses}</UserResponses></Response>"
        "</GetUserSettingsResponseMessage></s:Body></s:Envelope>"
    )
    return 200, answer.encode()


def main(argv: list[str]) -> None:
    """Serve one populated mailbox until stdin closes (benchmarks in another process)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--user", default="alice@northwind.example")
    parser.add_argument("--password", default="pw")
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument(
        "--folders", default="Inbox,Sent Items", help="comma-separated; custom ones are created"
    )
    parser.add_argument("--size", type=int, default=500)
    args = parser.parse_args(argv)
    sim = EwsSimulator()
    box = sim.add_mailbox(args.user, password=args.password)
    folders = [f.strip() for f in args.folders.split(",") if f.strip()]
    for name in folders:
        try:
            box.folder(name)
        except KeyError:
            box.add_folder(name)
    for n in range(args.messages):
        box.deliver(folders[n % len(folders)], sample_message(n, size=args.size))
    with sim:
        print(sim.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1:])
