"""`tidings migrate email-router` against a real tansu broker: each command runs as a
subprocess the way a user runs it, and what it created is read back from the topics.

The lead registers the `migrate` group on `tidings` (pipeline/cli.py); until then this
test runs the same `main` with the group added, which is what `tidings` will be.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.workspace import Workspace

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "email-router"
TIDINGS_WITH_MIGRATE = (
    "import sys\n"
    "from pipeline.cli import main\n"
    "from pipeline.migrate import migrate\n"
    "if 'migrate' not in main.commands:\n"
    "    main.add_command(migrate)\n"
    "main(sys.argv[1:])\n"
)
READ_BACK = """\
import asyncio, json
import msgspec
from aiokafka import AIOKafkaConsumer
from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from pipeline.idle import read_compacted, topic_partitions
from schemas.topics import MAILBOX_CONFIG, SERVER_PROFILES

async def main(config):
    out = {}
    for spec in (SERVER_PROFILES, MAILBOX_CONFIG):
        values = await read_compacted(config, spec)
        consumer = AIOKafkaConsumer(**config.kafka.consumer_options())
        await consumer.start()
        try:
            tps = await topic_partitions(config, spec.name(config.topic_prefix))
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        out[spec.suffix] = {
            "values": {k: msgspec.to_builtins(v) for k, v in values.items()},
            "messages": sum(ends.values()),
        }
    return out

infra = bring_up(load_config())
try:
    print(json.dumps(asyncio.run(main(infra.config))))
finally:
    infra.close()
"""


@pytest.fixture
def ws(workspace: Workspace) -> Iterator[Workspace]:
    for name in ("COLUMNS", "LINES"):
        workspace.env.pop(name, None)
    yield workspace


def tidings(ws: Workspace, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`tidings ARGS` with the migrate group registered, in the workspace."""
    result = subprocess.run(
        [sys.executable, "-c", TIDINGS_WITH_MIGRATE, *args],
        cwd=REPO,
        env=ws.env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"tidings {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def read_back(ws: Workspace) -> dict[str, Any]:
    """The latest value of every key, and the message count, of both topics."""
    result = subprocess.run(
        [sys.executable, "-c", READ_BACK],
        cwd=REPO,
        env=ws.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_email_router_migration_on_tansu(ws: Workspace) -> None:
    router = str(EXAMPLES / "pop3-smtp.xml")
    tidings(ws, "crm", "import", str(EXAMPLES / "pop3-smtp-crm.jsonl"))

    dry = tidings(ws, "migrate", "email-router", router, "--dry-run")
    assert "dry run: nothing was published" in dry.stdout
    assert "mail-fabrikam-example-pop3" in dry.stdout and "mail-fabrikam-example-smtp" in dry.stdout
    assert "Fabrikam POP3 sales; Fabrikam POP3 service desk" in dry.stdout  # the merge
    assert "ROUTER_FABRIKAM_SMTP_PASSWORD" in dry.stdout  # what to set
    assert "AQAAANCMnd8BFdERjHoAwE" not in dry.stdout + dry.stderr
    nothing = read_back(ws)
    assert nothing["server.profiles"] == {"values": {}, "messages": 0}
    assert nothing["mailbox.config"] == {"values": {}, "messages": 0}

    first = tidings(ws, "migrate", "email-router", router)
    assert "created 2 server profiles and 3 mailboxes" in first.stdout
    state = read_back(ws)
    profiles = state["server.profiles"]["values"]
    assert sorted(profiles) == ["mail-fabrikam-example-pop3", "mail-fabrikam-example-smtp"]
    assert profiles["mail-fabrikam-example-pop3"]["profile"]["protocol"] == "pop3"
    assert profiles["mail-fabrikam-example-smtp"]["profile"]["security"] == "starttls"
    mailboxes = state["mailbox.config"]["values"]
    assert sorted(m["email_address"] for m in mailboxes.values()) == [
        "dana@fabrikam.example",
        "eli@fabrikam.example",
        "servicedesk@fabrikam.example",
    ]
    for config in mailboxes.values():
        assert config["server_profile"] == "mail-fabrikam-example-pop3"
        assert config["outgoing"]["server_profile"] == "mail-fabrikam-example-smtp"
        assert config["approved"] is False and config["enabled"] is False
        assert set(config["credentials"]["password"]) <= {"env", "file"}
    assert "AQAAANCMnd8BFdERjHoAwE" not in json.dumps(state)

    second = tidings(ws, "migrate", "email-router", router)
    assert "created 0 server profiles and 0 mailboxes" in second.stdout
    assert "everything was already there" in second.stdout
    assert read_back(ws) == state  # not one message more on either topic

    approved = tidings(ws, "migrate", "email-router", router, "--approve", "--enable")
    assert "created 0 server profiles and 3 mailboxes" in approved.stdout
    after = read_back(ws)
    assert after["server.profiles"] == state["server.profiles"]
    assert all(m["approved"] and m["enabled"] for m in after["mailbox.config"]["values"].values())


def test_missing_file_is_one_line_error(ws: Workspace) -> None:
    result = tidings(ws, "migrate", "email-router", str(ws.data_dir / "nope.xml"), check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "EmailAgent.xml" in lines[0]
