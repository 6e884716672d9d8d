"""Mailbox definitions from the CLI and from a mailboxes TOML file (the demo's)."""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas.base import RecordRef, utc_now
from schemas.mailbox import (
    Credentials,
    ImapSettings,
    IncomingFilter,
    MailboxConfig,
    MaildirSettings,
    Pop3Settings,
    Protocol,
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
