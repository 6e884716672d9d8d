"""Access tokens for Microsoft Graph through msal, cached and refreshed.

App-only (client credentials): one msal ConfidentialClientApplication per app
registration and authority, shared by every mailbox of this worker that uses
it, so the tenant-wide token is fetched once and reused until msal deems it
near expiry (msal caches it). Delegated: one msal application per mailbox,
seeded once with the mailbox's refresh token; msal keeps the refreshed tokens
in its cache and renews the access token from them (acquire_token_silent).

msal is synchronous (requests underneath): every call runs in a thread, with
the profile's timeout. Failures become ConnectorErrors: rejected credentials
(invalid_client, unauthorized_client, invalid_grant, ...) are permanent,
network trouble and server errors transient. Messages name the app and the
error code, never a secret or the server's free text.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msal
import requests
import requests.adapters

from connectors import errors
from schemas.mailbox import GraphApp, GraphAuthFlow, GraphSettings, ServerProfile

PERMANENT_OAUTH_ERRORS = frozenset(
    {
        "invalid_client",
        "unauthorized_client",
        "invalid_grant",
        "invalid_request",
        "invalid_scope",
        "unsupported_grant_type",
        "interaction_required",
        "consent_required",
        "access_denied",
    }
)

_apps: dict[tuple[str, ...], Any] = {}
_apps_lock = threading.Lock()


def graph_scope(app: GraphApp) -> str:
    """The app-only scope: the Graph resource's `.default`."""
    parts = urlsplit(app.graph_url)
    return f"{parts.scheme}://{parts.netloc}/.default"


def authority(app: GraphApp) -> str:
    """The token authority: the authority host and the tenant."""
    return f"{app.authority_host.rstrip('/')}/{app.tenant_id}"


def classify_oauth_error(result: Mapping[str, Any], app: GraphApp) -> errors.ConnectorError:
    """A ConnectorError for an msal error result (a dict with "error")."""
    code = str(result.get("error", "unknown_error"))
    numbers = result.get("error_codes") or []
    detail = f" (AADSTS{numbers[0]})" if numbers else ""
    where = f"the token endpoint of tenant {app.tenant_id} for app {app.client_id}"
    if code in PERMANENT_OAUTH_ERRORS:
        return errors.permanent(
            errors.AUTHENTICATION_FAILED,
            f"{where} refused the credentials: {code}{detail}; check the app registration, "
            "its secret or certificate, and admin consent",
        )
    return errors.transient(errors.SERVER_BUSY, f"{where} answered {code}{detail}")


def _verify(profile: ServerProfile) -> bool | str:
    if not profile.verify_certificates:
        return False
    return profile.ca_file or True


def _session(profile: ServerProfile) -> requests.Session:
    """The HTTP session msal uses: the profile's timeout and certificate check on
    every request (passed per request, so REQUESTS_CA_BUNDLE cannot override a
    profile's ca_file), one retry on a dropped connection."""
    session = requests.Session()
    session.request = functools.partial(  # type: ignore[method-assign]
        session.request, timeout=profile.timeout_s, verify=_verify(profile)
    )
    adapter = requests.adapters.HTTPAdapter(max_retries=1)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _credential(app: GraphApp) -> str | dict[str, str] | None:
    """What msal authenticates the app with: the secret, a certificate, or nothing."""
    try:
        if app.client_secret is not None:
            return app.client_secret.resolve()
        if app.certificate is not None:
            return {
                "private_key": app.certificate.resolve(),
                "thumbprint": app.certificate_thumbprint or "",
            }
    except LookupError as exc:
        raise errors.permanent(errors.CONFIGURATION, f"graph app {app.client_id}: {exc}") from None
    return None


def _new_app(profile: ServerProfile, app: GraphApp) -> Any:
    """An msal application for `app` (confidential with a credential, else public)."""
    credential = _credential(app)
    options: dict[str, Any] = {
        "authority": authority(app),
        "instance_discovery": False,
        "http_client": _session(profile),
    }
    try:
        if credential is None:
            return msal.PublicClientApplication(app.client_id, **options)
        return msal.ConfidentialClientApplication(
            app.client_id, client_credential=credential, **options
        )
    except ValueError as exc:  # discovery refused: wrong tenant or authority
        raise errors.permanent(
            errors.CONFIGURATION,
            f"graph authority {authority(app)} is not usable: {type(exc).__name__}",
        ) from None


def _shared_app(profile: ServerProfile, app: GraphApp, key: tuple[str, ...]) -> Any:
    with _apps_lock:
        existing = _apps.get(key)
    if existing is not None:
        return existing
    created = _new_app(profile, app)
    with _apps_lock:
        return _apps.setdefault(key, created)


def forget_apps() -> None:
    """Drop every shared msal application (tests; a changed secret reference)."""
    with _apps_lock:
        _apps.clear()


class GraphTokens:
    """Bearer tokens for one mailbox: `token()` returns a valid one, `invalidate()`
    makes the next call fetch a fresh one (after a 401)."""

    def __init__(self, profile: ServerProfile, settings: GraphSettings, user: str) -> None:
        if profile.graph is None:
            raise errors.permanent(
                errors.CONFIGURATION, "a graph profile needs [server_profiles.NAME.graph]"
            )
        self.profile = profile
        self.app = profile.graph
        self.settings = settings
        self.user = user
        self._stale = False
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        """A bearer token (cached by msal); raises ConnectorError."""
        async with self._lock:
            force, self._stale = self._stale, False
            try:
                async with asyncio.timeout(self.profile.timeout_s * 2):
                    return await asyncio.to_thread(self._acquire, force)
            except TimeoutError:
                raise errors.transient(
                    errors.TIMEOUT, f"the token endpoint of tenant {self.app.tenant_id} timed out"
                ) from None

    def invalidate(self) -> None:
        """The last token was refused: fetch a new one next time."""
        self._stale = True

    def _acquire(self, force: bool) -> str:
        try:
            if self.app.flow == GraphAuthFlow.APP_ONLY:
                result = self._app_only(force)
            else:
                result = self._delegated(force)
        except requests.exceptions.Timeout:
            raise errors.transient(
                errors.TIMEOUT, f"the token endpoint of tenant {self.app.tenant_id} timed out"
            ) from None
        except requests.exceptions.ConnectionError:
            raise errors.transient(
                errors.CONNECTION_REFUSED,
                f"cannot reach the token endpoint at {self.app.authority_host}",
            ) from None
        except requests.exceptions.RequestException as exc:
            raise errors.transient(
                errors.CONNECTION_LOST,
                f"the token endpoint at {self.app.authority_host} failed: {type(exc).__name__}",
            ) from None
        if not result or "access_token" not in result:
            raise classify_oauth_error(result or {"error": "no_token"}, self.app)
        return str(result["access_token"])

    def _app_only(self, force: bool) -> Any:
        key = ("app", authority(self.app), self.app.client_id, str(self.app.client_secret))
        client = _shared_app(self.profile, self.app, key)
        if force:
            client.remove_tokens_for_client()
        return client.acquire_token_for_client([graph_scope(self.app)])

    def _delegated(self, force: bool) -> Any:
        key = ("user", authority(self.app), self.app.client_id, self.user.lower())
        client = _shared_app(self.profile, self.app, key)
        scopes = list(self.app.delegated_scopes)
        accounts = client.get_accounts()
        if accounts:
            result = client.acquire_token_silent(scopes, account=accounts[0], force_refresh=force)
            if result:
                return result
        if self.settings.refresh_token is None:
            raise errors.permanent(
                errors.CONFIGURATION,
                f"delegated graph access for {self.user} needs graph.refresh_token",
            )
        try:
            refresh_token = self.settings.refresh_token.resolve()
        except LookupError as exc:
            raise errors.permanent(errors.CONFIGURATION, f"graph refresh token: {exc}") from None
        return client.acquire_token_by_refresh_token(refresh_token, scopes)
