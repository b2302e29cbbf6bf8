"""One routed call: hands out an instance per attempt and takes each attempt's outcome.

Transports (httpx sync and async, grpc) share this, so retries, outlier reports and the
"served by" record behave the same everywhere; the transports only translate their own errors
into the failure kinds below.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import NoInstanceAvailable
from .instance import Instance
from .picking.pickers import NO_PICK_INFO, LoadStats, PickInfo
from .routing.request import RequestInfo
from .routing.router import Decision, ServiceState
from .served import Served

__all__ = [
    "Call",
    "Report",
    "Served",
    "CONNECT_FAILURE",
    "CONNECT_REFUSED",
    "DRAINING",
    "LEAVING",
    "RESET",
    "TIMEOUT",
    "IDEMPOTENT_METHODS",
]

CONNECT_FAILURE = "connect-failure"  # nothing was sent: safe to retry for any method
RESET = "reset"  # the connection broke after (part of) the request was sent
TIMEOUT = "timeout"
#: Connection refused: nothing listens there any more (a stopped or stopping instance). Nothing
#: was sent, so it is retried like a connect failure, and the instance is taken out of this
#: caller's picks at once.
CONNECT_REFUSED = "connect-refused"
#: The instance is draining and refused the request without processing it (a 503 carrying
#: :data:`graylb.drain.DRAIN_HEADER`, a gRPC UNAVAILABLE with that trailing metadata): safe to
#: resend elsewhere whatever the method; the instance is taken out of picks at once.
DRAINING = "draining"
#: Outcomes that say the instance is leaving (see :meth:`OutlierDetector.record_leaving`).
LEAVING = frozenset({CONNECT_REFUSED, DRAINING})

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


#: ``report(instance_id, ok, outcome, seconds)``: where a Call sends each attempt's outcome (the
#: balancer's outlier detection and canary guard for the service). ``outcome`` is what happened
#: -- a failure kind below, an HTTP status, a gRPC status code name, or None when the transport
#: says nothing more than ``ok`` -- and ``seconds`` how long the attempt took. Handed in, so the
#: call path never reaches back into the balancer that made it.
Report = Callable[[str, bool, "str | int | None", float], None]


class Call:
    """The attempts of one call. Not shared between threads (one per call).

    ``stats`` counts in-flight attempts per instance (the least-request picker reads it);
    ``report`` takes each attempt's outcome; ``in_lane`` says the call's gray context carried
    a lane (a telemetry attribute: lane traffic or not, whichever instance served it)."""

    __slots__ = ("stats", "report", "state", "decision", "request", "tried", "attempts", "in_lane", "started")

    def __init__(
        self,
        stats: LoadStats,
        report: Report,
        state: ServiceState,
        decision: Decision,
        request: RequestInfo,
        in_lane: bool = False,
    ) -> None:
        self.stats = stats
        self.report = report
        self.state = state
        self.decision = decision
        self.request = request
        self.in_lane = in_lane
        self.tried: list[str] = []
        self.attempts = 0
        self.started = 0.0  # when the current attempt's instance was handed out

    def next_instance(self) -> Instance:
        """The instance for the next attempt: a different one from those already tried while
        the chosen subset (or, for retries, the fallback subsets) has one."""
        d = self.decision
        if not self.tried:
            inst = d.picker.pick(PickInfo(hash_key=d.hash_key) if d.hash_key is not None else NO_PICK_INFO)
        else:
            info = PickInfo(hash_key=d.hash_key, exclude=frozenset(self.tried))
            inst = d.picker.pick(info)
            if inst is None and self.state.fallback != "fail" and d.route not in ("pin", "lane"):
                for picker in (self.state.default, self.state.any_picker):
                    inst = picker.pick(info)
                    if inst is not None:
                        break
            if inst is None:  # nothing else left: the same instance again beats failing now
                inst = d.picker.pick(NO_PICK_INFO)
        if inst is None:
            raise NoInstanceAvailable(d.service, d.subset, "every instance of the subset was excluded")
        self.tried.append(inst.id)
        self.attempts += 1
        self.stats.begin(inst.id)
        self.started = time.perf_counter()
        return inst

    def can_retry(self, kind: str | int, method: str, replayable: bool = True) -> bool:
        """Whether the failure ``kind`` (a kind constant, or an HTTP status) may be retried."""
        policy = self.state.retries
        if self.attempts > policy.attempts:
            return False
        if kind in (CONNECT_FAILURE, CONNECT_REFUSED):
            return policy.on_connect_failure
        if kind == DRAINING:  # refused unprocessed: any method, if the body can be sent again
            return replayable
        if not replayable or (policy.idempotent_only and method not in IDEMPOTENT_METHODS):
            return False
        if kind == RESET:
            return policy.on_reset
        if kind == TIMEOUT:
            return policy.on_timeout
        return kind in policy.statuses

    def done(self, instance: Instance, ok: bool, outcome: str | int | None = None) -> None:
        """Report the attempt on ``instance``: ``ok=False`` for connect errors, resets and 5xx
        (they feed outlier detection); ``outcome`` says which (see :data:`Report`)."""
        self.stats.end(instance.id)
        self.report(instance.id, ok, outcome, time.perf_counter() - self.started)

    def served(self, instance: Instance) -> Served:
        d = self.decision
        # positional: one is built per call, and keywords cost a third more
        return Served(
            d.service,
            d.route,
            d.subset,
            instance.id,
            instance.address,
            instance.version,
            instance.lane,
            self.attempts,
            d.fallback_from,
        )
