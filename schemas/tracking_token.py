"""Tracking tokens in email subjects (Dynamics' `CRM:0001001`): how one is made, found
and put into a subject. Pure functions over a CorrelationConfig, shared by the
processors (which correlate by token) and the outgoing sender (which inserts one).

A token is PREFIX:<base number><user number><counter>, the user number and the
counter zero-padded to the configured digit counts.
"""

from __future__ import annotations

import re
from functools import lru_cache

from schemas.config import CorrelationConfig


def make_token(config: CorrelationConfig, user_number: int, counter: int) -> str:
    """A tracking token for a user's n-th email: PREFIX:<base><user><counter>."""
    user = str(user_number).zfill(config.token_user_digits)
    count = str(counter).zfill(config.token_counter_digits)
    return f"{config.token_prefix.upper()}:{config.token_base_number}{user}{count}"


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


def subject_with_token(subject: str, token: str, config: CorrelationConfig) -> str:
    """`subject` with `token` appended (Dynamics puts it at the end), unless the subject
    already carries a token of this deployment (a reply keeps the one it has)."""
    if find_tokens(subject, config):
        return subject
    subject = subject.rstrip()
    return f"{subject} {token}" if subject else token
