"""Consul change -> first call on it (targets: p50 <= 50 ms on loopback).

    python benchmarks/consul_latency.py [--quick]

FakeConsul runs in a child process. Two figures:
- rules: PUT of a new rules document to the KV key -> the first call routed by the new rule;
- registration: PUT /v1/agent/service/register of a new instance -> the first call that can
  be routed to it (pinned to its version).
The client notices through its blocking queries; the measuring loop checks every 0.5 ms.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _util import FLIP_RULES as RULES
from _util import InChildProcess, machine, percentile, table, wait_for

import graylb
from graylb.consul.client import ConsulConfig
from graylb.consul.discovery import ConsulDiscovery
from graylb.consul.rules import ConsulRuleSource

TIMEOUT = 5.0  # s: a change not seen by then fails the run


def main() -> None:
    rounds = 10 if "--quick" in sys.argv else 40
    with InChildProcess.fake("consul") as fake, httpx.Client(base_url=fake.url) as admin:
        for i, version in enumerate(("1.0.0", "2.0.0")):
            admin.put(
                "/v1/agent/service/register",
                json={
                    "Name": "orders",
                    "ID": f"o{i}",
                    "Address": "127.0.0.1",
                    "Port": 9000 + i,
                    "Meta": {"version": version},
                },
            ).raise_for_status()
        admin.put("/v1/kv/graylb/rules", content=RULES % "canary").raise_for_status()
        config = ConsulConfig(fake.url)
        balancer = graylb.Balancer(ConsulDiscovery(config), ConsulRuleSource(config, "graylb/rules"))
        beta = graylb.RequestInfo(headers={"user-group": "beta"})
        assert balancer.decide("orders", beta).subset == "canary"

        rule_ms = []
        for r in range(rounds):
            target = "stable" if r % 2 == 0 else "canary"
            time.sleep(0.2)  # changes a few times a second, not a flood: the watch loop is rate-limited
            t0 = time.perf_counter()
            admin.put("/v1/kv/graylb/rules", content=RULES % target).raise_for_status()
            rule_ms.append((wait_for(lambda: balancer.decide("orders", beta).subset == target, TIMEOUT) - t0) * 1000)

        reg_ms = []
        for r in range(rounds):
            version = f"3.0.{r}"
            time.sleep(0.2)
            t0 = time.perf_counter()
            admin.put(
                "/v1/agent/service/register",
                json={
                    "Name": "orders",
                    "ID": f"new{r}",
                    "Address": "127.0.0.1",
                    "Port": 9100 + r,
                    "Meta": {"version": version},
                },
            ).raise_for_status()
            pinned = graylb.GrayContext(pins={"orders": version})

            def routable() -> bool:
                try:
                    return balancer.start("orders", beta, pinned).next_instance().version == version
                except graylb.NoInstanceAvailable:
                    return False

            reg_ms.append((wait_for(routable, TIMEOUT) - t0) * 1000)
        balancer.close()

    rows = [
        [
            name,
            f"{statistics.median(xs):.1f}",
            f"{percentile(xs, 0.9):.1f}",
            f"{max(xs):.1f}",
            "yes" if statistics.median(xs) <= 50 else "NO",
        ]
        for name, xs in (
            ("KV rule write -> first call on the new rule", rule_ms),
            ("instance registered -> first call to it", reg_ms),
        )
    ]
    print(
        table(
            f"Consul change to first call, ms, {rounds} rounds, FakeConsul in a child process ({machine()})",
            ["change", "p50", "p90", "max", "p50 <= 50 ms"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
