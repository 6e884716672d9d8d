"""When to try a failing mailbox again: pure arithmetic over a RetryPolicy.

The first `reconnect_attempts` failures in a row are retried quickly, with
exponentially growing delays and jitter (a server restart or a dropped
connection is over in seconds); after that the mailbox is retried every
`retry_interval_s` (with a little jitter, so mailboxes of one server do not
come back in lockstep) until `max_retries` slow retries failed too, when the
failure is treated as permanent.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from schemas.mailbox import RetryPolicy


def retry_delay(
    failures: int, policy: RetryPolicy, rand: Callable[[], float] = random.random
) -> float | None:
    """Seconds to wait after the `failures`-th consecutive failure; None: give up."""
    if failures < 1:
        return 0.0
    if failures <= policy.reconnect_attempts:
        ceiling = min(policy.reconnect_max_s, policy.reconnect_base_s * 2.0 ** (failures - 1))
        return ceiling / 2 + rand() * ceiling / 2
    if failures > policy.reconnect_attempts + policy.max_retries:
        return None
    return policy.retry_interval_s * (0.9 + 0.2 * rand())


class RetryTracker:
    """Consecutive failures of one mailbox, and the delay the policy gives each."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0

    def failed(self) -> float | None:
        """Count a failure; the delay before the next try, or None to give up."""
        self.failures += 1
        return retry_delay(self.failures, self.policy)

    @property
    def reconnecting(self) -> bool:
        """True while the failures are still in the quick-reconnect phase."""
        return self.failures <= self.policy.reconnect_attempts

    def succeeded(self) -> None:
        """A pass worked: the next failure starts the schedule over."""
        self.failures = 0
