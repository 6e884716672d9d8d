"""Correlation: link an email to the tracked activity it continues.

Methods are tried in Dynamics' order, each switchable: In-Reply-To (then
References, newest first), tracking token in the subject, conversation index
(the `Thread-Index` header: the same index, else the nearest tracked one it
extends), and smart matching (subject and address hashes, off by default).
Pure functions over lookups; the first hit wins.

`rank` orders what a message correlated to across re-decisions (lower is
better): reply-chain position, then token, then conversation-index distance,
then smart matching.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from processors.conversation_index import parse_thread_index
from processors.directory import TrackedRef
from processors.smart_match import SmartKey, smart_key
from schemas.config import CorrelationConfig
from schemas.crm import CorrelationMethod
from schemas.mail import ParsedEmail
from schemas.tracking_token import find_tokens, make_token

__all__ = [
    "CONVERSATION_INDEX_RANK",
    "SMART_MATCHING_RANK",
    "TOKEN_RANK",
    "Correlation",
    "Lookup",
    "SmartLookup",
    "correlate",
    "find_tokens",
    "make_token",
    "reply_chain",
]

Lookup = Callable[[str], TrackedRef | None]
SmartLookup = Callable[[SmartKey, datetime | None], TrackedRef | None]

TOKEN_RANK = 1000
CONVERSATION_INDEX_RANK = 2000
SMART_MATCHING_RANK = 3000


class Correlation(msgspec.Struct, frozen=True):
    """The activity an email continues, how it was found, and the id or token that matched.

    `rank` orders competing correlations: lower is better (the direct
    In-Reply-To parent beats an older References entry, which beats a token).
    """

    method: CorrelationMethod
    target: TrackedRef
    matched: str
    rank: int


def correlate(
    email: ParsedEmail,
    by_message_id: Lookup,
    by_token: Lookup,
    config: CorrelationConfig,
    *,
    by_conversation_index: Lookup | None = None,
    by_smart_key: SmartLookup | None = None,
) -> Correlation | None:
    """The best correlation of `email`, or None when nothing tracked matches.

    A method without its lookup finds nothing; an email never correlates to itself.
    """
    found = None
    if config.in_reply_to:
        found = _by_reply_chain(email, by_message_id)
    if found is None and config.tracking_token:
        found = _by_token(email, by_token, config)
    if found is None and config.conversation_index and by_conversation_index is not None:
        found = _by_conversation_index(email, by_conversation_index)
    if found is None and config.smart_matching and by_smart_key is not None:
        found = _by_smart_matching(email, by_smart_key, config)
    return found


def _by_reply_chain(email: ParsedEmail, lookup: Lookup) -> Correlation | None:
    for rank, message_id in enumerate(reply_chain(email)):
        target = lookup(message_id)
        if target is not None and target.message_id != email.message_id:
            return Correlation(CorrelationMethod.IN_REPLY_TO, target, message_id, rank)
    return None


def _by_token(email: ParsedEmail, lookup: Lookup, config: CorrelationConfig) -> Correlation | None:
    for token in find_tokens(email.subject, config):
        target = lookup(token)
        if target is not None and target.message_id != email.message_id:
            return Correlation(CorrelationMethod.TRACKING_TOKEN, target, token, TOKEN_RANK)
    return None


def _by_conversation_index(email: ParsedEmail, lookup: Lookup) -> Correlation | None:
    """The tracked email with the same conversation index, else the nearest ancestor."""
    index = parse_thread_index(email.thread_index)
    if index is None:
        return None
    for distance, key in enumerate([index.key, *index.ancestor_keys()]):
        target = lookup(key)
        if target is not None and target.message_id != email.message_id:
            rank = CONVERSATION_INDEX_RANK + distance
            return Correlation(CorrelationMethod.CONVERSATION_INDEX, target, key, rank)
    return None


def _by_smart_matching(
    email: ParsedEmail, lookup: SmartLookup, config: CorrelationConfig
) -> Correlation | None:
    addresses = [a.address for a in (email.sender, *email.recipients()) if a is not None]
    target = lookup(smart_key(email.subject, addresses, config.smart), email.sent_at)
    if target is None or target.message_id == email.message_id:
        return None
    return Correlation(CorrelationMethod.SMART_MATCHING, target, email.subject, SMART_MATCHING_RANK)


def reply_chain(email: ParsedEmail) -> list[str]:
    """Message-IDs an email answers, best first: In-Reply-To, then References newest first."""
    chain: list[str] = []
    if email.in_reply_to:
        chain.append(email.in_reply_to)
    for message_id in reversed(email.references):
        if message_id not in chain:
            chain.append(message_id)
    return chain
