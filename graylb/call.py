"""One routed call: hands out an instance per attempt and takes each attempt's outcome.

Transports (httpx sync and async, grpc) share this, so retries, outlier reports and the
"served by" record behave the same everywhere; the transports only translate their own errors
into the failure kinds below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import NoInstanceAvailable
from .instance import Instance
from .picking.pickers import NO_PICK_INFO, PickInfo
from .routing.request import RequestInfo
from .routing.router import Decision, ServiceState

if TYPE_CHECKING:
    from .balancer import Balancer, _Service

__all__ = ["Call", "Served", "CONNECT_FAILURE", "RESET", "TIMEOUT", "IDEMPOTENT_METHODS"]

CONNECT_FAILURE = "connect-failure"  # nothing was sent: safe to retry for any method
RESET = "reset"  # the connection broke after (part of) the request was sent
TIMEOUT = "timeout"

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Served:
    """Which route, subset and instance served a call: ``response.extensions["graylb"]``.

    ``instance`` is the instance id, ``address`` its ``host:port``; ``attempts`` counts tries
    (1 = no retry); ``fallback_from`` names the empty subset when the fallback policy applied.
    A slotted class, not a frozen dataclass: one is built per call.
    """

    __slots__ = ("service", "route", "subset", "instance", "address", "version", "lane", "attempts", "fallback_from")

    def __init__(self, service: str, route: str, subset: str, instance: str, address: str, version: str | None, lane: str | None, attempts: int, fallback_from: str | None = None) -> None:
        self.service = service
        self.route = route
        self.subset = subset
        self.instance = instance
        self.address = address
        self.version = version
        self.lane = lane
        self.attempts = attempts
        self.fallback_from = fallback_from

    def _fields(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Served) and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "Served(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


class Call:
    """The attempts of one call. Not shared between threads (one per call)."""

    __slots__ = ("balancer", "entry", "state", "decision", "request", "tried", "attempts")

    def __init__(self, balancer: Balancer, entry: _Service, state: ServiceState, decision: Decision, request: RequestInfo) -> None:
        self.balancer = balancer
        self.entry = entry
        self.state = state
        self.decision = decision
        self.request = request
        self.tried: list[str] = []
        self.attempts = 0

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
        self.balancer.stats.begin(inst.id)
        return inst

    def can_retry(self, kind: str | int, method: str, replayable: bool = True) -> bool:
        """Whether the failure ``kind`` (a kind constant, or an HTTP status) may be retried."""
        policy = self.state.retries
        if self.attempts > policy.attempts:
            return False
        if kind == CONNECT_FAILURE:
            return policy.on_connect_failure
        if not replayable or (policy.idempotent_only and method not in IDEMPOTENT_METHODS):
            return False
        if kind == RESET:
            return policy.on_reset
        if kind == TIMEOUT:
            return policy.on_timeout
        return kind in policy.statuses

    def done(self, instance: Instance, ok: bool) -> None:
        """Report the attempt on ``instance``: ``ok=False`` for connect errors, resets and 5xx
        (they feed outlier detection)."""
        self.balancer.stats.end(instance.id)
        self.balancer._record(self.entry, instance.id, ok)

    def served(self, instance: Instance) -> Served:
        d = self.decision
        return Served(
            service=d.service,
            route=d.route,
            subset=d.subset,
            instance=instance.id,
            address=instance.address,
            version=instance.version,
            lane=instance.lane,
            attempts=self.attempts,
            fallback_from=d.fallback_from,
        )
