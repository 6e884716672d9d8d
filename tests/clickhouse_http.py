"""A ClickHouse HTTP interface in front of chDB, for tests.

No ClickHouse server can run on the test machines, so this speaks the part of
the documented HTTP interface (https://clickhouse.com/docs/interfaces/http)
that clickhouse-connect uses, and runs every statement in chDB:

* `GET /ping` answers `Ok.`; queries arrive as `GET /?query=...` or `POST /`
  with the query in the `query` parameter and/or the body (the parameter, a
  newline, then the body, as ClickHouse joins them);
* `INSERT ... FORMAT <fmt>` followed by data (Native, RowBinary, anything chDB
  reads) writes the data to a temporary file and runs
  `INSERT ... FROM INFILE`; request bodies may be chunked and compressed
  (`Content-Encoding` lz4 frame, zstd, gzip, deflate);
* `database`, `default_format`, `param_<name>` bind parameters, and every
  other parameter as a setting of that query (`readonly=1` forbids writes);
  sessions are not kept: each request runs on a fresh chDB connection handle;
* users: HTTP basic auth, `X-ClickHouse-User` / `X-ClickHouse-Key` headers or
  `user` / `password` parameters, checked against the configured user and
  password; a mismatch is error 516 (AUTHENTICATION_FAILED), HTTP 401;
* responses carry X-ClickHouse-Query-Id, -Format, -Timezone,
  -Server-Display-Name and -Summary; errors carry X-ClickHouse-Exception-Code
  and a `Code: N. DB::Exception: ... (NAME) (version V)` body; responses are
  compressed when `enable_http_compression=1` and Accept-Encoding asks.

`stall()` makes requests hang until `resume()` (a server that accepts
connections but does not answer). Run standalone with
`python -m tests.clickhouse_http --path DIR --password PW [--port N]`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import re
import socket
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb

DISPLAY_NAME = "tidings-test-clickhouse"
AUTHENTICATION_FAILED = 516
# Parameters the HTTP layer consumes; every other parameter is a setting of the query.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "enable_http_compression",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
    }
)
_INSERT_WITH_DATA = re.compile(
    rb"\A\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)[ \t]*(?:\r?\n|\Z)", re.IGNORECASE | re.DOTALL
)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*\Z", re.IGNORECASE)
_SETTING_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_ERROR_CODE = re.compile(r"Code: (\d+)\.")
_ERROR_NAME = re.compile(r"\(([A-Z_]+)\)\s*\Z")
_CONTENT_TYPES = {
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "JSON": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}
# HTTP status of an exception code, after ClickHouse's exceptionCodeToHTTPStatus.
_STATUS = {
    AUTHENTICATION_FAILED: 401,
    164: 403,  # READONLY
    60: 404,  # UNKNOWN_TABLE
    81: 404,  # UNKNOWN_DATABASE
    62: 400,  # SYNTAX_ERROR
    47: 400,  # UNKNOWN_IDENTIFIER
    115: 400,  # UNKNOWN_SETTING
}


class QueryFailed(Exception):
    """A ClickHouse exception: its code and its message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Answer:
    """What a request produced."""

    body: bytes
    fmt: str
    written_rows: int = 0
    read_rows: int = 0
    read_bytes: int = 0
    elapsed_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _chdb_failure(exc: Exception) -> QueryFailed:
    text = str(exc)
    start = text.find("Code: ")
    message = text[start:].strip() if start >= 0 else text.strip() or type(exc).__name__
    found = _ERROR_CODE.search(message)
    return QueryFailed(int(found.group(1)) if found else 1002, message)


def decompress(body: bytes, encoding: str | None) -> bytes:
    """A request body without its Content-Encoding."""
    if not encoding or encoding == "identity":
        return body
    if encoding == "lz4":
        import lz4.frame  # type: ignore[import-untyped]

        return bytes(lz4.frame.decompress(body))
    if encoding == "zstd":
        from backports import zstd

        return zstd.decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise QueryFailed(
        354, f"Code: 354. DB::Exception: Unknown Content-Encoding {encoding}. (UNKNOWN_FORMAT)"
    )


def compress(body: bytes, accept: str) -> tuple[bytes, str | None]:
    """The response body compressed by the first method the client accepts (gzip, deflate,
    zstd, lz4), and that method."""
    offered = {part.split(";")[0].strip() for part in accept.split(",")}
    if "gzip" in offered:
        return gzip.compress(body, 1), "gzip"
    if "deflate" in offered:
        return zlib.compress(body, 1), "deflate"
    if "zstd" in offered:
        from backports import zstd

        return zstd.compress(body), "zstd"
    if "lz4" in offered:
        import lz4.frame

        return lz4.frame.compress(body), "lz4"
    return body, None


class ChdbEngine:
    """chDB at one path; each statement runs on a fresh connection handle (its settings
    and database are that request's), one statement at a time."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        # the anchor handle keeps the engine open while requests use their own
        self._anchor: Any = chdb.connect(self.path)  # type: ignore[no-untyped-call]
        self.version, self.timezone = self._scalar("SELECT version(), timezone()").split("\t")

    def _scalar(self, sql: str) -> str:
        with self._lock:
            return str(self._anchor.query(sql, "TabSeparated").bytes().decode().strip())

    def run(
        self,
        statement: bytes,
        database: str | None,
        settings: dict[str, str],
        binds: dict[str, str],
        default_format: str,
    ) -> Answer:
        """Run one request's statement (with data for an INSERT ... FORMAT)."""
        with self._lock:
            connection = chdb.connect(self.path)  # type: ignore[no-untyped-call]
            try:
                self._prepare(connection, database, settings)
                found = _INSERT_WITH_DATA.match(statement)
                if found is not None and statement[found.end() :].strip():
                    return self._insert(connection, found, statement[found.end() :])
                return self._query(connection, statement.decode(), binds, default_format)
            except QueryFailed:
                raise
            except Exception as exc:
                raise _chdb_failure(exc) from exc
            finally:
                connection.close()

    @staticmethod
    def _prepare(connection: Any, database: str | None, settings: dict[str, str]) -> None:
        if database:
            connection.query(f"USE `{database.replace('`', '')}`")
        # readonly last: it forbids changing settings after it.
        for name in sorted(settings, key=lambda key: key == "readonly"):
            if not _SETTING_NAME.match(name):
                raise QueryFailed(
                    115, f"Code: 115. DB::Exception: Unknown setting {name}. (UNKNOWN_SETTING)"
                )
            connection.query(f"SET {name} = {_quote(settings[name])}")

    @staticmethod
    def _insert(connection: Any, found: re.Match[bytes], data: bytes) -> Answer:
        target, fmt = found.group(1).decode(), found.group(2).decode()
        with tempfile.NamedTemporaryFile(suffix=f".{fmt}") as spool:
            spool.write(data)
            spool.flush()
            result = connection.query(f"{target} FROM INFILE {_quote(spool.name)} FORMAT {fmt}")
        return Answer(
            b"", "TabSeparated", written_rows=int(result.rows_written()), elapsed_s=result.elapsed()
        )

    @staticmethod
    def _query(connection: Any, sql: str, binds: dict[str, str], default_format: str) -> Answer:
        trailing = _TRAILING_FORMAT.search(sql)
        fmt = trailing.group(1) if trailing else default_format
        result = connection.query(sql, fmt, params=binds) if binds else connection.query(sql, fmt)
        return Answer(
            bytes(result.bytes()),
            fmt,
            written_rows=int(result.rows_written()),
            read_rows=int(result.rows_read()),
            read_bytes=int(result.bytes_read()),
            elapsed_s=result.elapsed(),
        )

    def close(self) -> None:
        with self._lock:
            self._anchor.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/ping", "/replicas_status"):
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        self._handle(b"")

    def do_POST(self) -> None:
        self._handle(self._read_body())

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return b"".join(self._chunks())
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers
                    pass
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    def _handle(self, body: bytes) -> None:
        self.server.wait_unless_stalled()
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": DISPLAY_NAME,
            "X-ClickHouse-Timezone": self.server.engine.timezone,
        }
        try:
            self._authenticate(params)
            body = decompress(body, self.headers.get("Content-Encoding"))
            query = params.get("query", "").encode()
            statement = query + b"\n" + body if query and body else query or body
            if not statement.strip():
                raise QueryFailed(62, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
            if statement.lstrip()[:6].upper() == b"INSERT" and self.server.take_insert_failure():
                raise QueryFailed(
                    252, "Code: 252. DB::Exception: Too many parts (600). (TOO_MANY_PARTS)"
                )
            binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            settings = {
                k: v
                for k, v in params.items()
                if k not in TRANSPORT_PARAMS and not k.startswith("param_")
            }
            started = time.monotonic()
            answer = self.server.engine.run(
                statement,
                params.get("database"),
                settings,
                binds,
                params.get("default_format", "TabSeparated"),
            )
        except QueryFailed as failed:
            self._fail(failed, headers)
            return
        headers["X-ClickHouse-Format"] = answer.fmt
        headers["X-ClickHouse-Summary"] = json.dumps(
            {
                "read_rows": str(answer.read_rows),
                "read_bytes": str(answer.read_bytes),
                "written_rows": str(answer.written_rows),
                "written_bytes": "0",
                "total_rows_to_read": str(answer.read_rows),
                "result_rows": "0",
                "result_bytes": "0",
                "elapsed_ns": str(int((time.monotonic() - started) * 1e9)),
            }
        )
        headers["Content-Type"] = _CONTENT_TYPES.get(
            answer.fmt, "text/tab-separated-values; charset=UTF-8"
        )
        payload = answer.body
        if params.get("enable_http_compression") == "1" and payload:
            payload, encoding = compress(payload, self.headers.get("Accept-Encoding", ""))
            if encoding:
                headers["Content-Encoding"] = encoding
        self._send(200, payload, headers)

    def _authenticate(self, params: dict[str, str]) -> None:
        user, password = params.get("user"), params.get("password")
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            decoded = base64.b64decode(authorization[6:]).decode()
            user, _, password = decoded.partition(":")
        elif self.headers.get("X-ClickHouse-User"):
            user = self.headers["X-ClickHouse-User"]
            password = self.headers.get("X-ClickHouse-Key", "")
        user = user or "default"
        if user != self.server.user or (password or "") != self.server.password:
            raise QueryFailed(
                AUTHENTICATION_FAILED,
                f"Code: 516. DB::Exception: {user}: Authentication failed: password is "
                "incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)",
            )

    def _fail(self, failed: QueryFailed, headers: dict[str, str]) -> None:
        message = failed.message
        if not _ERROR_NAME.search(message):
            message += " (UNKNOWN_EXCEPTION)"
        body = f"{message} (version {self.server.engine.version})\n".encode()
        headers["X-ClickHouse-Exception-Code"] = str(failed.code)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        self._send(_STATUS.get(failed.code, 500), body, headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "Keep-Alive")
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: ChdbEngine, user: str, password: str):
        super().__init__(address, _Handler)
        self.engine = engine
        self.user = user
        self.password = password
        self.answering = threading.Event()
        self.answering.set()
        self.connections: set[socket.socket] = set()
        self.inserts_to_fail = 0
        self.inserts_failed = 0
        self._lock = threading.Lock()

    def take_insert_failure(self) -> bool:
        """True when this INSERT is one of those told to fail (`ClickHouseHTTP.fail_inserts`)."""
        with self._lock:
            if self.inserts_to_fail <= 0:
                return False
            self.inserts_to_fail -= 1
            self.inserts_failed += 1
            return True

    def drop_connections(self) -> None:
        """Close every open (keep-alive) connection, as a stopping server does."""
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (e.g. after a stall) closed its connection

    def wait_unless_stalled(self) -> None:
        self.answering.wait()


class ClickHouseHTTP:
    """The HTTP interface on a loopback port in a thread of this process, in front of chDB
    at `path` (chDB allows one data directory per process)."""

    def __init__(
        self,
        path: Path,
        password: str,
        user: str = "default",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.path = path
        self.user = user
        self.password = password
        self.address = (host, port)
        self._server: _Server | None = None
        self._engine: ChdbEngine | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def dsn(self, user: str | None = None) -> str:
        """`clickhouse://user@127.0.0.1:PORT` (the password goes separately)."""
        return f"clickhouse://{user or self.user}@{self.address[0]}:{self.port}"

    def start(self) -> ClickHouseHTTP:
        self.path.mkdir(parents=True, exist_ok=True)
        self._engine = ChdbEngine(self.path)
        self._server = _Server(self.address, self._engine, self.user, self.password)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="clickhouse-http", daemon=True
        )
        self._thread.start()
        return self

    def stall(self) -> None:
        """From now on, requests wait (connections are accepted, nothing is answered)."""
        assert self._server is not None
        self._server.answering.clear()

    def resume(self) -> None:
        """Answer again, the waiting requests first."""
        assert self._server is not None
        self._server.answering.set()

    def fail_inserts(self, count: int) -> None:
        """Answer the next `count` INSERTs with error 252 (TOO_MANY_PARTS), as a server
        that cannot keep up does; other queries are answered as usual."""
        assert self._server is not None
        with self._server._lock:
            self._server.inserts_to_fail = count

    @property
    def inserts_failed(self) -> int:
        """INSERTs answered with an error because `fail_inserts` said so."""
        assert self._server is not None
        return self._server.inserts_failed

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a read-only query, run on this process's chDB (for tests)."""
        assert self._engine is not None
        answer = self._engine.run(sql.encode(), "tidings", {"readonly": "1"}, {}, "JSONCompact")
        return [tuple(row) for row in json.loads(answer.body)["data"]]

    def stop(self) -> None:
        """Stop listening and close chDB."""
        if self._server is not None:
            self._server.answering.set()
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> ClickHouseHTTP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="A ClickHouse HTTP interface in front of chDB")
    parser.add_argument("--path", type=Path, required=True, help="chDB data directory")
    parser.add_argument("--password", default="")
    parser.add_argument("--user", default="default")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    server = ClickHouseHTTP(args.path, args.password, args.user, port=args.port).start()
    print(f"listening on {server.dsn()}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
