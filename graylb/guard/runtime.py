"""One service's canary guard in one process: takes every attempt's outcome, judges the canary
against its baseline over a sliding window, and trips -- once, until the service's rules change
or someone resets it.

Contract (the balancer's side): :meth:`CanaryGuard.record` is called after each attempt on the
service, from whatever thread ran it; it returns the :class:`GuardTrip` exactly once, to the one
caller whose outcome tripped the guard, and the balancer then sheds the canary and tells
people. Recording takes the guard's own lock (briefly: a few list updates; judging runs at most
every :data:`JUDGE_EVERY` seconds); routing never takes it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..call import CONNECT_FAILURE, RESET, TIMEOUT
from ..rules.compiled import GuardPolicy
from .stats import SideTotals, Verdict, Window, judge
from .trip import GuardTrip

__all__ = ["CanaryGuard", "GuardView", "JUDGE_EVERY"]

#: Seconds between two judgements (of the whole window): fast enough to trip within a second of
#: the evidence being there, rare enough that judging costs nothing next to the calls.
JUDGE_EVERY = 0.1

_PROCESS = f"{socket.gethostname()}:{os.getpid()}"


class GuardView:
    """What ``status`` shows: the window's counts per side, the last verdict, the trip if any."""

    __slots__ = ("service", "policy", "canary", "baseline", "verdict", "trip")

    def __init__(
        self,
        service: str,
        policy: GuardPolicy,
        canary: SideTotals,
        baseline: SideTotals,
        verdict: Verdict | None,
        trip: GuardTrip | None,
    ) -> None:
        self.service = service
        self.policy = policy
        self.canary = canary
        self.baseline = baseline
        self.verdict = verdict
        self.trip = trip

    def lines(self) -> list[str]:
        p = self.policy
        state = f"TRIPPED ({self.trip.reason}: {self.trip.summary})" if self.trip else "watching"
        out = [f"guard: canary '{p.canary}' vs baseline '{p.baseline}' over {p.window:g}s: {state}"]
        for name, side in (("canary", self.canary), ("baseline", self.baseline)):
            ratio = side.error_ratio
            p50, p99 = side.quantile(0.5), side.quantile(0.99)
            out.append(
                f"  {name:<8} {side.requests} requests, {side.errors} errors"
                + (f" ({ratio:.2%})" if ratio is not None else "")
                + (f", p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms" if p50 is not None and p99 is not None else "")
            )
        if self.verdict is not None and not self.trip:
            out.append(f"  last verdict: {self.verdict.summary()}")
        return out


class CanaryGuard:
    """The guard of ``service`` under ``policy``, for the service rules with ``digest``."""

    def __init__(
        self, service: str, policy: GuardPolicy, digest: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.service = service
        self.policy = policy
        self.digest = digest
        self.trip: GuardTrip | None = None
        self.canary_ids: frozenset[str] = frozenset()
        self.baseline_ids: frozenset[str] = frozenset()
        self.canary_versions: tuple[str, ...] = ()
        self.revision = ""
        self._clock = clock
        self._lock = threading.Lock()
        self._window = Window(policy.window)
        self._next_judge = 0.0
        self._verdict: Verdict | None = None

    def set_members(self, canary: frozenset[str], baseline: frozenset[str], versions: tuple[str, ...]) -> None:
        """Which instance ids are on which side (from each new routing state)."""
        self.canary_ids, self.baseline_ids, self.canary_versions = canary, baseline, versions

    def is_error(self, ok: bool, outcome: str | int | None) -> bool:
        errors = self.policy.errors
        if errors is None or outcome is None:
            return not ok
        if isinstance(outcome, int):
            return outcome in errors.statuses
        if outcome == CONNECT_FAILURE:
            return errors.connect_failure
        if outcome == RESET:
            return errors.reset
        if outcome == TIMEOUT:
            return errors.timeout
        return outcome in errors.grpc_codes

    def record(self, instance_id: str, ok: bool, outcome: str | int | None, seconds: float) -> GuardTrip | None:
        """Count one attempt; the trip, to the one caller whose attempt tripped the guard."""
        if instance_id in self.canary_ids:
            canary = True
        elif instance_id in self.baseline_ids:
            canary = False
        else:
            return None  # neither side (a lane, another subset): not the guard's business
        error = self.is_error(ok, outcome)
        now = self._clock()
        with self._lock:
            self._window.add(canary, error, seconds, now)
            if self.trip is not None or now < self._next_judge:
                return None
            self._next_judge = now + JUDGE_EVERY
            verdict = self._verdict = judge(*self._window.totals(now), self.policy)
            if not verdict.trip:
                return None
            self.trip = self._make_trip(verdict.reason, verdict.summary(), dict(verdict.evidence))
            return self.trip

    def trip_now(self, reason: str = "manual", summary: str = "tripped by hand") -> GuardTrip | None:
        """Trip without evidence (an operator, a test); None when already tripped."""
        with self._lock:
            if self.trip is not None:
                return None
            self.trip = self._make_trip(reason, summary, {})
            return self.trip

    def reset(self) -> None:
        """Forget the trip and the window: the canary is judged afresh."""
        with self._lock:
            self.trip = None
            self._window = Window(self.policy.window)
            self._verdict = None
            self._next_judge = 0.0

    def view(self) -> GuardView:
        with self._lock:
            canary, baseline = self._window.totals(self._clock())
            return GuardView(self.service, self.policy, canary, baseline, self._verdict, self.trip)

    def _make_trip(self, reason: str, summary: str, evidence: dict[str, Any]) -> GuardTrip:
        p = self.policy
        return GuardTrip(
            service=self.service,
            canary=p.canary,
            baseline=p.baseline,
            reason=reason,
            summary=summary,
            evidence=evidence,
            revision=self.revision,
            versions=self.canary_versions,
            at=time.time(),
            process=_PROCESS,
            action=p.action,
        )
