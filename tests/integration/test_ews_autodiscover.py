"""EWS Autodiscover through exchangelib's own Autodiscovery (SOAP GetUserSettings,
exchangelib 5) against the simulator's Autodiscover service, in the connector
runtime on the real embedded broker.

The test cannot own the mailbox domain's DNS or port 443, so the mailboxes name the
simulator's service in `ews.autodiscover_url`, the production setting for a known
Autodiscover service: tidings primes exchangelib's autodiscover cache with it and
exchangelib's Autodiscovery does the rest (asks it, checks the answer, builds the
EWS protocol from ExternalEwsUrl; drops the entry and walks the DNS-based steps
when it stops answering). The profile's host points nowhere, so a sync proves the
EWS URL came from Autodiscover. For the failures, exchangelib's DNS resolver is
given no nameservers (`Autodiscovery.DNS_RESOLVER_KWARGS`, its documented knob):
the DNS-based steps find nothing without depending on this machine's network.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchangelib.autodiscover import Autodiscovery, autodiscover_cache

from connectors import errors
from pipeline.embedded import free_port
from schemas.config import ConnectorConfig
from schemas.errors import Severity
from schemas.mailbox import EwsAccess, MailboxConfig, ServerProfile, SyncState
from schemas.topics import MAIL_CHANGES, MAILBOX_STATUS, SYNC_ERRORS
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator, sample_message
from tests.integration.test_ews_connector import (
    PASSWORD_ENV,
    SERVICE_PASSWORD,
    ews_mailbox,
    profile,
)

pytestmark = pytest.mark.integration

FAST = ConnectorConfig(server_poll_interval_s=0.3, max_batch_items=50)
DOMAIN = f"ad{os.getpid()}.northwind.example"
"""One domain per test process: exchangelib's autodiscover cache is a file shared by
every process of the user (keyed by domain)."""
ALICE = f"alice@{DOMAIN}"


@pytest.fixture
def sim() -> Iterator[EwsSimulator]:
    os.environ[PASSWORD_ENV] = SERVICE_PASSWORD
    try:
        with EwsSimulator() as server:
            server.add_user("svc-tidings", SERVICE_PASSWORD, impersonator=True)
            yield server
    finally:
        os.environ.pop(PASSWORD_ENV, None)
        with autodiscover_cache:
            del autodiscover_cache[(DOMAIN, None)]  # the persisted entry, whatever the key


def nowhere(sim: EwsSimulator) -> ServerProfile:
    """The simulator's profile with a host that does not exist: only a discovered EWS
    URL reaches the simulator."""
    return profile(sim, host="exchange.invalid", port=1)


def discovering(mailbox_id: str, address: str, url: str | None) -> MailboxConfig:
    return ews_mailbox(
        mailbox_id,
        address,
        autodiscover=True,
        autodiscover_url=url,
        access=EwsAccess.IMPERSONATION,
        include_sent=False,
        streaming=False,
    )


async def test_autodiscover_finds_the_ews_url_and_the_mailbox_syncs(
    sim: EwsSimulator, tmp_path: Path
) -> None:
    box = sim.add_mailbox(ALICE)
    for n in range(3):
        box.deliver("Inbox", sample_message(n))
    config = discovering("mb-alice", ALICE, sim.autodiscover_url)
    async with ConnectorHarness.up(tmp_path / "data", {"exchange": nowhere(sim)}, FAST) as h:
        await h.add_mailbox(config)
        async with h.runtime():
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) == 3)
            statuses = await h.wait_for(
                MAILBOX_STATUS, "mb-alice", lambda s: any(x.last_sync_at for x in s)
            )
        problems = await h.errors("mb-alice")

    assert {e.folder for e in events} == {"Inbox"}
    assert len({e.item_id for e in events}) == 3
    assert sim.requests[0].operation == "GetUserSettings"  # asked Autodiscover first
    assert sim.requests[0].user == "svc-tidings"
    assert {r.impersonated for r in sim.requests[1:]} == {ALICE}
    assert all(s.state != SyncState.DISABLED for s in statuses)
    assert problems == []


async def test_autodiscover_failures_are_permanent_and_name_the_explicit_url(
    sim: EwsSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An address the Autodiscover service does not know (MailboxMissing); a domain
    with no Autodiscover anywhere; and an autodiscover_url that does not answer, after
    which exchangelib's steps find nothing either (both Configuration, naming
    ews.server_url). Each disables its mailbox at once."""
    monkeypatch.setattr(Autodiscovery, "DNS_RESOLVER_KWARGS", {"configure": False})
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}/autodiscover/autodiscover.svc"
    mailboxes = [
        discovering("mb-unknown", f"nobody@{DOMAIN}", sim.autodiscover_url),
        discovering("mb-nowhere", "carol@nowhere.invalid", None),
        discovering("mb-dead", "dave@dead.invalid", dead),
    ]
    async with ConnectorHarness.up(tmp_path / "data", {"exchange": nowhere(sim)}, FAST) as h:
        for config in mailboxes:
            await h.add_mailbox(config)
        async with h.runtime():
            seen = {
                c.mailbox_id: await h.wait_for(SYNC_ERRORS, c.mailbox_id, bool) for c in mailboxes
            }
            disabled = {
                c.mailbox_id: await h.wait_for(
                    MAILBOX_STATUS,
                    c.mailbox_id,
                    lambda s: any(x.state == SyncState.DISABLED for x in s),
                )
                for c in mailboxes
            }

    assert [e.code for e in seen["mb-unknown"]] == [errors.MAILBOX_MISSING]
    assert f"Autodiscover does not know nobody@{DOMAIN}" in seen["mb-unknown"][0].message
    for mailbox in ("mb-nowhere", "mb-dead"):
        assert [e.code for e in seen[mailbox]] == [errors.CONFIGURATION]
        message = seen[mailbox][0].message
        assert "Autodiscover found no EWS URL" in message
        assert "Set ews.server_url to the EWS URL" in message
    assert f"asked {dead} first" in seen["mb-dead"][0].message
    for mailbox, found in seen.items():
        assert found[0].severity == Severity.PERMANENT
        assert SERVICE_PASSWORD not in found[0].message
        assert disabled[mailbox][-1].last_error_code == found[0].code
    assert [r.operation for r in sim.requests] == ["GetUserSettings"]  # nobody's lookup
