"""The mailbox's IMAP Sent folder, as the outgoing sender uses it: does it hold a
message with a given Message-ID, and append a sent message there unless it does.

The Sent folder is the mailbox's `outgoing.sent_folder`, else the one the IMAP
connector reads as Sent (SPECIAL-USE \\Sent, else the first of its
`sent_names`). Looking up before appending makes the copy idempotent: a retry
or a restart never leaves two copies. `UID SEARCH HEADER Message-ID` matches
substrings, which is exact enough for the sender's own generated ids.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import cast

from connectors import errors
from connectors.imap import pick_folders
from connectors.imap_protocol import quote_mailbox
from connectors.imap_session import ImapSession, SecretProvider, classify_refusal
from schemas.mailbox import FolderRole, ImapSettings, MailboxConfig, ServerProfile


class SentFolderSession(ImapSession):
    """An IMAP session that finds the Sent folder, searches it and appends to it."""

    async def sent_folder(self, config: MailboxConfig) -> str:
        """The folder copies go to; a permanent MailboxMissing when there is none."""
        if config.outgoing is not None and config.outgoing.sent_folder:
            return config.outgoing.sent_folder
        settings = _with_sent(config.imap or ImapSettings())
        for name, role in pick_folders(await self.list_folders(), settings):
            if role == FolderRole.SENT:
                return name
        raise errors.permanent(
            errors.MAILBOX_MISSING,
            f"{self.where}: no Sent folder found; set outgoing.sent_folder on the mailbox",
        )

    async def holds(self, folder: str, message_id: str) -> bool:
        """True when `folder` holds a message whose Message-ID header has `message_id`."""
        await self.examine(folder)
        return bool(await self.uid_search("HEADER", "Message-ID", _quoted(message_id)))

    async def append(self, folder: str, message: bytes, when: datetime | None) -> None:
        """APPEND `message` to `folder`, marked \\Seen (sent mail is read)."""
        response = await self._run(
            "APPEND",
            self.client.protocol.append(
                message, quote_mailbox(folder), "(\\Seen)", when, timeout=self.profile.timeout_s
            ),
        )
        if response.result != "OK":
            raise classify_refusal("APPEND", response.lines, self.where)


def _with_sent(settings: ImapSettings) -> ImapSettings:
    """`settings` with Sent included (the sender needs it even where the connector
    does not read it)."""
    if settings.include_sent:
        return settings
    return ImapSettings(folders=[], sent_names=settings.sent_names, include_sent=True)


async def _open(profile: ServerProfile, username: str, secret: SecretProvider) -> SentFolderSession:
    # ImapSession.open builds `cls(...)`, so this is a SentFolderSession.
    return cast(SentFolderSession, await SentFolderSession.open(profile, username, secret))


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def find_in_sent(
    profile: ServerProfile,
    config: MailboxConfig,
    username: str,
    secret: SecretProvider,
    message_id: str,
) -> bool:
    """Log in, look for `message_id` in the Sent folder, log out."""
    session = await _open(profile, username, secret)
    try:
        return await session.holds(await session.sent_folder(config), message_id)
    finally:
        with contextlib.suppress(Exception):
            await session.close()


async def copy_to_sent(
    profile: ServerProfile,
    config: MailboxConfig,
    username: str,
    secret: SecretProvider,
    message_id: str,
    message: bytes,
    when: datetime | None,
) -> bool:
    """Append `message` to the Sent folder unless it already holds `message_id`;
    True when it appended, False when the copy was there already."""
    session = await _open(profile, username, secret)
    try:
        folder = await session.sent_folder(config)
        if await session.holds(folder, message_id):
            return False
        await session.append(folder, message, when)
        return True
    finally:
        with contextlib.suppress(Exception):
            await session.close()
