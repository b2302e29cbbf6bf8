"""GrayPropagator end to end: two OpenTelemetry-instrumented hops, each its own process.

The test calls hop 1 over loopback with ``x-gray-lane`` / ``x-gray-pin`` and a ``baggage``
header; hop 1 (an ASGI app under uvicorn, instrumented by opentelemetry-instrumentation-asgi)
calls hop 2 with ``requests`` instrumented by opentelemetry-instrumentation-requests -- no graylb
middleware, no graylb transport -- and both report ``graylb.current()``. Only
``OTEL_PROPAGATORS`` (and, at the edge, graylb's trust settings) changes between cases, so what
reaches hop 2 is what the propagator carried. See otel_hop.py for the hop itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

HOP = Path(__file__).resolve().parent / "otel_hop.py"
WITH_GRAYLB = "tracecontext,baggage,graylb"
GRAYLB_FIRST = "graylb,tracecontext,baggage"
DEFAULT = None  # OTEL_PROPAGATORS unset: OpenTelemetry's default, tracecontext,baggage

SENT = {
    "x-gray-lane": "beta",
    "x-gray-pin": "orders=2.0.0,payments=%5E1.2",
    "baggage": "tenant=acme,gray.user-group=beta",
}
PINS = {"orders": "2.0.0", "payments": "^1.2"}


class Hop:
    def __init__(self, tmp: Path, name: str, propagators: str | None, *args: str, **env: str) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GRAYLB_OTEL_"))}
        if propagators is not None:
            environ["OTEL_PROPAGATORS"] = propagators
        environ.update(env)
        self.log = tmp / f"{name}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HOP), *args], stdout=subprocess.PIPE, stderr=log, text=True, env=environ
            )
        assert self.proc.stdout is not None
        port = self.proc.stdout.readline().strip()  # printed once the socket listens
        if not port:
            self.proc.wait(timeout=30)
            pytest.fail(f"{name} did not start:\n{self.log.read_text()}")
        self.url = f"http://127.0.0.1:{port}/"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def hop2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str | None], Hop]]:
    """The last hop, one process per OTEL_PROPAGATORS value, shared by the module's tests."""
    started: dict[str | None, Hop] = {}
    tmp = tmp_path_factory.mktemp("hop2")

    def get(propagators: str | None) -> Hop:
        if propagators not in started:
            started[propagators] = Hop(tmp, f"hop2-{len(started)}", propagators)
        return started[propagators]

    yield get
    for hop in started.values():
        hop.stop()


def call_chain(
    tmp: Path, hop2: Callable[[str | None], Hop], propagators: str | None, *args: str, **env: str
) -> tuple[dict[str, Any], dict[str, Any], Hop]:
    """Start hop 1 (``args`` / ``env`` are its own), call it with SENT; (hop 1's report, hop 2's, hop 1)."""
    hop1 = Hop(tmp, "hop1", propagators, "--next", hop2(propagators).url, *args, **env)
    try:
        answer = httpx.get(hop1.url, headers=SENT, timeout=30)
        assert answer.status_code == 200, answer.text
        report = answer.json()
    finally:
        hop1.stop()
    return report, report["next"], hop1


def members(received: dict[str, list[str]]) -> list[str]:
    """Every member of every baggage header received, in order (duplicates kept)."""
    return [m.strip() for value in received.get("baggage", []) for m in value.split(",")]


def assert_same_trace(first: dict[str, Any], second: dict[str, Any]) -> None:
    assert first["trace_id"] != "0" * 32
    assert first["trace_id"] == second["trace_id"]


@pytest.mark.parametrize("propagators", [WITH_GRAYLB, GRAYLB_FIRST])
def test_lane_and_pins_cross_two_instrumented_hops(tmp_path: Path, hop2: Any, propagators: str) -> None:
    first, second, _ = call_chain(tmp_path, hop2, propagators)

    for report in (first, second):
        assert (report["lane"], report["pins"], report["values"]) == ("beta", PINS, {"user-group": "beta"})
    assert_same_trace(first, second)
    # On the wire to hop 2: graylb's propagator wrote the plain headers once each, OpenTelemetry's
    # baggage propagator the one baggage header: foreign member kept, gray members once each.
    received = second["received"]
    assert received["x-gray-lane"] == ["beta"]
    assert received["x-gray-pin"] == ["orders=2.0.0,payments=%5E1.2"]
    assert len(received["baggage"]) == 1
    sent = members(received)
    assert len(sent) == len({m.split("=")[0] for m in sent}), f"duplicate baggage members: {sent}"
    assert "tenant=acme" in sent and "gray.user-group=beta" in sent
    assert second["otel_baggage"]["tenant"] == "acme"
    if propagators == WITH_GRAYLB:  # graylb ran after baggage: the members are the accepted context's
        assert {"gray.lane=beta", "gray.pin.orders=2.0.0", "gray.pin.payments=%5E1.2"} <= set(sent)


def test_without_the_graylb_propagator_hop_2_sees_nothing(tmp_path: Path, hop2: Any) -> None:
    first, second, _ = call_chain(tmp_path, hop2, DEFAULT)

    assert_same_trace(first, second)  # OpenTelemetry itself works ...
    for report in (first, second):  # ... but nothing puts the gray context where graylb reads it
        assert (report["lane"], report["pins"], report["values"]) == (None, {}, {})
    assert "x-gray-lane" not in second["received"] and "x-gray-pin" not in second["received"]


UNTRUSTED = {
    "graylb middleware trust=False inside the OpenTelemetry middleware": (("--gray-middleware", "untrusted"), {}),
    "GRAYLB_OTEL_TRUST=false": ((), {"GRAYLB_OTEL_TRUST": "false"}),
    "GRAYLB_OTEL_TRUST=10.0.0.0/8 (the caller is on loopback)": ((), {"GRAYLB_OTEL_TRUST": "10.0.0.0/8"}),
}


@pytest.mark.parametrize("case", list(UNTRUSTED))
def test_an_untrusted_caller_sets_nothing_and_nothing_is_forwarded(tmp_path: Path, hop2: Any, case: str) -> None:
    args, env = UNTRUSTED[case]
    first, second, _ = call_chain(tmp_path, hop2, WITH_GRAYLB, *args, **env)

    for report in (first, second):
        assert (report["lane"], report["pins"], report["values"]) == (None, {}, {})
    assert "x-gray-lane" not in second["received"] and "x-gray-pin" not in second["received"]
    assert members(second["received"]) == ["tenant=acme"]  # gray members gone, the foreign one kept
    assert_same_trace(first, second)


def test_a_trusted_network_sets_the_context(tmp_path: Path, hop2: Any) -> None:
    first, second, _ = call_chain(tmp_path, hop2, WITH_GRAYLB, GRAYLB_OTEL_TRUST="127.0.0.1/8")
    assert (first["lane"], second["lane"], second["pins"]) == ("beta", "beta", PINS)


def test_graylb_before_baggage_with_restricted_trust_is_reported(tmp_path: Path, hop2: Any) -> None:
    # The documented limit: listed before baggage, graylb cannot remove the caller's gray baggage
    # members (the baggage propagator adds them after it). The plain headers and graylb.current()
    # still follow the trust setting, and the misconfiguration is logged.
    first, second, hop1 = call_chain(tmp_path, hop2, GRAYLB_FIRST, GRAYLB_OTEL_TRUST="false")

    assert (first["lane"], first["pins"], first["values"]) == (None, {}, {})
    assert "x-gray-lane" not in second["received"] and "x-gray-pin" not in second["received"]
    assert "lists graylb before baggage" in hop1.log.read_text()
    assert second["values"] == {"user-group": "beta"}  # the leak the log line is about
