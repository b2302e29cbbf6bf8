"""GrayPropagator on its own and beside OpenTelemetry's propagators (in both orders), the
``graylb.current()`` fallback to the OpenTelemetry context, and the edge trust rules.

The end-to-end proof over two instrumented processes is tests/integration/test_otel_two_hops.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import graylb
from graylb.propagation import EMPTY, GrayContext, HeaderCodec, attach, bind, current, detach, gray, otel
from graylb.propagation import context as context_module
from graylb.propagation.middleware import GrayASGIMiddleware, GrayWSGIMiddleware
from graylb.propagation.otel import GrayPropagator, gray_context

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ORDERS = {
    "tracecontext,baggage,graylb": lambda gray: [TraceContextTextMapPropagator(), W3CBaggagePropagator(), gray],
    "graylb,tracecontext,baggage": lambda gray: [gray, TraceContextTextMapPropagator(), W3CBaggagePropagator()],
}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without the fallback and with default trust, and gets them back as they were."""
    monkeypatch.setattr(context_module, "_FALLBACK", None)
    monkeypatch.setattr(otel, "_trust_check", None)
    yield


def composite(order: str, **kwargs: Any) -> CompositePropagator:
    return CompositePropagator(ORDERS[order](GrayPropagator(**kwargs)))


def members(header: str | None) -> list[str]:
    return [m for m in (header or "").split(",") if m]


def attached(ctx: Context) -> Any:
    """Run a block with ``ctx`` as the current OpenTelemetry context (what instrumentations do)."""

    class _Attached:
        def __enter__(self) -> Context:
            self.token = otel_context.attach(ctx)
            return ctx

        def __exit__(self, *exc: object) -> None:
            otel_context.detach(self.token)

    return _Attached()


# ---------------------------------------------------------------------------- the table

GARBAGE = {
    "x-gray-lane": "not a lane!;;;" * 20,
    "x-gray-pin": "%%%,=,orders,==2,bad name=1," + "x" * 9000,
    "baggage": "gray.lane=%zz,gray.pin.bad name=1,,;=,=,gray.=x",
}

AFTER, FIRST = ORDERS  # graylb after baggage (recommended), graylb first


def by_order(after: Any, first: Any) -> dict[str, Any]:
    """An expectation that depends on whether graylb runs after the baggage propagator or before."""
    return {AFTER: after, FIRST: first}


# (name, inbound headers, expected gray context or None (context unchanged),
#  expected plain headers out, expected baggage members out (order-insensitive; None: not checked)).
# Either expectation may be by_order(...).
TABLE: list[tuple[str, dict[str, str], Any, dict[str, str], Any]] = [
    ("empty", {}, None, {}, set()),
    ("lane only", {"x-gray-lane": "beta"}, GrayContext(lane="beta"), {"x-gray-lane": "beta"}, {"gray.lane=beta"}),
    (
        "forced lane from baggage only",
        {"baggage": "gray.lane=beta,gray.lane.forced=1"},
        GrayContext(lane="beta", lane_forced=True),
        {"x-gray-lane": "beta;forced"},
        {"gray.lane=beta", "gray.lane.forced=1"},
    ),
    (
        "pins only",
        {"x-gray-pin": "orders=2.0.0,payments=%3E%3D1.2%2C%3C2"},
        GrayContext(pins={"orders": "2.0.0", "payments": ">=1.2,<2"}),
        {"x-gray-pin": "orders=2.0.0,payments=%3E%3D1.2%2C%3C2"},
        {"gray.pin.orders=2.0.0", "gray.pin.payments=%3E%3D1.2%2C%3C2"},
    ),
    (
        "garbage: skipped, never raised",
        GARBAGE,
        # After baggage, graylb removes the gray members the codec refused (and says "empty");
        # first, it has nothing to remove and the baggage propagator adds them after it.
        by_order(after=EMPTY, first=None),
        {},
        by_order(after=set(), first={"gray.lane=%25zz", "gray.=x"}),
    ),
    (
        "foreign baggage members kept",
        {"x-gray-lane": "beta", "baggage": "tenant=acme,gray.user-group=beta,k2=v%202"},
        GrayContext(lane="beta", values={"user-group": "beta"}),
        {"x-gray-lane": "beta"},
        {"tenant=acme", "k2=v+2", "gray.lane=beta", "gray.user-group=beta"},
    ),
    (
        "plain headers win over baggage",
        {"x-gray-pin": "orders=2.0.0", "baggage": "gray.pin.orders=1.0.0,gray.lane=beta"},
        GrayContext(lane="beta", pins={"orders": "2.0.0"}),
        {"x-gray-lane": "beta", "x-gray-pin": "orders=2.0.0"},
        None,  # depends on the order: see test_baggage_members_follow_the_accepted_context
    ),
]


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize(("name", "inbound", "expected", "plain_out", "baggage_out"), TABLE, ids=[t[0] for t in TABLE])
def test_extract_then_inject(
    order: str, name: str, inbound: dict[str, str], expected: Any, plain_out: dict[str, str], baggage_out: Any
) -> None:
    if isinstance(expected, dict):
        expected = expected[order]
    if isinstance(baggage_out, dict):
        baggage_out = baggage_out[order]
    propagator = composite(order)
    ctx = propagator.extract({**inbound, "traceparent": TRACEPARENT}, context=Context())

    assert gray_context(ctx) == expected
    with attached(ctx):
        assert current() == (expected or EMPTY)
        out: dict[str, str] = {}
        propagator.inject(out)
    assert {k: v for k, v in out.items() if k.startswith("x-gray-")} == plain_out
    assert out["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    sent = members(out.get("baggage"))
    assert len(sent) == len(set(sent)), f"duplicate baggage members: {sent}"
    if baggage_out is not None:
        assert set(sent) == baggage_out


def test_baggage_members_follow_the_accepted_context() -> None:
    inbound = {"x-gray-pin": "orders=2.0.0", "baggage": "gray.pin.orders=1.0.0,gray.lane=bad lane,tenant=acme"}
    # graylb after baggage: the gray members are replaced by the accepted context's.
    after = composite("tracecontext,baggage,graylb").extract(inbound, context=Context())
    assert dict(baggage.get_all(after)) == {"tenant": "acme", "gray.pin.orders": "2.0.0"}
    # graylb first: the baggage propagator adds the wire's members afterwards; the plain header
    # still carries the accepted pin, and the next hop prefers it.
    first = composite("graylb,tracecontext,baggage").extract(inbound, context=Context())
    assert baggage.get_all(first)["gray.pin.orders"] == "1.0.0"
    out: dict[str, str] = {}
    composite("graylb,tracecontext,baggage").inject(out, context=first)
    assert HeaderCodec().extract(out.get).pins == {"orders": "2.0.0"}


@pytest.mark.parametrize("order", list(ORDERS))
def test_what_one_hop_injects_the_next_extracts(order: str) -> None:
    sent = GrayContext(lane="beta", lane_forced=True, pins={"orders": "^2", "payments": "1.2.3+build.7"})
    wire: dict[str, str] = {}
    with gray(lane=sent.lane, pins=sent.pins, force_lane=True):
        composite(order).inject(wire)
    assert "baggage" not in wire  # graylb writes no baggage; nothing was in OpenTelemetry baggage
    assert gray_context(composite(order).extract(wire, context=Context())) == sent


def test_a_failing_getter_or_odd_carrier_never_raises() -> None:
    class Exploding(Getter[Any]):
        def get(self, carrier: Any, key: str) -> list[str] | None:
            raise RuntimeError("boom")

        def keys(self, carrier: Any) -> list[str]:
            return []

    class Odd(Getter[Any]):
        def get(self, carrier: Any, key: str) -> Any:
            return {"x-gray-lane": [None, 7], "x-gray-pin": b"orders=1", "baggage": ["a=1", b"gray.x=1"]}[key]

        def keys(self, carrier: Any) -> list[str]:
            return []

    base = Context({"k": "v"})
    assert GrayPropagator().extract({}, context=base, getter=Exploding()) is base
    ctx = GrayPropagator().extract(object(), context=Context(), getter=Odd())
    assert gray_context(ctx) == GrayContext(pins={"orders": "1"}, values={"x": "1"})


def test_inject_survives_a_failing_setter(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def set(self, carrier: Any, key: str, value: str) -> None:
            raise RuntimeError("read-only carrier")

    with gray(lane="beta"), caplog.at_level(logging.WARNING, "graylb.propagation"):
        GrayPropagator().inject({}, setter=Broken())  # type: ignore[arg-type]
    assert "could not inject" in caplog.text


def test_fields_are_the_plain_headers_it_writes() -> None:
    assert GrayPropagator().fields == {"x-gray-lane", "x-gray-pin"}
    codec = HeaderCodec(lane_header="x-lane", pin_header="x-pin", baggage_prefix="g.")
    assert GrayPropagator(codec).fields == {"x-lane", "x-pin"}
    ctx = GrayPropagator(codec).extract({"x-lane": "beta", "baggage": "g.user-group=staff"}, context=Context())
    assert gray_context(ctx) == GrayContext(lane="beta", values={"user-group": "staff"})
    assert dict(baggage.get_all(ctx)) == {"g.lane": "beta", "g.user-group": "staff"}


def test_a_codec_without_baggage_puts_no_members_and_strips_the_callers() -> None:
    codec = HeaderCodec(baggage=False)
    inbound = {"x-gray-lane": "beta", "baggage": "gray.lane=alpha,tenant=acme"}
    ctx = composite("tracecontext,baggage,graylb", codec=codec).extract(inbound, context=Context())
    assert gray_context(ctx) == GrayContext(lane="beta")
    assert dict(baggage.get_all(ctx)) == {"tenant": "acme"}


# ---------------------------------------------------------------------------- which context inject writes


def test_inject_prefers_an_explicit_context_then_graylb_current() -> None:
    propagator = GrayPropagator()
    explicit = otel.set_value(otel._GRAY_KEY, GrayContext(lane="explicit"), Context())

    def plain(context: Context | None = None) -> dict[str, str]:
        out: dict[str, str] = {}
        propagator.inject(out, context=context)
        return out

    extracted = propagator.extract({"x-gray-lane": "extracted"}, context=Context())
    with attached(extracted):
        assert plain() == {"x-gray-lane": "extracted"}  # current() falls back to the OTel context
        with gray(lane="block"):
            assert plain() == {"x-gray-lane": "block"}  # graylb's own context wins
            assert plain(explicit) == {"x-gray-lane": "explicit"}  # an explicit context wins
            assert plain(Context()) == {"x-gray-lane": "block"}  # ... when it has one
            # ... of its own: a span's context built on the current one inherits the extracted
            # gray context, and then graylb.current() decides (as instrumentations pass these).
            span = trace.NonRecordingSpan(trace.SpanContext(1, 2, is_remote=False))
            assert plain(trace.set_span_in_context(span)) == {"x-gray-lane": "block"}
        with gray(replace=True):
            assert plain(trace.set_span_in_context(span)) == {}
    assert plain() == {}


# ---------------------------------------------------------------------------- current() fallback


def test_current_reads_the_otel_context_only_where_graylb_attached_nothing() -> None:
    ctx = GrayPropagator().extract({"x-gray-lane": "beta", "x-gray-pin": "orders=2"}, context=Context())
    with attached(ctx):
        assert current() == GrayContext(lane="beta", pins={"orders": "2"})
        token = attach(EMPTY)  # a middleware's decision (an untrusted caller): it wins
        try:
            assert current() is EMPTY
        finally:
            detach(token)
        with gray(values={"user-group": "staff"}) as inner:  # builds on the extracted context
            assert inner == GrayContext(lane="beta", pins={"orders": "2"}, values={"user-group": "staff"})
        with gray(lane="x", replace=True):
            assert current() == GrayContext(lane="x")
    assert current() is EMPTY


def test_without_a_propagator_current_ignores_the_otel_context() -> None:
    key_holder = GrayPropagator()
    ctx = key_holder.extract({"x-gray-lane": "beta"}, context=Context())
    context_module.install_fallback(None)  # as in a process that never created a GrayPropagator
    with attached(ctx):
        assert current() is EMPTY


def test_bind_carries_the_extracted_context_into_a_thread() -> None:
    ctx = GrayPropagator().extract({"x-gray-lane": "beta"}, context=Context())
    seen: list[GrayContext] = []
    with attached(ctx):
        work = bind(lambda: seen.append(current()))
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [GrayContext(lane="beta")]


def test_the_process_override_applies_over_the_fallback() -> None:
    from graylb.testing import pin_version

    ctx = GrayPropagator().extract({"x-gray-lane": "beta"}, context=Context())
    with attached(ctx), pin_version("orders", "2.0.0"):
        assert current() == GrayContext(lane="beta", pins={"orders": "2.0.0"})


# ---------------------------------------------------------------------------- trust


@pytest.mark.parametrize("order", list(ORDERS))
def test_untrusted_callers_set_nothing(order: str) -> None:
    otel.trust(False)
    inbound = {"x-gray-lane": "beta", "baggage": "gray.lane=beta,tenant=acme"}
    base = otel.set_value(otel._GRAY_KEY, GrayContext(lane="stale"), Context())
    ctx = composite(order).extract(inbound, context=base)
    with attached(ctx):
        assert current() == EMPTY
        out: dict[str, str] = {}
        composite(order).inject(out)
    assert "x-gray-lane" not in out
    if order == "tracecontext,baggage,graylb":  # graylb ran last: the caller's gray members are gone too
        assert members(out.get("baggage")) == ["tenant=acme"]


def test_trust_a_network_with_the_carriers_of_server_instrumentations() -> None:
    otel.trust(graylb.trust_networks("10.0.0.0/8"))
    propagator = GrayPropagator()
    asgi_getter = _ScopeGetter()
    for scope, lane in (
        ({"client": ("10.1.2.3", 5000), "headers": [(b"x-gray-lane", b"beta")]}, "beta"),
        ({"client": ("192.0.2.1", 5000), "headers": [(b"x-gray-lane", b"beta")]}, None),
        ({"headers": [(b"x-gray-lane", b"beta")]}, None),  # no peer: untrusted
    ):
        assert _lane(propagator.extract(scope, context=Context(), getter=asgi_getter)) == lane
    environ = {"REMOTE_ADDR": "10.0.0.9", "x-gray-lane": "beta"}
    assert _lane(propagator.extract(environ, context=Context())) == "beta"
    assert _lane(propagator.extract({"x-gray-lane": "beta"}, context=Context())) is None  # plain headers: no peer


def test_an_own_trust_setting_beats_the_module_setting() -> None:
    otel.trust(False)
    assert _lane(GrayPropagator(trust=True).extract({"x-gray-lane": "beta"}, context=Context())) == "beta"
    otel.trust(True)
    assert _lane(GrayPropagator(trust=False).extract({"x-gray-lane": "beta"}, context=Context())) is None
    with pytest.raises(TypeError):
        otel.trust("10.0.0.0/8")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "trusted", "untrusted"),
    [
        (None, ["1.2.3.4"], []),
        ("", ["1.2.3.4"], []),
        ("TRUE", ["1.2.3.4"], []),
        ("false", [], ["1.2.3.4", "127.0.0.1"]),
        ("0", [], ["127.0.0.1"]),
        ("10.0.0.0/8, 127.0.0.1/8", ["10.0.0.1", "127.0.0.2"], ["192.0.2.1"]),
        ("10.0.0.0/8,not-a-network", [], ["10.0.0.1", "127.0.0.1"]),  # fails closed
    ],
)
def test_trust_from_the_environment(raw: str | None, trusted: list[str], untrusted: list[str]) -> None:
    check = otel.trust_check(otel._trust_from_env(raw), "carrier")
    for address in trusted:
        assert check is None or check({"REMOTE_ADDR": address})
    for address in untrusted:
        assert check is not None and not check({"REMOTE_ADDR": address})


def test_graylb_before_baggage_under_restricted_trust_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    otel.trust(False)
    previous = propagate.get_global_textmap()
    global_textmap = composite("graylb,tracecontext,baggage")
    propagate.set_global_textmap(global_textmap)
    try:
        with caplog.at_level(logging.ERROR, "graylb.propagation"):
            for _ in range(3):
                propagate.extract({"x-gray-lane": "beta"})
    finally:
        propagate.set_global_textmap(previous)
    assert caplog.text.count("lists graylb before baggage") == 1


# ---------------------------------------------------------------------------- graylb's middleware too


def _otel_extracted(headers: dict[str, str]) -> Context:
    return composite("tracecontext,baggage,graylb").extract(headers, context=Context())


INBOUND = {"x-gray-lane": "beta", "baggage": "gray.user-group=beta,tenant=acme", "traceparent": TRACEPARENT}


def _outbound() -> dict[str, Any]:
    out: dict[str, str] = {}
    composite("tracecontext,baggage,graylb").inject(out)
    return {"current": current(), "headers": out}


def test_an_untrusted_asgi_middleware_wins_over_what_otel_extracted() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(_outbound())

    async def run(trust: bool) -> None:
        scope = {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in INBOUND.items()]}
        with attached(_otel_extracted(INBOUND)):  # an OpenTelemetry middleware outside graylb's
            await GrayASGIMiddleware(app, trust=trust)(scope, None, None)
            assert gray_context() == GrayContext(lane="beta", values={"user-group": "beta"})  # restored after

    asyncio.run(run(False))
    asyncio.run(run(True))
    untrusted, trusted = seen
    assert untrusted["current"] is EMPTY
    assert untrusted["headers"]["baggage"] == "tenant=acme" and "x-gray-lane" not in untrusted["headers"]
    assert untrusted["headers"]["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    assert trusted["current"] == GrayContext(lane="beta", values={"user-group": "beta"})
    assert trusted["headers"]["x-gray-lane"] == "beta"


def test_an_untrusted_wsgi_middleware_wins_over_what_otel_extracted() -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(_outbound())
        return [b""]

    environ = {"REMOTE_ADDR": "192.0.2.1", "HTTP_X_GRAY_LANE": "beta", "HTTP_BAGGAGE": INBOUND["baggage"]}
    with attached(_otel_extracted(INBOUND)):
        GrayWSGIMiddleware(app, trust=graylb.trust_networks("10.0.0.0/8"))(dict(environ), lambda *a: None)
        assert gray_context() == GrayContext(lane="beta", values={"user-group": "beta"})  # untouched outside
    assert seen[0]["current"] is EMPTY
    assert seen[0]["headers"]["baggage"] == "tenant=acme" and "x-gray-lane" not in seen[0]["headers"]


def test_untrusted_middleware_with_nothing_gray_in_otel_attaches_nothing_extra() -> None:
    assert otel.without_gray(HeaderCodec(), Context()) is None
    assert otel.without_gray(HeaderCodec(), baggage.set_baggage("tenant", "acme", Context())) is None
    scrubbed = otel.without_gray(HeaderCodec(), _otel_extracted(INBOUND))
    assert scrubbed is not None and gray_context(scrubbed) is EMPTY
    assert dict(baggage.get_all(scrubbed)) == {"tenant": "acme"}


class _ScopeGetter(Getter[Any]):
    """opentelemetry-instrumentation-asgi's getter, in short (that package is a test dependency
    of the integration test only)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        found = [v.decode() for k, v in carrier.get("headers") or () if k.decode().lower() == key]
        return found or None

    def keys(self, carrier: Any) -> list[str]:
        return [k.decode() for k, _ in carrier.get("headers") or ()]


def _lane(ctx: Context) -> str | None:
    found = gray_context(ctx)
    return None if found is None else found.lane
