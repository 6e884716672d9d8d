"""ClickHouse through clickhouse-connect: chDB in-process (`chdb://path`) or a server
(`clickhouse://host:8123`), with the same code.

All calls run on one dedicated thread: chDB is an in-process engine, and one
thread keeps its use serialized and lets every call carry a timeout without
blocking the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import clickhouse_connect

from schemas.config import ClickHouseConfig
from sinks.migrations import apply_migrations
from sinks.rows import COLUMNS, Row


class StoreError(RuntimeError):
    """ClickHouse rejected a statement or did not answer in time."""


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows of a query."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


class ClickHouseStore:
    """One ClickHouse client, used from one thread, with timeouts."""

    def __init__(self, dsn: str, config: ClickHouseConfig) -> None:
        self.dsn = dsn
        self.config = config
        self.database = config.database
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        self._client: Any = None

    @property
    def embedded(self) -> bool:
        """True for chDB inside this process."""
        return self.dsn.startswith("chdb:")

    def open_sync(self) -> list[int]:
        """Connect and apply migrations (blocking); returns the migrations applied."""
        return self._executor.submit(self._open).result()

    async def open(self) -> list[int]:
        """Connect and apply migrations; returns the migrations applied."""
        applied: list[int] = await self._run(self._open, self.config.query_timeout_s * 4)
        return applied

    def _open(self) -> list[int]:
        password = self.config.password.resolve() if self.config.password else ""
        kwargs: dict[str, Any] = {"dsn": self.dsn}
        if password:
            kwargs["password"] = password
        self._client = clickhouse_connect.get_client(**kwargs)
        return apply_migrations(self._client, self.database)

    async def insert(self, table: str, rows: Sequence[Row]) -> None:
        """Insert rows into `table` (columns from rows.COLUMNS) within insert_timeout_s."""
        if not rows:
            return
        columns = list(COLUMNS[table])
        await self._run(
            lambda: self._client.insert(
                f"{self.database}.{table}", list(rows), column_names=columns
            ),
            self.config.insert_timeout_s,
        )

    async def query(self, sql: str, readonly: bool = True) -> QueryResult:
        """Run a query within query_timeout_s; `readonly` forbids writes."""
        result: QueryResult = await self._run(
            lambda: self.query_sync(sql, readonly), self.config.query_timeout_s
        )
        return result

    def query_sync(self, sql: str, readonly: bool = True) -> QueryResult:
        """Run a query on the calling thread (only before `open` or from the store thread)."""
        settings = {"readonly": 1} if readonly else {}
        result = self._client.query(sql, settings=settings)
        return QueryResult(list(result.column_names), [tuple(r) for r in result.result_rows])

    def query_blocking(self, sql: str, readonly: bool = True) -> QueryResult:
        """Run a query on the store thread and wait (for synchronous callers such as the CLI)."""
        future = self._executor.submit(self.query_sync, sql, readonly)
        return future.result(timeout=self.config.query_timeout_s)

    async def _run(self, call: Any, limit_s: float) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, call), limit_s)
        except TimeoutError as exc:
            raise StoreError(f"ClickHouse did not answer within {limit_s:.0f}s") from exc
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"ClickHouse failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close the client and stop the thread."""

        def _close() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None

        self._executor.submit(_close).result(timeout=30)
        self._executor.shutdown(wait=True)
