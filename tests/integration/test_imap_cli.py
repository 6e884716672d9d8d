"""An IMAP mailbox end to end through the CLI and real processes: `mailbox add
--protocol imap`, `run all --until-idle` into ClickHouse, a UIDVALIDITY reset that
must not duplicate activities, `mailbox reconcile` and `mailbox list`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.connector_harness import PASSWORD_ENV, message
from tests.mailserver import Dovecot
from tests.workspace import Workspace

pytestmark = pytest.mark.integration

PASSWORD = "cli-imap-pw"


@pytest.fixture
def space(workspace: Workspace, dovecot: Dovecot, tmp_path: Path) -> Workspace:
    """A workspace configured with the test server's profile and the password variable."""
    config = tmp_path / "tidings.toml"
    config.write_text(
        f"""
[connectors]
server_poll_interval_s = 0.5

[server_profiles.dovecot]
protocol = "imap"
host = "localhost"
port = {dovecot.imaps_port}
ca_file = "{dovecot.ca_file}"
""",
        encoding="utf-8",
    )
    workspace.env["TIDINGS_CONFIG"] = str(config)
    workspace.env[PASSWORD_ENV] = PASSWORD
    return workspace


def test_imap_mailbox_from_cli_to_clickhouse_without_duplicates(
    space: Workspace, dovecot: Dovecot
) -> None:
    dovecot.add_user("kim", PASSWORD)
    for n in range(2):
        dovecot.append("kim", "INBOX", message(n))
    for n in range(2, 5):
        dovecot.append("kim", "Projects", message(n))
    refused = space.cli(
        "mailbox", "add", "--id", "mb-kim", "--owner", "user:kim", "--protocol", "imap",
        "--server-profile", "nope", "--password-env", PASSWORD_ENV,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "no server profile 'nope'" in refused.stderr
    space.cli(
        "mailbox", "add", "--id", "mb-kim", "--owner", "user:kim", "--protocol", "imap",
        "--server-profile", "dovecot", "--user", "kim", "--password-env", PASSWORD_ENV,
        "--folder", "Projects", "--filter", "all",
    )  # fmt: skip
    space.cli("run", "all", "--until-idle", timeout=600)
    first = space.query_many(
        "SELECT count() FROM tidings.activities FINAL",
        "SELECT count(DISTINCT item_key) FROM tidings.promotion_decisions FINAL",
    )
    assert first == [[(5,)], [(5,)]]

    client = dovecot.client("kim", PASSWORD)
    assert client.delete("Projects")[0] == "OK"
    client.logout()
    for n in range(2, 5):
        dovecot.append("kim", "Projects", message(n))
    space.cli("run", "all", "--until-idle", timeout=600)
    activities, notices = space.query_many(
        "SELECT count() FROM tidings.activities FINAL",
        "SELECT code, folder FROM tidings.sync_errors FINAL",
    )
    assert activities == [(5,)], "the re-read folder duplicated activities"
    assert notices == [("UidValidityChanged", "Projects")]

    reconciled = space.cli("mailbox", "reconcile", "mb-kim")
    assert "every item on the server was emitted" in reconciled.stdout
    listing = space.cli("mailbox", "list").stdout
    assert "mb-kim" in listing and "imap kim @ dovecot" in listing
