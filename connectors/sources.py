"""Which source reads a mailbox: the protocol's module, wired to the shared parts
(emitter, cursor store, server gates, claim-check). Configuration mistakes are
permanent ConnectorErrors, so they disable the mailbox with a clear message."""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors import errors
from connectors.auth import resolve_password, secret_provider
from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.ews import EwsMailbox
from connectors.gate import GateRegistry, ServerGate
from connectors.graph import GraphMailbox
from connectors.imap import ImapMailbox
from connectors.maildir_sync import MaildirMailbox
from connectors.pop3 import Pop3Mailbox
from connectors.source import MailboxSource, SourceWiring
from schemas.config import ConnectorConfig
from schemas.mailbox import (
    Cursor,
    EwsSettings,
    MailboxConfig,
    PollingSettings,
    Protocol,
    RetryPolicy,
    ServerProfile,
    ews_max_concurrency,
)


@dataclass
class SourceKit:
    """What every source shares within one connector worker."""

    emitter: Emitter
    store: CursorStore
    claim_check: ClaimCheck
    settings: ConnectorConfig
    profiles: dict[str, ServerProfile]
    gates: GateRegistry = field(default_factory=GateRegistry)

    def wiring(
        self,
        config: MailboxConfig,
        profile: ServerProfile | None,
        partition: int,
        cursors: dict[str, Cursor],
        gate: ServerGate | None,
    ) -> SourceWiring:
        """What a source of `config` is built with in this worker."""
        return SourceWiring(
            config=config,
            profile=profile,
            partition=partition,
            cursors=cursors,
            emitter=self.emitter,
            store=self.store,
            gate=gate,
            claim_check=self.claim_check,
            max_batch_items=self.settings.max_batch_items,
        )


def server_profile(config: MailboxConfig, profiles: dict[str, ServerProfile]) -> ServerProfile:
    """The profile a server mailbox names, checked against its protocol."""
    name = config.server_profile
    if name is None or name not in profiles:
        known = ", ".join(sorted(profiles)) or "none configured"
        raise errors.permanent(
            errors.CONFIGURATION,
            f"mailbox {config.mailbox_id} needs a server profile (it names {name!r}; "
            f"known: {known}); add [server_profiles.NAME] to tidings.toml",
        )
    profile = profiles[name]
    if profile.protocol != config.protocol:
        raise errors.permanent(
            errors.CONFIGURATION,
            f"mailbox {config.mailbox_id} is {config.protocol} but profile {name} is "
            f"{profile.protocol}",
        )
    return profile


def open_source(
    config: MailboxConfig, partition: int, cursors: dict[str, Cursor], kit: SourceKit
) -> MailboxSource:
    """The source for `config`; raises a permanent ConnectorError when misconfigured."""
    if config.protocol == Protocol.MAILDIR:
        if config.maildir is None:
            raise errors.permanent(
                errors.CONFIGURATION, f"mailbox {config.mailbox_id} has no maildir settings"
            )
        return MaildirMailbox(kit.wiring(config, None, partition, cursors, None))
    profile = server_profile(config, kit.profiles)
    gate = kit.gates.gate(
        config.server_profile or "", connection_limit(config, profile), profile.polling
    )
    wiring = kit.wiring(config, profile, partition, cursors, gate)
    if config.protocol == Protocol.EWS:
        return EwsMailbox(wiring, secret=secret_provider(config, profile))
    if config.protocol == Protocol.IMAP:
        return ImapMailbox(wiring, secret=secret_provider(config, profile))
    if config.protocol == Protocol.POP3:
        return Pop3Mailbox(wiring, password=lambda: resolve_password(config))
    if config.protocol == Protocol.GRAPH:
        return GraphMailbox(wiring)
    raise errors.permanent(
        errors.CONFIGURATION,
        f"mailbox {config.mailbox_id} uses {config.protocol}, which this worker cannot read yet",
    )


def connection_limit(config: MailboxConfig, profile: ServerProfile) -> int:
    """How many connections the profile's gate allows at once: the profile's
    `max_connections`, and for an Exchange mailbox over EWS never more than
    Exchange's EWSMaxConcurrency for the version (27, or 10 on 2010)."""
    if config.protocol != Protocol.EWS:
        return profile.max_connections
    settings = config.ews or EwsSettings()
    return min(profile.max_connections, ews_max_concurrency(settings.version))


def polling_settings(
    config: MailboxConfig, settings: ConnectorConfig, profiles: dict[str, ServerProfile]
) -> PollingSettings:
    """How the scheduler polls a mailbox: a local Maildir every `poll_interval_s`; a
    server mailbox by its profile's `polling` settings, or every
    `server_poll_interval_s` when the operator fixed one."""
    profile = profiles.get(config.server_profile or "")
    polling = profile.polling if profile is not None else PollingSettings()
    if config.protocol == Protocol.MAILDIR or profile is None:
        return polling.fixed(settings.poll_interval_s)
    if settings.server_poll_interval_s is not None:
        return polling.fixed(settings.server_poll_interval_s)
    return polling


def retry_policy(config: MailboxConfig, profiles: dict[str, ServerProfile]) -> RetryPolicy:
    """The mailbox's server profile's retry policy (the default for Maildir)."""
    profile = profiles.get(config.server_profile or "")
    return profile.retry if profile is not None else RetryPolicy()
