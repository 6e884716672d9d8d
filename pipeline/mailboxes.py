"""Mailbox definitions from the CLI and from a mailboxes TOML file (the demo's), and
the pure rules of mailbox states (pending approval → approved → tested → enabled, or
disabled) and ownership (one mailbox per user or queue, and one owner per mailbox)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from schemas.base import RecordRef, utc_now
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.ids import error_id
from schemas.mailbox import (
    Credentials,
    ImapSettings,
    IncomingFilter,
    MailboxConfig,
    MailboxDisabled,
    MailboxStatus,
    MailboxTest,
    MaildirSettings,
    Pop3Settings,
    Protocol,
    SyncState,
)
from schemas.secret import SecretRef


class MailboxDefinitionError(ValueError):
    """A mailbox definition is incomplete or contradictory; the message says what to fix."""


def maildir_mailbox(
    mailbox_id: str,
    owner: str,
    path: Path,
    incoming_filter: str = IncomingFilter.RESPONSES.value,
    email: str | None = None,
    folders: list[str] | None = None,
    approved: bool = True,
    enabled: bool = True,
) -> MailboxConfig:
    """A Maildir mailbox configuration; `email` defaults to `<owner id>@localhost`."""
    owner_ref = _owner(owner)
    flt = _filter(incoming_filter)
    settings = MaildirSettings(path=str(path.expanduser().resolve()))
    if folders:
        settings = MaildirSettings(path=settings.path, folders=folders)
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=owner_ref,
        email_address=(email or f"{owner_ref.id}@localhost").lower(),
        protocol=Protocol.MAILDIR,
        incoming_filter=flt,
        approved=approved,
        enabled=enabled,
        maildir=settings,
        updated_at=utc_now(),
    )


def server_mailbox(
    mailbox_id: str,
    owner: str,
    protocol: str,
    server_profile: str,
    username: str | None,
    password: SecretRef | None,
    *,
    incoming_filter: str = IncomingFilter.RESPONSES.value,
    email: str | None = None,
    folders: list[str] | None = None,
    leave_on_server: bool = True,
    process_email_from: datetime | None = None,
    approved: bool = True,
    enabled: bool = True,
) -> MailboxConfig:
    """An IMAP or POP3 mailbox on a server profile; the password is a reference.

    `username` defaults to the mailbox's address; `folders` adds IMAP folders
    to INBOX and Sent.
    """
    owner_ref = _owner(owner)
    flt = _filter(incoming_filter)
    kind = Protocol(protocol)
    if kind not in (Protocol.IMAP, Protocol.POP3):
        raise MailboxDefinitionError(f"--protocol {protocol} is not a mail-server protocol")
    if folders and kind == Protocol.POP3:
        raise MailboxDefinitionError("POP3 has one folder (INBOX); drop --folder")
    address = (email or f"{owner_ref.id}@localhost").lower()
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=owner_ref,
        email_address=address,
        protocol=kind,
        incoming_filter=flt,
        approved=approved,
        enabled=enabled,
        server_profile=server_profile,
        credentials=Credentials(username=username or address, password=password),
        imap=ImapSettings(folders=folders or []) if kind == Protocol.IMAP else None,
        pop3=Pop3Settings(leave_on_server=leave_on_server) if kind == Protocol.POP3 else None,
        process_email_from=process_email_from,
        updated_at=utc_now(),
    )


def _owner(owner: str) -> RecordRef:
    try:
        owner_ref = RecordRef.parse(owner)
    except ValueError as exc:
        raise MailboxDefinitionError(f"--owner: {exc} (use user:NAME or queue:NAME)") from exc
    if owner_ref.type not in ("user", "queue"):
        raise MailboxDefinitionError(f"--owner must be a user or a queue, not {owner_ref.type}")
    return owner_ref


def _filter(incoming_filter: str) -> IncomingFilter:
    try:
        return IncomingFilter(incoming_filter)
    except ValueError as exc:
        choices = ", ".join(f.value for f in IncomingFilter)
        raise MailboxDefinitionError(f"--filter must be one of {choices}") from exc


def load_mailbox_file(path: Path, base_dir: Path) -> list[MailboxConfig]:
    """Mailboxes from a `[[mailbox]]` TOML file; relative paths resolve against `base_dir`."""
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    configs = []
    for entry in data.get("mailbox", []):
        try:
            configs.append(
                maildir_mailbox(
                    mailbox_id=entry["id"],
                    owner=entry["owner"],
                    path=base_dir / entry["path"],
                    incoming_filter=entry.get("filter", IncomingFilter.RESPONSES.value),
                    email=entry.get("email"),
                    folders=entry.get("folders"),
                )
            )
        except KeyError as exc:
            raise MailboxDefinitionError(f"{path.name}: a [[mailbox]] lacks {exc}") from exc
    return configs


# -- states and ownership ------------------------------------------------------------

DISABLED_BY_ADMIN = "DisabledByAdmin"
"""The code of the note `tidings mailbox disable` leaves on a mailbox."""
MAILBOX_REMAPPED = "MailboxRemapped"
"""The sync.errors notice a remap publishes: the old and the new owner."""


class MailboxStateError(ValueError):
    """A state change or owner change that is not allowed; the message says what to do."""


def mailbox_state(config: MailboxConfig, status: MailboxStatus | None = None) -> SyncState:
    """Where a mailbox stands (Dynamics: pending approval → approved → tested → enabled,
    or disabled).

    Not approved is pending approval. Approved but not enabled is disabled when a
    person or a permanent error disabled it, tested when its last test passed,
    else approved. Approved and enabled is enabled, unless its connector reported
    it disabled after the configuration was written (the disabled configuration
    is on its way).
    """
    if not config.approved:
        return SyncState.PENDING_APPROVAL
    if not config.enabled:
        if config.disabled is not None:
            return SyncState.DISABLED
        return (
            SyncState.TESTED
            if config.test is not None and config.test.passed
            else (SyncState.APPROVED)
        )
    if status is not None and status.state == SyncState.DISABLED:
        written = config.updated_at
        if written is None or status.updated_at >= written:
            return SyncState.DISABLED
    return SyncState.ENABLED


def disabled_reason(config: MailboxConfig, status: MailboxStatus | None = None) -> str | None:
    """Why a mailbox is disabled (one line), or None when it is not."""
    if mailbox_state(config, status) != SyncState.DISABLED:
        return None
    if config.disabled is not None:
        note = config.disabled
        by = f" (by {note.by})" if note.by else ""
        return f"{note.code}: {note.reason}{by}"
    if status is not None and status.last_error_code:
        return f"{status.last_error_code}: {status.last_error or ''}".strip()
    return "disabled"


def approve(config: MailboxConfig, now: datetime) -> MailboxConfig:
    """The mailbox approved (a no-op when it already is)."""
    if config.approved:
        return config
    return msgspec.structs.replace(config, approved=True, updated_at=now)


def enable(config: MailboxConfig, now: datetime) -> MailboxConfig:
    """The mailbox enabled, its disabled note cleared; MailboxStateError when it is not
    approved (approve it first)."""
    if not config.approved:
        raise MailboxStateError(
            f"mailbox {config.mailbox_id} is pending approval — approve it first: "
            f"`tidings mailbox approve {config.mailbox_id}`"
        )
    if config.enabled and config.disabled is None:
        return config
    return msgspec.structs.replace(config, enabled=True, disabled=None, updated_at=now)


def disable(config: MailboxConfig, reason: str, by: str, now: datetime) -> MailboxConfig:
    """The mailbox disabled by a person, with `reason` (one line) kept on it."""
    note = MailboxDisabled(code=DISABLED_BY_ADMIN, reason=" ".join(reason.split()), by=by, at=now)
    return msgspec.structs.replace(config, enabled=False, disabled=note, updated_at=now)


def record_test(config: MailboxConfig, result: MailboxTest, now: datetime) -> MailboxConfig:
    """The mailbox with the result of its last test stored on it."""
    return msgspec.structs.replace(config, test=result, updated_at=now)


def owner_conflict(
    configs: Mapping[str, MailboxConfig], mailbox_id: str, owner: RecordRef
) -> str | None:
    """The id of another mailbox `owner` already has (one mailbox per owner), or None."""
    for other_id, other in sorted(configs.items()):
        if other_id != mailbox_id and other.owner == owner:
            return other_id
    return None


def check_add(configs: Mapping[str, MailboxConfig], config: MailboxConfig) -> None:
    """Refuse (MailboxStateError) an add that would give an owner two mailboxes or
    silently move an existing mailbox to another owner (that is a remap)."""
    existing = configs.get(config.mailbox_id)
    if existing is not None and existing.owner != config.owner:
        raise MailboxStateError(
            f"mailbox {config.mailbox_id} belongs to {existing.owner}, not {config.owner} — "
            f"move it with `tidings mailbox remap {config.mailbox_id} --owner {config.owner}`"
        )
    taken = owner_conflict(configs, config.mailbox_id, config.owner)
    if taken is not None:
        raise MailboxStateError(
            f"{config.owner} already has mailbox {taken} (one mailbox per owner) — remove it "
            f"or remap it to another owner first"
        )


def remap(
    configs: Mapping[str, MailboxConfig], mailbox_id: str, owner: str, by: str, now: datetime
) -> tuple[MailboxConfig, SyncError]:
    """Move a mailbox to another user or queue: the new configuration and the notice
    (sync.errors, code MailboxRemapped) stating the old and the new owner.

    Refused (MailboxStateError) for an unknown mailbox, the same owner, or an
    owner that has another mailbox already: break that link first.
    """
    config = configs.get(mailbox_id)
    if config is None:
        raise MailboxStateError(
            f"no mailbox {mailbox_id!r} — list them with `tidings mailbox list`"
        )
    new_owner = _owner(owner)
    if new_owner == config.owner:
        raise MailboxStateError(f"mailbox {mailbox_id} already belongs to {new_owner}")
    taken = owner_conflict(configs, mailbox_id, new_owner)
    if taken is not None:
        raise MailboxStateError(
            f"{new_owner} already has mailbox {taken} (one mailbox per owner) — remove "
            f"{taken} or remap it to another owner first"
        )
    remapped = msgspec.structs.replace(config, owner=new_owner, updated_at=now)
    who = f" by {by}" if by else ""
    event = SyncError(
        error_id=error_id(f"remap|{mailbox_id}|{now.isoformat()}", MAILBOX_REMAPPED),
        mailbox_id=mailbox_id,
        scope=ErrorScope.MAILBOX,
        severity=Severity.NOTICE,
        code=MAILBOX_REMAPPED,
        message=(
            f"mailbox {mailbox_id} remapped{who} from {config.owner} to {new_owner}; "
            f"the link to {config.owner} is broken ({config.owner} has no mailbox now)"
        ),
        component="cli",
        occurred_at=now,
    )
    return remapped, event
