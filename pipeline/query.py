"""Run SQL against the configured ClickHouse for the CLI.

Embedded chDB allows one process per data directory: when the sinks process
runs, it answers (POST /query on its endpoint); otherwise the CLI opens chDB
itself. A ClickHouse server is queried directly.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from pipeline.http import read_endpoint
from schemas.config import TidingsConfig
from sinks.store import ClickHouseStore, QueryResult, StoreError


class QueryError(RuntimeError):
    """The query failed; the message is ClickHouse's, shortened to one line."""


def run_query(config: TidingsConfig, sql: str) -> QueryResult:
    """Answer `sql` from the sinks process when it owns embedded chDB, else directly."""
    dsn = config.clickhouse_dsn()
    if dsn.startswith("chdb:"):
        endpoint = read_endpoint(config.data_path / "run", "sinks")
        if endpoint is not None:
            return _remote(endpoint, sql, config.clickhouse.query_timeout_s)
    store = ClickHouseStore(dsn, config.clickhouse)
    try:
        store.open_sync()
        return store.query_blocking(sql, readonly=True)
    except StoreError as exc:
        raise QueryError(str(exc)) from exc
    except Exception as exc:
        raise QueryError(_one_line(str(exc))) from exc
    finally:
        store.close()


def _remote(endpoint: tuple[str, int], sql: str, timeout: float) -> QueryResult:
    host, port = endpoint
    request = urllib.request.Request(
        f"http://{host}:{port}/query", data=sql.encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise QueryError(_one_line(str(detail))) from exc
    except OSError as exc:
        raise QueryError(f"the sinks process at {host}:{port} did not answer: {exc}") from exc
    return QueryResult(body["columns"], [tuple(row) for row in body["rows"]])


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return first[:300]
