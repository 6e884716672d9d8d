"""Credentials at the moment of login: a password from its secret reference, or a
bearer token from the profile's token provider (XOAUTH2). Nothing is cached
here and nothing is logged."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import cast

from connectors import errors
from connectors.imap_session import SecretProvider
from schemas.mailbox import AuthMethod, MailboxConfig, ServerProfile

TokenProvider = Callable[[str], str | Awaitable[str]]
"""Called with the mailbox's user name; returns (or awaits) a bearer token."""


def load_token_provider(path: str) -> TokenProvider:
    """Import "package.module:function"; a clear permanent error when that fails."""
    module_name, _, attribute = path.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError):
        raise errors.permanent(
            errors.CONFIGURATION,
            f"token_provider {path!r} cannot be imported; use 'package.module:function'",
        ) from None
    if not callable(target):
        raise errors.permanent(errors.CONFIGURATION, f"token_provider {path!r} is not callable")
    return cast(TokenProvider, target)


def secret_provider(config: MailboxConfig, profile: ServerProfile) -> SecretProvider:
    """What the connector logs in with: the password or an OAuth token, fetched at login."""
    username = config.credentials.username if config.credentials else ""
    if profile.auth == AuthMethod.XOAUTH2:
        provider = load_token_provider(profile.token_provider or "")

        async def token() -> str:
            value = provider(username)
            return await value if inspect.isawaitable(value) else value

        return token

    async def password() -> str:
        return resolve_password(config)

    return password


def resolve_password(config: MailboxConfig) -> str:
    """The mailbox's password from its reference; LookupError names what is missing."""
    if config.credentials is None or config.credentials.password is None:
        raise LookupError(f"mailbox {config.mailbox_id} has no password reference")
    return config.credentials.password.resolve()
