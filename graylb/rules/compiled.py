"""Rules after compilation: plain frozen structures the router reads on every call.

Produced by :func:`graylb.rules.compile.compile_rules` from the validated pydantic model; nothing
here validates or allocates per call.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

from ..instance import Instance
from ..propagation.context import GrayContext
from ..routing import header_names
from ..routing.request import RequestInfo
from ..versioning import VersionSelector

__all__ = [
    "Matcher",
    "SubsetSpec",
    "WeightedTarget",
    "HashKey",
    "CompiledRoute",
    "RetryPolicy",
    "OutlierPolicy",
    "CompiledService",
    "CompiledRules",
    "DEFAULT_RETRY",
    "NO_RULES",
]

#: ``matcher(request, gray_context) -> bool``; compiled from a route's ``match`` list.
Matcher = Callable[[RequestInfo, GrayContext], bool]

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})  # one shared empty mapping, for any value type


@dataclasses.dataclass(frozen=True, slots=True)
class SubsetSpec:
    """A named group of instances: version selector and/or exact label values (``lane`` too)."""

    name: str
    version: VersionSelector | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY)

    def matches(self, instance: Instance) -> bool:
        if self.version is not None and not self.version.matches(instance.version, instance.semver):
            return False
        for key, want in self.labels.items():
            if instance.label(key) != want:
                return False
        return True

    def describe(self) -> str:
        """``{version: ^2, zone: a}``: the selector as a rules document would write it."""
        parts = ([f"version: {self.version.text}"] if self.version is not None else []) + [
            f"{k}: {v}" for k, v in self.labels.items()
        ]
        return "{" + ", ".join(parts) + "}"

    @property
    def selects_lane(self) -> bool:
        """True when the subset asks for a lane explicitly (so lane instances may join it)."""
        return "lane" in self.labels


@dataclasses.dataclass(frozen=True, slots=True)
class WeightedTarget:
    subset: str
    weight: int


@dataclasses.dataclass(frozen=True, slots=True)
class HashKey:
    """Where a sticky / ring-hash key comes from: a header, a query parameter or a gray value."""

    header: str | None = None  # lower-case
    query: str | None = None
    context: str | None = None

    def __post_init__(self) -> None:
        if self.header is not None:
            header_names.declare(self.header)

    def extract(self, request: RequestInfo, ctx: GrayContext) -> str | None:
        if self.header is not None:
            return request._get_header(self.header)  # RequestInfo.header without its own call
        if self.query is not None:
            return request.query(self.query)
        if self.context is not None:
            return ctx.value(self.context)
        return None

    def describe(self) -> str:
        if self.header is not None:
            return f"header {self.header}"
        if self.query is not None:
            return f"query {self.query}"
        return f"context {self.context}"


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    match: Matcher | None  # None: matches every call
    to: tuple[WeightedTarget, ...]
    sticky: HashKey | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` retries after the first try. ``on`` holds ``connect-failure``, ``reset``,
    ``timeout`` and/or HTTP status codes. Connect failures are retried for every method (the
    request never left); the rest only for idempotent methods unless ``idempotent_only`` is off."""

    attempts: int = 2
    on_connect_failure: bool = True
    on_reset: bool = True
    on_timeout: bool = False
    statuses: frozenset[int] = frozenset()
    idempotent_only: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_errors: int = 5
    base_ejection_time: float = 30.0  # seconds
    max_ejection_percent: int = 50


#: gRPC status codes a guard counts as the server's failure by default (the ones that say the
#: instance could not do its job; INVALID_ARGUMENT, NOT_FOUND ... are the caller's, like 4xx).
GUARD_GRPC_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED", "DATA_LOSS"})


@dataclasses.dataclass(frozen=True, slots=True)
class GuardErrors:
    """When the canary's error ratio counts as worse than the baseline's: worse by more than
    ``margin`` (absolute, 0.01 = one percentage point) at one-sided ``confidence`` -- per window
    of continuous judging: ``1 - confidence`` is the chance that a canary exactly as good as its
    baseline trips during one window (see :mod:`graylb.guard.stats`). What an error is: connect
    failures / resets / timeouts (flags), HTTP ``statuses``, gRPC ``grpc_codes`` (names); 4xx
    are not errors unless listed."""

    confidence: float = 0.999
    margin: float = 0.0
    connect_failure: bool = True
    reset: bool = True
    timeout: bool = True
    statuses: frozenset[int] = frozenset(range(500, 600))
    grpc_codes: frozenset[str] = GUARD_GRPC_CODES


@dataclasses.dataclass(frozen=True, slots=True)
class GuardLatency:
    """When the canary counts as slower: its p99 (and/or p50) above the baseline's by
    ``p99_ratio`` (``p50_ratio``; None = not judged) and by at least ``min_delta`` seconds, with
    ``min_requests`` answered attempts on each side in the window."""

    p99_ratio: float | None = 2.0
    p50_ratio: float | None = None
    min_delta: float = 0.025
    min_requests: int = 200
    confidence: float = 0.999  # per window, as for errors


@dataclasses.dataclass(frozen=True, slots=True)
class GuardWebhook:
    url: str
    timeout: float = 2.0
    retries: int = 3


@dataclasses.dataclass(frozen=True, slots=True)
class GuardPolicy:
    """A service's canary guard: judge attempts on ``canary``'s instances against those on
    ``baseline``'s over a sliding ``window`` (seconds), once each side has ``min_requests``; trip
    on ``errors`` and/or ``latency``. On a trip: weighted routes stop choosing ``canary``
    (``testers``: ``keep`` -- routes with a match and version pins still reach it -- or ``shed``);
    ``action`` ``rollback`` also writes the rollback to the rule store. ``reset``: any text;
    changing it (``graylb guard reset``) clears a trip, like any change of the document."""

    canary: str
    baseline: str
    window: float = 30.0
    min_requests: int = 50
    errors: GuardErrors | None = dataclasses.field(default_factory=GuardErrors)
    latency: GuardLatency | None = None
    testers: str = "keep"  # keep | shed
    action: str = "shed"  # shed | rollback
    webhook: GuardWebhook | None = None
    reset: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class WarmUpPolicy:
    window: float = 30.0  # seconds from first sight to full weight
    min_share: float = 0.1  # the share of its weight an instance starts with

    def share(self, age: float) -> float:
        """The share of its weight an instance seen ``age`` seconds ago gets (1.0: warm)."""
        if age >= self.window:
            return 1.0
        return max(self.min_share, max(0.0, age) / self.window)


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledService:
    name: str
    subsets: Mapping[str, SubsetSpec] = dataclasses.field(default_factory=lambda: _EMPTY)
    default: str | None = None  # None: every instance outside a lane
    routes: tuple[CompiledRoute, ...] = ()
    fallback: str = "default"  # default | any | fail
    load_balancer: str = "weighted_random"  # weighted_random | round_robin | least_request | ring_hash
    hash_key: HashKey | None = None  # ring_hash key
    retries: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    outlier: OutlierPolicy | None = None
    guard: GuardPolicy | None = None
    warmup: WarmUpPolicy | None = None
    digest: str = ""  # a hash of this service's part of the document: a tripped guard resets when it changes


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledRules:
    services: Mapping[str, CompiledService] = dataclasses.field(default_factory=lambda: _EMPTY)
    revision: str = ""  # e.g. a content hash or registry index, for logs and `explain`
    source: str = ""

    def service(self, name: str) -> CompiledService | None:
        return self.services.get(name)


DEFAULT_RETRY = RetryPolicy()
NO_RULES = CompiledRules()
