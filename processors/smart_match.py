"""Smart matching: correlate an email by what it looks like when nothing else links it.

As Dynamics does it: the subject loses the prefixes the filter expression matches
("RE:", "FW: AW:" …), is case-folded and split into words; each word becomes a
hash, at most `max_hashes` of them. Each unique From/To/Cc/Bcc address becomes
a hash too. A tracked email matches when the subject hashes are the same (at
most `subject_delta` of them differ) and at least `min_common_addresses`
address hashes are shared, within `window_days` of the tracked email.

`SmartIndex` finds candidates without scanning history: by the exact set of
subject hashes when no difference is allowed (the default), otherwise through
the posting lists of the subject's rarest hashes — a match differing in at
most d hashes must appear in any d + 1 of the email's posting lists. Posting
lists hold activity ids only and are pruned as activities leave the window.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import msgspec

from processors.index_store import IndexStore, last_part, make_key
from schemas.config import SmartMatchingConfig

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class SmartKey:
    """What smart matching compares: subject word hashes and address hashes."""

    subject: frozenset[str]
    addresses: frozenset[str]

    @property
    def signature(self) -> str:
        """One string for the exact set of subject hashes ("" for an empty subject)."""
        return ",".join(sorted(self.subject))


def normalize_subject(subject: str, config: SmartMatchingConfig) -> str:
    """The subject without the prefixes the filter expression strips, case-folded."""
    return _prefix_filter(config.subject_filter).sub("", subject, count=1).casefold().strip()


def smart_key(subject: str, addresses: Iterable[str], config: SmartMatchingConfig) -> SmartKey:
    """The hashes of a subject (at most `max_hashes` words, first ones first) and of
    each unique address (case-insensitive)."""
    words = _WORD.findall(normalize_subject(subject, config))
    hashes: list[str] = []
    for word in words:
        digest = _hash("w", word)
        if digest not in hashes:
            hashes.append(digest)
        if len(hashes) >= config.max_hashes:
            break
    unique = {address.strip().casefold() for address in addresses if address and address.strip()}
    return SmartKey(frozenset(hashes), frozenset(_hash("a", a) for a in unique))


def matches(email: SmartKey, tracked: SmartKey, config: SmartMatchingConfig) -> bool:
    """True when `email` matches `tracked` by the configured rule: at least one subject
    hash shared, at most `subject_delta` differing, enough common addresses."""
    if not email.subject & tracked.subject:
        return False
    differing = len(email.subject ^ tracked.subject)
    if differing > config.subject_delta:
        return False
    return len(email.addresses & tracked.addresses) >= config.min_common_addresses


class _Entry(msgspec.Struct, array_like=True, frozen=True):
    subject: list[str]
    addresses: list[str]
    sent_at: datetime

    @property
    def key(self) -> SmartKey:
        return SmartKey(frozenset(self.subject), frozenset(self.addresses))


_ENTRY = msgspec.msgpack.Decoder(_Entry)
_ENCODER = msgspec.msgpack.Encoder()
_COUNT = make_key("smart", "count")


class SmartIndex:
    """Tracked emails by smart key, for `best_match`, kept in an `IndexStore` (its own
    temporary one when none is given). Not thread-safe; one per processor.

    Store keys: ("smart", "e", id) → the entry; ("smart", "s", signature, id) and,
    when a subject difference is allowed, ("smart", "h", hash, id) plus a posting
    size ("smart", "n", hash); ("smart", "count") → the number of entries.
    """

    def __init__(self, config: SmartMatchingConfig, store: IndexStore | None = None) -> None:
        self.config = config
        self._owns_store = store is None
        self.store = store if store is not None else IndexStore()

    def __len__(self) -> int:
        return int(self.store.get(_COUNT) or 0)

    def close(self) -> None:
        """Close the store when it is this index's own."""
        if self._owns_store:
            self.store.close()

    def add(self, activity_id: str, key: SmartKey, sent_at: datetime) -> None:
        """Index (or re-index) one tracked email."""
        puts, deletes, count = self._removal(activity_id)
        if key.subject:
            entry = _Entry(sorted(key.subject), sorted(key.addresses), sent_at)
            puts[make_key("smart", "e", activity_id)] = _ENCODER.encode(entry)
            puts[make_key("smart", "s", key.signature, activity_id)] = b""
            if self.config.subject_delta:
                for digest in key.subject:
                    puts[make_key("smart", "h", digest, activity_id)] = b""
                    _add_count(puts, self.store, make_key("smart", "n", digest), 1)
            count += 1
        puts[_COUNT] = str(count).encode()
        self.store.write(puts, deletes)

    def remove(self, activity_id: str) -> None:
        """Forget one tracked email (no error when unknown)."""
        puts, deletes, count = self._removal(activity_id)
        puts[_COUNT] = str(count).encode()
        self.store.write(puts, deletes)

    def best_match(self, key: SmartKey, sent_at: datetime | None) -> str | None:
        """The activity id of the tracked email `key` matches, or None.

        Only tracked emails sent within the window before `sent_at` count (any,
        when the email has no date). Among several, the most recent wins; a tie
        goes to the smallest activity id.
        """
        window = timedelta(days=self.config.window_days)
        found = [
            (entry.sent_at, activity_id)
            for activity_id in self._candidates(key)
            if (entry := self._entry(activity_id)) is not None
            and (sent_at is None or sent_at - window <= entry.sent_at <= sent_at)
            and matches(key, entry.key, self.config)
        ]
        if not found:
            return None
        latest = max(when for when, _ in found)
        return min(activity_id for when, activity_id in found if when == latest)

    def prune(self, before: datetime) -> int:
        """Forget tracked emails sent before `before` (outside every future window)."""
        old = [
            last_part(store_key)
            for store_key, raw in self.store.scan(make_key("smart", "e"))
            if _ENTRY.decode(raw).sent_at < before
        ]
        for activity_id in old:
            self.remove(activity_id)
        return len(old)

    def _entry(self, activity_id: str) -> _Entry | None:
        raw = self.store.get(make_key("smart", "e", activity_id))
        return _ENTRY.decode(raw) if raw is not None else None

    def _removal(self, activity_id: str) -> tuple[dict[bytes, bytes], list[bytes], int]:
        """The writes that forget `activity_id`, and the entry count after them."""
        count = len(self)
        puts: dict[bytes, bytes] = {}
        entry = self._entry(activity_id)
        if entry is None:
            return puts, [], count
        deletes = [
            make_key("smart", "e", activity_id),
            make_key("smart", "s", entry.key.signature, activity_id),
        ]
        for digest in entry.subject:
            deletes.append(make_key("smart", "h", digest, activity_id))
            if self.store.get(make_key("smart", "n", digest)) is not None:
                _add_count(puts, self.store, make_key("smart", "n", digest), -1)
        return puts, deletes, count - 1

    def _candidates(self, key: SmartKey) -> set[str]:
        if not key.subject:
            return set()
        delta = self.config.subject_delta
        if not delta:
            return self._posting(make_key("smart", "s", key.signature))
        # A match lacks at most `delta` of the email's hashes and shares at least one,
        # so it is in one of any delta + 1 posting lists (or of all, if fewer).
        rarest = sorted(key.subject, key=self._posting_size)[: delta + 1]
        found: set[str] = set()
        for digest in rarest:
            found |= self._posting(make_key("smart", "h", digest))
        return found

    def _posting_size(self, digest: str) -> int:
        return int(self.store.get(make_key("smart", "n", digest)) or 0)

    def _posting(self, prefix: bytes) -> set[str]:
        return {last_part(store_key) for store_key, _ in self.store.scan(prefix)}


def _add_count(puts: dict[bytes, bytes], store: IndexStore, count_key: bytes, delta: int) -> None:
    current = int(puts.get(count_key) or store.get(count_key) or 0) + delta
    puts[count_key] = str(max(current, 0)).encode()


def _hash(kind: str, text: str) -> str:
    return hashlib.blake2b(f"{kind}:{text}".encode(), digest_size=8).hexdigest()


@lru_cache(maxsize=8)
def _prefix_filter(expression: str) -> re.Pattern[str]:
    return re.compile(expression)
