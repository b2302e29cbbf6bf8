"""``explain()``: the routing decision for a request, with the reasons, for humans and tests."""

from __future__ import annotations

import dataclasses

from ..errors import NoInstanceAvailable
from ..instance import Instance
from ..propagation.context import EMPTY, GrayContext
from ..rules.compiled import CompiledRoute, CompiledService, GuardPolicy
from .hashing import unit_interval
from .matchers import observations
from .request import RequestInfo
from .router import ServiceState, route

__all__ = ["Explanation", "describe_guard", "explain_state", "explain_rules"]


@dataclasses.dataclass(frozen=True)
class Explanation:
    service: str
    route: str | None
    subset: str | None
    candidates: tuple[Instance, ...]
    reasons: tuple[str, ...]
    error: str | None = None

    def __str__(self) -> str:
        lines = [f"service {self.service}"]
        lines += [f"  - {r}" for r in self.reasons]
        if self.error:
            lines.append(f"  => FAILS: {self.error}")
        else:
            lines.append(f"  => route '{self.route}', subset '{self.subset}', {len(self.candidates)} candidate(s)")
            for inst in self.candidates:
                lane = f" lane={inst.lane}" if inst.lane else ""
                lines.append(f"       {inst.address:<22} version={inst.version or '-'} weight={inst.weight}{lane}")
        return "\n".join(lines)


def explain_state(state: ServiceState, request: RequestInfo, ctx: GrayContext = EMPTY) -> Explanation:
    """Run the router on ``state`` and say why it decided what it did."""
    service = state.service
    reasons: list[str] = [
        f"subset '{subset}' {selector} matches none of: {offered}" for subset, selector, offered in state.unmatched
    ]
    if state.rules is None:
        reasons.append("no rules for this service: every instance outside a lane is a candidate")
    elif state.rules.guard is not None:
        reasons.append(describe_guard(state.rules.guard))
    if state.rules is not None and any(r.name == "rollout" for r in state.rules.routes):
        reasons.append(_ROLLOUT_NOTE.format(service=service))
    if state.shed is not None:
        where = "every route and pin" if state.shed_ids else "the weighted routes (testers and pins keep it)"
        reasons.append(f"the canary guard TRIPPED: subset '{state.shed}' is off {where}")
    lane_picker = state.lanes.get(ctx.lane) if ctx.lane is not None else None
    routes = [(rs.route, list(zip(rs.names, _weights(rs.cumulative)))) for rs in state.routes]
    if _context_reasons(
        service, ctx, lane_picker is not None and len(lane_picker) > 0, len(lane_picker or ()), reasons
    ):
        _route_reasons(routes, request, ctx, state.default_name, reasons)
    try:
        d = route(state, request, ctx)
    except NoInstanceAvailable as exc:
        return Explanation(service, None, exc.subset, (), tuple(reasons), str(exc))
    if d.fallback_from is not None:
        reasons.append(f"subset '{d.fallback_from}' is empty: fallback '{state.fallback}' -> '{d.subset}'")
    return Explanation(service, d.route, d.subset, d.picker.instances, tuple(reasons))


def explain_rules(
    service: str, rules: CompiledService | None, request: RequestInfo, ctx: GrayContext = EMPTY
) -> Explanation:
    """What the rules alone decide, with no registry at hand (so no candidates, no fallback)."""
    reasons: list[str] = ["no registry: subsets are taken as populated, candidates unknown"]
    if rules is None:
        reasons.append("no rules for this service: every instance outside a lane is a candidate")
        return Explanation(service, "default", "*", (), tuple(reasons))
    if rules.guard is not None:
        reasons.append(describe_guard(rules.guard))
    if any(r.name == "rollout" for r in rules.routes):
        reasons.append(_ROLLOUT_NOTE.format(service=service))
    if not _context_reasons(service, ctx, ctx.lane is not None, 0, reasons):
        kind = "pin" if service in ctx.pins else "lane"
        return Explanation(service, kind, f"{kind}:{ctx.pins.get(service) or ctx.lane}", (), tuple(reasons))
    routes = [(r, [(t.subset, float(t.weight)) for t in r.to if t.weight > 0]) for r in rules.routes]
    chosen = _route_reasons(routes, request, ctx, rules.default or "*", reasons)
    return Explanation(service, chosen[0], chosen[1], (), tuple(reasons))


_ROLLOUT_NOTE = (
    "route 'rollout' belongs to a progressive rollout: its weights move step by step "
    "(graylb rollout status {service} shows the plan, the step and who did what)"
)


def describe_guard(g: GuardPolicy) -> str:
    """One line: what the service's canary guard judges, and what a trip does."""
    criteria = []
    if g.errors is not None:
        e = g.errors
        kinds = [
            w for w, on in (("connect-failure", e.connect_failure), ("reset", e.reset), ("timeout", e.timeout)) if on
        ]
        fives, fours = range(500, 600), range(400, 500)
        statuses = set(e.statuses)
        for word, block in (("5xx", fives), ("4xx", fours)):
            if statuses >= set(block):
                kinds.append(word)
                statuses -= set(block)
        kinds += [str(c) for c in sorted(statuses)] + sorted(e.grpc_codes)
        margin = f" by more than {e.margin:.1%}" if e.margin else ""
        criteria.append(
            f"error ratio worse{margin} at {e.confidence * 100:g}% confidence per window (errors: {', '.join(kinds)})"
        )
    if g.latency is not None:
        lat = g.latency
        ratios = [f"{q} > {r:g}x" for q, r in (("p99", lat.p99_ratio), ("p50", lat.p50_ratio)) if r is not None]
        criteria.append(
            f"latency {' or '.join(ratios)} and +{lat.min_delta * 1000:g} ms (with {lat.min_requests} samples each)"
        )
    shed = "every route and pin" if g.testers == "shed" else "the weighted routes (testers and pins keep it)"
    action = "; the rollback is written to the rule store" if g.action == "rollback" else ""
    return (
        f"canary guard: subset '{g.canary}' judged against '{g.baseline}' over {g.window:g}s once each side has "
        f"{g.min_requests} requests: {'; '.join(criteria)}; a trip takes it off {shed}{action}"
    )


def _context_reasons(service: str, ctx: GrayContext, lane_live: bool, lane_size: int, reasons: list[str]) -> bool:
    """Explain pins and lanes; True when routing goes on to the rules' routes."""
    pin = ctx.pins.get(service)
    if pin is not None:
        reasons.append(f"the gray context pins {service}={pin}: pins win over rules")
        return False
    if ctx.lane is None:
        return True
    if lane_live:
        reasons.append(
            f"lane '{ctx.lane}': "
            + (
                f"{lane_size} instance(s) carry it"
                if lane_size
                else "instances carrying it win where the service has some; else the default subset"
            )
        )
        return False
    forced = " and the lane is forced" if ctx.lane_forced else ", so the call leaves the lane for the default subset"
    reasons.append(f"lane '{ctx.lane}': no instance carries it{forced}")
    return False


def _route_reasons(
    routes: list[tuple[CompiledRoute, list[tuple[str, float]]]],
    request: RequestInfo,
    ctx: GrayContext,
    default: str,
    reasons: list[str],
) -> tuple[str, str]:
    for r, targets in routes:
        if r.match is not None and not r.match(request, ctx):
            reasons.append(f"route '{r.name}' does not match")
            _observed(r, request, reasons)
            continue
        reasons.append(f"route '{r.name}' matches" + (" (no match conditions)" if r.match is None else ""))
        _observed(r, request, reasons)
        dropped = [t.subset for t in r.to if t.subset not in {n for n, _ in targets}]
        if dropped:
            reasons.append(f"subset(s) {', '.join(dropped)} have no routable instance: dropped from the split")
        if len(targets) <= 1:
            return r.name, targets[0][0] if targets else (r.to[0].subset if r.to else default)
        split = ", ".join(f"{n} {w:g}" for n, w in targets)
        sticky = r.sticky
        key = sticky.extract(request, ctx) if sticky else None
        if sticky is None or not key:
            reasons.append(f"weights {split}; random draw" + (f" ({sticky.describe()} absent)" if sticky else ""))
            return r.name, "/".join(n for n, _ in targets)
        point = unit_interval(key) * sum(w for _, w in targets)
        reasons.append(f"weights {split}; sticky on {sticky.describe()}={key!r} -> point {point:g}")
        for name, w in targets:
            if point < w:
                return r.name, name
            point -= w
        return r.name, targets[-1][0]
    reasons.append(f"no route matches: default subset '{default}'")
    return "default", default


def _observed(r: CompiledRoute, request: RequestInfo, reasons: list[str]) -> None:
    # Conditions that extract a value (an API version) say what they found: "does not match"
    # alone would not tell a vendor mismatch from a version mismatch.
    for description, seen in observations(r.match, request):
        reasons.append(f"route '{r.name}': {description}; this call: {seen}")


def _weights(cumulative: tuple[float, ...]) -> list[float]:
    prev, out = 0.0, []
    for c in cumulative:
        out.append(c - prev)
        prev = c
    return out
