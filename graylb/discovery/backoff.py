"""Small strategy objects for registry loops (after tenacity's composable ``stop``/``wait``)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

__all__ = ["ExponentialJitter", "TokenBucket"]


class ExponentialJitter:
    """Delay before retry ``n`` (1-based): uniform in [0, min(cap, base * 2**(n-1))] — "full
    jitter", so a fleet that lost its registry at the same moment does not retry in lockstep.
    Never less than ``floor``."""

    def __init__(self, base: float = 0.2, cap: float = 15.0, floor: float = 0.05) -> None:
        self.base, self.cap, self.floor = base, cap, floor

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        return max(self.floor, random.uniform(0, ceiling))


class TokenBucket:
    """Rate limit for a query loop: ``rate`` tokens a second, ``burst`` at most.

    Consul's docs ask clients to rate-limit blocking-query loops so a flapping service cannot
    turn every client into a busy loop; a burst keeps the first few changes instant. A query
    returns early only on a change, so 10 a second only ever slows a service that changes
    faster than that.
    """

    def __init__(self, rate: float = 10.0, burst: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()

    def wait_time(self) -> float:
        """Take a token; returns how long to wait first (0 when one was available)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        need = (1 - self._tokens) / self.rate
        self._tokens -= 1
        return need
