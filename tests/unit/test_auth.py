"""Credentials at login: password references and XOAUTH2 token providers."""

from __future__ import annotations

import pytest

from connectors.auth import load_token_provider, resolve_password, secret_provider
from connectors.errors import ConnectorError
from schemas.base import RecordRef, RecordType
from schemas.mailbox import AuthMethod, Credentials, MailboxConfig, Protocol, ServerProfile
from schemas.secret import SecretRef

CALLS: list[str] = []


def sync_token(username: str) -> str:
    """A token provider that answers at once."""
    CALLS.append(username)
    return f"token-for-{username}"


async def async_token(username: str) -> str:
    """A token provider that has to ask somebody."""
    CALLS.append(username)
    return f"async-token-for-{username}"


def config(password: SecretRef | None = None) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id="mb-1",
        owner=RecordRef(type=RecordType.USER, id="ann"),
        email_address="ann@example.com",
        protocol=Protocol.IMAP,
        server_profile="p",
        credentials=Credentials(username="ann", password=password),
    )


def oauth_profile(provider: str) -> ServerProfile:
    return ServerProfile(
        protocol=Protocol.IMAP, host="h", auth=AuthMethod.XOAUTH2, token_provider=provider
    )


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("tests.unit.test_auth:sync_token", "token-for-ann"),
        ("tests.unit.test_auth:async_token", "async-token-for-ann"),
    ],
)
async def test_token_provider_is_called_with_the_user_at_login(
    provider: str, expected: str
) -> None:
    CALLS.clear()
    secret = secret_provider(config(), oauth_profile(provider))
    assert CALLS == []  # nothing fetched before login
    assert await secret() == expected
    assert CALLS == ["ann"]


@pytest.mark.parametrize("path", ["no.such.module:f", "tests.unit.test_auth:missing", "bad"])
def test_unimportable_token_provider_is_a_permanent_configuration_error(path: str) -> None:
    with pytest.raises(ConnectorError) as caught:
        load_token_provider(path)
    assert caught.value.permanent and caught.value.code == "Configuration"
    assert path in caught.value.message


async def test_password_comes_from_its_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANN_PW", "hunter2")
    profile = ServerProfile(protocol=Protocol.IMAP, host="h")
    assert await secret_provider(config(SecretRef(env="ANN_PW")), profile)() == "hunter2"


def test_missing_password_names_the_reference_not_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANN_PW", raising=False)
    with pytest.raises(LookupError, match="ANN_PW"):
        resolve_password(config(SecretRef(env="ANN_PW")))
    with pytest.raises(LookupError, match="no password reference"):
        resolve_password(config(None))
