"""The :class:`Balancer`: discovery + rules + router + pickers + outlier detection for many services.

Transports (httpx, grpc) hold one Balancer and ask it, per call, for a :class:`~graylb.call.Call`.
Everything expensive happens when something changes (a snapshot, the rules, an ejection); a call
only reads the current :class:`~graylb.routing.router.ServiceState` of its service.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import telemetry
from .call import DRAINING, LEAVING, Call, Report
from .discovery.base import Discovery, ServiceWatch, Snapshot
from .errors import NoInstanceAvailable, NoSnapshot
from .guard.notify import default_notifier
from .guard.trip import GuardTrip
from .picking.outlier import OutlierDetector
from .picking.pickers import LoadStats
from .propagation.codec import HeaderCodec
from .propagation.context import GrayContext, current
from .routing.request import RequestInfo
from .routing.router import ALL_SUBSET, Decision, ServiceState, build_state, route
from .rules.compiled import CompiledRules, CompiledService, OutlierPolicy, WarmUpPolicy
from .rules.sources import FileRuleSource, RuleSource, StaticRules

__all__ = ["Balancer", "add_no_instance_hook", "remove_no_instance_hook"]

if TYPE_CHECKING:
    from .guard.runtime import CanaryGuard, GuardView

#: Steps of a warm-up ramp: each is one rebuild of the service's pickers.
WARMUP_STEPS = 10

log = logging.getLogger("graylb")
DEFAULT_OUTLIER = OutlierPolicy()


#: Called with (service, error) whenever a call finds no instance, from the calling thread.
NoInstanceHook = Callable[[str, NoInstanceAvailable], None]
_no_instance_hooks: tuple[NoInstanceHook, ...] = ()  # read per failed call: an immutable tuple, no lock


def add_no_instance_hook(hook: NoInstanceHook) -> None:
    """Be told of every call that finds no instance (``graylb.testing`` fails a test whose pin
    or lane matched nothing even when the code under test swallowed the error)."""
    global _no_instance_hooks
    _no_instance_hooks = (*_no_instance_hooks, hook)


def remove_no_instance_hook(hook: NoInstanceHook) -> None:
    global _no_instance_hooks
    _no_instance_hooks = tuple(h for h in _no_instance_hooks if h is not hook)


class _Service:
    """One routed service: its watch, its outlier state and its current routing state."""

    __slots__ = (
        "name",
        "watch",
        "report",
        "opened_at",
        "warned",
        "unmatched_seen",
        "detector",
        "state",
        "revision",
        "rules",
        "digest",
        "lock",
        "guard",
        "first_seen",
        "seen_snapshot",
    )

    def __init__(self, name: str, watch: ServiceWatch, record: Callable[..., None]) -> None:
        self.name = name
        self.watch = watch
        # What each Call of this service reports its attempts' outcomes to: bound to this entry,
        # so an outcome reaches the detector of the entry that routed it, with no lookup.
        self.report: Report = functools.partial(record, self)
        self.opened_at = time.monotonic()  # first-snapshot waits all end first_snapshot_timeout after this
        self.warned = False  # the "no snapshot" warning is logged once per entry
        self.unmatched_seen: set[tuple[int, str, str]] = set()  # (snapshot revision, subset, selector) reported
        self.detector: OutlierDetector | None = None
        self.state: ServiceState | None = None
        self.revision = -1  # the watch revision ``state`` was built from
        self.rules: CompiledRules | None = None  # the rules document ``state`` was built from
        self.digest: str | None = None  # the digest of this service's part of it (None: no rules)
        self.lock = threading.Lock()  # serialises rebuilds; a call only tries it (never waits) once it has a state
        # instance id -> clock time this caller first saw it (-inf: in the first snapshot); warm-up
        self.first_seen: dict[str, float] = {}
        self.seen_snapshot = False
        self.guard: CanaryGuard | None = None  # the service's canary guard, when its rules have one


def _same_rules(entry: _Service, document: CompiledRules) -> bool:
    """Whether ``document`` gives ``entry``'s service the rules its state was built from."""
    rules = document.service(entry.name)
    return entry.rules is not None and (rules.digest if rules is not None else None) == entry.digest


class Balancer:
    """Routes calls to instances of registry services by gray-release rules.

    ``discovery`` is a registry (:class:`~graylb.discovery.StaticDiscovery`, Consul, Nacos);
    ``rules`` a :class:`~graylb.rules.sources.RuleSource`, a rules document (mapping or YAML/JSON
    text), a path to a rules file, or None (every service routes to all its instances).

    Which hosts are services is explicit, never a registry lookup per unknown host: the services
    named in the rules, plus ``services``, plus any host ending in ``host_suffix``.
    """

    def __init__(
        self,
        discovery: Discovery,
        rules: RuleSource | CompiledRules | Mapping[str, Any] | str | Path | None = None,
        *,
        services: Iterable[str] = (),
        host_suffix: str | None = None,
        codec: HeaderCodec | None = None,
        first_snapshot_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discovery = discovery
        self.rule_source = _as_rule_source(rules)
        self.codec = codec or HeaderCodec()
        self.stats = LoadStats()
        self.first_snapshot_timeout = first_snapshot_timeout
        self._clock = clock  # outlier ejection times; injectable so tests need not sleep
        self._extra_services = frozenset(services)
        self._host_suffix = host_suffix
        self._services: dict[str, _Service] = {}
        self._create_lock = threading.Lock()
        self._known: frozenset[str] = self._extra_services
        self._trip_callbacks: tuple[Callable[[GuardTrip], None], ...] = ()
        self.rule_source.add_listener(self._on_rules)
        telemetry.watch(self)  # a weak reference: the gauges do not keep us alive

    # -- which hosts are ours -------------------------------------------------------------
    def is_service(self, host: str) -> bool:
        return self.routed_service(host) is not None

    def routed_service(self, host: str) -> str | None:
        """The registry name calls to ``host`` route to, or None when ``host`` is not ours:
        :meth:`is_service` and :meth:`service_name` in one step, for transports (per call)."""
        if host in self._known:
            return host
        suffix = self._host_suffix
        if suffix is not None and host.endswith(suffix):
            return host[: -len(suffix)] if suffix else host
        return None

    def service_name(self, host: str) -> str:
        """The registry name for a URL host (``orders.svc`` -> ``orders`` with suffix ``.svc``)."""
        name = self.routed_service(host)
        return host if name is None else name

    @property
    def rules(self) -> CompiledRules:
        return self.rule_source.current

    # -- the per-call path ------------------------------------------------------------------
    def start(self, service: str, request: RequestInfo, ctx: GrayContext | None = None) -> Call:
        """Route one call: returns a :class:`Call` that hands out instances (first try, retries)
        and takes the outcome of each attempt. Raises :class:`NoInstanceAvailable`.

        The first calls to a service wait (in this thread, up to ``first_snapshot_timeout``) for
        its first snapshot; :meth:`astart` is the twin for asyncio callers."""
        entry = self._services.get(service)
        if entry is None or entry.watch.snapshot is None or entry.watch.closed:
            entry = self._entry_with_snapshot(service)
        return self._start(entry, request, ctx)

    async def astart(self, service: str, request: RequestInfo, ctx: GrayContext | None = None) -> Call:
        """:meth:`start` for asyncio callers: a wait for the first snapshot awaits, never blocks
        the event loop. Once the snapshot is there both are the same lock-free, I/O-free path."""
        entry = self._services.get(service)
        if entry is None or entry.watch.snapshot is None or entry.watch.closed:
            entry = await self._aentry_with_snapshot(service)
        return self._start(entry, request, ctx)

    def ready(self, service: str) -> bool:
        """True when calls to ``service`` can route without waiting (its first snapshot is here)."""
        entry = self._services.get(service)
        return entry is not None and entry.watch.snapshot is not None and not entry.watch.closed

    async def wait_ready(self, service: str) -> None:
        """Await the first snapshot of ``service`` (starting its watch if needed); raises
        :class:`~graylb.errors.NoSnapshot` when none comes within ``first_snapshot_timeout``."""
        if not self.ready(service):
            await self._aentry_with_snapshot(service)

    def _start(self, entry: _Service, request: RequestInfo, ctx: GrayContext | None) -> Call:
        watch = entry.watch
        watch.used = True
        state = entry.state
        # Inline, no call: an int compare and an identity test (a clock read only with ejections).
        # Any of them true sends the call to _catch_up, which looks closer.
        if (
            state is None
            or entry.revision != watch.revision
            or entry.rules is not self.rule_source.current
            or (state.release_at is not None and self._clock() >= state.release_at)
        ):
            state = self._catch_up(entry, state)
        if ctx is None:
            ctx = current()
        try:
            decision = route(state, request, ctx)
        except NoInstanceAvailable as exc:
            if watch.last_error and (state.snapshot is None or not state.snapshot.instances):
                exc.args = (f"{exc}; registry error: {watch.last_error}",)
            for hook in _no_instance_hooks:  # graylb.testing: a test pin that found nothing fails its test
                hook(entry.name, exc)
            raise
        return Call(self.stats, entry.report, state, decision, request, ctx.lane is not None)

    def decide(self, service: str, request: RequestInfo, ctx: GrayContext | None = None) -> Decision:
        """The routing decision alone (no instance picked): what ``explain`` builds on."""
        return self.start(service, request, ctx).decision

    def state(self, service: str) -> ServiceState:
        """The service's current routing state; waits for its first snapshot like a call, but
        returns a state without instances rather than raise when none comes."""
        entry = self._open(service)
        if entry.watch.snapshot is None:
            entry.watch.wait_snapshot(self._time_left(entry))
        return entry.state or self._rebuild(entry)

    # -- the first snapshot (off the hot path: once per service, or after a watch was dropped) --
    def _entry_with_snapshot(self, service: str) -> _Service:
        entry = self._open(service)
        if entry.watch.snapshot is None:
            entry.watch.wait_snapshot(self._time_left(entry))
            self._check_snapshot(entry)
        return entry

    async def _aentry_with_snapshot(self, service: str) -> _Service:
        entry = self._open(service)
        if entry.watch.snapshot is None:
            await entry.watch.wait_snapshot_async(self._time_left(entry))
            self._check_snapshot(entry)
        return entry

    def _time_left(self, entry: _Service) -> float:
        """Every caller waits until the same deadline: ``first_snapshot_timeout`` after the watch
        was opened. Callers arriving later wait what is left (nothing, once it has passed)."""
        return max(0.0, entry.opened_at + self.first_snapshot_timeout - time.monotonic())

    def _check_snapshot(self, entry: _Service) -> None:
        watch = entry.watch
        if watch.snapshot is not None:
            return
        # Reached only once the shared deadline has passed: name the wait every caller was given
        # (the clock would say 0.5x s, depending on scheduling).
        waited = self.first_snapshot_timeout
        if not entry.warned:
            entry.warned = True
            log.warning(
                "graylb: no snapshot of service '%s' from %s after %.1fs: %s",
                entry.name,
                self.discovery.describe(),
                waited,
                watch.last_error or "no answer yet",
            )
        error = NoSnapshot(entry.name, self.discovery.describe(), waited, watch.last_error)
        for hook in _no_instance_hooks:
            hook(entry.name, error)
        raise error

    # -- outcomes ---------------------------------------------------------------------------
    def _record(
        self, entry: _Service, instance_id: str, ok: bool, outcome: str | int | None = None, seconds: float = 0.0
    ) -> None:
        guard = entry.guard
        if guard is not None and outcome != DRAINING:  # a release step, not the version's fault
            trip = guard.record(instance_id, ok, outcome, seconds)
            if trip is not None:
                self._tripped(entry, guard, trip)
        detector = entry.detector
        if detector is None:
            return
        if ok:
            detector.record_success(instance_id)
        elif outcome in LEAVING:
            if detector.record_leaving(instance_id):
                log.info(
                    "graylb: instance %s of service '%s' is leaving (%s): out of this caller's picks",
                    instance_id,
                    entry.name,
                    outcome,
                )
                self._rebuild(entry)
        elif detector.record_failure(instance_id):
            log.warning("graylb: ejected instance %s of service '%s' after consecutive errors", instance_id, entry.name)
            telemetry.record_ejection(entry.name, _version_of(entry, instance_id))
            self._rebuild(entry)

    # -- canary guard -------------------------------------------------------------------------
    def on_guard_trip(self, callback: Callable[[GuardTrip], None]) -> None:
        """Call ``callback(trip)`` whenever a canary guard of this balancer trips -- on a
        notifier thread, never in the call that tripped it."""
        self._trip_callbacks = (*self._trip_callbacks, callback)

    def guard_view(self, service: str) -> GuardView | None:
        """The live view of ``service``'s guard in this process (None: no guard, or not routed yet)."""
        entry = self._services.get(service)
        guard = entry.guard if entry is not None else None
        return guard.view() if guard is not None else None

    def guard_reset(self, service: str) -> bool:
        """Clear a trip of ``service``'s guard here: the canary takes traffic again and is judged
        afresh. False when the service has no guard in this process."""
        entry = self._services.get(service)
        guard = entry.guard if entry is not None else None
        if guard is None:
            return False
        guard.reset()
        log.warning(
            "graylb: canary guard of service '%s' reset: '%s' takes traffic again", service, guard.policy.canary
        )
        self._rebuild(entry)  # type: ignore[arg-type]
        return True

    def guard_trip(self, service: str, summary: str = "tripped by hand") -> bool:
        """Trip ``service``'s guard now, as if the evidence were in (an operator's "stop the
        canary", a test). False when it has no guard here or it already tripped."""
        entry = self._services.get(service)
        guard = entry.guard if entry is not None else None
        trip = guard.trip_now(summary=summary) if guard is not None else None
        if guard is None or trip is None or entry is None:
            return False
        self._tripped(entry, guard, trip)
        return True

    def _tripped(self, entry: _Service, guard: CanaryGuard, trip: GuardTrip) -> None:
        """Shed the canary here at once, then tell: log, metric, span event, callbacks, webhook."""
        self._rebuild(entry)
        shed = "every route and pin" if guard.policy.testers == "shed" else "the weighted routes"
        log.warning(
            "graylb: canary guard of service '%s' TRIPPED on %s: %s; subset '%s' (%s) is off %s",
            trip.service,
            trip.reason,
            trip.summary,
            trip.canary,
            ", ".join(trip.versions) or "no instances",
            shed,
        )
        telemetry.record_guard_trip(trip)
        default_notifier().submit(trip, self._trip_callbacks, guard.policy.webhook)
        if guard.policy.action == "rollback":
            threading.Thread(
                target=self._write_rollback, args=(trip, guard.digest), name="graylb-guard-rollback", daemon=True
            ).start()

    def _write_rollback(self, trip: GuardTrip, digest: str) -> None:
        """``action: rollback``: the whole fleet follows. One compare-and-set write of the rollback
        to the rule store, only while the service's rules are still the ones judged -- so of many
        processes tripping together one writes, and a newer change is never overwritten."""
        from . import admin  # the operator actions; imported late, only when a guard rolls back

        writer = self.rule_source.writer()
        if writer is None:
            log.warning(
                "graylb: canary guard of service '%s' has action: rollback, but its rules (%s) cannot be written "
                "back; the canary is shed in this process only",
                trip.service,
                self.rule_source.name or type(self.rule_source).__name__,
            )
            return
        opener, key = writer
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(trip.at))
        note = {"graylb.guard/rolled-back": f"{at} by {trip.process}: {trip.reason}: {trip.summary}"}
        for _ in range(3):  # a conflicting write: read again (the rules may now be someone else's)
            try:
                with opener() as store:
                    change = admin.rollback(store, key, trip.service, expect_digest=digest, annotations=note)
            except admin.RuleConflict:
                continue
            except Exception as exc:  # the registry is down, the token is wrong: say it, shed here anyway
                log.warning("graylb: canary guard of service '%s' could not write the rollback: %s", trip.service, exc)
                return
            level = logging.WARNING if change.changed else logging.INFO
            log.log(level, "graylb: canary guard of service '%s': %s", trip.service, str(change).replace("\n", "; "))
            return
        log.warning(
            "graylb: canary guard of service '%s' gave up writing the rollback: the key kept changing", trip.service
        )

    def snapshot_ages(self) -> list[tuple[str, str, float]]:
        """``(service, registry, seconds)`` for every live watch with a snapshot: what the
        ``graylb.registry.snapshot.age`` gauge observes (``Snapshot.age``)."""
        registry = self.discovery.name
        out = []
        for name, entry in list(self._services.items()):  # another thread may add one
            watch = entry.watch
            snapshot = watch.snapshot
            if snapshot is not None and not watch.closed:
                out.append((name, registry, snapshot.age))
        return out

    def guard_states(self) -> list[tuple[str, str, int, int, bool]]:
        """``(service, side, requests, errors, tripped)`` of each watched service's canary guard
        in this process, side ``canary`` / ``baseline``, over its window: the
        ``graylb.guard.window.*`` gauges (each process's live view, next to the others')."""
        out = []
        for name, entry in list(self._services.items()):
            guard = entry.guard
            if guard is None or entry.watch.closed:
                continue
            view = guard.view()
            tripped = view.trip is not None
            out.append((name, "canary", view.canary.requests, view.canary.errors, tripped))
            out.append((name, "baseline", view.baseline.requests, view.baseline.errors, tripped))
        return out

    def route_weights(self) -> list[tuple[str, str, str, float]]:
        """``(service, route, subset, configured share 0-1)`` of every watched service's routes,
        and ``(service, "default", its default subset, 1.0)``: what the ``graylb.route.weight``
        gauge observes (the dashboard's "configured" next to the live split)."""
        rules = self.rules.services
        out = []
        for name, entry in list(self._services.items()):
            if entry.watch.closed:
                continue
            spec = rules.get(name)
            out.append((name, "default", (spec.default if spec and spec.default else ALL_SUBSET), 1.0))
            for compiled in spec.routes if spec else ():
                total = sum(t.weight for t in compiled.to)
                for target in compiled.to:
                    out.append((name, compiled.name, target.subset, target.weight / total if total else 0.0))
        return out

    def subset_sizes(self) -> list[tuple[str, str, str, int]]:
        """``(service, subset, version, instances)`` of every declared subset of every watched
        service with a snapshot: the instances its selector takes (weight > 0; ejected ones
        included -- ejection has its own counter), one row per version, and ``(service, subset,
        "", 0)`` for a subset that selects nothing. What the ``graylb.subset.instances`` gauge
        observes; which versions the default subset holds tells dashboards and alerts which
        version is the baseline."""
        out = []
        for name, entry in list(self._services.items()):
            state = entry.state
            if state is None or entry.watch.closed:
                continue
            for subset, versions in state.subset_versions.items():
                if not versions:
                    out.append((name, subset, "", 0))
                out.extend((name, subset, version, n) for version, n in versions.items())
        return out

    # -- change handling (off the hot path) ---------------------------------------------------
    def _open(self, service: str) -> _Service:
        """The service's entry, with a live watch; never waits for a snapshot.

        An entry is published in ``_services`` only once it is whole (watch set, listener
        attached), so the lock-free readers in :meth:`start` never see a half-built one. A
        dropped watch (closed after an idle spell) is replaced here too, by one thread only.
        """
        entry = self._services.get(service)
        if entry is not None and not entry.watch.closed:
            return entry
        with self._create_lock:
            entry = self._services.get(service)
            if entry is not None and not entry.watch.closed:
                return entry
            entry = _Service(service, self.discovery.watch(service), self._record)

            def on_snapshot(snapshot: Snapshot, e: _Service = entry) -> None:
                self._rebuild(e)

            entry.watch.add_listener(on_snapshot)
            if entry.state is None:
                self._rebuild(entry)
            self._services = {**self._services, service: entry}
        return entry

    def _on_rules(self, rules: CompiledRules) -> None:
        self._known = self._extra_services | frozenset(rules.services)
        for entry in list(self._services.values()):
            with entry.lock:
                if entry.state is not None and entry.revision == entry.watch.revision and _same_rules(entry, rules):
                    # This service's part of the document did not change: its state stands (a
                    # one-service change to a 200-service document rebuilds one service).
                    entry.rules = rules
                    if entry.guard is not None:
                        entry.guard.revision = rules.revision
                    continue
                self._build(entry)

    def _behind(self, entry: _Service, state: ServiceState) -> bool:
        """Whether ``state`` is older than what the registry watch, the rules or an ejection's
        release time say: an int compare, an identity test, a clock read only with ejections."""
        current = self.rule_source.current
        return (
            entry.revision != entry.watch.revision
            or (entry.rules is not current and not _same_rules(entry, current))
            or (state.release_at is not None and self._clock() >= state.release_at)
        )

    def _catch_up(self, entry: _Service, state: ServiceState | None) -> ServiceState:
        """A call found its service's state behind (listeners rebuild on every change; this
        closes the gap between a watch or rule source publishing and its listener finishing).
        Rebuild here -- unless another thread is rebuilding this service right now: then route on
        the state in force, which that rebuild replaces within milliseconds, rather than wait for
        it. Only a service's very first state is waited for."""
        if state is not None and not self._behind(entry, state):
            return state  # only a new document that leaves this service's rules as they were
        lock = entry.lock
        if not lock.acquire(blocking=state is None):
            return state  # type: ignore[return-value]  # blocking when None: acquired, not here
        try:
            current = entry.state
            if current is not None and not self._behind(entry, current):
                return current  # rebuilt by another thread while this call waited for the lock
            return self._build(entry)
        finally:
            lock.release()

    def _rebuild(self, entry: _Service) -> ServiceState:
        with entry.lock:
            return self._build(entry)

    def _build(self, entry: _Service) -> ServiceState:
        """The service's state from its snapshot, rules, ejections and guard. Under ``entry.lock``."""
        document = self.rule_source.current
        rules = document.service(entry.name)
        policy = (rules.outlier if rules else None) or DEFAULT_OUTLIER
        if entry.detector is None:
            entry.detector = OutlierDetector(policy, clock=self._clock)
        elif entry.detector.policy != policy:
            entry.detector.policy = policy  # keeps current ejections and streaks
        detector = entry.detector
        guard = self._guard_for(entry, rules, document)
        # Revision first: the watch sets it after the snapshot, so this snapshot is at least as new.
        revision = entry.watch.revision
        snapshot: Snapshot | None = entry.watch.snapshot
        ejected = detector.ejected()
        tripped = guard is not None and guard.trip is not None
        warm, warm_step = self._warming(entry, snapshot, rules.warmup if rules else None)
        release_at = detector.next_release
        if warm_step is not None and (release_at is None or warm_step < release_at):
            release_at = warm_step  # the next step of a warm-up: a call then rebuilds
        state = build_state(
            entry.name,
            snapshot,
            rules,
            ejected=ejected,
            warm=warm,
            release_at=release_at,
            stats=self.stats,
            shed=guard.policy.canary if guard is not None and tripped else None,
            shed_testers=guard is not None and guard.policy.testers == "shed",
        )
        detector.set_groups(state.groups)
        if guard is not None:
            canary = state.subset_ids.get(guard.policy.canary, frozenset())
            versions = tuple(sorted(state.subset_versions.get(guard.policy.canary, {})))
            guard.set_members(canary, state.subset_ids.get(guard.policy.baseline, frozenset()), versions)
        entry.rules = document
        entry.digest = rules.digest if rules is not None else None
        entry.revision = revision
        entry.state = state
        if state.unmatched:
            self._report_unmatched(entry, state, revision)
        return state

    def _warming(
        self, entry: _Service, snapshot: Snapshot | None, policy: WarmUpPolicy | None
    ) -> tuple[dict[str, float] | None, float | None]:
        """(instance id -> share of its weight, for instances still warming up; when the next
        step of the ramp is due). The ramp climbs in :data:`WARMUP_STEPS` steps, each one a
        rebuild that the first call after it triggers. Instances of this caller's first snapshot
        (or there when the rules turn warm-up on) are warm; an instance that leaves and comes
        back is new again. Nothing is tracked while warm-up is off. Under ``entry.lock``."""
        if policy is None:  # off: nothing tracked (turned on later, what is there then is warm)
            if entry.seen_snapshot:
                entry.first_seen.clear()
                entry.seen_snapshot = False
            return None, None
        if snapshot is None:
            return None, None
        now = self._clock()
        seen = entry.first_seen
        ids = {i.id for i in snapshot.instances}
        born = -math.inf if not entry.seen_snapshot else now
        entry.seen_snapshot = True
        for instance_id in ids - seen.keys():
            seen[instance_id] = born
        for instance_id in seen.keys() - ids:
            del seen[instance_id]
        window = policy.window
        warm: dict[str, float] = {}
        next_step: float | None = None
        for instance_id, since in seen.items():
            age = now - since
            if age >= window:
                continue
            warm[instance_id] = policy.share(age)
            step = since + window * (math.floor(max(0.0, age) / window * WARMUP_STEPS) + 1) / WARMUP_STEPS
            next_step = step if next_step is None else min(next_step, step)
        return warm or None, next_step

    def _guard_for(self, entry: _Service, rules: CompiledService | None, document: CompiledRules) -> CanaryGuard | None:
        """The entry's guard for these rules: kept (with its trip) while the service's rules
        stay the same, new -- so reset -- when they change. Called under ``entry.lock``."""
        policy = rules.guard if rules is not None else None
        guard = entry.guard
        if policy is None or rules is None:
            entry.guard = None
            return None
        if guard is None or guard.digest != rules.digest or guard.policy != policy:
            if guard is not None and guard.trip is not None:
                log.warning(
                    "graylb: canary guard of service '%s' reset by a change of its rules (revision %s)",
                    entry.name,
                    document.revision,
                )
            from .guard.runtime import CanaryGuard  # the statistics load with the first guard

            guard = entry.guard = CanaryGuard(entry.name, policy, rules.digest, clock=self._clock)
        guard.revision = document.revision
        return guard

    def _report_unmatched(self, entry: _Service, state: ServiceState, revision: int) -> None:
        """Say it, once per (subset, selector, snapshot), when a subset selects nothing: labels
        `v1`/`v2` under a selector written for `1.x.y` used to fail silently."""
        seen = entry.unmatched_seen
        if seen and next(iter(seen))[0] != revision:
            seen.clear()  # a new snapshot: what was said about the old one may be said again
        for subset, selector, offered in state.unmatched:
            key = (revision, subset, selector)
            if key in seen:
                continue
            seen.add(key)
            log.warning(
                "graylb: service '%s' subset '%s' %s matches none of: %s", entry.name, subset, selector, offered
            )
            telemetry.record_subset_empty(entry.name, subset)

    def close(self) -> None:
        self.rule_source.close()
        self.discovery.close()

    def __enter__(self) -> Balancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _version_of(entry: _Service, instance_id: str) -> str | None:
    """The version label of an instance of ``entry`` (off the hot path: on an ejection)."""
    snapshot = entry.watch.snapshot
    for inst in snapshot.instances if snapshot is not None else ():
        if inst.id == instance_id:
            return inst.version
    return None


def _as_rule_source(rules: Any) -> RuleSource:
    if isinstance(rules, RuleSource):
        return rules
    if rules is None or isinstance(rules, Mapping):
        return StaticRules(rules)
    if isinstance(rules, CompiledRules):
        src = StaticRules(None)
        src.current = rules
        return src
    if isinstance(rules, Path) or (isinstance(rules, str) and "\n" not in rules and Path(rules).exists()):
        return FileRuleSource(rules)
    if isinstance(rules, str):
        return StaticRules(rules)
    raise TypeError(f"rules: expected a RuleSource, a document or a path, not {type(rules).__name__}")


__all__ += ["NoInstanceAvailable"]
