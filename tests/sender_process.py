"""The outgoing sender in a process of its own, for crash tests: start it on a
ConnectorHarness's broker and profiles, kill it -9 at a chosen moment, start
another one and read what it made of the email.

    history = await crash_and_restart(
        h, email, reached=hold.reached.is_set, log=tmp_path / "sender.log",
        settings=FAST, release=hold.release.set,
    )

The child inherits the environment (secrets named by SecretRef env vars), minus
any TIDINGS_* variable, plus the harness's data directory, bootstrap servers and
the profiles; it runs `OutgoingSender.run` until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from schemas.config import OutgoingConfig
from schemas.outgoing import OutgoingEmail, OutgoingStatus, SendStatus
from schemas.topics import OUTGOING_STATUS
from tests.act_harness import outgoing_statuses, queue_mail
from tests.connector_harness import ConnectorHarness
from tests.workspace import ROOT

SENDER_SCRIPT = """
import asyncio, os, sys
import msgspec
from connectors.outgoing_sender import OutgoingSender
from pipeline import tansu_compat
from pipeline.config import load_config
from schemas.config import OutgoingConfig
from schemas.mailbox import ServerProfile

config = load_config(env=os.environ)
profiles = msgspec.json.decode(os.environ["TEST_PROFILES"], type=dict[str, ServerProfile])
settings = msgspec.json.decode(os.environ["TEST_OUTGOING"], type=OutgoingConfig)
tansu_compat.install()
sender = OutgoingSender(
    config.kafka, config.topic_prefix, settings, config.processors.correlation, profiles,
    worker=sys.argv[1],
)
asyncio.run(sender.run(asyncio.Event()))
"""


def start_sender(
    h: ConnectorHarness, name: str, log: Path, settings: OutgoingConfig
) -> subprocess.Popen[bytes]:
    """The sender (worker `name`) in a process of its own, output appended to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        TIDINGS_DATA_DIR=str(h.config.data_dir),
        TIDINGS_KAFKA__BOOTSTRAP_SERVERS=",".join(h.config.kafka.bootstrap_servers),
        TIDINGS_KAFKA__BROKER="tansu",
        TEST_PROFILES=msgspec.json.encode(h.config.server_profiles).decode(),
        TEST_OUTGOING=msgspec.json.encode(settings).decode(),
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", SENDER_SCRIPT, name],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def tail(log: Path) -> str:
    """The end of a sender log (for assertion messages)."""
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group (no clean-up of any kind runs) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


async def crash_and_restart(
    h: ConnectorHarness,
    email: OutgoingEmail,
    *,
    reached: Callable[[], bool],
    log: Path,
    settings: OutgoingConfig,
    release: Callable[[], None] | None = None,
    timeout_s: float = 90.0,
) -> list[OutgoingStatus]:
    """Queue `email`, kill -9 the sender once `reached()` (the server holds the
    request at the moment under test), then `release()` the server, check that
    `sending` was the last status acknowledged, start a second sender ("sender-2")
    and return the email's statuses once it is sent or failed."""
    first = start_sender(h, "sender-1", log, settings)
    try:
        await queue_mail(h, email)
        deadline = time.monotonic() + timeout_s
        while not reached():
            alive = first.poll() is None and time.monotonic() < deadline
            assert alive, tail(log)
            await asyncio.sleep(0.05)
        kill(first)
    finally:
        kill(first)
        if release is not None:
            release()
    before = [s.status for s in await h.read(OUTGOING_STATUS, email.activity_id)]
    assert before[-1] == SendStatus.SENDING, before
    second = start_sender(h, "sender-2", log, settings)
    try:
        return await outgoing_statuses(h, email.activity_id)
    finally:
        kill(second)
