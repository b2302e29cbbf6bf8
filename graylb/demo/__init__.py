"""``graylb demo``: a whole gray release on loopback, in one process, in a few seconds.

Six tiny HTTP services (gateway, orders v1 x2, orders v2, inventory, inventory in lane
``feature-x``) call each other through graylb; the demo sends traffic and prints what happened.
Exits non-zero if any promise it shows is broken, so it doubles as a smoke test.

:func:`watch` (``graylb demo --metrics-port N``) then keeps a canary release running for
Prometheus, Grafana and Jaeger to watch: ``make monitoring`` and tests/monitoring use it.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from importlib import resources
from typing import Any, TextIO

import httpx

from ..balancer import Balancer
from ..discovery.static import StaticDiscovery
from ..propagation.context import current, gray
from ..propagation.middleware import GrayWSGIMiddleware
from ..testing.http_server import WSGIServer, serve_wsgi
from ..transports.httpx import GrayTransport

__all__ = ["run", "watch"]


def _service_app(
    name: str,
    version: str,
    lane: str | None,
    client: httpx.Client,
    next_hop: str | None,
    failing: Callable[[], bool] | None = None,
) -> GrayWSGIMiddleware:
    """A WSGI app that says who it is, and for /chain also calls ``next_hop`` and nests its answer;
    answers 503 whenever ``failing()`` says so."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if failing is not None and failing():
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"{name} {version} failed on purpose\n".encode()]
        body: dict[str, Any] = {"service": name, "version": version, "lane": lane, "seen_lane": current().lane}
        if environ["PATH_INFO"] == "/chain" and next_hop:
            body["next"] = client.get(f"http://{next_hop}/chain").json()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return GrayWSGIMiddleware(app)


class _Cluster:
    def __init__(self) -> None:
        self.registry = StaticDiscovery()
        rules_text = resources.files("graylb.demo").joinpath("rules.yaml").read_text()
        self.balancer = Balancer(self.registry, rules_text)
        self.client = httpx.Client(transport=GrayTransport(self.balancer), timeout=5.0)
        self.servers: dict[str, WSGIServer] = {}

    def start(
        self,
        key: str,
        service: str,
        version: str,
        lane: str | None = None,
        next_hop: str | None = None,
        failing: Callable[[], bool] | None = None,
    ) -> None:
        server = serve_wsgi(_service_app(service, version, lane, self.client, next_hop, failing))
        self.servers[key] = server
        self.registry.add({"host": server.host, "port": server.port, "version": version, "lane": lane}, service=service)

    def close(self) -> None:
        self.client.close()
        for server in self.servers.values():
            server.stop()


def _table(out: TextIO, title: str, rows: dict[str, list[float]], total: int) -> None:
    out.write(f"\n{title}\n")
    out.write(f"  {'version':<10} {'count':>7} {'share':>8} {'p50 ms':>8}\n")
    for version in sorted(rows):
        lat = rows[version]
        out.write(f"  {version:<10} {len(lat):>7} {len(lat) / total:>8.1%} {statistics.median(lat) * 1000:>8.2f}\n")


def _send(cluster: _Cluster, n: int, headers_for: Any, on_step: Any = None) -> tuple[dict[str, list[float]], int]:
    by_version: dict[str, list[float]] = defaultdict(list)
    failed = 0
    for i in range(n):
        if on_step:
            on_step(i)
        t0 = time.perf_counter()
        try:
            r = cluster.client.get("http://orders/orders/42", headers=headers_for(i))
            r.raise_for_status()
        except httpx.HTTPError:
            failed += 1
            continue
        by_version[r.extensions["graylb"].version].append(time.perf_counter() - t0)
    return by_version, failed


def run(out: TextIO = sys.stdout, requests: int = 3000) -> int:
    """Run the demo; returns the process exit code (0 when every check held)."""
    random.seed(7)
    problems: list[str] = []
    cluster = _Cluster()
    try:
        cluster.start("orders-v1-a", "orders", "1.4.2", next_hop="inventory")
        cluster.start("orders-v1-b", "orders", "1.4.2", next_hop="inventory")
        cluster.start("orders-v2", "orders", "2.0.0", next_hop="inventory")
        cluster.start("inventory", "inventory", "3.1.0")
        cluster.start("inventory-lane", "inventory", "3.2.0-dev", lane="feature-x")
        cluster.start("gateway", "gateway", "1.0.0", next_hop="orders")
        out.write(
            "graylb demo: gateway -> orders (v1 x2, v2 x1) -> inventory (stable, lane feature-x), all on 127.0.0.1\n"
        )
        out.write("rules: 5% of users -> orders v2 (sticky on x-user-id), user-group: beta -> v2\n")

        # 1. A weighted canary split, sticky per user.
        users = [f"user-{i}" for i in range(requests)]
        rows, failed = _send(cluster, requests, lambda i: {"x-user-id": users[i]})
        _table(out, f"1. {requests} requests, one per user (route 'five-percent'):", rows, requests)
        share = len(rows.get("2.0.0", [])) / requests
        if failed or not 0.02 <= share <= 0.09:
            problems.append(f"canary share {share:.1%} (expected about 5%), {failed} failed")

        # 2. Sticky: the same user always lands on the same version.
        sticky_versions = {
            cluster.client.get("http://orders/x", headers={"x-user-id": "user-7"}).extensions["graylb"].version
            for _ in range(50)
        }
        out.write(f"\n2. user-7, 50 requests: versions seen {sorted(sticky_versions)}\n")
        if len(sticky_versions) != 1:
            problems.append(f"sticky user saw {sticky_versions}")

        # 3. Beta users all go to v2.
        rows, failed = _send(cluster, 200, lambda i: {"user-group": "beta", "x-user-id": f"beta-{i}"})
        _table(out, "3. 200 requests with user-group: beta (route 'beta-users'):", rows, 200)
        if set(rows) != {"2.0.0"} or failed:
            problems.append(f"beta users reached {sorted(rows)}")

        # 4. A lane across two hops: gateway -> orders -> inventory.
        out.write("\n4. full-link lane: gateway -> orders -> inventory\n")
        for lane in (None, "feature-x"):
            with gray(lane=lane) if lane else contextlib.nullcontext():
                hop = cluster.client.get("http://gateway/chain").json()
            path = []
            while hop:
                path.append(
                    f"{hop['service']} {hop['version']}"
                    + (f" [lane {hop['lane']}]" if hop["lane"] else "")
                    + f" (sees lane {hop['seen_lane']})"
                )
                hop = hop.get("next")
            out.write(f"  lane {lane or '-':<10}: " + "  ->  ".join(path) + "\n")
            inventory_lane = path[-1].find("[lane feature-x]") >= 0
            if inventory_lane != (lane is not None):
                problems.append(f"lane {lane} did not reach inventory as expected: {path}")

        # 5. v2 dies in the middle of traffic: retries and fallback, no failed request.
        n = requests // 2

        def kill_v2(i: int) -> None:
            if i == n // 4:
                cluster.servers["orders-v2"].stop()

        rows, failed = _send(
            cluster, n, lambda i: {"x-user-id": users[i], "user-group": "beta" if i % 10 == 0 else "-"}, kill_v2
        )
        _table(out, f"5. orders v2 stopped after {n // 4} of {n} requests (10% beta users):", rows, n)
        out.write(f"  failed requests: {failed}\n")
        after = cluster.client.get("http://orders/x", headers={"user-group": "beta"}).extensions["graylb"]
        out.write(
            f"  a beta user now: route '{after.route}', subset '{after.subset}' (fallback from "
            f"'{after.fallback_from}'), version {after.version}\n"
        )
        if failed:
            problems.append(f"{failed} requests failed while v2 went away")
        if after.version != "1.4.2":
            problems.append(f"after v2 died a beta user reached {after.version}")
    finally:
        cluster.close()
    if problems:
        out.write("\nDEMO FAILED:\n" + "".join(f"  - {p}\n" for p in problems))
        return 1
    out.write("\nall demo checks held.\n")
    return 0


def watch(
    out: TextIO = sys.stdout,
    *,
    rate: float = 50.0,
    canary_errors: float = 0.05,
    warmup: float = 1.5,
    stop: threading.Event | None = None,
    report_every: float = 10.0,
) -> int:
    """Keep a canary release running until ``stop`` is set (or Ctrl-C): orders 1.4.2 x2 and
    2.0.0, 5 % of users on the canary (sticky) plus every ``user-group: beta`` user (10 % of
    calls), ``rate`` calls a second through gateway-less ``orders -> inventory`` chains.

    The canary is a bad one: it answers 503 to ``canary_errors`` of its requests, and to every
    request in its first ``warmup`` seconds (an instance registered before it was ready). graylb
    retries those 503s onto stable, ejects the canary after consecutive failures and falls back to
    stable meanwhile -- so every panel of monitoring/grafana has something to show, and the canary
    error alert of monitoring/prometheus fires while callers see no error.
    """
    stop = stop or threading.Event()
    rng = random.Random(11)
    started = time.monotonic()

    def canary_failing() -> bool:
        return time.monotonic() - started < warmup or rng.random() < canary_errors

    cluster = _Cluster()
    try:
        cluster.start("orders-v1-a", "orders", "1.4.2", next_hop="inventory")
        cluster.start("orders-v1-b", "orders", "1.4.2", next_hop="inventory")
        cluster.start("orders-v2", "orders", "2.0.0", next_hop="inventory", failing=canary_failing)
        cluster.start("inventory", "inventory", "3.1.0")
        out.write(
            f"watching a canary: {rate:g} calls/s to orders (5% of users + beta users -> 2.0.0, which fails "
            f"{canary_errors:.0%} and is not ready for {warmup:g}s); Ctrl-C stops\n"
        )
        out.flush()
        served: Counter[str] = Counter()
        failed = 0
        interval = 1.0 / rate
        next_at = time.monotonic()
        report_at = next_at + report_every
        i = 0
        while not stop.is_set():
            headers = {"x-user-id": f"user-{rng.randrange(100_000)}"}
            if i % 10 == 0:
                headers["user-group"] = "beta"
            i += 1
            try:
                r = cluster.client.get("http://orders/chain", headers=headers)
                r.raise_for_status()
                served[r.extensions["graylb"].version] += 1
            except httpx.HTTPError:
                failed += 1
            now = time.monotonic()
            if now >= report_at:
                total = sum(served.values()) + failed
                shares = ", ".join(f"{v} {n / total:.1%}" for v, n in sorted(served.items()))
                out.write(f"  last {report_every:g}s: {total} calls ({shares}), {failed} failed for the caller\n")
                out.flush()
                served.clear()
                failed = 0
                report_at = now + report_every
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()
    out.write("stopped.\n")
    return 0
