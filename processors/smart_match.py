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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

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


@dataclass
class _Entry:
    key: SmartKey
    sent_at: datetime


@dataclass
class SmartIndex:
    """Tracked emails by smart key, for `best_match`. Not thread-safe; one per processor."""

    config: SmartMatchingConfig
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _by_signature: dict[str, set[str]] = field(default_factory=dict)
    _by_hash: dict[str, set[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, activity_id: str, key: SmartKey, sent_at: datetime) -> None:
        """Index (or re-index) one tracked email."""
        self.remove(activity_id)
        if not key.subject:
            return
        self._entries[activity_id] = _Entry(key, sent_at)
        self._by_signature.setdefault(key.signature, set()).add(activity_id)
        if self.config.subject_delta:
            for digest in key.subject:
                self._by_hash.setdefault(digest, set()).add(activity_id)

    def remove(self, activity_id: str) -> None:
        """Forget one tracked email (no error when unknown)."""
        entry = self._entries.pop(activity_id, None)
        if entry is None:
            return
        _discard(self._by_signature, entry.key.signature, activity_id)
        for digest in entry.key.subject:
            _discard(self._by_hash, digest, activity_id)

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
            if (entry := self._entries[activity_id])
            and (sent_at is None or sent_at - window <= entry.sent_at <= sent_at)
            and matches(key, entry.key, self.config)
        ]
        if not found:
            return None
        latest = max(when for when, _ in found)
        return min(activity_id for when, activity_id in found if when == latest)

    def prune(self, before: datetime) -> int:
        """Forget tracked emails sent before `before` (outside every future window)."""
        old = [a for a, e in self._entries.items() if e.sent_at < before]
        for activity_id in old:
            self.remove(activity_id)
        return len(old)

    def _candidates(self, key: SmartKey) -> set[str]:
        if not key.subject:
            return set()
        delta = self.config.subject_delta
        if not delta:
            return set(self._by_signature.get(key.signature, ()))
        # A match lacks at most `delta` of the email's hashes and shares at least one,
        # so it is in one of any delta + 1 posting lists (or of all, if fewer).
        postings = sorted((self._by_hash.get(d, set()) for d in key.subject), key=len)
        found: set[str] = set()
        for posting in postings[: delta + 1]:
            found |= posting
        return found


def _discard(index: dict[str, set[str]], key: str, activity_id: str) -> None:
    holders = index.get(key)
    if holders is not None:
        holders.discard(activity_id)
        if not holders:
            del index[key]


def _hash(kind: str, text: str) -> str:
    return hashlib.blake2b(f"{kind}:{text}".encode(), digest_size=8).hexdigest()


@lru_cache(maxsize=8)
def _prefix_filter(expression: str) -> re.Pattern[str]:
    return re.compile(expression)
