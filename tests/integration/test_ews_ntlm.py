"""NTLM for EWS (the on-premises default, `ews.auth = ntlm`): exchangelib's
requests_ntlm against the simulator's genuine NTLMv2 handshake (tests/ews_sim.py,
NTLM section) with the real embedded broker. A mailbox logging on as DOMAIN\\user
syncs its Inbox; a wrong password is a permanent AuthenticationFailed that disables
its mailbox, with no mail event and no password in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors import errors
from schemas.config import ConnectorConfig
from schemas.errors import Severity
from schemas.mail import ChangeKind
from schemas.mailbox import EwsAccess, EwsAuth, EwsSettings, SyncState
from schemas.topics import MAIL_CHANGES, MAILBOX_STATUS, SYNC_ERRORS
from tests.act_harness import ews_mailbox, ews_profile, ews_simulator
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import NTLM_DOMAIN, ntlm_v2_valid, sample_message

pytestmark = pytest.mark.integration

ALICE = "alice@northwind.example"
PASSWORD = "svc-Ntlm!Pa55"
WRONG = "not-the-password"
ENV = {"TEST_EWS_NTLM": PASSWORD, "TEST_EWS_NTLM_WRONG": WRONG}
FAST = ConnectorConfig(server_poll_interval_s=0.3, max_batch_items=50)
NTLM = EwsSettings(
    auth=EwsAuth.NTLM, access=EwsAccess.IMPERSONATION, include_sent=False, streaming=False
)


def test_ntlm_v2_check_needs_the_password_and_the_challenge() -> None:
    """The simulator's verification refuses a changed challenge, password or an
    NTLMv1-sized response (so the integration test below proves a real handshake)."""
    assert not ntlm_v2_valid("svc", "D", PASSWORD, b"\0" * 8, b"\0" * 24)
    assert not ntlm_v2_valid("svc", "D", PASSWORD, b"\0" * 8, b"\1" * 48)


async def test_ntlm_mailbox_syncs_and_a_wrong_password_is_permanent(tmp_path: Path) -> None:
    with ews_simulator("svc-tidings", PASSWORD, ENV) as sim:
        box = sim.add_mailbox(ALICE)
        for n in range(3):
            box.deliver("Inbox", sample_message(n))
        user = f"{NTLM_DOMAIN}\\svc-tidings"
        good = ews_mailbox("mb-ntlm", ALICE, user, "TEST_EWS_NTLM", ews=NTLM)
        wrong = ews_mailbox("mb-ntlm-wrong", ALICE, user, "TEST_EWS_NTLM_WRONG", ews=NTLM)
        profiles = {"exchange": ews_profile(sim)}
        async with ConnectorHarness.up(tmp_path / "data", profiles, FAST) as h:
            await h.add_mailbox(good)
            await h.add_mailbox(wrong)
            async with h.runtime():
                events = await h.wait_for(MAIL_CHANGES, "mb-ntlm", lambda e: len(e) == 3)
                refused = await h.wait_for(SYNC_ERRORS, "mb-ntlm-wrong", bool)
                status = await h.wait_for(
                    MAILBOX_STATUS,
                    "mb-ntlm-wrong",
                    lambda s: any(x.state == SyncState.DISABLED for x in s),
                )
                wrong_events = await h.changes("mb-ntlm-wrong")
    assert {e.change for e in events} == {ChangeKind.CREATED}
    assert {e.folder for e in events} == {"Inbox"}
    assert all(e.raw is not None and b"Message-ID: <ews-" in e.raw for e in events)
    # Every request was authenticated by NTLM as the service account (the domain as
    # the client sent it), impersonating alice; no Basic credentials were sent.
    assert ("svc-tidings", NTLM_DOMAIN) in sim.ntlm_logons
    assert {(r.user, r.impersonated) for r in sim.requests} == {("svc-tidings", ALICE)}
    assert [e.code for e in refused] == [errors.AUTHENTICATION_FAILED]
    assert refused[0].severity == Severity.PERMANENT
    assert WRONG not in refused[0].message and PASSWORD not in refused[0].message
    assert status[-1].last_error_code == errors.AUTHENTICATION_FAILED
    assert wrong_events == []
