"""A canary guard trip: what was judged, why it tripped, and what the guard did about it.

One :class:`GuardTrip` is built per trip and handed, unchanged, to every listener: the
application's callbacks and the rules' webhook (as :meth:`GuardTrip.to_json`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

__all__ = ["GuardTrip"]


@dataclasses.dataclass(frozen=True, slots=True)
class GuardTrip:
    """One trip of a service's canary guard, as judged inside one client process."""

    service: str
    canary: str  # the canary subset
    baseline: str  # the baseline subset
    reason: str  # "errors" | "latency" | "manual" (tests / API)
    summary: str  # one human line of evidence
    evidence: Mapping[str, float | int | str | None]
    revision: str  # the rules revision that was judged
    versions: tuple[str, ...]  # versions of the canary's instances
    at: float  # time.time() of the trip
    process: str  # "hostname:pid"
    action: str  # "shed" | "rollback"

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-able dict: every field (``versions`` as a list, ``evidence`` copied), and
        ``at`` also as RFC 3339 UTC ``at_iso``. Non-finite floats (NaN, ±inf) become ``None``:
        strict JSON has no spelling for them."""
        return {
            "service": self.service,
            "canary": self.canary,
            "baseline": self.baseline,
            "reason": self.reason,
            "summary": self.summary,
            "evidence": {str(key): _finite(value) for key, value in self.evidence.items()},
            "revision": self.revision,
            "versions": list(self.versions),
            "at": _finite(self.at),
            "at_iso": _rfc3339(self.at),
            "process": self.process,
            "action": self.action,
        }


def _finite(value: float | int | str | None) -> float | int | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _rfc3339(at: float) -> str | None:
    """``2024-05-01T12:34:56.789Z`` (UTC, milliseconds); ``None`` for a time that is no time."""
    try:
        moment = datetime.fromtimestamp(at, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
