"""EWS Autodiscover settings and the pure parts of the discovery shell: which
combinations a configuration may hold, which URLs a profile allows, and how
exchangelib's failure reads in the error message."""

from __future__ import annotations

import msgspec
import pytest
from exchangelib.errors import AutoDiscoverFailed

from connectors.errors import ConnectorError
from connectors.ews_client import _autodiscover_reason, _checked_url
from schemas.base import RecordRef
from schemas.mailbox import EwsSettings, MailboxConfig, Protocol, ServerProfile

URL = "https://mail.northwind.example/autodiscover/autodiscover.svc"


def test_autodiscover_url_needs_autodiscover_and_excludes_server_url() -> None:
    assert EwsSettings(autodiscover=True, autodiscover_url=URL).autodiscover_url == URL
    with pytest.raises(ValueError, match=r"server_url .* or autodiscover = true, not both"):
        EwsSettings(autodiscover=True, server_url="https://mail/EWS/Exchange.asmx")
    with pytest.raises(ValueError, match="autodiscover_url is set but autodiscover is off"):
        EwsSettings(autodiscover_url=URL)
    with pytest.raises(msgspec.ValidationError, match="autodiscover"):
        msgspec.json.decode(b'{"autodiscover_url": "https://x"}', type=EwsSettings)


def _mailbox() -> MailboxConfig:
    return MailboxConfig(
        mailbox_id="mb-a",
        owner=RecordRef("user", "a"),
        email_address="a@northwind.example",
        protocol=Protocol.EWS,
    )


def test_discovered_and_configured_urls_obey_the_profile() -> None:
    strict = ServerProfile(protocol=Protocol.EWS, host="mail.northwind.example")
    lax = msgspec.structs.replace(strict, allow_plaintext=True)
    assert _checked_url(_mailbox(), strict, URL, "autodiscover_url") == URL
    assert _checked_url(_mailbox(), lax, "http://127.0.0.1/x", "it") == "http://127.0.0.1/x"
    with pytest.raises(ConnectorError) as refused:
        _checked_url(_mailbox(), strict, "http://mail/EWS/Exchange.asmx", "the discovered EWS URL")
    assert refused.value.code == "PlaintextRefused" and refused.value.permanent
    assert "the discovered EWS URL is http" in refused.value.message
    with pytest.raises(ConnectorError) as odd:
        _checked_url(_mailbox(), strict, "ftp://mail/", "autodiscover_url")
    assert odd.value.code == "Configuration"


def test_the_reason_drops_exchangelibs_advice() -> None:
    failed = AutoDiscoverFailed(
        "All steps in the autodiscover protocol failed for email a@x.example. If you think "
        "this is an error, consider doing an official test at https://testconnectivity..."
    )
    assert _autodiscover_reason(failed) == (
        "All steps in the autodiscover protocol failed for email a@x.example"
    )
    assert _autodiscover_reason(AutoDiscoverFailed("")) == "AutoDiscoverFailed"
