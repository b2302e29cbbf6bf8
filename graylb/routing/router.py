"""Per-service routing state and the per-call routing decision.

A :class:`ServiceState` is rebuilt (off the hot path) whenever the service's snapshot, its
rules or its set of ejected instances changes. It holds one ready picker per subset and the
routes with their live weighted targets, so :func:`route` only runs matchers, draws one number
and indexes into tuples: no I/O, no locks, no validation.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections import Counter
from collections.abc import Collection, Mapping

from ..discovery.base import Snapshot
from ..errors import NoInstanceAvailable
from ..instance import Health, Instance
from ..picking.pickers import LoadStats, Picker, make_picker
from ..propagation.context import GrayContext
from ..rules.compiled import DEFAULT_RETRY, CompiledRoute, CompiledService, HashKey, Matcher, RetryPolicy
from ..versioning import VersionSelector
from .hashing import unit_interval
from .request import RequestInfo

__all__ = ["Decision", "ServiceState", "RouteState", "route", "build_state", "versions_summary", "ALL_SUBSET"]

#: The subset name used when a service has no ``default``: every instance outside a lane.
ALL_SUBSET = "*"

# One row of ServiceState.route_table: (match, route name, live subset names, their pickers,
# cumulative weights, total weight, sticky key).
_RouteRow = tuple[Matcher | None, str, tuple[str, ...], tuple[Picker, ...], tuple[float, ...], float, HashKey | None]


class Decision:
    """Where one call goes: the route that matched, the subset chosen and its candidates.

    ``route`` is a route name, or ``pin`` / ``lane`` / ``lane-default`` / ``default``;
    ``picker`` holds the live candidates; ``hash_key`` is the ring-hash key when the service
    uses one; ``fallback_from`` names the empty subset when the fallback policy applied.
    A plain slotted class rather than a frozen dataclass: one is built per call, and frozen
    dataclasses pay for ``object.__setattr__`` on every field.
    """

    __slots__ = ("service", "route", "subset", "picker", "hash_key", "fallback_from")

    def __init__(
        self,
        service: str,
        route: str,
        subset: str,
        picker: Picker,
        hash_key: str | None = None,
        fallback_from: str | None = None,
    ) -> None:
        self.service = service
        self.route = route
        self.subset = subset
        self.picker = picker
        self.hash_key = hash_key
        self.fallback_from = fallback_from

    def __repr__(self) -> str:
        return (
            f"Decision(service={self.service!r}, route={self.route!r}, subset={self.subset!r}, "
            f"candidates={len(self.picker)})"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RouteState:
    route: CompiledRoute
    names: tuple[str, ...]  # live targets only (subsets with an instance), in rule order
    pickers: tuple[Picker, ...]
    cumulative: tuple[float, ...]  # running weight totals, for bisect
    total: float

    @property
    def name(self) -> str:
        return self.route.name


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceState:
    service: str
    snapshot: Snapshot | None
    rules: CompiledService | None
    subsets: Mapping[str, Picker]  # every declared subset (possibly empty) + ALL_SUBSET
    default_name: str
    any_picker: Picker  # every routable instance outside lanes (lanes too if nothing else)
    lanes: Mapping[str, Picker]
    routes: tuple[RouteState, ...]
    fallback: str
    hash_key: HashKey | None
    retries: RetryPolicy
    ejected: frozenset[str]
    release_at: float | None  # when an ejection ends: rebuild then
    policy: str
    stats: LoadStats | None
    pin_pickers: dict[str, Picker]  # selector text -> picker, filled lazily (a cache, never stale)
    groups: tuple[frozenset[str], ...] = ()  # instance ids per subset and lane, for outlier caps
    # Declared subsets whose selector matches no healthy instance although the service has some:
    # (subset, its selector, the versions on offer) — almost always a selector/label mismatch.
    unmatched: tuple[tuple[str, str, str], ...] = ()
    # The routes flattened to plain tuples: unpacking a tuple beats attribute lookups per call.
    route_table: tuple[_RouteRow, ...] = ()
    # Per declared subset, how many instances of each version its selector takes (weight > 0,
    # ejected ones included: ejection is not a selector problem). For the subset-instances gauge.
    subset_versions: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    # Instance ids each declared subset takes (ejected ones included): the canary guard's sides.
    subset_ids: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    # A tripped canary guard's subset: weighted routes no longer choose it; with ``shed_ids``
    # (testers: shed) neither do matched routes nor version pins.
    shed: str | None = None
    shed_ids: frozenset[str] = frozenset()

    @property
    def default(self) -> Picker:
        return self.subsets[self.default_name]

    def pin_picker(self, selector: str) -> Picker:
        picker = self.pin_pickers.get(selector)
        if picker is None:
            try:
                sel = VersionSelector(selector)
            except ValueError:
                picker = make_picker(self.policy, (), self.stats)
            else:
                matching = [i for i in self._routable() if sel.matches(i.version, i.semver)]
                # Lane instances take only their lane's traffic, pinned or not: a pin reaches
                # one only when no instance outside a lane has the version.
                outside_lanes = [i for i in matching if i.lane is None]
                picker = make_picker(self.policy, outside_lanes or matching, self.stats)
            self.pin_pickers[selector] = picker
        return picker

    def _routable(self) -> list[Instance]:
        if self.snapshot is None:
            return []
        shed = self.shed_ids
        return [
            i
            for i in self.snapshot.instances
            if i.health is not Health.CRITICAL and i.id not in self.ejected and i.id not in shed
        ]


def build_state(
    service: str,
    snapshot: Snapshot | None,
    rules: CompiledService | None,
    *,
    ejected: Collection[str] = frozenset(),
    warm: Mapping[str, float] | None = None,
    release_at: float | None = None,
    stats: LoadStats | None = None,
    shed: str | None = None,
    shed_testers: bool = False,
) -> ServiceState:
    """Compile the per-service view the router reads on every call. ``shed``: a subset a tripped
    canary guard took off the weighted routes (``shed_testers``: off every route and pin).
    ``warm``: instance id -> the share of its weight it gets while warming up; applied in every
    picker of two or more instances except ``ring_hash`` (whose ring would move under the keys
    at every step of the ramp)."""
    instances = [] if snapshot is None else [i for i in snapshot.instances if i.health is not Health.CRITICAL]
    policy = rules.load_balancer if rules else "weighted_random"
    # Membership is decided on every healthy instance (outlier detection caps ejections per
    # subset from it); pickers then leave the ejected ones out.
    base = [i for i in instances if i.lane is None]  # lane instances only take their lane's traffic
    members: dict[str, list[Instance]] = {ALL_SUBSET: base}
    if rules:
        for name, spec in rules.subsets.items():
            pool = instances if spec.selects_lane else base
            members[name] = [i for i in pool if spec.matches(i)]
    lane_members: dict[str, list[Instance]] = {}
    for inst in instances:
        if inst.lane is not None:
            lane_members.setdefault(inst.lane, []).append(inst)

    warming = warm if warm and policy != "ring_hash" else None

    def picker(pool: list[Instance]) -> Picker:
        if ejected:
            pool = [i for i in pool if i.id not in ejected]
        if warming is not None and len(pool) > 1:
            pool = [_warming(i, warming[i.id]) if i.id in warming else i for i in pool]
        return make_picker(policy, pool, stats)

    unmatched = tuple(
        (
            name,
            rules.subsets[name].describe(),
            versions_summary(instances if rules.subsets[name].selects_lane else base),
        )
        for name, pool in members.items()
        if rules and name != ALL_SUBSET and not pool and (base or (rules.subsets[name].selects_lane and instances))
    )
    subsets = {name: picker(pool) for name, pool in members.items()}
    subset_versions = {
        name: Counter(i.version or "" for i in pool if i.weight > 0)
        for name, pool in members.items()
        if name != ALL_SUBSET
    }
    groups = tuple(frozenset(i.id for i in pool) for pool in (*members.values(), *lane_members.values()) if pool)
    routes = tuple(_route_state(r, subsets, shed, shed_testers) for r in (rules.routes if rules else ()))
    subset_ids = {name: frozenset(i.id for i in pool) for name, pool in members.items() if name != ALL_SUBSET}
    return ServiceState(
        service=service,
        snapshot=snapshot,
        rules=rules,
        subsets=subsets,
        default_name=(rules.default if rules and rules.default else ALL_SUBSET),
        any_picker=subsets[ALL_SUBSET] if len(subsets[ALL_SUBSET]) else picker(instances),
        lanes={lane: picker(members) for lane, members in lane_members.items()},
        routes=routes,
        fallback=rules.fallback if rules else "default",
        hash_key=rules.hash_key if rules else None,
        retries=rules.retries if rules else DEFAULT_RETRY,
        ejected=frozenset(ejected),
        release_at=release_at,
        policy=policy,
        stats=stats,
        pin_pickers={},
        groups=groups,
        unmatched=unmatched,
        subset_versions=subset_versions,
        subset_ids=subset_ids,
        shed=shed,
        shed_ids=subset_ids.get(shed, frozenset()) if shed is not None and shed_testers else frozenset(),
        route_table=tuple(
            (r.route.match, r.name, r.names, r.pickers, r.cumulative, r.total, r.route.sticky) for r in routes
        ),
    )


def _warming(inst: Instance, share: float) -> Instance:
    """``inst`` with ``share`` of its weight (at least 1: warming up never means no traffic)."""
    if inst.weight <= 0 or share >= 1.0:
        return inst
    return dataclasses.replace(inst, weight=max(1, round(inst.weight * share)))


def _route_state(
    r: CompiledRoute, subsets: Mapping[str, Picker], shed: str | None = None, shed_testers: bool = False
) -> RouteState:
    # A subset with no routable instance drops out of the split; the rest are re-normalised. So
    # does a shed subset -- from routes without a match (the percentage splits), or from every
    # route when testers are shed too.
    names, pickers, cumulative, total = [], [], [], 0.0
    for target in r.to:
        p = subsets.get(target.subset)
        if p is None or len(p) == 0 or target.weight <= 0:
            continue
        if target.subset == shed and (r.match is None or shed_testers):
            continue
        total += target.weight
        names.append(target.subset)
        pickers.append(p)
        cumulative.append(total)
    return RouteState(r, tuple(names), tuple(pickers), tuple(cumulative), total)


def route(state: ServiceState, request: RequestInfo, ctx: GrayContext) -> Decision:
    """Decide where one call goes. Raises :class:`NoInstanceAvailable` when nothing can serve it.

    Order: a pin for this service wins; then the lane; then the first matching route; then the
    default subset. An empty choice goes through the service's ``fallback`` policy.
    """
    service = state.service
    hash_key = state.hash_key.extract(request, ctx) if state.hash_key is not None else None
    if ctx.pins:
        selector = ctx.pins.get(service)
        if selector is not None:
            picker = state.pin_picker(selector)
            if len(picker):
                return Decision(service, "pin", f"pin:{selector}", picker, hash_key)
            if not (state.shed_ids and _pins_shed(state, selector)):
                raise NoInstanceAvailable(service, f"pin {selector}", _pin_miss(state, selector))
            # A pin to a canary the guard shed from testers too: routed like an unpinned call.
    lane = ctx.lane
    if lane is not None:
        lane_picker = state.lanes.get(lane)
        if lane_picker is not None and len(lane_picker):
            return Decision(service, "lane", f"lane:{lane}", lane_picker, hash_key)
        if ctx.lane_forced:
            raise NoInstanceAvailable(service, f"lane:{lane}", "the lane is forced and no instance carries it")
        return _default(state, "lane-default", hash_key)
    for match, name, names, pickers, cumulative, total, sticky in state.route_table:
        if match is None or match(request, ctx):
            if len(names) == 1:
                return Decision(service, name, names[0], pickers[0], hash_key)
            if not names:
                return _fallback(state, name, _first_subset(state, name), hash_key)
            key = sticky.extract(request, ctx) if sticky is not None else None
            i = bisect.bisect_right(cumulative, (unit_interval(key) if key else random.random()) * total)
            if i >= len(names):  # the point equals the total only by float rounding
                i = len(names) - 1
            return Decision(service, name, names[i], pickers[i], hash_key)
    return _default(state, "default", hash_key)


def versions_summary(instances: Collection[Instance]) -> str:
    """``1.4.2 x2, 2.0.0`` (sorted, counted) for messages; never on the hot path."""
    counts: dict[str, int] = {}
    for inst in instances:
        counts[inst.version or "(no version)"] = counts.get(inst.version or "(no version)", 0) + 1
    return ", ".join(f"{v} x{n}" if n > 1 else v for v, n in sorted(counts.items()))


def _versions_on_offer(state: ServiceState) -> str:
    """``routable versions: 1.4.2 x2, 2.0.0`` for error messages (never on the hot path)."""
    routable = state._routable()
    if not routable:
        return "the service has no routable instance at all"
    return "routable versions: " + versions_summary(routable)


def _pins_shed(state: ServiceState, selector: str) -> bool:
    """Whether ``selector`` matches an instance a tripped guard shed (testers: shed)."""
    try:
        sel = VersionSelector(selector)
    except ValueError:
        return False
    snapshot = state.snapshot
    return snapshot is not None and any(
        i.id in state.shed_ids and sel.matches(i.version, i.semver) for i in snapshot.instances
    )


def _pin_miss(state: ServiceState, selector: str) -> str:
    """Why a pin found nothing, and what a pin that matches would say."""
    try:
        VersionSelector(selector)
    except ValueError as exc:
        return f"the pin is not a version selector: {exc}"
    message = f"no routable instance has a version matching the pin ({_versions_on_offer(state)})"
    labels = sorted({i.version for i in state._routable() if i.version})
    if labels:
        shown = ", ".join(f"{state.service}={v}" for v in labels[:6]) + (", ..." if len(labels) > 6 else "")
        message += f"; a pin that matches: {shown}"
    return message


def _first_subset(state: ServiceState, route_name: str) -> str | None:
    for rs in state.routes:
        if rs.name == route_name and rs.route.to:
            return rs.route.to[0].subset
    return None


def _default(state: ServiceState, route_name: str, hash_key: str | None) -> Decision:
    picker = state.subsets[state.default_name]
    if len(picker):
        return Decision(state.service, route_name, state.default_name, picker, hash_key)
    return _fallback(state, route_name, state.default_name, hash_key)


def _fallback(state: ServiceState, route_name: str, empty_subset: str | None, hash_key: str | None) -> Decision:
    """The chosen subset has no routable instance: apply ``fallback`` (default | any | fail)."""
    policy = state.fallback
    if policy == "default" and empty_subset != state.default_name:
        picker = state.subsets[state.default_name]
        if len(picker):
            return Decision(state.service, route_name, state.default_name, picker, hash_key, fallback_from=empty_subset)
    elif policy == "any" and len(state.any_picker):
        return Decision(state.service, route_name, "any", state.any_picker, hash_key, fallback_from=empty_subset)
    if policy == "default" and empty_subset == state.default_name:
        reason = "the default subset has no routable instance"
    else:
        reason = f"route '{route_name}' chose an empty subset and fallback is '{policy}'"
        if policy == "default":
            reason += f", but the default subset '{state.default_name}' is empty too"
    raise NoInstanceAvailable(state.service, empty_subset, reason)
