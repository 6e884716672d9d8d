"""Maildir: list a folder, compare with the cursor, read new items. Reading never
changes the mailbox (no renames, no flags, nothing deleted).

A folder is the Maildir root ("INBOX") or a Maildir++ sub-folder ".Name". Items
live in `new/` and `cur/`; an item's identity is its unique name, the part of
the file name before ':' (flags after it change when a mail client reads it,
and moving from new/ to cur/ is not a new item).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from connectors.claimcheck import header_block
from connectors.cursors import pack_names, unpack_names
from connectors.tracking import header_message_id
from schemas.mailbox import MaildirPosition

_SUBDIRS = ("new", "cur")
HEADER_READ_LIMIT = 256 * 1024
"""At most this much of a file is read looking for the end of its header block."""
_HEADER_CHUNK = 16 * 1024


class MailboxMissingError(OSError):
    """The Maildir root does not exist or is not a Maildir."""


@dataclass(frozen=True)
class MaildirItem:
    """One file of a folder: its unique name, where it is, and its Maildir flags."""

    unique_name: str
    path: Path
    flags: str


@dataclass(frozen=True)
class FolderChanges:
    """What changed since the cursor: unique names created and deleted, sorted."""

    created: list[str]
    deleted: list[str]


def folder_dir(root: Path, folder: str) -> Path:
    """The directory of a folder: the root for INBOX, ".Name" for any other."""
    return root if folder.upper() == "INBOX" else root / f".{folder}"


def unique_name(filename: str) -> str:
    """The identity part of a Maildir file name."""
    return filename.split(":", 1)[0]


def list_folder(root: Path, folder: str) -> dict[str, MaildirItem]:
    """Every item in new/ and cur/ of a folder by unique name.

    A missing sub-folder is empty; a missing root raises MailboxMissingError.
    """
    if not (root / "cur").is_dir() and not (root / "new").is_dir():
        raise MailboxMissingError(f"{root} is not a Maildir (no cur/ or new/)")
    base = folder_dir(root, folder)
    items: dict[str, MaildirItem] = {}
    for sub in _SUBDIRS:
        try:
            entries = os.scandir(base / sub)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                name = unique_name(entry.name)
                flags = entry.name.split(":2,", 1)[1] if ":2," in entry.name else ""
                items[name] = MaildirItem(name, Path(entry.path), flags)
    return items


FolderSignature = tuple[int, int]
"""Modification times (ns) of a folder's new/ and cur/ directories (-1 when missing)."""

RACY_WINDOW_NS = 2_000_000_000
"""A directory modified this recently may change again within the same timestamp."""


def read_headers(path: Path, limit: int = HEADER_READ_LIMIT) -> bytes:
    """The header block of a message file (at most `limit` bytes are read)."""
    data = b""
    with path.open("rb") as file:
        while len(data) < limit:
            chunk = file.read(_HEADER_CHUNK)
            data += chunk
            if not chunk or b"\n\n" in data or b"\r\n\r\n" in data:
                break
    return header_block(data)


def items_with_message_id(root: Path, folder: str, message_id: str) -> list[MaildirItem]:
    """The items of a folder whose Message-ID normalizes to `message_id`, by unique name
    (every file's header block is read; a file that vanished meanwhile is skipped)."""
    found = []
    for _, item in sorted(list_folder(root, folder).items()):
        try:
            headers = read_headers(item.path)
        except FileNotFoundError:
            continue
        if header_message_id(headers) == message_id:
            found.append(item)
    return found


def folder_signature(root: Path, folder: str) -> FolderSignature:
    """The new/ and cur/ modification times: adding, removing or renaming a file changes one."""
    base = folder_dir(root, folder)
    stamps = []
    for sub in _SUBDIRS:
        try:
            stamps.append(os.stat(base / sub).st_mtime_ns)
        except FileNotFoundError:
            stamps.append(-1)
    return stamps[0], stamps[1]


def signature_settled(signature: FolderSignature, now_ns: int) -> bool:
    """True when no stamp is recent enough that a change could hide behind it."""
    return all(stamp < now_ns - RACY_WINDOW_NS for stamp in signature)


def changes_since(seen: set[str], current: dict[str, MaildirItem]) -> FolderChanges:
    """Items present now but not at the cursor, and items at the cursor gone now."""
    return FolderChanges(
        created=sorted(set(current) - seen),
        deleted=sorted(seen - set(current)),
    )


def modified_at(path: Path) -> datetime | None:
    """The file's modification time (when it was delivered), or None if it vanished."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


def encode_position(names: set[str]) -> MaildirPosition:
    """The cursor position for a set of unique names."""
    return MaildirPosition(names_z=pack_names(names), count=len(names))


def decode_position(position: MaildirPosition) -> set[str]:
    """The set of unique names a cursor position holds."""
    return unpack_names(position.names_z, position.count)
