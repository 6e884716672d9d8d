"""ClickHouse through clickhouse-connect: chDB in-process (`chdb://path`) or a server
over HTTP (`clickhouse://user@host:8123`), with the same code.

All calls run on one dedicated thread: chDB is an in-process engine, and one
thread keeps its use serialized and lets every call carry a timeout without
blocking the event loop.

Server DSNs: `clickhouse://` or `http://` (HTTP, port 8123 by default),
`clickhouses://` or `https://` (TLS, 8443). The user goes in the DSN, the
password never does: it comes from `ClickHouseConfig.password`, a secret
reference. A database in the DSN path must be `ClickHouseConfig.database`
(every statement names that database; the connection itself uses the user's
default, so the first start can create it). Query parameters are passed to
clickhouse-connect (e.g. `?compress=zstd`, `?compress=false`). The HTTP client
times out a little after the longer of the insert and query timeouts (by
`_CLIENT_TIMEOUT_MARGIN_S`): the store's own limit always speaks first, with one
message ("did not answer within"), and a call that timed out does not hold the
store's thread much longer after it; it keeps no server
session, so a statement the server still runs after a client timeout cannot
lock the next one out.

Inserts send JSONCompactColumns (see `_insert`), which every ClickHouse since
22.x and chDB read; values arrive exactly as the Native path wrote them
(tests/integration/test_clickhouse_http.py compares every table).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import clickhouse_connect
import msgspec

from schemas.config import ClickHouseConfig
from schemas.errors import StopAndAlert
from sinks.migrations import apply_migrations, missing_columns
from sinks.rows import COLUMNS, Row

_SERVER_SCHEMES = {"clickhouse": "http", "http": "http", "clickhouses": "https", "https": "https"}
_CONNECT_TIMEOUT_S = 10
_CLIENT_TIMEOUT_MARGIN_S = 3
"""Seconds the HTTP client waits past the store's own limit (module docstring)."""
_INSERT_SETTINGS = {"date_time_input_format": "best_effort"}


class StoreError(RuntimeError):
    """ClickHouse rejected a statement or did not answer in time."""


class SchemaMismatch(StoreError, StopAndAlert):
    """The database's tables lack columns the sinks write (made by another build or
    tool): retrying cannot fix it, so the sinks stop and say so."""


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows of a query."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


def client_options(dsn: str, config: ClickHouseConfig) -> dict[str, Any]:
    """clickhouse_connect.get_client keyword arguments for `dsn` (raises StoreError when
    the DSN cannot be used; the message never holds a secret)."""
    if dsn.startswith("chdb:"):
        return {"dsn": dsn}
    parts = urlsplit(dsn)
    interface = _SERVER_SCHEMES.get(parts.scheme)
    if interface is None:
        schemes = ", ".join(f"{scheme}://" for scheme in ("chdb", *_SERVER_SCHEMES))
        raise StoreError(f"ClickHouse DSN scheme {parts.scheme!r} is not one of {schemes}")
    if parts.password is not None:
        raise StoreError(
            "the ClickHouse DSN holds a password: put it in clickhouse.password "
            "(a secret reference: env or file) and leave it out of the DSN"
        )
    database = unquote(parts.path.strip("/"))
    if database and database != config.database:
        raise StoreError(
            f"the ClickHouse DSN names database {database!r} but clickhouse.database is "
            f"{config.database!r}: make them the same (or leave the database out of the DSN)"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise StoreError(f"the ClickHouse DSN has an invalid port: {exc}") from None
    timeout_s = max(config.insert_timeout_s, config.query_timeout_s)
    options: dict[str, Any] = {
        "interface": interface,
        "host": parts.hostname or "localhost",
        "username": unquote(parts.username) if parts.username else "default",
        "password": _password(config),
        "connect_timeout": max(1, min(_CONNECT_TIMEOUT_S, math.ceil(timeout_s))),
        "send_receive_timeout": max(1, math.ceil(timeout_s)) + _CLIENT_TIMEOUT_MARGIN_S,
        "autogenerate_session_id": False,
    }
    if port is not None:
        options["port"] = port
    options.update(parse_qsl(parts.query))
    return options


def _password(config: ClickHouseConfig) -> str:
    if config.password is None:
        return ""
    try:
        return config.password.resolve()
    except LookupError as exc:
        raise StoreError(f"the ClickHouse password ({config.password}): {exc}") from None


class ClickHouseStore:
    """One ClickHouse client, used from one thread, with timeouts."""

    def __init__(self, dsn: str, config: ClickHouseConfig) -> None:
        self.dsn = dsn
        self.config = config
        self.database = config.database
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        self._client: Any = None
        self._encoder = msgspec.json.Encoder()

    @property
    def embedded(self) -> bool:
        """True for chDB inside this process."""
        return self.dsn.startswith("chdb:")

    def open_sync(self) -> list[int]:
        """Connect and apply migrations (blocking); returns the migrations applied."""
        try:
            return self._executor.submit(self._open).result()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(_failure(exc)) from exc

    async def open(self) -> list[int]:
        """Connect and apply migrations; returns the migrations applied."""
        applied: list[int] = await self._run(self._open, self.config.query_timeout_s * 4)
        return applied

    def _open(self) -> list[int]:
        self._client = clickhouse_connect.get_client(**client_options(self.dsn, self.config))
        applied = apply_migrations(self._client, self.database)
        gaps = missing_columns(self._client, self.database, COLUMNS)
        if gaps:
            missing = "; ".join(f"{table}: {', '.join(cols)}" for table, cols in gaps.items())
            raise SchemaMismatch(
                f"ClickHouse database {self.database} lacks columns the sinks write "
                f"({missing}); its tables were made by another build or tool. Drop the "
                "database (tidings makes it again) or set clickhouse.database to a new name"
            )
        return applied

    async def insert(self, table: str, rows: Sequence[Row]) -> None:
        """Insert rows into `table` (columns from rows.COLUMNS) within insert_timeout_s."""
        if not rows:
            return
        await self._run(lambda: self._insert(table, rows), self.config.insert_timeout_s)

    def _insert(self, table: str, rows: Sequence[Row]) -> None:
        """One JSONCompactColumns block: msgspec encodes the columns in C and ClickHouse
        parses them in C++, instead of clickhouse-connect serializing Native value by
        value in Python (which took most of the sink's insert time). Datetimes travel
        as RFC 3339 text, read with date_time_input_format=best_effort."""
        self._client.raw_insert(
            f"{self.database}.{table}",
            COLUMNS[table],
            insert_block=self._encoder.encode(list(zip(*rows, strict=True))),
            settings=_INSERT_SETTINGS,
            fmt="JSONCompactColumns",
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
            raise StoreError(_failure(exc)) from exc

    def close(self) -> None:
        """Close the client and stop the thread."""

        def _close() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None

        self._executor.submit(_close).result(timeout=30)
        self._executor.shutdown(wait=True)


def _failure(exc: Exception) -> str:
    return f"ClickHouse failed: {type(exc).__name__}: {exc}"
