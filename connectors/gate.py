"""Per email server profile: at most `max_connections` connections at once, shared
by every mailbox of this worker that uses the profile.

A mailbox that keeps a connection open between polls (IMAP IDLE) watches
`contended` and gives its slot back when other mailboxes are waiting for one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from schemas import metrics


class ServerGate:
    """A counting gate over one server profile's connections."""

    def __init__(self, profile: str, max_connections: int) -> None:
        self.profile = profile
        self.max_connections = max_connections
        self._free = asyncio.Semaphore(max_connections)
        self._waiting = 0
        self._in_use = 0
        self.contended = asyncio.Event()

    @property
    def in_use(self) -> int:
        """Connections currently held."""
        return self._in_use

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one connection slot for the duration of the block."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        """Wait for a free slot; while waiting, `contended` is set."""
        if self._free.locked():
            self._waiting += 1
            self.contended.set()
            try:
                await self._free.acquire()
            finally:
                self._waiting -= 1
                if self._waiting == 0:
                    self.contended.clear()
        else:
            await self._free.acquire()
        self._in_use += 1
        metrics.CONNECTOR_CONNECTIONS.labels(self.profile).set(self._in_use)

    def release(self) -> None:
        """Give a slot back."""
        self._in_use -= 1
        metrics.CONNECTOR_CONNECTIONS.labels(self.profile).set(self._in_use)
        self._free.release()


class GateRegistry:
    """One gate per server profile name, created on first use."""

    def __init__(self) -> None:
        self._gates: dict[str, ServerGate] = {}

    def gate(self, profile: str, max_connections: int) -> ServerGate:
        """The gate of `profile` (its limit is fixed by the first caller)."""
        gate = self._gates.get(profile)
        if gate is None:
            gate = self._gates[profile] = ServerGate(profile, max_connections)
        return gate
