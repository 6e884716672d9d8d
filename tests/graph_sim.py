"""A Microsoft Graph mail endpoint and a Microsoft identity platform token endpoint
on one loopback HTTPS port, holding mailboxes in memory, for connector tests and
benchmarks. Clients talk to it only over HTTP (httpx, msal's requests).

    async with GraphSimulator.running(tmp_path) as sim:
        sim.add_app("app-id", "app-secret")
        sim.add_user("alice@contoso.example")
        item = sim.add_message("alice@contoso.example", "inbox", mime_bytes)
        profile = sim.profile(client_id="app-id", secret_env="GRAPH_SECRET")

What it answers, as documented (JSON shapes, status codes, error codes):
- `GET /{tenant}/v2.0/.well-known/openid-configuration` (msal's discovery) and
  `POST /{tenant}/oauth2/v2.0/token`: client_credentials (client_secret) and
  refresh_token grants; a wrong secret is 401 `invalid_client` (AADSTS7000215), an
  unknown refresh token 400 `invalid_grant`. Tokens live `token_lifetime_s`.
- `/v1.0/users/{user}/mailFolders/{folder}` (well-known names or ids),
  `/mailFolders` (list), `/mailFolders/{folder}/messages/delta` (paged with
  `Prefer: odata.maxpagesize`, `@odata.nextLink` / `@odata.deltaLink`, `$select`,
  `@removed`), `/messages/{id}` (`$select`, incl. `internetMessageHeaders`),
  `/messages/{id}/$value` (MIME), `/messages?$filter=internetMessageId eq '...'`,
  `POST /sendMail` (JSON message or base64 MIME as text/plain), `POST /$batch`
  (at most 20 requests, `dependsOn` sequencing, 424 for failed dependencies,
  non-JSON bodies base64). ACT items: events/contacts/To Do tasks by id, their
  deltas, and `/events?$filter=iCalUId eq '...'` (manual tracking).
- Bearer tokens checked on every call: 401 `InvalidAuthenticationToken`.

Knobs: `expire_delta_tokens` (410 `syncStateNotFound`), `throttle` (the next N
calls answer 429 `TooManyRequests` with Retry-After), `revoke_tokens`,
`latency_s`, `hold_sends(at)` (the next sendMail held so a test can kill the client
there: see SendHold). Like Exchange Online, a mailbox serves at most 4 requests at once:
the fifth concurrent one (a batch's parallel members count each) answers 429
`ApplicationThrottled` "MailboxConcurrency"; `max_in_flight` per mailbox and
`requests` (by kind) let tests check a client's manners.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import email.parser
import email.policy
import email.utils
import hashlib
import ipaddress
import itertools
import json
import re
import secrets
import ssl
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Self

from aiohttp import web

from schemas.mailbox import GraphApp, Protocol, ServerProfile
from schemas.secret import SecretRef

TENANT = "contoso-tenant"
MAILBOX_CONCURRENCY = 4
BATCH_MAX = 20
WELL_KNOWN = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "archive": "Archive",
}
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    if cert_file.exists() and key_file.exists():
        return cert_file, key_file
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def graph_error(status: int, code: str, message: str) -> Answer:
    return Answer(status, {"error": {"code": code, "message": message}})


@dataclass
class Answer:
    """One API answer: status, JSON body (or raw bytes), headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"


@dataclass
class SimMessage:
    id: str
    folder_id: str
    mime: bytes
    change_key: str
    created_seq: int
    received: dt.datetime
    is_read: bool = False
    categories: list[str] = field(default_factory=list)
    flagged: bool = False

    def headers(self) -> list[tuple[str, str]]:
        parsed = _HEADERS.parsebytes(self.mime)
        return [(name, str(value)) for name, value in parsed.items()]

    def header(self, name: str) -> str | None:
        value = _HEADERS.parsebytes(self.mime).get(name)
        return None if value is None else str(value)

    def resource(self, select: set[str] | None) -> dict[str, Any]:
        def address(value: str | None) -> list[dict[str, Any]]:
            return [
                {"emailAddress": {"name": n, "address": a}}
                for n, a in email.utils.getaddresses([value or ""])
                if a
            ]

        thread_index = self.header("Thread-Index")
        topic = (self.header("Subject") or "").lower().removeprefix("re: ")
        full: dict[str, Any] = {
            "@odata.etag": f'W/"{self.change_key}"',
            "id": self.id,
            "changeKey": self.change_key,
            "createdDateTime": iso(self.received),
            "lastModifiedDateTime": iso(self.received),
            "receivedDateTime": iso(self.received),
            "sentDateTime": iso(self.received),
            "subject": self.header("Subject") or "",
            "internetMessageId": self.header("Message-ID"),
            "conversationId": "AAQk" + hashlib.sha1(topic.encode()).hexdigest()[:24],
            "conversationIndex": thread_index
            or base64.b64encode(hashlib.sha1(self.id.encode()).digest()[:22]).decode(),
            "isRead": self.is_read,
            "categories": list(self.categories),
            "parentFolderId": self.folder_id,
            "flag": {"flagStatus": "flagged" if self.flagged else "notFlagged"},
            "from": (address(self.header("From")) or [None])[0],
            "toRecipients": address(self.header("To")),
            "ccRecipients": address(self.header("Cc")),
        }
        if select is None:
            return full
        chosen = {k: v for k, v in full.items() if k in select or k in ("id", "@odata.etag")}
        if "internetMessageHeaders" in select:
            chosen["internetMessageHeaders"] = [{"name": n, "value": v} for n, v in self.headers()]
        return chosen


@dataclass
class SimFolder:
    id: str
    display_name: str
    epoch: int = 0


@dataclass
class SimMailbox:
    upn: str
    user_id: str
    folders: dict[str, SimFolder] = field(default_factory=dict)
    messages: dict[str, SimMessage] = field(default_factory=dict)
    log: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, folder id, item id)
    seq: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    over_limit: int = 0
    act_items: dict[str, dict[str, Any]] = field(default_factory=dict)  # ACT writes

    def folder(self, key: str) -> SimFolder | None:
        if key in self.folders:
            return self.folders[key]
        name = WELL_KNOWN.get(key.lower())
        return next((f for f in self.folders.values() if f.display_name == name), None)

    def touch(self, folder_id: str, item_id: str) -> int:
        self.seq += 1
        self.log.append((self.seq, folder_id, item_id))
        return self.seq


@dataclass
class Grant:
    client_id: str
    user: str | None  # None: app-only
    expires_at: float


HOLD_MAX_S = 60.0
"""The longest a held sendMail waits for its release."""


@dataclass
class SendHold:
    """The next sendMail, held at `at`:

    - "answer": the server has taken the message (sent, its copy in Sent Items)
      and holds the 202;
    - "arrival": the request is held unprocessed, then dropped (connection closed,
      nothing sent), as a request that never reached Exchange Online.

    `reached` is set once the request is held; the handler waits for `release`
    (at most HOLD_MAX_S); `dropped` counts requests dropped at arrival."""

    at: str
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0


class GraphSimulator:
    """The simulator's state and its aiohttp application (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cert_file, self.key_file = make_certificate(root / "tls")
        self.apps: dict[str, str | None] = {}  # client id -> secret (None: public client)
        self.mailboxes: dict[str, SimMailbox] = {}
        self.tokens: dict[str, Grant] = {}
        self.refresh_tokens: dict[str, tuple[str, str]] = {}  # token -> (client id, upn)
        self.token_lifetime_s = 3599
        self.latency_s = 0.0
        self.throttle_left = 0
        self.throttle_retry_after = 1
        self.throttle_status = 429
        self.requests: Counter[str] = Counter()
        self.token_requests: Counter[str] = Counter()
        self.sent: list[bytes] = []
        self.act_invitations: list[tuple[str, str]] = []  # ACT writes: (address, subject)
        self.act_cancellations: list[tuple[str, str]] = []
        self.port = 0
        self.send_hold: SendHold | None = None
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.subscriptions = SubscriptionState(self)

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, root: Path) -> AsyncIterator[Self]:
        """Serve on a free loopback port until the block ends."""
        sim = cls(root)
        await sim.start()
        try:
            yield sim
        finally:
            await sim.stop()

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_route("*", "/v1.0/{tail:.*}", self._graph)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def graph_app(self, client_id: str, secret_env: str | None = None, **changes: Any) -> GraphApp:
        """The GraphApp settings pointing at this simulator."""
        settings: dict[str, Any] = {
            "tenant_id": TENANT,
            "client_id": client_id,
            "client_secret": SecretRef(env=secret_env) if secret_env else None,
            "authority_host": self.base_url,
            "graph_url": f"{self.base_url}/v1.0",
            **changes,
        }
        return GraphApp(**settings)

    def profile(
        self, client_id: str, secret_env: str | None = None, **changes: Any
    ) -> ServerProfile:
        """A Graph server profile for this simulator (its certificate trusted)."""
        app_changes = {k: changes.pop(k) for k in ("flow", "page_size") if k in changes}
        return ServerProfile(
            protocol=Protocol.GRAPH,
            host="127.0.0.1",
            port=self.port,
            ca_file=str(self.cert_file),
            graph=self.graph_app(client_id, secret_env, **app_changes),
            **changes,
        )

    # -- state -----------------------------------------------------------------

    def add_app(self, client_id: str, secret: str | None) -> None:
        """Register an app (a confidential client with `secret`, else a public one)."""
        self.apps[client_id] = secret

    def add_user(self, upn: str) -> SimMailbox:
        box = SimMailbox(upn=upn, user_id=hashlib.md5(upn.encode()).hexdigest())
        for well_known, name in WELL_KNOWN.items():
            folder_id = "AQMk" + hashlib.sha1(f"{upn}/{well_known}".encode()).hexdigest()
            box.folders[folder_id] = SimFolder(folder_id, name)
        self.mailboxes[upn.lower()] = box
        self.mailboxes[box.user_id] = box
        return box

    def add_folder(self, upn: str, display_name: str) -> str:
        box = self.mailboxes[upn.lower()]
        folder_id = "AQMk" + hashlib.sha1(f"{upn}/{display_name}".encode()).hexdigest()
        box.folders[folder_id] = SimFolder(folder_id, display_name)
        return folder_id

    def issue_refresh_token(self, client_id: str, upn: str) -> str:
        """A refresh token for `upn` through app `client_id` (as a sign-in would give)."""
        token = "rt-" + secrets.token_urlsafe(24)
        self.refresh_tokens[token] = (client_id, upn.lower())
        return token

    def add_message(
        self,
        upn: str,
        folder: str,
        mime: bytes,
        *,
        is_read: bool = False,
        categories: Iterable[str] = (),
    ) -> str:
        """Store a message (MIME) in a folder (well-known name or id); its id."""
        box = self.mailboxes[upn.lower()]
        target = box.folder(folder)
        assert target is not None, folder
        n = next(self._ids)
        item_id = (
            "AAMkAD"
            + base64.urlsafe_b64encode(hashlib.sha256(f"{upn}/{n}".encode()).digest())
            .decode()
            .rstrip("=")
            + f"-{n}"
        )
        seq = box.touch(target.id, item_id)
        self.subscriptions.changed(box, target.id, item_id, "created")
        box.messages[item_id] = SimMessage(
            id=item_id,
            folder_id=target.id,
            mime=mime,
            change_key=f"CQAAAB{seq:08d}",
            created_seq=seq,
            received=dt.datetime.now(dt.UTC),
            is_read=is_read,
            categories=list(categories),
        )
        return item_id

    def update_message(
        self,
        upn: str,
        item_id: str,
        *,
        is_read: bool | None = None,
        categories: Iterable[str] | None = None,
        flagged: bool | None = None,
    ) -> None:
        box = self.mailboxes[upn.lower()]
        message = box.messages[item_id]
        if is_read is not None:
            message.is_read = is_read
        if categories is not None:
            message.categories = list(categories)
        if flagged is not None:
            message.flagged = flagged
        seq = box.touch(message.folder_id, item_id)
        message.change_key = f"CQAAAB{seq:08d}"
        self.subscriptions.changed(box, message.folder_id, item_id, "updated")

    def delete_message(self, upn: str, item_id: str) -> None:
        box = self.mailboxes[upn.lower()]
        message = box.messages.pop(item_id)
        box.touch(message.folder_id, item_id)
        self.subscriptions.changed(box, message.folder_id, item_id, "deleted")

    def expire_delta_tokens(self, upn: str) -> None:
        """Every delta and skip token of the mailbox now answers 410 (sync state gone)."""
        for folder in self.mailboxes[upn.lower()].folders.values():
            folder.epoch += 1

    def throttle(self, count: int, retry_after: int = 1, status: int = 429) -> None:
        """The next `count` Graph calls answer `status` (429 or 503) with Retry-After."""
        self.throttle_left = count
        self.throttle_retry_after = retry_after
        self.throttle_status = status

    def hold_sends(self, at: str = "answer") -> SendHold:
        """Hold the next sendMail at `at` ("answer" or "arrival", see SendHold)."""
        if at not in ("answer", "arrival"):
            raise ValueError(f"hold_sends: at must be 'answer' or 'arrival', not {at!r}")
        self.send_hold = SendHold(at)
        return self.send_hold

    def _take_hold(self, request: web.Request, path: str) -> SendHold | None:
        """The pending hold when `request` is a sendMail (the hold is used up)."""
        hold = self.send_hold
        if hold is None or request.method != "POST" or not path.endswith("/sendMail"):
            return None
        self.send_hold = None
        return hold

    @staticmethod
    async def _wait_held(hold: SendHold) -> None:
        hold.reached.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hold.release.wait(), HOLD_MAX_S)

    def revoke_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        self.tokens.clear()

    # -- token endpoint ----------------------------------------------------------

    async def _openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        base = f"{self.base_url}/{tenant}"
        return web.json_response(
            {
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "issuer": f"{base}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
            }
        )

    def _access_token(self, client_id: str, user: str | None) -> dict[str, Any]:
        token = "at-" + secrets.token_urlsafe(32)
        self.tokens[token] = Grant(client_id, user, time.time() + self.token_lifetime_s)
        return {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime_s,
            "ext_expires_in": self.token_lifetime_s,
            "access_token": token,
        }

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        self.token_requests[grant] += 1
        client_id = str(form.get("client_id", ""))
        if client_id not in self.apps:
            return self._oauth_error(400, "unauthorized_client", 700016, "Application not found")
        expected = self.apps[client_id]
        given = form.get("client_secret")
        if expected is not None and given != expected:
            return self._oauth_error(401, "invalid_client", 7000215, "Invalid client secret")
        if grant == "client_credentials":
            scope = str(form.get("scope", ""))
            if not scope.endswith("/.default"):
                return self._oauth_error(400, "invalid_scope", 1002012, "Scope must be .default")
            return web.json_response(self._access_token(client_id, None))
        if grant == "refresh_token":
            held = self.refresh_tokens.get(str(form.get("refresh_token", "")))
            if held is None or held[0] != client_id:
                return self._oauth_error(400, "invalid_grant", 70000, "Refresh token invalid")
            upn = held[1]
            answer = self._access_token(client_id, upn)
            answer["refresh_token"] = self.issue_refresh_token(client_id, upn)
            answer["scope"] = str(form.get("scope", ""))
            box = self.mailboxes[upn]
            answer["client_info"] = _b64(json.dumps({"uid": box.user_id, "utid": TENANT}))
            answer["id_token"] = _unsigned_jwt(
                {
                    "aud": client_id,
                    "iss": f"{self.base_url}/{TENANT}/v2.0",
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 3600,
                    "oid": box.user_id,
                    "sub": box.user_id,
                    "tid": TENANT,
                    "preferred_username": upn,
                }
            )
            return web.json_response(answer)
        return self._oauth_error(400, "unsupported_grant_type", 70003, "Grant not supported")

    @staticmethod
    def _oauth_error(status: int, error: str, code: int, text: str) -> web.Response:
        return web.json_response(
            {
                "error": error,
                "error_description": f"AADSTS{code}: {text}.",
                "error_codes": [code],
                "timestamp": iso(dt.datetime.now(dt.UTC)),
            },
            status=status,
        )

    # -- Graph -------------------------------------------------------------------

    async def _graph(self, request: web.Request) -> web.StreamResponse:
        grant = self._authorized(request.headers.get("Authorization", ""))
        if grant is None:
            answer = graph_error(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
            )
            answer.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        elif self.throttle_left > 0:
            self.throttle_left -= 1
            self.requests["throttled"] += 1
            answer = graph_error(self.throttle_status, "TooManyRequests", "Too many requests")
            answer.headers["Retry-After"] = str(self.throttle_retry_after)
        else:
            path = "/" + request.match_info["tail"]
            body = await request.read()
            hold = self._take_hold(request, path)
            if hold is not None and hold.at == "arrival":
                await self._wait_held(hold)
                hold.dropped += 1
                if request.transport is not None:
                    request.transport.close()  # dropped: never processed, never answered
                return web.Response(status=503)
            if hold is not None:
                answer = await self._call(
                    grant, request.method, path, dict(request.query), dict(request.headers), body
                )
                await self._wait_held(hold)
            elif request.method == "POST" and path == "/$batch":
                answer = await self._batch(grant, body)
            elif path.split("/")[1] == "subscriptions":
                answer = await self.subscriptions.call(grant, request.method, path, body)
            else:
                answer = await self._call(
                    grant,
                    request.method,
                    path,
                    dict(request.query),
                    dict(request.headers),
                    body,
                )
        if answer.raw is not None:
            return web.Response(
                status=answer.status,
                body=answer.raw,
                headers=answer.headers,
                content_type=answer.content_type,
            )
        if answer.body is None:
            return web.Response(status=answer.status, headers=answer.headers)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)

    def _authorized(self, header: str) -> Grant | None:
        scheme, _, token = header.partition(" ")
        grant = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if grant is None or grant.expires_at < time.time():
            return None
        return grant

    async def _batch(self, grant: Grant, body: bytes) -> Answer:
        self.requests["batch"] += 1
        try:
            requests = json.loads(body)["requests"]
        except (ValueError, KeyError, TypeError):
            return graph_error(400, "BadRequest", "Invalid batch payload.")
        if not isinstance(requests, list) or not 1 <= len(requests) <= BATCH_MAX:
            return graph_error(400, "BadRequest", f"A batch holds 1 to {BATCH_MAX} requests.")
        done: dict[str, asyncio.Future[Answer]] = {
            str(r["id"]): asyncio.get_running_loop().create_future() for r in requests
        }

        async def run(member: dict[str, Any]) -> None:
            ours = done[str(member["id"])]
            failed = False
            for dependency in member.get("dependsOn") or []:
                answer = await done[str(dependency)]
                failed = failed or not 200 <= answer.status < 300
            if failed:
                ours.set_result(graph_error(424, "FailedDependency", "Dependency failed."))
                return
            url = urllib.parse.urlsplit(str(member["url"]))
            query = dict(urllib.parse.parse_qsl(url.query))
            payload = member.get("body")
            raw = json.dumps(payload).encode() if payload is not None else b""
            path = url.path if url.path.startswith("/") else "/" + url.path
            ours.set_result(
                await self._call(
                    grant,
                    member.get("method", "GET"),
                    path,
                    query,
                    member.get("headers") or {},
                    raw,
                )
            )

        await asyncio.gather(*(run(member) for member in requests))
        responses = []
        for member in requests:
            answer = done[str(member["id"])].result()
            entry: dict[str, Any] = {
                "id": str(member["id"]),
                "status": answer.status,
                "headers": {"Content-Type": answer.content_type, **answer.headers},
            }
            if answer.raw is not None:
                entry["body"] = base64.b64encode(answer.raw).decode()
            elif answer.body is not None:
                entry["body"] = answer.body
            responses.append(entry)
        return Answer(200, {"responses": responses})

    async def _call(
        self,
        grant: Grant,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
    ) -> Answer:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["me"]:
            parts = ["users", grant.user or "", *parts[1:]]
        if len(parts) < 2 or parts[0] != "users":
            return graph_error(400, "BadRequest", f"Resource not found for the segment {path!r}.")
        box = self.mailboxes.get(parts[1].lower())
        if box is None:
            return graph_error(
                404, "ErrorInvalidUser", f"The requested user '{parts[1]}' is invalid."
            )
        if grant.user is not None and self.mailboxes.get(grant.user) is not box:
            return graph_error(403, "ErrorAccessDenied", "Access is denied.")
        if box.in_flight >= MAILBOX_CONCURRENCY:
            box.over_limit += 1
            answer = graph_error(
                429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit."
            )
            answer.headers["Retry-After"] = "1"
            return answer
        box.in_flight += 1
        box.max_in_flight = max(box.max_in_flight, box.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
            return self._route(box, method, parts[2:], query, headers, body)
        finally:
            box.in_flight -= 1

    def _route(
        self,
        box: SimMailbox,
        method: str,
        rest: list[str],
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
    ) -> Answer:
        select = set(query["$select"].split(",")) if "$select" in query else None
        act = act_write_route(self, box, method, rest, query, body)
        if act is None:
            act = act_read_route(self, box, method, rest, query, headers)
        if act is None:
            act = act_find_route(self, box, method, rest, query)
        if act is not None:
            return act
        if method == "POST" and rest == ["sendMail"]:
            self.requests["sendMail"] += 1
            return self._send_mail(box, headers, body)
        if method != "GET":
            return graph_error(405, "MethodNotAllowed", "Method not allowed.")
        if rest == ["mailFolders"]:
            self.requests["folders"] += 1
            return Answer(200, {"value": [_folder(box, f) for f in box.folders.values()]})
        if len(rest) >= 2 and rest[0] == "mailFolders":
            folder = box.folder(rest[1])
            if folder is None:
                return graph_error(404, "ErrorItemNotFound", "The specified object was not found.")
            if len(rest) == 2:
                self.requests["folder"] += 1
                return Answer(200, _folder(box, folder))
            if rest[2:] == ["messages", "delta"]:
                self.requests["delta"] += 1
                return self._delta(box, folder, query, headers, select)
            if rest[2:] == ["messages"]:
                self.requests["list"] += 1
                return self._list(box, folder.id, query, select)
        if rest == ["messages"]:
            self.requests["list"] += 1
            return self._list(box, None, query, select)
        if len(rest) >= 2 and rest[0] == "messages":
            message = box.messages.get(rest[1])
            if message is None:
                return graph_error(404, "ErrorItemNotFound", "The specified object was not found.")
            if rest[2:] == ["$value"]:
                self.requests["value"] += 1
                return Answer(200, raw=message.mime, content_type="text/plain")
            if len(rest) == 2:
                self.requests["message"] += 1
                return Answer(200, message.resource(select))
        return graph_error(400, "BadRequest", f"Unsupported segment {'/'.join(rest)!r}.")

    def _list(
        self, box: SimMailbox, folder_id: str | None, query: dict[str, str], select: set[str] | None
    ) -> Answer:
        wanted: str | None = None
        flt = query.get("$filter", "")
        if flt.startswith("internetMessageId eq '") and flt.endswith("'"):
            wanted = flt[len("internetMessageId eq '") : -1].replace("''", "'")
        elif flt:
            return graph_error(400, "BadRequest", "Only internetMessageId eq filters here.")
        found = [
            m.resource(select)
            for m in box.messages.values()
            if (folder_id is None or m.folder_id == folder_id)
            and (wanted is None or m.header("Message-ID") == wanted)
        ]
        return Answer(200, {"value": found[: int(query.get("$top", "1000"))]})

    def _delta(
        self,
        box: SimMailbox,
        folder: SimFolder,
        query: dict[str, str],
        headers: dict[str, str],
        select: set[str] | None,
    ) -> Answer:
        prefer = {k.lower(): v for k, v in headers.items()}.get("prefer", "")
        page_size = 10
        for part in prefer.split(","):
            name, _, value = part.strip().partition("=")
            if name == "odata.maxpagesize" and value.isdigit():
                page_size = max(1, int(value))
        if "$skiptoken" in query or "$deltatoken" in query:
            state = _read_token(query.get("$skiptoken") or query.get("$deltatoken") or "")
            if state is None or state.get("f") != folder.id or state.get("e") != folder.epoch:
                return graph_error(
                    410, "syncStateNotFound", "The sync state generation is not found."
                )
            if "$deltatoken" in query:
                state = {**state, "m": "inc", "u": box.seq, "o": 0}
            select = set(state["sel"]) if state.get("sel") is not None else None
        else:
            state = {
                "f": folder.id,
                "e": folder.epoch,
                "m": "full",
                "s": 0,
                "u": box.seq,
                "o": 0,
                "sel": sorted(select) if select is not None else None,
            }
        if state["m"] == "full":
            ids = [
                m.id
                for m in sorted(box.messages.values(), key=lambda m: m.created_seq)
                if m.folder_id == folder.id
            ]
        else:
            touched: dict[str, None] = {}
            for seq, folder_id, item_id in box.log:
                if state["s"] < seq <= state["u"] and folder_id == folder.id:
                    touched.pop(item_id, None)
                    touched[item_id] = None
            ids = list(touched)
        offset = state["o"]
        page = ids[offset : offset + page_size]
        value: list[dict[str, Any]] = []
        for item_id in page:
            message = box.messages.get(item_id)
            if message is None or message.folder_id != folder.id:
                value.append(
                    {
                        "@odata.type": "#microsoft.graph.message",
                        "id": item_id,
                        "@removed": {"reason": "deleted" if message is None else "changed"},
                    }
                )
            else:
                value.append(
                    {"@odata.type": "#microsoft.graph.message", **message.resource(select)}
                )
        base = f"{self.base_url}/v1.0/users/{box.upn}/mailFolders/{folder.id}/messages/delta"
        answer: dict[str, Any] = {
            "@odata.context": f"{self.base_url}/v1.0/$metadata#Collection(message)",
        }
        if offset + page_size < len(ids):
            token = _write_token({**state, "o": offset + page_size})
            answer["@odata.nextLink"] = f"{base}?$skiptoken={token}"
        else:
            token = _write_token(
                {
                    "f": folder.id,
                    "e": folder.epoch,
                    "m": "inc",
                    "s": state["u"],
                    "sel": state["sel"],
                }
            )
            answer["@odata.deltaLink"] = f"{base}?$deltatoken={token}"
        answer["value"] = value
        return Answer(200, answer, {"Preference-Applied": f"odata.maxpagesize={page_size}"})

    def _send_mail(self, box: SimMailbox, headers: dict[str, str], body: bytes) -> Answer:
        content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        if content_type.startswith("text/plain"):
            try:
                mime = base64.b64decode(body, validate=True)
            except ValueError:
                return graph_error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64.")
            save = True
        else:
            try:
                payload = json.loads(body)
                message = payload["message"]
            except (ValueError, KeyError, TypeError):
                return graph_error(400, "ErrorInvalidRequest", "Cannot read the request body.")
            mime = _mime_from_json(box, message)
            save = bool(payload.get("saveToSentItems", True))
        parsed = _HEADERS.parsebytes(mime)
        if not parsed.get("To") and not parsed.get("Cc") and not parsed.get("Bcc"):
            return graph_error(
                400, "ErrorInvalidRecipients", "At least one recipient is not valid."
            )
        if parsed.get("Message-ID") is None:
            mime = f"Message-ID: {email.utils.make_msgid(domain='sim.example')}\r\n".encode() + mime
        self.sent.append(mime)
        if save:
            self.add_message(box.upn, "sentitems", mime, is_read=True)
        recipients = email.utils.getaddresses([str(parsed.get(h, "")) for h in ("To", "Cc", "Bcc")])
        for _, address in recipients:
            if address.lower() in self.mailboxes:
                self.add_message(address, "inbox", mime)
        return Answer(202)


def _folder(box: SimMailbox, folder: SimFolder) -> dict[str, Any]:
    total = sum(1 for m in box.messages.values() if m.folder_id == folder.id)
    return {
        "id": folder.id,
        "displayName": folder.display_name,
        "parentFolderId": "AQMkroot",
        "childFolderCount": 0,
        "totalItemCount": total,
        "unreadItemCount": total,
    }


def _mime_from_json(box: SimMailbox, message: dict[str, Any]) -> bytes:
    mail = EmailMessage()
    mail["From"] = box.upn
    for header, key in (("To", "toRecipients"), ("Cc", "ccRecipients")):
        addresses = [r["emailAddress"]["address"] for r in message.get(key) or []]
        if addresses:
            mail[header] = ", ".join(addresses)
    mail["Subject"] = message.get("subject", "")
    for pair in message.get("internetMessageHeaders") or []:
        mail[pair["name"]] = pair["value"]
    mail["Message-ID"] = email.utils.make_msgid(domain="sim.example")
    mail.set_content((message.get("body") or {}).get("content", ""))
    return mail.as_bytes()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unsigned_jwt(claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}))}.{_b64(json.dumps(claims))}."


def _write_token(state: dict[str, Any]) -> str:
    return _b64(json.dumps(state, separators=(",", ":")))


def _read_token(token: str) -> dict[str, Any] | None:
    try:
        state = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def sample_message(n: int, user: str, size: int = 0, subject: str = "Graph hello") -> bytes:
    """A small well-formed email with Message-ID <graph-n@contoso.example>, padded to
    about `size` bytes when asked."""
    mail = EmailMessage()
    mail["From"] = "Dana <dana@contoso.example>"
    mail["To"] = user
    mail["Subject"] = f"{subject} {n}"
    mail["Message-ID"] = f"<graph-{n}@contoso.example>"
    mail["Date"] = "Mon, 30 Mar 2026 10:15:00 +0000"
    text = f"Body text {n}.\n"
    if size > len(text):
        text += ("lorem ipsum " * (size // 12 + 1))[: size - len(text)] + "\n"
    mail.set_content(text)
    return mail.as_bytes()


# -- ACT writes: events, contacts, To Do tasks (CRM → Exchange writer) -------------
#
# What connectors/act_graph_write.py calls, as documented for Graph v1.0:
# POST /events (transactionId makes a retried create return the first event),
# GET / PATCH / DELETE /events/{id}, POST /events/{id}/cancel (organizer only:
# attendees are sent a cancellation, recorded in `sim.act_cancellations`),
# GET /events/{id}/instances?startDateTime=&endDateTime= (a series expanded by its
# pattern; PATCH of an occurrence makes it an exception, DELETE cancels it);
# POST / GET / PATCH / DELETE /contacts[/{id}]; GET /todo/lists (one default list)
# and POST / GET / PATCH / DELETE /todo/lists/{list}/tasks[/{id}]. Items live in
# `SimMailbox.act_items` (id → resource, with `@kind` and private `_` keys);
# `act_edit` changes one as a user would in Outlook. Invitations are recorded in
# `sim.act_invitations` (address, subject) when an event with attendees is created.

_ACT_LIST_ID = "AAMkDefaultTasks"
_ACT_KINDS = {"events": "event", "contacts": "contact"}


def _act_stamp(moment: dt.datetime | None = None) -> str:
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _act_public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_") and k != "@kind"}


def _act_touch(item: dict[str, Any], at: dt.datetime | None = None) -> None:
    item["_version"] = int(item.get("_version", 0)) + 1
    item["changeKey"] = f"EQAAAB{item['_version']:06d}{item['id'][-6:]}"
    item["lastModifiedDateTime"] = _act_stamp(at)
    if item.get("@kind") == "task":
        item["@odata.etag"] = f'W/"{item["changeKey"]}"'


def _act_new(
    sim: GraphSimulator, box: SimMailbox, kind: str, body: dict[str, Any]
) -> dict[str, Any]:
    item_id = (
        f"AAMk{kind[:2]}"
        + hashlib.blake2b(f"{box.upn}/{next(sim._ids)}".encode(), digest_size=12).hexdigest()
    )
    item = {**body, "id": item_id, "@kind": kind, "createdDateTime": _act_stamp()}
    if kind == "event":
        item["iCalUId"] = "040000008200E00074C5B7101A82E008" + item_id[-16:].upper()
        item["organizer"] = {"emailAddress": {"address": box.upn, "name": box.upn}}
        item["isOrganizer"] = True
        item["type"] = "seriesMaster" if body.get("recurrence") else "singleInstance"
        item["_occurrences"] = {}
    _act_touch(item)
    box.act_items[item_id] = item
    sim.subscriptions.act_changed(box, kind, item_id, "created")
    return item


def _act_occurrences(master: dict[str, Any]) -> list[dict[str, Any]]:
    """The occurrences of a series master: pattern expanded, exceptions applied."""
    from dateutil import rrule as du_rrule

    pattern, span = master["recurrence"]["pattern"], master["recurrence"]["range"]
    start = dt.datetime.fromisoformat(master["start"]["dateTime"][:19])
    end = dt.datetime.fromisoformat(master["end"]["dateTime"][:19])
    # Graph expands a series in its recurrenceTimeZone at the local time of its start
    zone = _act_zone(span.get("recurrenceTimeZone") or master.get("originalStartTimeZone"))
    all_day = bool(master.get("isAllDay"))
    length = end - start
    if not all_day:  # stored in UTC (`_act_zoned`); all-day times are wall dates
        start = start.replace(tzinfo=dt.UTC).astimezone(zone).replace(tzinfo=None)
    days = {
        "monday": 0,
        "tuesday": 1,
        "wednesday": 2,
        "thursday": 3,
        "friday": 4,
        "saturday": 5,
        "sunday": 6,
    }
    freq = {
        "daily": du_rrule.DAILY,
        "weekly": du_rrule.WEEKLY,
        "absoluteMonthly": du_rrule.MONTHLY,
        "relativeMonthly": du_rrule.MONTHLY,
        "absoluteYearly": du_rrule.YEARLY,
    }[pattern["type"]]
    kwargs: dict[str, Any] = {"interval": int(pattern.get("interval", 1))}
    if pattern["type"] in ("weekly", "relativeMonthly"):
        kwargs["byweekday"] = [days[d] for d in pattern.get("daysOfWeek", [])]
    if pattern["type"] == "relativeMonthly":
        index = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
        kwargs["bysetpos"] = index[pattern.get("index", "first")]
    if pattern["type"] in ("absoluteMonthly", "absoluteYearly"):
        kwargs["bymonthday"] = int(pattern["dayOfMonth"])
    if pattern["type"] == "absoluteYearly":
        kwargs["bymonth"] = int(pattern["month"])
    if span["type"] == "numbered":
        kwargs["count"] = int(span["numberOfOccurrences"])
    elif span["type"] == "endDate":
        kwargs["until"] = dt.datetime.fromisoformat(span["endDate"]) + dt.timedelta(days=1)
    else:
        kwargs["count"] = 500
    first = dt.datetime.combine(dt.date.fromisoformat(span["startDate"]), start.time())
    out = []
    for wall in du_rrule.rrule(freq, dtstart=first, **kwargs):
        utc = wall.replace(tzinfo=zone).astimezone(dt.UTC)
        moment = wall if all_day else utc.replace(tzinfo=None)
        key = utc.strftime("%Y%m%dT%H%M%S")
        change = master["_occurrences"].get(key, {})
        if change is None:
            continue  # cancelled
        occurrence = {
            **_act_public(master),
            "id": f"{master['id']}_OID_{key}",
            "seriesMasterId": master["id"],
            "type": "exception" if change else "occurrence",
            "originalStart": utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "start": {"dateTime": moment.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"},
            "end": {
                "dateTime": (moment + length).strftime("%Y-%m-%dT%H:%M:%S.0000000"),
                "timeZone": "UTC",
            },
            "recurrence": None,
        }
        occurrence.update(change)
        out.append(occurrence)
    return out


def _act_zone(name: str | None) -> Any:
    """The ZoneInfo of a Graph zone name: UTC, IANA, or Windows (exchangelib's CLDR map,
    as Graph maps them); UTC for none."""
    from zoneinfo import ZoneInfo

    from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP

    text = (name or "UTC").strip()
    return ZoneInfo(MS_TIMEZONE_TO_IANA_MAP.get(text, "UTC" if text == "UTC" else text))


def _act_zoned(payload: dict[str, Any]) -> dict[str, Any]:
    """An event write as Graph stores it: start and end (given in any zone) kept in UTC,
    which Graph answers by default and for `Prefer: outlook.timezone="UTC"` (other
    Prefer zones are not simulated), the zone the client gave kept as
    `originalStartTimeZone` / `originalEndTimeZone`. An all-day event's times are
    dates: kept as given (midnights), labelled UTC, as Graph answers them."""
    out = dict(payload)
    for key, original in (("start", "originalStartTimeZone"), ("end", "originalEndTimeZone")):
        value = payload.get(key)
        if not isinstance(value, dict) or not value.get("dateTime"):
            continue
        given = str(value.get("timeZone") or "UTC")
        wall = dt.datetime.fromisoformat(str(value["dateTime"])[:19])
        if not payload.get("isAllDay"):
            wall = wall.replace(tzinfo=_act_zone(given)).astimezone(dt.UTC).replace(tzinfo=None)
        out[key] = {"dateTime": wall.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"}
        out.setdefault(original, given)
    return out


def act_write_route(
    sim: GraphSimulator,
    box: SimMailbox,
    method: str,
    rest: list[str],
    query: dict[str, str],
    body: bytes,
) -> Answer | None:
    """The answer to an ACT write (or the reads the writer needs); None: not one."""
    if rest == ["todo", "lists"] and method == "GET":
        sim.requests["act"] += 1
        return Answer(
            200,
            {
                "value": [
                    {"id": _ACT_LIST_ID, "displayName": "Tasks", "wellknownListName": "defaultList"}
                ]
            },
        )
    if rest[:3] == ["todo", "lists", _ACT_LIST_ID] and rest[3:4] == ["tasks"]:
        kind, tail = "task", rest[4:]
    elif rest and rest[0] in _ACT_KINDS:
        kind, tail = _ACT_KINDS[rest[0]], rest[1:]
    else:
        return None
    if tail[:1] == ["delta"] or (kind == "event" and not tail and method == "GET"):
        return None  # reads of whole folders belong to the reading side
    sim.requests["act"] += 1
    payload: dict[str, Any] = json.loads(body) if body else {}
    if kind == "event":
        payload = _act_zoned(payload)
    if not tail:
        if method != "POST":
            return graph_error(405, "MethodNotAllowed", "Method not allowed.")
        transaction = payload.get("transactionId")
        if transaction:
            for item in box.act_items.values():
                if item.get("transactionId") == transaction:
                    return Answer(201, _act_public(item))
        item = _act_new(sim, box, kind, payload)
        if kind == "event":
            for attendee in payload.get("attendees") or []:
                sim.act_invitations.append((attendee["emailAddress"]["address"], item["subject"]))
        return Answer(201, _act_public(item))
    return _act_item_route(sim, box, kind, method, tail, query, payload)


def _act_item_route(
    sim: GraphSimulator,
    box: SimMailbox,
    kind: str,
    method: str,
    tail: list[str],
    query: dict[str, str],
    payload: dict[str, Any],
) -> Answer:
    missing = graph_error(404, "ErrorItemNotFound", "The specified object was not found.")
    item_id = tail[0]
    master_id, _, occurrence_key = item_id.partition("_OID_")
    item = box.act_items.get(master_id)
    if item is None or item["@kind"] != kind:
        return missing
    if occurrence_key:
        occurrences = {o["id"]: o for o in _act_occurrences(item)}
        if item_id not in occurrences:
            return missing
        if method == "GET":
            return Answer(200, occurrences[item_id])
        if method == "DELETE":
            item["_occurrences"][occurrence_key] = None
        elif method == "PATCH":
            item["_occurrences"][occurrence_key] = {
                **(item["_occurrences"].get(occurrence_key) or {}),
                **payload,
            }
        else:
            return graph_error(405, "MethodNotAllowed", "Method not allowed.")
        _act_touch(item)
        if method == "DELETE":
            return Answer(204)
        return Answer(200, {o["id"]: o for o in _act_occurrences(item)}[item_id])
    if tail[1:] == ["instances"] and method == "GET":
        if not item.get("recurrence"):
            return Answer(200, {"value": []})
        low = query.get("startDateTime", "0000")
        high = query.get("endDateTime", "9999")
        found = [o for o in _act_occurrences(item) if low <= o["originalStart"] < high]
        return Answer(200, {"value": found})
    if tail[1:] == ["cancel"] and method == "POST":
        if kind != "event" or not item.get("isOrganizer"):
            return graph_error(400, "ErrorAccessDenied", "Only the organizer can cancel.")
        for attendee in item.get("attendees") or []:
            sim.act_cancellations.append((attendee["emailAddress"]["address"], item["subject"]))
        del box.act_items[master_id]
        return Answer(202)
    if tail[1:]:
        return graph_error(400, "BadRequest", f"Unsupported segment {'/'.join(tail)!r}.")
    if method == "GET":
        return Answer(200, _act_public(item))
    if method == "PATCH":
        item.update(payload)
        if "recurrence" in payload:
            item["_occurrences"] = {}
            item["type"] = "seriesMaster" if payload["recurrence"] else "singleInstance"
        _act_touch(item)
        sim.subscriptions.act_changed(box, kind, master_id, "updated")
        return Answer(200, _act_public(item))
    if method == "DELETE":
        del box.act_items[master_id]
        sim.subscriptions.act_changed(box, kind, master_id, "deleted")
        return Answer(204)
    return graph_error(405, "MethodNotAllowed", "Method not allowed.")


def act_edit(
    sim: GraphSimulator, upn: str, item_id: str, at: dt.datetime | None = None, **changes: Any
) -> dict[str, Any]:
    """Change an event, contact or task as its user would in Outlook (new changeKey,
    lastModifiedDateTime `at`, default now)."""
    item = sim.mailboxes[upn.lower()].act_items[item_id]
    item.update(changes)
    _act_touch(item, at)
    sim.subscriptions.act_changed(sim.mailboxes[upn.lower()], item["@kind"], item_id, "updated")
    return _act_public(item)


# -- ACT reads: calendarView, contacts and To Do tasks deltas (Exchange → CRM) ------
#
# What connectors/graph_act_sync.py reads, as documented for Graph v1.0, over the
# same `SimMailbox.act_items` the write section keeps:
# GET /calendarView/delta?startDateTime=&endDateTime= (the window's instances:
# single instances, and the occurrence / exception rows of each series with
# `seriesMasterId`; never the master), GET /contacts/delta, GET
# /todo/lists/{list}/tasks/delta; pages by `Prefer: odata.maxpagesize`, rounds
# ended by `@odata.deltaLink`; a later round lists what was added or changed and
# `@removed` for what left (deleted, or out of the window). Delta state is kept
# server-side by token; `expire_act_deltas` forgets it (410 syncStateNotFound).
# GET /events/{id} and /events/{id}/instances are the write section's. Helpers
# build items as Outlook users would: `act_add_event` (an organizer's or an
# attendee's copy, by `organizer`), `act_weekly`, `act_add_item` (contact or
# task), `act_change_occurrence`, `act_cancel_occurrence`, `act_delete`.


@dataclass
class _ActReads:
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    serial: int = 0

    def keep(self, state: dict[str, Any]) -> str:
        self.serial += 1
        token = f"act{self.serial:06d}{secrets.token_hex(4)}"
        self.tokens[token] = state
        return token


def _act_reads(sim: GraphSimulator) -> _ActReads:
    reads = sim.__dict__.get("_act_reads")
    if reads is None:
        reads = sim.__dict__["_act_reads"] = _ActReads()
    return reads


def expire_act_deltas(sim: GraphSimulator) -> None:
    """Forget every ACT delta state (the next round from a kept link answers 410)."""
    _act_reads(sim).tokens.clear()


def _act_when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")[:25]).astimezone(dt.UTC)


def _act_view(box: SimMailbox, kind: str, low: str, high: str) -> dict[str, dict[str, Any]]:
    """The resources a delta of `kind` lists now, by id."""
    if kind != "calendar":
        return {i: _act_public(x) for i, x in box.act_items.items() if x.get("@kind") == kind}
    lo, hi = _act_when(low), _act_when(high)
    view: dict[str, dict[str, Any]] = {}
    for item_id, item in box.act_items.items():
        if item.get("@kind") != "event":
            continue
        if item.get("recurrence"):
            for occurrence in _act_occurrences(item):
                start = _act_when(occurrence["start"]["dateTime"][:19] + "Z")
                if lo <= start < hi:
                    view[occurrence["id"]] = occurrence
            continue
        start = _act_when(item["start"]["dateTime"][:19] + "Z")
        end = _act_when(item["end"]["dateTime"][:19] + "Z")
        if start < hi and end > lo:
            view[item_id] = _act_public(item)
    return view


def act_read_route(
    sim: GraphSimulator,
    box: SimMailbox,
    method: str,
    rest: list[str],
    query: dict[str, str],
    headers: dict[str, str],
) -> Answer | None:
    """The answer to an ACT delta request; None: not one."""
    if method != "GET":
        return None
    if rest == ["calendarView", "delta"]:
        kind = "calendar"
    elif rest == ["contacts", "delta"]:
        kind = "contact"
    elif rest == ["todo", "lists", _ACT_LIST_ID, "tasks", "delta"]:
        kind = "task"
    else:
        return None
    sim.requests["act-delta"] += 1
    reads = _act_reads(sim)
    prefer = {k.lower(): v for k, v in headers.items()}.get("prefer", "")
    page_size = 10
    for part in prefer.split(","):
        name, _, value = part.strip().partition("=")
        if name == "odata.maxpagesize" and value.isdigit():
            page_size = max(1, int(value))
    token = query.get("$skiptoken") or query.get("$deltatoken")
    if token is not None:
        state = reads.tokens.pop(token, None) if "$skiptoken" in query else reads.tokens.get(token)
        if state is None or state["box"] != box.upn or state["kind"] != kind:
            return graph_error(410, "syncStateNotFound", "The sync state generation is not found.")
    else:
        if kind == "calendar" and not (query.get("startDateTime") and query.get("endDateTime")):
            return graph_error(
                400, "ErrorInvalidParameter", "startDateTime and endDateTime are required."
            )
        state = {
            "box": box.upn,
            "kind": kind,
            "low": query.get("startDateTime", ""),
            "high": query.get("endDateTime", ""),
            "seen": {},
        }
    if "rows" not in state:  # a round starts: what changed since `seen`
        view = _act_view(box, kind, state["low"], state["high"])
        signatures = {i: json.dumps(r, sort_keys=True) for i, r in view.items()}
        rows = [r for i, r in view.items() if state["seen"].get(i) != signatures[i]]
        rows += [
            {"id": i, "@removed": {"reason": "deleted"}} for i in state["seen"] if i not in view
        ]
        state = {**state, "rows": rows, "next_seen": signatures}
    page, left = state["rows"][:page_size], state["rows"][page_size:]
    base = {"calendar": "calendarView/delta", "contact": "contacts/delta"}.get(
        kind, f"todo/lists/{_ACT_LIST_ID}/tasks/delta"
    )
    url = f"{sim.base_url}/v1.0/users/{box.upn}/{base}"
    answer: dict[str, Any] = {"value": page}
    if left:
        answer["@odata.nextLink"] = f"{url}?$skiptoken={reads.keep({**state, 'rows': left})}"
    else:
        done = {k: v for k, v in state.items() if k not in ("rows", "next_seen")}
        done["seen"] = state["next_seen"]
        answer["@odata.deltaLink"] = f"{url}?$deltatoken={reads.keep(done)}"
    return Answer(200, answer, {"Preference-Applied": f"odata.maxpagesize={page_size}"})


# -- ACT lookup: GET /events?$filter=iCalUId eq '...' (manual tracking) -------------
# Graph's /events lists single instances and series masters (never occurrences);
# only the iCalUId equality filter is simulated, other filters are refused (400).


def act_find_route(
    sim: GraphSimulator, box: SimMailbox, method: str, rest: list[str], query: dict[str, str]
) -> Answer | None:
    """The answer to GET /events with an iCalUId filter; None: not one."""
    if method != "GET" or rest != ["events"]:
        return None
    sim.requests["act-find"] += 1
    found = re.fullmatch(r"iCalUId eq '((?:[^']|'')*)'", query.get("$filter", "").strip())
    if found is None:
        return graph_error(400, "BadRequest", "Only iCalUId eq filters on /events here.")
    uid = found.group(1).replace("''", "'")
    rows = [
        _act_public(item)
        for item in box.act_items.values()
        if item.get("@kind") == "event" and item.get("iCalUId") == uid
    ]
    if "$select" in query:
        keep = set(query["$select"].split(",")) | {"id"}
        rows = [{k: v for k, v in row.items() if k in keep} for row in rows]
    return Answer(200, {"value": rows})


def _act_graph_time(moment: dt.datetime) -> dict[str, str]:
    return {
        "dateTime": moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000"),
        "timeZone": "UTC",
    }


def act_weekly(start: dt.datetime, count: int, time_zone: str = "UTC") -> dict[str, Any]:
    """A Graph patternedRecurrence: weekly on `start`'s weekday, `count` times, in
    `time_zone` (UTC, IANA or a Windows name such as "Eastern Standard Time")."""
    day = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    local = start.astimezone(_act_zone(time_zone))
    return {
        "pattern": {
            "type": "weekly",
            "interval": 1,
            "daysOfWeek": [day[local.weekday()]],
            "firstDayOfWeek": "sunday",
        },
        "range": {
            "type": "numbered",
            "numberOfOccurrences": count,
            "startDate": local.date().isoformat(),
            "recurrenceTimeZone": time_zone,
        },
    }


def act_add_event(
    sim: GraphSimulator,
    upn: str,
    *,
    subject: str,
    start: dt.datetime,
    end: dt.datetime,
    categories: Iterable[str] = (),
    organizer: tuple[str, str] | None = None,
    attendees: Iterable[tuple[str, str, str, str]] = (),
    ical_uid: str | None = None,
    recurrence: dict[str, Any] | None = None,
    location: str = "",
    body: str = "",
    time_zone: str = "UTC",
) -> dict[str, Any]:
    """An event in `upn`'s calendar: its own meeting, or (with another `organizer`,
    address and name) an attendee's copy of one. `attendees` are (address, name,
    type, response) with Graph's values ("required", "accepted"). `time_zone` is the
    zone Outlook created it in (`originalStartTimeZone`; times are kept in UTC)."""
    box = sim.mailboxes[upn.lower()]
    resource: dict[str, Any] = {
        "subject": subject,
        "body": {"contentType": "text", "content": body},
        "start": _act_graph_time(start),
        "end": _act_graph_time(end),
        "originalStartTimeZone": time_zone,
        "originalEndTimeZone": time_zone,
        "isAllDay": False,
        "isCancelled": False,
        "showAs": "busy",
        "sensitivity": "normal",
        "location": {"displayName": location},
        "categories": list(categories),
        "attendees": [
            {
                "emailAddress": {"address": a, "name": n},
                "type": t,
                "status": {"response": r, "time": "0001-01-01T00:00:00Z"},
            }
            for a, n, t, r in attendees
        ],
        "recurrence": recurrence,
    }
    item = _act_new(sim, box, "event", resource)
    if ical_uid is not None:
        item["iCalUId"] = ical_uid
    if organizer is not None and organizer[0].lower() != box.upn:
        item["organizer"] = {"emailAddress": {"address": organizer[0], "name": organizer[1]}}
        item["isOrganizer"] = False
    return _act_public(item)


def act_add_item(sim: GraphSimulator, upn: str, kind: str, **resource: Any) -> dict[str, Any]:
    """A contact (`kind` "contact": givenName, emailAddresses, ...) or a To Do task
    ("task": title, status, ...) as Outlook would store it."""
    box = sim.mailboxes[upn.lower()]
    return _act_public(_act_new(sim, box, kind, resource))


def _act_occurrence_key(original_start: dt.datetime) -> str:
    return original_start.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S")


def act_change_occurrence(
    sim: GraphSimulator,
    upn: str,
    master_id: str,
    original_start: dt.datetime,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    **changes: Any,
) -> None:
    """Make one occurrence of a series an exception (new times, subject, location...)."""
    master = sim.mailboxes[upn.lower()].act_items[master_id]
    key = _act_occurrence_key(original_start)
    override = dict(master["_occurrences"].get(key) or {}) | changes
    if start is not None:
        override["start"] = _act_graph_time(start)
    if end is not None:
        override["end"] = _act_graph_time(end)
    master["_occurrences"][key] = override
    _act_touch(master)
    sim.subscriptions.act_changed(sim.mailboxes[upn.lower()], "event", master_id, "updated")


def act_cancel_occurrence(
    sim: GraphSimulator, upn: str, master_id: str, original_start: dt.datetime, *, attendee: bool
) -> None:
    """Cancel one occurrence: the organizer's copy loses it, an attendee's keeps it
    marked `isCancelled` (until the attendee removes it)."""
    master = sim.mailboxes[upn.lower()].act_items[master_id]
    key = _act_occurrence_key(original_start)
    master["_occurrences"][key] = {"isCancelled": True} if attendee else None
    _act_touch(master)
    sim.subscriptions.act_changed(sim.mailboxes[upn.lower()], "event", master_id, "updated")


def act_delete(sim: GraphSimulator, upn: str, item_id: str) -> None:
    """Delete an event, contact or task as its user would."""
    item = sim.mailboxes[upn.lower()].act_items.pop(item_id)
    sim.subscriptions.act_changed(sim.mailboxes[upn.lower()], item["@kind"], item_id, "deleted")


# -- change notifications: /subscriptions -------------------------------------------
#
# As documented for Graph v1.0: POST /subscriptions (changeType, notificationUrl,
# resource "users/{user}/mailFolders('{id}')/messages", expirationDateTime,
# clientState) first POSTs `?validationToken=...` to the notificationUrl and
# expects it echoed as text/plain within 10 s (else 400 ValidationError); the
# granted expirationDateTime is capped at `max_lifetime_s` (Graph: 10080 minutes
# for messages). PATCH /subscriptions/{id} renews, DELETE removes, GET lists; an
# expired subscription is gone (404). A message created, updated or deleted in a
# subscribed folder POSTs {"value": [notification]} to the notificationUrl (http
# or https; the simulator trusts any certificate). Knobs: `refuse(status, code)`
# (POST /subscriptions answers that), `max_lifetime_s`; records: `renewals`,
# `deliveries` (url, status) and `validations`.
# Appointments, contacts, To Do tasks: resources "users/{user}/events",
# "users/{user}/contacts" and "users/{user}/todo/lists/{list}/tasks" are
# subscribed alike; an ACT item created, changed or deleted (by the helpers or the
# write routes) notifies them. Lifecycle: a `lifecycleNotificationUrl` is
# validated like the notificationUrl; `lifecycle(id, event)` posts a lifecycle
# notification there (`remove(id)`: the subscription is gone, then
# subscriptionRemoved); POST /subscriptions/{id}/reauthorize answers 204
# (`reauthorizations`); `paused` drops change notifications (counted in
# `dropped`), as Graph does before a `missed`; `refused_kinds` ("event",
# "contact", "task", "message") answers 403 to subscriptions on those.


@dataclass
class SimSubscription:
    id: str
    upn: str
    folder_id: str
    change_types: set[str]
    url: str
    client_state: str | None
    expires: dt.datetime
    resource: str
    kind: str = "message"
    lifecycle_url: str | None = None


class SubscriptionState:
    """The simulator's change-notification subscriptions."""

    def __init__(self, sim: GraphSimulator) -> None:
        self.sim = sim
        self.items: dict[str, SimSubscription] = {}
        self.max_lifetime_s = 10080 * 60.0
        self.refused: tuple[int, str] | None = None
        self.refused_for: set[str] | None = None
        self.renewals = 0
        self.validations = 0
        self.deliveries: list[tuple[str, int]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.reauthorizations = 0
        self.paused = False
        self.dropped = 0
        self.refused_kinds: set[str] = set()

    def refuse(
        self, status: int | None = 403, code: str = "ExtensionError", upns: set[str] | None = None
    ) -> None:
        """POST /subscriptions answers `status` `code` from now on (None: accepted), for
        the users in `upns` (None: every one)."""
        self.refused = None if status is None else (status, code)
        self.refused_for = upns

    def live(self) -> list[SimSubscription]:
        now = dt.datetime.now(dt.UTC)
        for key in [k for k, v in self.items.items() if v.expires <= now]:
            del self.items[key]
        return list(self.items.values())

    def _granted(self, requested: str | None) -> dt.datetime:
        cap = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.max_lifetime_s)
        if not requested:
            return cap
        asked = dt.datetime.fromisoformat(requested.rstrip("Z").split(".")[0] + "+00:00")
        return min(asked, cap)

    def _resource(self, sub: SimSubscription) -> dict[str, Any]:
        return {
            "id": sub.id,
            "resource": sub.resource,
            "changeType": ",".join(sorted(sub.change_types)),
            "notificationUrl": sub.url,
            "clientState": sub.client_state,
            "expirationDateTime": sub.expires.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
        }

    async def call(self, grant: Grant, method: str, path: str, body: bytes) -> Answer:
        """One /subscriptions request."""
        parts = path.strip("/").split("/")
        self.sim.requests[f"subscriptions-{method.lower()}"] += 1
        if method == "POST" and len(parts) == 1:
            return await self._create(grant, body)
        if method == "GET" and len(parts) == 1:
            return Answer(200, {"value": [self._resource(s) for s in self.live()]})
        live = {s.id: s for s in self.live()}
        if len(parts) == 3 and parts[2] == "reauthorize" and method == "POST":
            if parts[1] not in live:
                return graph_error(404, "ResourceNotFound", "The object was not found.")
            self.reauthorizations += 1
            return Answer(204)
        sub = live.get(parts[1]) if len(parts) == 2 else None
        if sub is None:
            return graph_error(404, "ResourceNotFound", "The object was not found.")
        if method == "PATCH":
            try:
                requested = json.loads(body).get("expirationDateTime")
            except (ValueError, AttributeError):
                return graph_error(400, "InvalidRequest", "Cannot read the request body.")
            sub.expires = self._granted(requested)
            self.renewals += 1
            return Answer(200, self._resource(sub))
        if method == "DELETE":
            del self.items[sub.id]
            return Answer(204)
        if method == "GET":
            return Answer(200, self._resource(sub))
        return graph_error(405, "MethodNotAllowed", "Method not allowed.")

    async def _create(self, grant: Grant, body: bytes) -> Answer:
        try:
            spec = json.loads(body)
            url = str(spec["notificationUrl"])
            resource = str(spec["resource"]).strip("/")
            types = {t.strip() for t in str(spec["changeType"]).split(",") if t.strip()}
        except (ValueError, KeyError, TypeError):
            return graph_error(400, "InvalidRequest", "Cannot read the subscription request.")
        parts = resource.split("/")
        kind = _act_subscription_kind(parts) or "message"
        box = self.sim.mailboxes.get(parts[1].lower()) if len(parts) >= 3 else None
        folder_id: str | None = ""  # ACT collections have no folder here
        if kind == "message":
            mail = box is not None and len(parts) == 4 and parts[3] == "messages"
            key = parts[2].removeprefix("mailFolders('").removesuffix("')") if mail else ""
            folder = box.folder(key) if box is not None and mail else None
            folder_id = folder.id if folder is not None else None
        if box is None or folder_id is None or parts[0].lower() != "users":
            return graph_error(400, "InvalidRequest", f"Unsupported resource {resource!r}.")
        if grant.user is not None and self.sim.mailboxes.get(grant.user) is not box:
            return graph_error(403, "ErrorAccessDenied", "Access is denied.")
        if self.refused is not None and (self.refused_for is None or box.upn in self.refused_for):
            return graph_error(self.refused[0], self.refused[1], "Subscriptions are refused.")
        if kind in self.refused_kinds:
            return graph_error(403, "ExtensionError", f"No subscriptions on {kind} here.")
        lifecycle_url = spec.get("lifecycleNotificationUrl")
        if not await self._validate(url) or (
            lifecycle_url is not None and not await self._validate(str(lifecycle_url))
        ):
            return graph_error(
                400,
                "ValidationError",
                "Subscription validation request failed. Notification endpoint must respond "
                "with 200 OK to validation request.",
            )
        sub = SimSubscription(
            id=secrets.token_hex(16),
            upn=box.upn,
            folder_id=folder_id,
            change_types=types,
            url=url,
            client_state=spec.get("clientState"),
            expires=self._granted(spec.get("expirationDateTime")),
            resource=resource,
            kind=kind,
            lifecycle_url=None if lifecycle_url is None else str(lifecycle_url),
        )
        self.items[sub.id] = sub
        return Answer(201, self._resource(sub))

    async def _validate(self, url: str) -> bool:
        import aiohttp

        token = "Validation: " + secrets.token_urlsafe(12)
        target = url + ("&" if "?" in url else "?") + "validationToken=" + urllib.parse.quote(token)
        self.validations += 1
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.post(target, data=b"", ssl=False) as response,
            ):
                return response.status == 200 and await response.text() == token
        except (aiohttp.ClientError, TimeoutError):
            return False

    def changed(self, box: SimMailbox, folder_id: str, item_id: str, change: str) -> None:
        """Notify the subscriptions on `folder_id` of `change` (from a running loop)."""
        path = f"Users/{box.user_id}/Messages/{item_id}"
        data = {"@odata.type": "#Microsoft.Graph.Message", "@odata.id": path, "id": item_id}
        self._notify(
            box,
            change,
            path,
            data,
            lambda sub: sub.kind == "message" and sub.folder_id == folder_id,
        )

    def act_changed(self, box: SimMailbox, kind: str, item_id: str, change: str) -> None:
        """Notify the subscriptions on `box`'s collection of `kind` ("event", "contact",
        "task") of `change` (from a running loop; nothing when `paused`)."""
        segment = {"event": "Events", "contact": "Contacts", "task": "Tasks"}[kind]
        path = f"Users/{box.user_id}/{segment}/{item_id}"
        data = {"@odata.id": path, "id": item_id}
        self._notify(box, change, path, data, lambda sub: sub.kind == kind)

    def _notify(
        self,
        box: SimMailbox,
        change: str,
        resource: str,
        data: dict[str, str],
        wanted: Callable[[SimSubscription], bool],
    ) -> None:
        """POST `change` of `resource` in the background to `box`'s live subscriptions
        for that change that `wanted` accepts (from a running loop; when `paused`,
        nothing is sent and the change counts as dropped)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.paused:
            self.dropped += 1
            return
        for sub in self.live():
            if sub.upn != box.upn or change not in sub.change_types or not wanted(sub):
                continue
            note = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": self._resource(sub)["expirationDateTime"],
                "changeType": change,
                "resource": resource,
                "resourceData": data,
                "clientState": sub.client_state,
                "tenantId": TENANT,
            }
            task = loop.create_task(self._deliver(sub.url, {"value": [note]}))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def lifecycle(
        self, subscription_id: str, event: str, client_state: str | None = None
    ) -> int:
        """POST a lifecycle notification (`event`: reauthorizationRequired,
        subscriptionRemoved, missed) for a subscription to its lifecycleNotificationUrl,
        with its clientState unless `client_state` is given; the answer's status."""
        import aiohttp

        sub = self.items[subscription_id]
        assert sub.lifecycle_url is not None, "subscribed without a lifecycleNotificationUrl"
        note = {
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": self._resource(sub)["expirationDateTime"],
            "tenantId": TENANT,
            "clientState": sub.client_state if client_state is None else client_state,
            "lifecycleEvent": event,
        }
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(sub.lifecycle_url, json={"value": [note]}, ssl=False) as response,
        ):
            self.deliveries.append((sub.lifecycle_url, response.status))
            return response.status

    async def remove(self, subscription_id: str) -> int:
        """Graph removes a subscription: it is gone (404 from now on), then
        subscriptionRemoved goes to its lifecycleNotificationUrl."""
        status = await self.lifecycle(subscription_id, "subscriptionRemoved")
        self.items.pop(subscription_id, None)
        return status

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.post(url, json=payload, ssl=False) as response,
            ):
                self.deliveries.append((url, response.status))
        except (aiohttp.ClientError, TimeoutError):
            self.deliveries.append((url, 0))


def _act_subscription_kind(parts: list[str]) -> str | None:
    """The ACT kind a subscription resource's segments name ("users", user, ...):
    "event", "contact", "task", or None (not an ACT collection)."""
    tail = parts[2:]
    if tail == ["events"]:
        return "event"
    if tail == ["contacts"]:
        return "contact"
    if len(tail) == 4 and tail[:2] == ["todo", "lists"] and tail[3] == "tasks":
        return "task"
    return None


async def _serve(args: argparse.Namespace) -> None:
    sim = GraphSimulator(Path(args.root))
    sim.add_app(args.client_id, args.secret)
    for user_n in range(args.users):
        upn = f"user{user_n}@contoso.example"
        sim.add_user(upn)
        for n in range(args.messages):
            sim.add_message(upn, "inbox", sample_message(n, upn, args.size))
    await sim.start(args.port)
    print(json.dumps({"port": sim.port, "ca_file": str(sim.cert_file)}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    """Serve a populated simulator until killed (benchmarks run it in its own process);
    prints {"port": ..., "ca_file": ...} on one line when ready."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--client-id", default="bench-app")
    parser.add_argument("--secret", default="bench-secret")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
