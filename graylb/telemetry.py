"""OpenTelemetry signals for routed calls, through opentelemetry-api only: no-ops -- and nearly
free -- until the application installs an SDK. README "Telemetry" has the table of instruments
with their Prometheus names.

**Attempts.** Every attempt of a call (the first try and each retry) is measured on its own,
attributed to the instance -- so the version -- that produced it: a canary answering 503 that is
retried onto stable is one canary error and one stable success. HTTP attempts go to
``http.client.request.duration``, gRPC attempts to ``rpc.client.call.duration`` (the semantic
conventions' names, seconds), with the conventions' attributes plus graylb's. Each attempt is
also one CLIENT span (:class:`Attempt`), whose context the transport injects into the outbound
request with the global propagator (:func:`inject`).

**Calls.** The call as a whole -- whatever its retries -- is ``graylb.client.calls`` (a counter
that also counts calls which found no instance) and ``graylb.client.call.duration``, under the
version that finally answered. ``graylb.client.retries``, ``graylb.client.fallbacks``,
``graylb.outlier.ejections``, ``graylb.subset.empty`` and ``graylb.rules.rejected`` count events;
``graylb.registry.snapshot.age`` observes how old each watched service's registry snapshot is,
``graylb.route.weight`` the configured split (the ``default`` route names the baseline subset) and
``graylb.subset.instances`` how many instances each declared subset selects.

**Cardinality.** Attribute values come from the rules (service, subset and route names), the
registry's version labels and fixed vocabularies (outcome, status class or gRPC code name, HTTP
method, exception class names). Never an instance id, an address, a URL or a request value:
those go on spans only.

**Cost without an SDK.** :func:`observer` answers ``None`` while neither a tracer provider nor a
meter provider is installed; the transports then build no attribute dict, start no span and
inject nothing.

**Cost with an SDK.** The SDK's ``record`` / ``add`` costs 6-9 us each (a frozenset of the
attributes, a lock, the aggregation, an exemplar check), and a call makes three or more. So the
per-call measurements are deferred: the call appends them to a queue (with the context they were
made in, for exemplars) and they reach the SDK off the call path -- at every collection (the
first thing graylb's observable instruments do when read), from a background thread every
0.25 s, and at exit. :func:`flush` hands them over at once. Handed over in batches, they also
cost the process less CPU than recorded one by one on the call path.
"""

from __future__ import annotations

import atexit
import collections
import importlib.metadata
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextvars import Token
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY, _SUPPRESS_INSTRUMENTATION_KEY, Context
from opentelemetry.metrics import CallbackOptions, Histogram, Observation
from opentelemetry.metrics import _internal as _metrics_internal
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from .served import Served

if TYPE_CHECKING:
    from .call import Call
    from .guard.trip import GuardTrip
    from .instance import Instance

# The API's stand-in until an SDK's provider is set (a private name, hence the fallback).
_NOOP_METER_PROVIDERS: tuple[type, ...] = (metrics.NoOpMeterProvider,)
if isinstance(getattr(_metrics_internal, "_ProxyMeterProvider", None), type):
    _NOOP_METER_PROVIDERS += (_metrics_internal._ProxyMeterProvider,)

_NOOP_TRACER_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

__all__ = [
    "DURATION_BUCKETS",
    "Attempt",
    "Observer",
    "annotate_span",
    "base_attributes",
    "http_duration",
    "rpc_duration",
    "inject",
    "observer",
    "record_call",
    "record_ejection",
    "record_guard_trip",
    "record_no_instance",
    "record_rules_rejected",
    "record_subset_empty",
    "status_class",
    "watch",
]

log = logging.getLogger("graylb")

try:
    VERSION = importlib.metadata.version("graylb")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    VERSION = "0.0.0"

#: Histogram boundaries (seconds) for every duration graylb records: 1 ms to 10 s in a 1-2.5-5-7.5
#: progression, so a quantile interpolated inside a bucket (Prometheus ``histogram_quantile``) is
#: off by at most one bucket. Passed as the API's advisory: an SDK uses them with no View set.
#: (The SDK's default boundaries, 0 5 10 25 ... 10000, are sized for milliseconds: every call
#: under 5 s would land in the first bucket.)
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

# -- instruments (created once, through the API's proxy meter: they start recording when an SDK's
# meter provider is set, whenever that happens) ----------------------------------------------

HTTP_CLIENT_REQUEST_DURATION = "http.client.request.duration"  # semconv (stable)
RPC_CLIENT_CALL_DURATION = "rpc.client.call.duration"  # semconv (release candidate)

_meter = metrics.get_meter("graylb", VERSION)
#: The attempt histograms (HTTP, gRPC), for :class:`Attempt`.
http_duration = _meter.create_histogram(
    HTTP_CLIENT_REQUEST_DURATION,
    unit="s",
    description="Duration of HTTP client requests: one per attempt, attributed to the version that answered",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
rpc_duration = _meter.create_histogram(
    RPC_CLIENT_CALL_DURATION,
    unit="s",
    description="Duration of outgoing gRPC calls: one per attempt, attributed to the version that answered",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
_calls = _meter.create_counter(
    "graylb.client.calls", unit="{call}", description="Routed calls (all attempts together), by final outcome"
)
_call_duration = _meter.create_histogram(
    "graylb.client.call.duration",
    unit="s",
    description="Routed call duration, all attempts and retries included",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
_retries = _meter.create_counter(
    "graylb.client.retries", unit="{retry}", description="Attempts that failed and were retried, by the failed version"
)
_fallbacks = _meter.create_counter(
    "graylb.client.fallbacks",
    unit="{call}",
    description="Calls served from the fallback subset because the chosen one had no routable instance",
)
_ejections = _meter.create_counter(
    "graylb.outlier.ejections", unit="{ejection}", description="Instances ejected by outlier detection"
)
_rules_rejected = _meter.create_counter(
    "graylb.rules.rejected", unit="{document}", description="Rule documents rejected by validation"
)
_guard_trips = _meter.create_counter(
    "graylb.guard.trips",
    unit="{trip}",
    description="Canary guards that tripped: the canary subset judged worse than its baseline and shed",
)
_subset_empty = _meter.create_counter(
    "graylb.subset.empty",
    unit="{event}",
    description="Declared subsets found to select no instance of a service that has some",
)

# -- is anything listening? -----------------------------------------------------------------


class Observer:
    """What is installed: ``tracer`` (None without a tracer provider) and ``metering``."""

    __slots__ = ("tracer", "metering")

    def __init__(self, tracer: Tracer | None, metering: bool) -> None:
        self.tracer = tracer
        self.metering = metering


_tracer: Tracer | None = None  # graylb's tracer, once a real provider is installed (it stays)
_metering = False  # ditto for the meter provider
_both: Observer | None = None  # both installed: the answer never changes again
_metrics_only: Observer | None = None  # a meter provider and no tracer provider, so far

# The API's own getters cost ~0.6 us each while nothing is set (an os.environ lookup for the
# OTEL_PYTHON_*_PROVIDER variables): too much for every call of a process without an SDK. So the
# globals they read are read directly -- private names, hence the fallbacks: with an API that
# lacks them, or with a provider named by those variables, the getters are asked every time.
_TRACE_API: Any = trace if hasattr(trace, "_TRACER_PROVIDER") else None
_METRICS_API: Any = _metrics_internal if hasattr(_metrics_internal, "_METER_PROVIDER") else None
_TRACE_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_METRICS_ENV = "OTEL_PYTHON_METER_PROVIDER" in os.environ
_noop_seen: list[object] = []  # providers found to be no-ops (NoOpTracerProvider set on purpose)


def observer() -> Observer | None:
    """``None`` while no SDK is installed (the per-call fast path); otherwise what to record.

    Global providers can be set once per process, so a positive answer is cached; a negative
    one costs two global reads."""
    both = _both
    if both is not None:
        return both
    if (
        _TRACE_API is not None
        and _METRICS_API is not None
        and not (_TRACE_ENV or _METRICS_ENV)
        and (_TRACE_API._TRACER_PROVIDER is None or _TRACE_API._TRACER_PROVIDER in _noop_seen)
    ):
        if _METRICS_API._METER_PROVIDER is None or _METRICS_API._METER_PROVIDER in _noop_seen:
            return None
        if _metrics_only is not None:  # metrics only, and still no tracer provider: as last time
            return _metrics_only
    return _look()


def _look() -> Observer | None:
    global _tracer, _metering, _both, _metrics_only
    tracer = _tracer
    if tracer is None:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, _NOOP_TRACER_PROVIDERS):
            tracer = _tracer = trace.get_tracer("graylb", VERSION, provider)
        elif not isinstance(provider, trace.ProxyTracerProvider) and provider not in _noop_seen:
            _noop_seen.append(provider)
    metering = _metering
    if not metering:
        meter_provider = metrics.get_meter_provider()
        if not isinstance(meter_provider, _NOOP_METER_PROVIDERS):
            metering = _metering = True
        elif isinstance(meter_provider, metrics.NoOpMeterProvider) and meter_provider not in _noop_seen:
            _noop_seen.append(meter_provider)
    if tracer is None and not metering:
        return None
    found = Observer(tracer, metering)
    if tracer is not None and metering:
        _both = found
    elif tracer is None:
        _metrics_only = found
    return found


# -- deferred measurements --------------------------------------------------------------------

# (bound record/add of an instrument, value, attributes, the context it was made in). A deque's
# append and popleft are atomic: calls append without a lock, any number of flushers drain.
_pending: collections.deque[tuple[Callable[..., None], float, dict[str, Any], Context]] = collections.deque()
_flusher: threading.Thread | None = None
_FLUSH_EVERY = 0.25  # s: how stale a measurement can get when nothing collects in between
_with_context = True  # the installed API's instruments take ``context=`` (opentelemetry-api 1.28+)


_MAX_PENDING = 50_000  # measurements queued at most (~10 MB): beyond, a call records its own


def _defer(record: Callable[..., None], value: float, attrs: dict[str, Any]) -> None:
    if len(_pending) >= _MAX_PENDING:  # the flusher is behind (a process short of CPU): no deferral
        _hand_over(record, value, attrs, otel_context.get_current())
        return
    _pending.append((record, value, attrs, otel_context.get_current()))
    if _flusher is None:
        _start_flusher()


def flush() -> None:
    """Hand every deferred measurement to the SDK now (collection and a background thread do it
    anyway; tests and short scripts may want it sooner)."""
    # One drainer at a time: a collection that flushes while the thread is handing one over waits
    # for it, so that measurement is in this collection rather than the next. Calls never take it.
    with _drain_lock:
        pop = _pending.popleft
        while True:
            try:
                item = pop()
            except IndexError:
                return
            _hand_over(*item)


def _hand_over(record: Callable[..., None], value: float, attrs: dict[str, Any], ctx: Context) -> None:
    global _with_context
    try:
        if _with_context:
            try:
                record(value, attrs, context=ctx)
                return
            except TypeError:  # an API before 1.28: no context for synchronous instruments
                _with_context = False
        record(value, attrs)
    except Exception:  # never lose the others, never raise into a call or a collection
        log.debug("graylb: a measurement was refused by the SDK", exc_info=True)


def _start_flusher() -> None:
    global _flusher
    with _flusher_lock:
        if _flusher is not None:
            return
        thread = threading.Thread(target=_flush_forever, name="graylb-telemetry", daemon=True)
        _flusher = thread
        thread.start()
    atexit.register(flush)  # after the SDK's own exit hook was registered: so it runs first


def _flush_forever() -> None:
    # A batch every 0.25 s rather than a wake-up per few hundred measurements: draining many at
    # once keeps the SDK's code and data in cache, and wakes no thread on the call path. Measured
    # (benchmarks/own_cost.py, graylb with an SDK's metrics, all threads, per request): 48-54 us
    # batched this way, 79-85 us recorded on the call path, 90 us with a wake-up every 512.
    idle = threading.Event()
    while not idle.wait(_FLUSH_EVERY):
        flush()


def _forget_after_fork() -> None:
    global _flusher, _flusher_lock, _drain_lock
    _flusher, _flusher_lock, _drain_lock = None, threading.Lock(), threading.Lock()  # the thread did not survive
    _pending.clear()  # the parent reports its own calls


_flusher_lock = threading.Lock()
_drain_lock = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# -- attempts -------------------------------------------------------------------------------


def status_class(status: int) -> str:
    """``2xx`` ... ``5xx`` (``1xx`` too; anything else is ``other``)."""
    return _STATUS_CLASSES.get(status // 100, "other")


_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def base_attributes(call: Call, instance: Instance) -> dict[str, Any]:
    """The graylb attributes of one attempt's measurements (bounded: no instance id)."""
    d = call.decision
    return {
        "graylb.service": d.service,
        "graylb.route": d.route,
        "graylb.subset": d.subset,
        "graylb.version": instance.version or "",
        "graylb.lane": call.in_lane,
    }


def span_attributes(call: Call, instance: Instance) -> dict[str, Any]:
    """The attributes every attempt's CLIENT span carries, HTTP or gRPC: the peer it went to and
    graylb's routing (spans may name the instance; metrics never do)."""
    d = call.decision
    return {
        "network.peer.address": instance.host,
        "network.peer.port": instance.port,
        "graylb.service": d.service,
        "graylb.route": d.route,
        "graylb.subset": d.subset,
        "graylb.version": instance.version or "",
        "graylb.instance": instance.id,
        "graylb.attempt": call.attempts,
    }


class Attempt:
    """One attempt's telemetry, from the moment it is sent to its outcome.

    ``span`` is its CLIENT span (None without tracing), a child of the caller's current span and
    made current, with the OpenTelemetry instrumentations of the layer below suppressed, from
    :meth:`enter` to :meth:`leave`; :meth:`end` records the attempt's duration on ``histogram``
    (with metering) and ends the span -- exactly once."""

    __slots__ = ("attrs", "span", "started", "histogram", "retry_attrs", "token")

    def __init__(
        self,
        obs: Observer,
        histogram: Histogram,
        attrs: dict[str, Any],
        name: str,
        span_attrs: Mapping[str, Any] | None,
    ) -> None:
        self.attrs = attrs if obs.metering else None
        self.histogram = histogram
        self.retry_attrs = attrs
        self.token: Token[Context] | None = None
        tracer = obs.tracer
        self.span: Span | None = None
        if tracer is not None:
            self.span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=span_attrs)
        self.started = time.perf_counter()

    def enter(self, everything: bool = False) -> None:
        """Make the span current for the layer below, and suppress the OpenTelemetry
        instrumentations there (httpx's checks the HTTP key, grpc's only the general one:
        ``everything``), so the attempt has one client span and one ``traceparent``: graylb's."""
        ctx = otel_context.set_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY, True)
        if everything:
            ctx = otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True, ctx)
        if self.span is not None:
            ctx = trace.set_span_in_context(self.span, ctx)
        self.token = otel_context.attach(ctx)

    def leave(self) -> None:
        token, self.token = self.token, None
        if token is not None:
            try:
                otel_context.detach(token)
            except Exception:  # detached elsewhere (another context): nothing left to undo
                pass

    def end(
        self,
        outcome: str,
        status: str | None = None,
        error_type: str | None = None,
        extra: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
        retrying: bool = False,
    ) -> None:
        """``status``: the status class (``5xx``) or gRPC code name; ``error_type``: the
        conventions' ``error.type`` when the attempt failed; ``extra``: protocol attributes
        known at the end (``http.response.status_code``, ``rpc.response.status_code``)."""
        self.leave()
        seconds = time.perf_counter() - self.started
        attrs = self.attrs
        if attrs is not None:
            attrs["graylb.outcome"] = outcome
            if status is not None:
                attrs["graylb.status"] = status
            if error_type is not None:
                attrs["error.type"] = error_type
            if extra:
                attrs.update(extra)
            _defer(self.histogram.record, seconds, attrs)
            self.attrs = None
            if retrying:
                base = self.retry_attrs
                _defer(
                    _retries.add,
                    1,
                    {
                        "graylb.service": base["graylb.service"],
                        "graylb.route": base["graylb.route"],
                        "graylb.subset": base["graylb.subset"],
                        "graylb.version": base["graylb.version"],
                        "error.type": error_type or outcome,
                    },
                )
        span = self.span
        if span is not None:
            self.span = None
            if span.is_recording():
                span.set_attribute("graylb.outcome", outcome)
                if extra:
                    span.set_attributes(extra)
                if error is not None:
                    span.record_exception(error)
                if error_type is not None:
                    span.set_attribute("error.type", error_type)
                    span.set_status(Status(StatusCode.ERROR, str(error) if error is not None else error_type))
            span.end()


def inject(attempt: Attempt) -> dict[str, str]:
    """The trace-context headers for ``attempt``'s span, written by the globally configured
    propagator (W3C ``traceparent`` by default), lower-case names. Empty without a span."""
    carrier: dict[str, str] = {}
    if attempt.span is not None:
        try:
            propagate.inject(carrier, context=trace.set_span_in_context(attempt.span))
        except Exception:  # a propagator's bug must not fail the call: it goes without trace context
            log.debug("graylb: the OpenTelemetry propagator failed to inject", exc_info=True)
            return {}
    return {k.lower(): v for k, v in carrier.items()} if carrier else carrier


# -- calls ------------------------------------------------------------------------------------


def record_call(
    served: Served,
    in_lane: bool,
    outcome: str,
    seconds: float,
    status: str | None = None,
    error_type: str | None = None,
) -> None:
    """One routed call ended (after its retries): ``served`` is the last attempt's instance."""
    attrs: dict[str, Any] = {
        "graylb.service": served.service,
        "graylb.route": served.route,
        "graylb.subset": served.subset,
        "graylb.version": served.version or "",
        "graylb.lane": in_lane,
        "graylb.outcome": outcome,
    }
    if status is not None:
        attrs["graylb.status"] = status
    if error_type is not None:
        attrs["error.type"] = error_type
    _defer(_calls.add, 1, attrs)
    _defer(_call_duration.record, seconds, attrs)
    if served.fallback_from is not None:
        _defer(
            _fallbacks.add,
            1,
            {
                "graylb.service": served.service,
                "graylb.route": served.route,
                "graylb.subset": served.subset,
                "graylb.fallback_from": served.fallback_from,
            },
        )


def record_no_instance(service: str, subset: str | None) -> None:
    if observer() is None:
        return
    _calls.add(
        1,
        {
            "graylb.service": service,
            "graylb.subset": subset or "",
            "graylb.version": "",
            "graylb.outcome": "no_instance",
        },
    )


def record_ejection(service: str, version: str | None) -> None:
    _ejections.add(1, {"graylb.service": service, "graylb.version": version or ""})


def record_rules_rejected(source: str) -> None:
    _rules_rejected.add(1, {"graylb.rules.source": source})


def record_guard_trip(trip: GuardTrip) -> None:
    """A canary guard tripped: count it, and put the evidence on the current span as an event."""
    _guard_trips.add(
        1, {"graylb.service": trip.service, "graylb.subset": trip.canary, "graylb.guard.reason": trip.reason}
    )
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            "graylb.guard.trip",
            {
                "graylb.service": trip.service,
                "graylb.subset": trip.canary,
                "graylb.guard.baseline": trip.baseline,
                "graylb.guard.reason": trip.reason,
                "graylb.guard.evidence": trip.summary,
                "graylb.guard.versions": list(trip.versions),
            },
        )


def record_subset_empty(service: str, subset: str) -> None:
    _subset_empty.add(1, {"graylb.service": service, "graylb.subset": subset})


def annotate_span(served: Served) -> None:
    """Put the routing result on the current span (the caller's), if one is recording."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(
            {
                "graylb.service": served.service,
                "graylb.route": served.route,
                "graylb.subset": served.subset,
                "graylb.version": served.version or "",
                "graylb.instance": served.instance,
                "graylb.attempts": served.attempts,
            }
        )


# -- observed state: snapshot ages, configured weights, subset sizes ----------------------------


class Observed(Protocol):
    """What the observable gauges read at collection time (a :class:`~graylb.Balancer`)."""

    def snapshot_ages(self) -> Iterable[tuple[str, str, float]]:
        """``(service, registry, age in seconds)`` per watched service with a snapshot."""

    def route_weights(self) -> Iterable[tuple[str, str, str, float]]:
        """``(service, route, subset, configured share 0-1)``, the default route included."""

    def subset_sizes(self) -> Iterable[tuple[str, str, str, int]]:
        """``(service, subset, version, routable instances)`` per declared subset and version."""

    def guard_states(self) -> Iterable[tuple[str, str, int, int, bool]]:
        """``(service, side, requests, errors, tripped)`` per canary guard and side."""


# Weak: the gauges' callbacks live as long as the process; a Balancer must not.
_sources: weakref.WeakSet[Observed] = weakref.WeakSet()


def watch(source: Observed) -> None:
    """Report ``source``'s state on the observable gauges while it lives."""
    _sources.add(source)


def _gather(read: Callable[[Observed], Iterable[tuple[Any, ...]]]) -> Iterable[tuple[Any, ...]]:
    flush()  # a collection reads graylb's gauges first: every deferred measurement is in before it
    for source in list(_sources):
        try:
            yield from read(source)
        except Exception:  # never into the SDK's collection
            log.debug("graylb: could not read %r for the gauges", source, exc_info=True)


def _observe_snapshot_ages(options: CallbackOptions) -> Iterable[Observation]:
    oldest: dict[tuple[str, str], float] = {}
    for service, registry, age in _gather(lambda s: s.snapshot_ages()):
        key = (service, registry)
        if age > oldest.get(key, -1.0):
            oldest[key] = age
    return [Observation(age, {"graylb.service": s, "graylb.registry": r}) for (s, r), age in oldest.items()]


def _observe_route_weights(options: CallbackOptions) -> Iterable[Observation]:
    # Several balancers may route one service (with the same rules, normally): one series each.
    shares = {(svc, route, subset): share for svc, route, subset, share in _gather(lambda s: s.route_weights())}
    return [
        Observation(share, {"graylb.service": svc, "graylb.route": route, "graylb.subset": subset})
        for (svc, route, subset), share in shares.items()
    ]


def _observe_subset_sizes(options: CallbackOptions) -> Iterable[Observation]:
    sizes = {(svc, subset, version): n for svc, subset, version, n in _gather(lambda s: s.subset_sizes())}
    return [
        Observation(n, {"graylb.service": svc, "graylb.subset": subset, "graylb.version": version})
        for (svc, subset, version), n in sizes.items()
    ]


def _guard_rows() -> dict[tuple[str, str], tuple[int, int, bool]]:
    """Per (service, side): the process's attempts and errors (summed over its balancers)."""
    rows: dict[tuple[str, str], tuple[int, int, bool]] = {}
    for svc, side, n, e, tripped in _gather(lambda s: s.guard_states()):
        n0, e0, t0 = rows.get((svc, side), (0, 0, False))
        rows[(svc, side)] = (n0 + n, e0 + e, t0 or tripped)
    return rows


def _observe_guard_requests(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(n, {"graylb.service": s, "graylb.guard.side": d}) for (s, d), (n, _, _) in _guard_rows().items()
    ]


def _observe_guard_errors(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(e, {"graylb.service": s, "graylb.guard.side": d}) for (s, d), (_, e, _) in _guard_rows().items()
    ]


def _observe_guard_tripped(options: CallbackOptions) -> Iterable[Observation]:
    tripped = {s: t for (s, _), (_, _, t) in _guard_rows().items()}
    return [Observation(int(t), {"graylb.service": s}) for s, t in tripped.items()]


_snapshot_age = _meter.create_observable_gauge(
    "graylb.registry.snapshot.age",
    callbacks=[_observe_snapshot_ages],
    unit="s",
    description="Seconds since the registry last confirmed the snapshot of a watched service (the oldest, "
    "when several balancers watch it)",
)
_route_weight = _meter.create_observable_gauge(
    "graylb.route.weight",
    callbacks=[_observe_route_weights],
    # No unit: "1" would become a `_ratio` suffix through the Collector but not through the Python
    # Prometheus exporter; without one the name is graylb_route_weight everywhere.
    unit="",
    description="Configured share (0-1) of a route's calls that go to a subset; route 'default' names the "
    "service's default subset, the baseline a canary is compared with",
)
_guard_requests = _meter.create_observable_gauge(
    "graylb.guard.window.requests",
    callbacks=[_observe_guard_requests],
    unit="{attempt}",
    description="Attempts a canary guard counts in its window, per side (canary / baseline), in this process",
)
_guard_errors = _meter.create_observable_gauge(
    "graylb.guard.window.errors",
    callbacks=[_observe_guard_errors],
    unit="{attempt}",
    description="Failed attempts a canary guard counts in its window, per side, in this process",
)
_guard_tripped = _meter.create_observable_gauge(
    "graylb.guard.tripped",
    callbacks=[_observe_guard_tripped],
    unit="",
    description="1 while the canary guard of a service has tripped in this process, else 0",
)
_subset_instances = _meter.create_observable_gauge(
    "graylb.subset.instances",
    callbacks=[_observe_subset_sizes],
    unit="{instance}",
    description="Routable instances a declared subset selects in the current snapshot, by version (a single 0 "
    "with an empty version: it selects nothing)",
)
