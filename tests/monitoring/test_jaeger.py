"""graylb's spans in a real Jaeger (v2, the Collector-based all-in-one, memory storage) over OTLP/HTTP.

Two processes (two_hops_app.py), each exporting with ``graylb.monitoring.export_traces`` under
its own ``service.name``: "frontend", in a "checkout" span, calls ``http://orders/chain``
through graylb; "orders" 2.0.0 (behind GrayWSGIMiddleware) handles it in a SERVER span and calls
``http://inventory/x`` (3.1.0) through graylb. Jaeger's query API must then hold one trace
spanning both services: checkout -> graylb CLIENT span (orders 2.0.0) -> orders' handler ->
graylb CLIENT span (inventory 3.1.0).

Jaeger runs from the cache ``make real-registries`` fills (manifest key ``jaeger``), on
127.0.0.1 and free ports only: its own config, not the all-in-one default (which listens on
every interface, on fixed ports, and also takes Jaeger/Zipkin protocols and serves metrics).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.monitoring.conftest import MONITORING, free_port, program

pytestmark = pytest.mark.timeout(120)

APP = Path(__file__).resolve().parent / "two_hops_app.py"

CONFIG = MONITORING / "jaeger" / "jaeger.yaml"  # ports from JAEGER_*_PORT variables


def _clean_env() -> dict[str, str]:
    """This environment without OpenTelemetry settings (an OTEL_EXPORTER_* or sampler of the
    developer's must not redirect or drop what the test sends)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GRAYLB_OTEL_"))}


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Jaeger:
    def __init__(self, binary: str, tmp: Path) -> None:
        ports: set[int] = set()
        while len(ports) < 3:  # three distinct ones (each was free when asked)
            ports.add(free_port())
        self.ports = dict(zip(("query_http", "query_grpc", "otlp_http"), sorted(ports), strict=True))
        env = _clean_env() | {f"JAEGER_{name.upper()}_PORT": str(port) for name, port in self.ports.items()}
        self.log = tmp / "jaeger.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config=file:{CONFIG}"], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.query = f"http://127.0.0.1:{self.ports['query_http']}"
        self.otlp = f"http://127.0.0.1:{self.ports['otlp_http']}"

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"jaeger exited with {self.proc.returncode}:\n{self.log.read_text()}", pytrace=False)
        try:
            httpx.get(f"{self.query}/api/services", timeout=1).raise_for_status()
        except httpx.HTTPError:
            return False
        return _listening(self.ports["otlp_http"])  # receivers start after the query extension

    def get(self, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.query}{path}", params=params, timeout=5)
        answer.raise_for_status()
        return answer.json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    binary = str(program("jaeger")["binary"])
    server = Jaeger(binary, tmp_path_factory.mktemp("jaeger"))
    try:
        wait_until(server.ready, timeout=30, interval=0.05, message="jaeger's query API and OTLP receiver")
        yield server
    finally:
        server.stop()


def _run_two_hops(jaeger: Jaeger, tmp: Path) -> dict[str, Any]:
    """Start orders, run frontend once, stop orders (flushing its spans); frontend's report."""
    with (tmp / "orders.log").open("w") as log:
        orders = subprocess.Popen(
            [sys.executable, str(APP), "orders", "--otlp", jaeger.otlp],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=_clean_env(),
        )
    assert orders.stdin is not None and orders.stdout is not None
    try:
        line = orders.stdout.readline()  # printed once both servers listen
        assert line, f"orders did not start:\n{(tmp / 'orders.log').read_text()}"
        ports = json.loads(line)
        frontend = subprocess.run(
            [sys.executable, str(APP), "frontend", "--otlp", jaeger.otlp, "--orders", str(ports["orders"])],
            capture_output=True,
            text=True,
            timeout=60,
            env=_clean_env(),
        )
        assert frontend.returncode == 0, frontend.stderr
        orders.stdin.close()  # orders stops serving and flushes
        assert orders.wait(timeout=30) == 0, (tmp / "orders.log").read_text()
    finally:
        if orders.poll() is None:
            orders.kill()
            orders.wait(timeout=10)
        orders.stdin.close()
        orders.stdout.close()
    report: dict[str, Any] = json.loads(frontend.stdout)
    return report


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def _parent(span: dict[str, Any]) -> str | None:
    parents = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    assert len(parents) <= 1, span
    return parents[0] if parents else None


def test_jaeger_holds_one_trace_across_both_hops_with_graylb_versions(jaeger: Jaeger, tmp_path: Path) -> None:
    report = _run_two_hops(jaeger, tmp_path)
    assert report["status"] == 200
    trace_id = report["checkout"]["trace_id"]
    assert report["answer"]["handler"]["trace_id"] == trace_id  # orders' handler joined the trace
    sent_to_inventory = report["answer"]["next"]["traceparent"]
    assert sent_to_inventory.split("-")[1] == trace_id

    def complete() -> list[dict[str, Any]] | None:
        # Both processes have flushed; Jaeger stores after its batch timeout. Wait for all four
        # spans: checkout, graylb -> orders, orders' handler, graylb -> inventory.
        found = jaeger.get("/api/traces", service="frontend", limit=20)["data"] or []
        if len(found) == 1 and len(found[0]["spans"]) >= 4:
            return found
        return None

    traces = wait_until(complete, timeout=30, interval=0.1, message="the two-hop trace in jaeger")

    assert sorted(jaeger.get("/api/services")["data"]) == ["frontend", "orders"]
    # One trace, the same whichever service finds it, holding both processes' spans.
    (found,) = traces
    assert found["traceID"] == trace_id
    by_orders = jaeger.get("/api/traces", service="orders", limit=20)["data"]
    assert [t["traceID"] for t in by_orders] == [trace_id]
    service_of = {pid: p["serviceName"] for pid, p in found["processes"].items()}
    assert sorted(set(service_of.values())) == ["frontend", "orders"]
    spans = {s["spanID"]: s for s in found["spans"]}
    assert {s["traceID"] for s in spans.values()} == {trace_id}
    assert len(spans) == 4, [s["operationName"] for s in spans.values()]

    root = spans[report["checkout"]["span_id"]]
    assert (root["operationName"], service_of[root["processID"]], _parent(root)) == ("checkout", "frontend", None)

    clients = {
        _tags(s)["graylb.service"]: s
        for s in spans.values()
        if _tags(s).get("span.kind") == "client" and "graylb.service" in _tags(s)
    }
    assert sorted(clients) == ["inventory", "orders"]
    hop1, hop2 = clients["orders"], clients["inventory"]
    for span, version, process in ((hop1, "2.0.0", "frontend"), (hop2, "3.1.0", "orders")):
        tags = _tags(span)
        assert tags["graylb.version"] == version, tags
        assert tags["otel.scope.name"] == "graylb", tags
        assert tags["graylb.attempt"] == 1, tags
        assert {"graylb.route", "graylb.subset", "graylb.instance"} <= set(tags), tags
        assert service_of[span["processID"]] == process
        assert span["operationName"] == "GET"

    assert _parent(hop1) == root["spanID"]
    handler = spans[report["answer"]["handler"]["span_id"]]
    assert (handler["operationName"], service_of[handler["processID"]]) == ("GET /chain", "orders")
    assert _tags(handler)["span.kind"] == "server"
    assert _parent(handler) == hop1["spanID"]  # across the process boundary, from traceparent
    assert _parent(hop2) == handler["spanID"]
    ancestors, at = [], _parent(hop2)
    while at is not None:
        ancestors.append(at)
        at = _parent(spans[at])
    assert ancestors == [handler["spanID"], hop1["spanID"], root["spanID"]]  # hop 2 descends from hop 1
    assert sent_to_inventory.split("-")[2] == hop2["spanID"]  # the traceparent on the wire was this span's

    # The v3 API (OTLP JSON, streamed: one JSON object per line) returns the same trace.
    answer = httpx.get(f"{jaeger.query}/api/v3/traces/{trace_id}", timeout=5)
    answer.raise_for_status()
    chunks = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    v3_spans = {
        span["spanId"]: attribute["value"]["stringValue"]
        for chunk in chunks
        for resource in chunk["result"]["resourceSpans"]
        for attribute in resource["resource"]["attributes"]
        if attribute["key"] == "service.name"
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    }
    assert v3_spans == {span_id: service_of[s["processID"]] for span_id, s in spans.items()}
