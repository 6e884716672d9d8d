"""Correlation: link an email to the tracked activity it continues.

Methods are tried in Dynamics' order, each switchable: In-Reply-To (then
References, newest first), then tracking token in the subject. Pure functions
over lookups; the first hit wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from processors.directory import TrackedRef
from schemas.config import CorrelationConfig
from schemas.crm import CorrelationMethod
from schemas.mail import ParsedEmail

Lookup = Callable[[str], TrackedRef | None]


@dataclass(frozen=True)
class Correlation:
    """The activity an email continues, how it was found, and the id or token that matched.

    `rank` orders competing correlations: lower is better (the direct
    In-Reply-To parent beats an older References entry, which beats a token).
    """

    method: CorrelationMethod
    target: TrackedRef
    matched: str
    rank: int


def correlate(
    email: ParsedEmail, by_message_id: Lookup, by_token: Lookup, config: CorrelationConfig
) -> Correlation | None:
    """The best correlation of `email`, or None when nothing tracked matches."""
    if config.in_reply_to:
        for rank, message_id in enumerate(reply_chain(email)):
            target = by_message_id(message_id)
            if target is not None and target.message_id != email.message_id:
                return Correlation(CorrelationMethod.IN_REPLY_TO, target, message_id, rank)
    if config.tracking_token:
        for token in find_tokens(email.subject, config):
            target = by_token(token)
            if target is not None and target.message_id != email.message_id:
                return Correlation(CorrelationMethod.TRACKING_TOKEN, target, token, 1000)
    return None


def reply_chain(email: ParsedEmail) -> list[str]:
    """Message-IDs an email answers, best first: In-Reply-To, then References newest first."""
    chain: list[str] = []
    if email.in_reply_to:
        chain.append(email.in_reply_to)
    for message_id in reversed(email.references):
        if message_id not in chain:
            chain.append(message_id)
    return chain


def find_tokens(subject: str, config: CorrelationConfig) -> list[str]:
    """Tracking tokens in a subject, normalized to `PREFIX:DIGITS`, in order of appearance.

    Tolerates the forms mail clients produce: `CRM:0001001`, `[CRM:0001001]`,
    `(crm: 0001001)`. Tokens of earlier prefixes are found too.
    """
    prefixes = (config.token_prefix, *config.earlier_token_prefixes)
    min_digits = 1 + config.token_user_digits + config.token_counter_digits
    pattern = _token_pattern(tuple(p for p in prefixes if p), min_digits)
    return [f"{m.group(1).upper()}:{m.group(2)}" for m in pattern.finditer(subject)]


@lru_cache(maxsize=32)
def _token_pattern(prefixes: tuple[str, ...], min_digits: int) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
    return re.compile(
        rf"(?<![A-Za-z0-9])({alternatives})\s*:\s*(\d{{{min_digits},}})(?!\d)", re.IGNORECASE
    )


def make_token(config: CorrelationConfig, user_number: int, counter: int) -> str:
    """A tracking token for a user's n-th email: PREFIX:<base><user><counter>."""
    user = str(user_number).zfill(config.token_user_digits)
    count = str(counter).zfill(config.token_counter_digits)
    return f"{config.token_prefix.upper()}:{config.token_base_number}{user}{count}"
