"""How connectors reach a mail server safely, whatever the protocol: plaintext only
when the server profile allows it, and TLS that checks certificates.

Both are permanent configuration matters: a refused transport or an unusable
`ca_file` disables the mailbox with a message that says what to change.
"""

from __future__ import annotations

import logging
import ssl

from connectors import errors
from schemas.mailbox import ServerProfile, TransportSecurity

log = logging.getLogger(__name__)


def check_transport(profile: ServerProfile) -> None:
    """Refuse plaintext unless the profile explicitly allows it."""
    if profile.security == TransportSecurity.PLAIN and not profile.allow_plaintext:
        raise errors.permanent(
            errors.PLAINTEXT_REFUSED,
            f"{profile.host}:{profile.effective_port()} would be read without encryption; "
            "use security = tls or starttls, or set allow_plaintext = true on the profile",
        )


def tls_context(profile: ServerProfile) -> ssl.SSLContext:
    """Certificate-checking TLS: the certificate authorities of `ca_file` when the
    profile names one, else the system's; hostname checked, certificate required.
    Neither when `verify_certificates` is off (logged at every connection).

    An unreadable `ca_file` is a permanent Configuration error.
    """
    try:
        context = ssl.create_default_context(cafile=profile.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise errors.permanent(
            errors.CONFIGURATION,
            f"ca_file {profile.ca_file} of the profile for {profile.host} cannot be used: "
            f"{getattr(exc, 'strerror', None) or exc}",
        ) from None
    if not profile.verify_certificates:
        log.warning(
            "TLS certificate verification is off for %s:%s (verify_certificates = false)",
            profile.host,
            profile.effective_port(),
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
