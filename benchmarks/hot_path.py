"""Route + pick + header injection per call: 5 routes, 100 instances (target: median <= 10 us).

    python benchmarks/hot_path.py [--quick]

Measures what a transport does before the network: build the request view, route, pick an
instance, serialise the gray context into headers. Each figure is the median of many batches.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine, median, table

import graylb
from graylb.propagation.context import attach, detach

RULES = {
    "services": {
        "orders": {
            "subsets": {
                "stable": {"version": "^1.4"},
                "canary": {"version": "^2.0"},
                "zone-a": {"version": "^1.4", "labels": {"zone": "a"}},
            },
            "default": "stable",
            "routes": [
                {
                    "name": "internal",
                    "match": [{"headers": {"x-internal": {"present": True}}, "path": {"prefix": "/admin"}}],
                    "to": [{"subset": "zone-a"}],
                },
                {"name": "debug", "match": [{"query": {"debug": {"exact": "1"}}}], "to": [{"subset": "canary"}]},
                {
                    "name": "beta-users",
                    "match": [
                        {"headers": {"user-group": {"exact": "beta"}}},
                        {"context": {"user-group": {"exact": "beta"}}},
                    ],
                    "to": [{"subset": "canary"}],
                },
                {
                    "name": "mobile",
                    "match": [{"headers": {"user-agent": {"regex": ".*(iPhone|Android).*"}}}],
                    "to": [{"subset": "canary", "weight": 20}, {"subset": "stable", "weight": 80}],
                },
                {
                    "name": "five-percent",
                    "to": [{"subset": "canary", "weight": 5}, {"subset": "stable", "weight": 95}],
                    "sticky": {"header": "x-user-id"},
                },
            ],
        }
    }
}


def instances() -> list[dict]:
    out = []
    for i in range(100):
        version = "2.0.0" if i % 10 == 0 else "1.4.2"
        out.append(
            {
                "host": f"10.0.{i // 250}.{i % 250 + 1}",
                "port": 8080,
                "version": version,
                "weight": 100,
                "labels": {"zone": "ab"[i % 2]},
                "lane": "beta" if i == 99 else None,
            }
        )
    return out


SCENARIOS = [
    ("default route (no match, sticky 5% split)", {"x-user-id": "user-12345"}, None),
    ("header match -> canary", {"user-group": "beta"}, None),
    ("regex match, weighted random", {"user-agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)"}, None),
    ("lane from context + header injection", {}, graylb.GrayContext(lane="beta")),
    (
        "pin from context + header injection",
        {},
        graylb.GrayContext(pins={"orders": "2.0.0"}, values={"user-group": "x"}),
    ),
]


def bench(
    balancer: graylb.Balancer,
    headers: dict,
    ctx: graylb.GrayContext | None,
    calls: int,
    batches: int,
    record: bool = False,
) -> float:
    codec = balancer.codec
    token = attach(ctx) if ctx is not None else None
    try:
        results = []
        for _ in range(batches):
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                out = dict(headers)
                info = graylb.RequestInfo("GET", "/api/v1/orders/42", out.get, "")
                call = balancer.start("orders", info)
                instance = call.next_instance()
                out.update(codec.inject(graylb.current()))
                if record:  # the attempt's outcome, as a transport reports it (the guard counts it)
                    call.done(instance, True, 200)
            results.append((time.perf_counter_ns() - t0) / calls / 1000)
        return median(results)
    finally:
        if token is not None:
            detach(token)


def main() -> None:
    quick = "--quick" in sys.argv
    balancer = graylb.Balancer(graylb.StaticDiscovery({"orders": instances()}), RULES)
    calls, batches = (2000, 5) if quick else (20000, 15)
    rows = []
    for name, headers, ctx in SCENARIOS:
        bench(balancer, headers, ctx, 1000, 1)  # warm caches
        us = bench(balancer, headers, ctx, calls, batches)
        rows.append([name, f"{us:.2f}", "yes" if us <= 10 else "NO"])
    guarded_rules = copy.deepcopy(RULES)
    guarded_rules["services"]["orders"]["guard"] = {"canary": "canary", "baseline": "stable"}
    guarded = graylb.Balancer(graylb.StaticDiscovery({"orders": instances()}), guarded_rules)
    name, headers, ctx = SCENARIOS[0]
    for label, record in (("canary guard on", False), ("canary guard on + outcome recorded", True)):
        bench(guarded, headers, ctx, 1000, 1, record)
        us = bench(guarded, headers, ctx, calls, batches, record)
        rows.append([f"default route, {label}", f"{us:.2f}", "yes" if us <= 10 else "NO"])
    print(
        table(
            f"hot path: route + pick + header injection, 5 routes, 100 instances ({machine()})",
            ["scenario", "median us/call", "<= 10 us"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
