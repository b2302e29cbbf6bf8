"""graylb's own cost per call, with the network taken out (target: <= 8 us per request for
httpx sync and async and for gRPC unary; <= 15 us with an OpenTelemetry SDK recording metrics).

    python benchmarks/own_cost.py [--quick] [--instructions]

Method. Each row compares two clients that differ only in graylb: plain ``httpx.Client`` and
``httpx.Client(transport=GrayTransport(balancer, inner))`` over the same *instant* inner
transport (answers at once, no socket), to the same URL; for gRPC, a plain channel and a
``GrayChannel`` to one loopback Echo server in a child process. Many short rounds run
interleaved, their order rotating (``_util.interleaved``); the cost is the median of the
round-by-round differences, printed with its distribution-free 95 % interval. Rules: the 5
routes of ``hot_path.py`` (no match until the sticky 5 % split), 100 instances.

``--instructions`` also counts instructions per request with callgrind (valgrind), which does
not move with machine load: the difference between N and 2N requests, graylb minus plain.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _util import InChildProcess, interleaved, machine, median, paired, spread, table
from hot_path import RULES, instances

import graylb

URL = "http://orders/api/v1/orders/42"
USERS = [{"x-user-id": f"user-{i}"} for i in range(1000)]


class Instant(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An inner transport that answers at once: what is left is the client's own work."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok")


def balancer() -> graylb.Balancer:
    return graylb.Balancer(graylb.StaticDiscovery({"orders": instances()}), RULES)


def sync_round(client: httpx.Client, n: int) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            client.get(URL, headers=USERS[i % 1000])
        return (time.perf_counter() - t0) / n * 1e6

    return run


def async_round(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, n: int) -> Callable[[], float]:
    async def requests() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            await client.get(URL, headers=USERS[i % 1000])
        return (time.perf_counter() - t0) / n * 1e6

    return lambda: loop.run_until_complete(requests())


def grpc_round(stub, n: int) -> Callable[[], float]:
    from graylb._proto.graylb.demo.v1 import echo_pb2

    req = echo_pb2.SayRequest(text="x")
    metadata = [(("x-user-id", f"user-{i}"),) for i in range(1000)]

    def run() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            stub.Say(req, metadata=metadata[i % 1000])
        return (time.perf_counter() - t0) / n * 1e6

    return run


class _Echo:
    def __init__(self) -> None:
        from graylb.testing.grpc_server import serve_echo

        self._server = serve_echo("orders", "1.0.0")
        self.url = self._server.address

    def stop(self) -> None:
        self._server.stop()


def _start_echo() -> _Echo:
    return _Echo()


def row(label: str, results: dict[str, list[float]], target: float) -> list[str]:
    cost = paired(results["plain"], results["graylb"])
    return [
        label,
        f"{median(results['plain']):.2f}",
        f"{median(results['graylb']):.2f}",
        spread(cost),
        f"<= {target:g}",
        "yes" if median(cost) <= target else "NO",
    ]


def mean_row(label: str, results: dict[str, list[float]]) -> list[str]:
    """The mean of the round-by-round differences, +- two standard errors: for work done in
    batches by another thread (a round holds a batch or not), whose median would hide it."""
    cost = paired(results["plain"], results["graylb"])
    mean = statistics.fmean(cost)
    se = statistics.stdev(cost) / len(cost) ** 0.5 if len(cost) > 1 else 0.0
    return [
        label,
        f"{median(results['plain']):.2f}",
        f"{median(results['graylb']):.2f}",
        f"mean {mean:.2f} +- {2 * se:.2f}",
        "-",
        "-",
    ]


def measure(rounds: int, n: int) -> list[list[str]]:
    rows = []
    inner = Instant()
    gray_transport = graylb.GrayTransport(balancer(), inner)
    with httpx.Client(transport=inner) as plain, httpx.Client(transport=gray_transport) as gray:
        variants = {"plain": sync_round(plain, n), "graylb": sync_round(gray, n)}
        interleaved(variants, 2)  # warm-up
        rows.append(row("httpx sync", interleaved(variants, rounds), 8))

    loop = asyncio.new_event_loop()
    plain_a = httpx.AsyncClient(transport=inner)
    gray_a = httpx.AsyncClient(transport=graylb.AsyncGrayTransport(balancer(), inner))
    variants = {"plain": async_round(loop, plain_a, n), "graylb": async_round(loop, gray_a, n)}
    interleaved(variants, 2)
    rows.append(row("httpx async", interleaved(variants, rounds), 8))
    loop.run_until_complete(plain_a.aclose())
    loop.run_until_complete(gray_a.aclose())
    loop.close()

    import grpc

    from graylb._proto.graylb.demo.v1 import echo_pb2_grpc
    from graylb.transports.grpc import GrayChannel

    with InChildProcess(_start_echo) as server:
        host, port = server.url.rsplit(":", 1)
        static = graylb.StaticDiscovery(
            {
                "orders": [
                    {"host": host, "port": int(port), "version": v, "id": v, "zone": "a"} for v in ("1.4.2", "2.0.0")
                ]
            }
        )
        with (
            grpc.insecure_channel(server.url) as plain_ch,
            GrayChannel(graylb.Balancer(static, RULES), "orders") as gray_ch,
        ):
            variants = {
                "plain": grpc_round(echo_pb2_grpc.EchoStub(plain_ch), n // 4),
                "graylb": grpc_round(echo_pb2_grpc.EchoStub(gray_ch), n // 4),
            }
            interleaved(variants, 2)
            rows.append(row("grpc unary, sync (loopback server)", interleaved(variants, rounds), 8))

    # Last: an SDK, once installed, stays for the process.
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from graylb import telemetry

    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    gray_transport = graylb.GrayTransport(balancer(), inner)
    with httpx.Client(transport=inner) as plain, httpx.Client(transport=gray_transport) as gray:
        # As deployed: the per-call measurements are deferred (README "Telemetry") and the
        # background thread hands them to the SDK while the rounds run -- all the CPU it costs.
        variants = {"plain": sync_round(plain, n), "graylb": sync_round(gray, n)}
        interleaved(variants, 2)
        rows.append(mean_row("httpx sync, OpenTelemetry SDK metrics on: in all", interleaved(variants, rounds)))

        # The call path alone: the thread kept asleep, the queue handed over between short rounds.
        telemetry._FLUSH_EVERY = 3600.0
        telemetry.flush()
        short = max(n // 4, 50)
        sdk_us: list[float] = []
        gray_requests = sync_round(gray, short)

        def gray_then_flush() -> float:
            us = gray_requests()
            t0 = time.perf_counter()
            telemetry.flush()
            sdk_us.append((time.perf_counter() - t0) / short * 1e6)
            return us

        variants = {"plain": sync_round(plain, short), "graylb": gray_then_flush}
        interleaved(variants, 2)
        sdk_us.clear()
        rows.append(row("  of which on the call path", interleaved(variants, rounds), 15))
    rows.append(["  and the SDK's work, deferred", "", "", spread(sdk_us), "(off the path)", ""])
    return rows


# -- instruction counts ------------------------------------------------------------------------

_COUNT = """
import sys
sys.path.insert(0, {here!r})
import httpx, graylb
from own_cost import Instant, URL, USERS, balancer
inner = Instant()
transport = graylb.GrayTransport(balancer(), inner) if {gray} else inner
client = httpx.Client(transport=transport)
for i in range(200):
    client.get(URL, headers=USERS[i % 1000])
for i in range({n}):
    client.get(URL, headers=USERS[i % 1000])
"""


_COUNT_GRPC = """
import subprocess, sys
sys.path.insert(0, {here!r})
server = subprocess.Popen(  # a child valgrind does not trace: only the client is counted
    [sys.executable, "-c", "import sys, time; from graylb.testing.grpc_server import serve_echo; "
     "s = serve_echo('orders', '1.0.0'); print(s.address, flush=True); sys.stdin.read()"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
address = server.stdout.readline().strip()
import grpc, graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.transports.grpc import GrayChannel
from own_cost import RULES
host, port = address.rsplit(":", 1)
static = graylb.StaticDiscovery(
    {{"orders": [{{"host": host, "port": int(port), "version": v, "id": v, "zone": "a"}} for v in ("1.4.2", "2.0.0")]}}
)
channel = GrayChannel(graylb.Balancer(static, RULES), "orders") if {gray} else grpc.insecure_channel(address)
stub = echo_pb2_grpc.EchoStub(channel)
req = echo_pb2.SayRequest(text="x")
metadata = [(("x-user-id", f"user-{{i}}"),) for i in range(1000)]
for i in range(100):
    stub.Say(req, metadata=metadata[i % 1000])
for i in range({n}):
    stub.Say(req, metadata=metadata[i % 1000])
channel.close()
server.stdin.close()
server.wait()
"""


def instructions(n: int = 2000, template: str = _COUNT) -> tuple[float, float]:
    """(graylb's instructions per request, plain's) by callgrind: N vs 2N requests; ``template``
    is the httpx client (``_COUNT``) or the gRPC one (``_COUNT_GRPC``)."""

    def count(gray: bool, requests: int) -> int:
        code = template.format(here=str(Path(__file__).resolve().parent), gray=gray, n=requests)
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={tmp}/out",
                    sys.executable,
                    "-c",
                    code,
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONHASHSEED": "0"},
                check=True,
            )
        return int(re.search(r"Collected : (\d+)", proc.stderr).group(1))

    plain = (count(False, 2 * n) - count(False, n)) / n
    gray = (count(True, 2 * n) - count(True, n)) / n
    return gray - plain, plain


def main() -> None:
    quick = "--quick" in sys.argv
    rounds, n = (6, 300) if quick else (31, 2000)
    rows = measure(rounds, n)
    print(
        table(
            f"graylb's own cost per request, us: {rounds} interleaved rounds x {n} requests "
            f"(gRPC: x {n // 4}); cost = median of round-by-round differences [95 % interval] ({machine()})",
            ["call", "plain us/req", "graylb us/req", "graylb's cost us [95 %]", "target", "met"],
            rows,
        )
    )
    if "--instructions" in sys.argv:
        own, plain = instructions()
        print(f"\ncallgrind, httpx sync: graylb adds {own:,.0f} instructions per request (plain httpx: {plain:,.0f})")
        own, plain = instructions(500, _COUNT_GRPC)
        print(f"callgrind, grpc unary: graylb adds {own:,.0f} instructions per call (plain channel: {plain:,.0f})")


if __name__ == "__main__":
    main()
