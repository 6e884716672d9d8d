"""Per email server profile: at most `limit` connections at once, shared by every
mailbox of this worker that uses the profile.

The limit adapts (AIMD): it starts at the profile's `max_connections`, is
halved (never below the profile's `polling.concurrency_floor`, at least 1)
when the server answers with throttling (server busy, connection refused, too
many connections), and grows by `polling.recovery_step` after
`polling.recovery_streak` healthy polls in a row, never above
`max_connections`. The arithmetic is `shrunk` / `grown`; the gate applies it.
Connections already held when the limit shrinks are not cut: new ones wait
until the count is under the new limit.

A mailbox that keeps a connection open between polls (IMAP IDLE) watches
`contended` and gives its slot back when other mailboxes are waiting for one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from schemas import metrics
from schemas.mailbox import PollingSettings


def shrunk(limit: int, floor: int) -> int:
    """The limit after a throttling answer: halved, never below `floor` (nor 1)."""
    return max(1, floor, limit // 2)


def grown(limit: int, step: int, ceiling: int) -> int:
    """The limit after a healthy streak: `step` more, never above `ceiling`."""
    return min(ceiling, limit + step)


class ServerGate:
    """A counting gate over one server profile's connections, with an adaptive limit."""

    def __init__(
        self, profile: str, max_connections: int, polling: PollingSettings | None = None
    ) -> None:
        self.profile = profile
        self.max_connections = max_connections
        self.polling = polling or PollingSettings()
        self._limit = max_connections
        self._in_use = 0
        self._healthy_streak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.contended = asyncio.Event()
        metrics.CONNECTOR_CONCURRENCY_LIMIT.labels(profile).set(self._limit)

    @property
    def in_use(self) -> int:
        """Connections currently held."""
        return self._in_use

    @property
    def limit(self) -> int:
        """Connections allowed now (adapts between the floor and max_connections)."""
        return self._limit

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one connection slot for the duration of the block."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        """Wait for a free slot (first come, first served); while anyone waits,
        `contended` is set."""
        if self._in_use < self._limit and not self._waiters:
            self._take()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.contended.set()
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._in_use -= 1  # handed a slot while being cancelled: give it back
                self._wake()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise
        finally:
            if not self._waiters:
                self.contended.clear()
        metrics.CONNECTOR_CONNECTIONS.labels(self.profile).set(self._in_use)

    def release(self) -> None:
        """Give a slot back."""
        self._in_use -= 1
        metrics.CONNECTOR_CONNECTIONS.labels(self.profile).set(self._in_use)
        self._wake()

    def throttled(self) -> None:
        """The server answered with throttling: halve the limit (AIMD's decrease)."""
        self._healthy_streak = 0
        self._set_limit(shrunk(self._limit, self.polling.concurrency_floor))

    def healthy(self) -> None:
        """A poll went well: after a streak of them, allow one more connection."""
        if self._limit >= self.max_connections:
            self._healthy_streak = 0
            return
        self._healthy_streak += 1
        if self._healthy_streak >= self.polling.recovery_streak:
            self._healthy_streak = 0
            self._set_limit(grown(self._limit, self.polling.recovery_step, self.max_connections))

    def _set_limit(self, limit: int) -> None:
        self._limit = limit
        metrics.CONNECTOR_CONCURRENCY_LIMIT.labels(self.profile).set(limit)
        self._wake()

    def _take(self) -> None:
        self._in_use += 1
        metrics.CONNECTOR_CONNECTIONS.labels(self.profile).set(self._in_use)

    def _wake(self) -> None:
        """Hand free slots to waiters, oldest first (the slot is taken for them)."""
        while self._waiters and self._in_use < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_use += 1
                waiter.set_result(None)


class GateRegistry:
    """One gate per server profile name, created on first use."""

    def __init__(self) -> None:
        self._gates: dict[str, ServerGate] = {}

    def gate(
        self, profile: str, max_connections: int, polling: PollingSettings | None = None
    ) -> ServerGate:
        """The gate of `profile` (its limits are fixed by the first caller)."""
        gate = self._gates.get(profile)
        if gate is None:
            gate = self._gates[profile] = ServerGate(profile, max_connections, polling)
        return gate

    def get(self, profile: str) -> ServerGate | None:
        """The gate of `profile` when one was created."""
        return self._gates.get(profile)
