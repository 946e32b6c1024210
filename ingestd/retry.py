"""Exponential backoff with jitter for transient failures."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from ingestd.settings import Settings, field_default


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt n+1: about base * 2**n plus up to half a second, capped."""

    base_s: float = field_default(Settings, "retry_base_s")
    cap_s: float = field_default(Settings, "retry_cap_s")
    jitter_s: float = 0.5

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th failure (0-based)."""
        jitter = random.uniform(0, self.jitter_s)  # noqa: S311 - jitter, not crypto
        exponent = min(attempt, 32)  # 2**32 s is past any cap; larger would overflow a float
        return min(self.cap_s, self.base_s * 2.0**exponent) + jitter

    async def sleep(self, seconds: float) -> None:
        """Wait (tests may shorten the base to keep runs quick)."""
        await asyncio.sleep(seconds)
