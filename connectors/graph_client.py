"""Microsoft Graph over httpx, with the manners Exchange Online expects.

- At most `max_concurrent_requests` (4) requests of one mailbox in flight: every
  request holds a slot, and a JSON batch is one `dependsOn` chain, which Graph
  runs one member at a time, so it too occupies one slot at the server.
- 429 and 503/504 are waited out (Retry-After, else exponential) and retried, up
  to `MAX_THROTTLE_RETRIES` times; then a transient ServerBusy.
- 401 fetches a new token once, then is a permanent AuthenticationFailed.
- Every call has the profile's timeout; network failures are transient.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import httpx
import msgspec

from connectors import errors
from connectors.graph_auth import GraphTokens
from connectors.graph_items import (
    BATCH_REPLY,
    GRAPH_ERROR,
    BatchAnswer,
    retry_after_s,
)
from schemas import metrics
from schemas.mailbox import ServerProfile

log = logging.getLogger(__name__)
PROTOCOL = "graph"
MAX_THROTTLE_RETRIES = 8
MAX_WAIT_S = 120.0
THROTTLE_STATUSES = frozenset({429, 503, 504})


class DeltaExpired(Exception):
    """The delta or skip token is no longer known to the server (410): resync."""


def error_code(body: bytes) -> str:
    """The `error.code` of a Graph error answer ("" when there is none)."""
    try:
        return GRAPH_ERROR.decode(body).error.code
    except msgspec.DecodeError:
        return ""


def failure(status: int, code: str, what: str) -> errors.ConnectorError:
    """The ConnectorError for a final non-2xx answer to `what`."""
    said = f"{what}: HTTP {status}" + (f" {code}" if code else "")
    if status == 401:
        return errors.permanent(
            errors.AUTHENTICATION_FAILED, f"{said}; the token was refused after a refresh"
        )
    if status == 403:
        return errors.permanent(
            errors.FORBIDDEN,
            f"{said}; grant the app Mail.Read (and Mail.Send to send) for this mailbox",
        )
    if status == 404:
        return errors.permanent(errors.MAILBOX_MISSING, f"{said}; check the user and folders")
    if status in (400, 405, 501):
        return errors.permanent(errors.CONFIGURATION, said)
    return errors.transient(errors.SERVER_BUSY, said)


def ssl_context(profile: ServerProfile) -> ssl.SSLContext | bool:
    """How httpx checks the server: the profile's CA file, the system's, or not at all."""
    if not profile.verify_certificates:
        log.warning("graph: certificate verification is OFF for %s", profile.host)
        return False
    return ssl.create_default_context(cafile=profile.ca_file) if profile.ca_file else True


class GraphClient:
    """One mailbox's Graph calls: `get`, `post`, `batch`, all through the same slots."""

    def __init__(self, profile: ServerProfile, tokens: GraphTokens, user: str) -> None:
        assert profile.graph is not None
        self.profile = profile
        self.base = profile.graph.graph_url.rstrip("/")
        self.tokens = tokens
        self.user = user
        self.slots = asyncio.Semaphore(profile.graph.max_concurrent_requests)
        self.throttles = 0
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            assert self.profile.graph is not None
            self._http = httpx.AsyncClient(
                verify=ssl_context(self.profile),
                timeout=httpx.Timeout(self.profile.timeout_s),
                limits=httpx.Limits(max_connections=self.profile.graph.max_concurrent_requests),
            )
        return self._http

    async def close(self) -> None:
        """Close the HTTP connections (a later call opens new ones)."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def url(self, path: str) -> str:
        """An absolute URL for an API path ("/users/...") or the URL itself."""
        return (
            path if path.startswith("https://") or path.startswith("http://") else self.base + path
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        kind: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One call, throttling waited out and a refused token renewed once; the final
        answer (any status) is returned, transport failures raised as ConnectorErrors."""
        refreshed = False
        throttled = 0
        url = self.url(path)
        while True:
            token = await self.tokens.token()
            sent = {"Authorization": f"Bearer {token}", **(headers or {})}
            async with self.slots:
                response = await self._send(method, url, sent, content, params, kind)
            metrics.CONNECTOR_HTTP_REQUESTS.labels(PROTOCOL, kind).inc()
            status = response.status_code
            if status == 401 and not refreshed:
                refreshed = True
                self.tokens.invalidate()
                continue
            if status in THROTTLE_STATUSES:
                throttled += 1
                if throttled > MAX_THROTTLE_RETRIES:
                    raise errors.transient(
                        errors.SERVER_BUSY,
                        f"graph kept answering {status} to {kind} for {self.user} after "
                        f"{MAX_THROTTLE_RETRIES} waits",
                    )
                await self.wait(response.headers.get("Retry-After"), throttled)
                continue
            return response

    async def wait(self, retry_after: str | None, attempt: int) -> None:
        """Wait as the server asked (Retry-After), else exponentially; counted."""
        seconds = retry_after_s(retry_after, min(2.0**attempt, 60.0), MAX_WAIT_S)
        self.throttles += 1
        metrics.CONNECTOR_THROTTLED.labels(PROTOCOL).inc()
        metrics.CONNECTOR_THROTTLE_WAIT_SECONDS.labels(PROTOCOL).inc(seconds)
        log.info("graph: throttled for %s; waiting %.1fs", self.user, seconds)
        await asyncio.sleep(seconds)

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        params: dict[str, str] | None,
        kind: str,
    ) -> httpx.Response:
        where = f"graph {kind} for {self.user} at {self.profile.host}"
        try:
            return await self._client().request(
                method, url, headers=headers, content=content, params=params
            )
        except httpx.TimeoutException:
            raise errors.transient(errors.TIMEOUT, f"{where} timed out") from None
        except httpx.ConnectError:
            raise errors.transient(
                errors.CONNECTION_REFUSED, f"{where}: cannot connect; is it reachable?"
            ) from None
        except httpx.TransportError as exc:
            raise errors.transient(
                errors.CONNECTION_LOST, f"{where} failed: {type(exc).__name__}"
            ) from None

    async def get(
        self,
        path: str,
        *,
        kind: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> bytes:
        """The body of a successful GET; raises ConnectorError (DeltaExpired on 410)."""
        response = await self.request(
            "GET", path, kind=kind, headers=headers, params=params or None
        )
        if response.status_code == 410:
            raise DeltaExpired(error_code(response.content))
        if not 200 <= response.status_code < 300:
            raise failure(response.status_code, error_code(response.content), f"graph {kind}")
        return response.content

    async def post(self, path: str, body: bytes, content_type: str, *, kind: str) -> httpx.Response:
        """A POST; the answer is returned whatever its status (the caller decides)."""
        return await self.request(
            "POST", path, kind=kind, headers={"Content-Type": content_type}, content=body
        )

    async def batch(self, paths: Sequence[str]) -> dict[str, BatchAnswer]:
        """GET `paths` (at most 20) in one JSON batch, as one dependsOn chain; the
        answers by index ("0".."n-1"). Members the server throttled are retried
        after its Retry-After, members that failed only because an earlier one did
        (424) are retried at once; other answers are returned as they are."""
        answers: dict[str, BatchAnswer] = {}
        todo = list(range(len(paths)))
        rounds = 0
        while todo:
            rounds += 1
            members: list[dict[str, Any]] = []
            for position, index in enumerate(todo):
                member: dict[str, Any] = {"id": str(index), "method": "GET", "url": paths[index]}
                if position:
                    member["dependsOn"] = [str(todo[position - 1])]
                members.append(member)
            body = msgspec.json.encode({"requests": members})
            response = await self.post("/$batch", body, "application/json", kind="batch")
            if response.status_code != 200:
                raise failure(response.status_code, error_code(response.content), "graph $batch")
            try:
                reply = BATCH_REPLY.decode(response.content)
            except msgspec.DecodeError:
                raise errors.transient(
                    errors.PROTOCOL_ERROR, "graph $batch answered something unreadable"
                ) from None
            retry: list[int] = []
            wait_for: str | None = None
            for answer in reply.responses:
                if answer.status in THROTTLE_STATUSES:
                    wait_for = answer.headers.get("Retry-After") or wait_for or "1"
                    retry.append(int(answer.id))
                elif answer.status == 424:
                    retry.append(int(answer.id))
                else:
                    answers[answer.id] = answer
            missing = [i for i in todo if str(i) not in answers and i not in retry]
            if missing:
                raise errors.transient(
                    errors.PROTOCOL_ERROR, "graph $batch left requests unanswered"
                )
            if retry and rounds > MAX_THROTTLE_RETRIES:
                raise errors.transient(
                    errors.SERVER_BUSY, f"graph kept throttling a batch for {self.user}"
                )
            if wait_for is not None:
                await self.wait(wait_for, rounds)
            todo = sorted(retry)
        return answers
