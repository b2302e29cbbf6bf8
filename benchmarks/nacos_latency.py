"""Nacos change -> first call on it (targets: config p50 <= 100 ms; registration p50 <=
refresh interval + 50 ms).

    python benchmarks/nacos_latency.py [--quick]

FakeNacos runs in a child process, driven over its Open API. Rules arrive through the
long-polling listener; instances through the instance-list poll (refresh interval 1 s, the
default). The measuring loop checks every 0.5 ms.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _util import FLIP_RULES as RULES
from _util import InChildProcess, machine, percentile, table, wait_for

import graylb
from graylb.nacos.client import NacosConfig
from graylb.nacos.discovery import NacosDiscovery
from graylb.nacos.rules import NacosRuleSource

REFRESH = 1.0
TIMEOUT = 10.0  # s: a change not seen by then fails the run


def main() -> None:
    rounds = 8 if "--quick" in sys.argv else 30
    with InChildProcess.fake("nacos") as fake, httpx.Client(base_url=fake.url + "/nacos") as admin:
        for i, version in enumerate(("1.0.0", "2.0.0")):
            admin.post(
                "/v1/ns/instance",
                params={
                    "serviceName": "orders",
                    "ip": "127.0.0.1",
                    "port": 9000 + i,
                    "ephemeral": "false",
                    "metadata": f'{{"version":"{version}"}}',
                },
            ).raise_for_status()
        admin.post(
            "/v1/cs/configs", data={"dataId": "graylb-rules", "group": "DEFAULT_GROUP", "content": RULES % "canary"}
        ).raise_for_status()
        config = NacosConfig(fake.url)
        balancer = graylb.Balancer(
            NacosDiscovery(config, refresh_interval=REFRESH), NacosRuleSource(config, "graylb-rules")
        )
        beta = graylb.RequestInfo(headers={"user-group": "beta"})
        assert balancer.decide("orders", beta).subset == "canary"

        rule_ms = []
        for r in range(rounds):
            target = "stable" if r % 2 == 0 else "canary"
            time.sleep(0.2)
            t0 = time.perf_counter()
            admin.post(
                "/v1/cs/configs", data={"dataId": "graylb-rules", "group": "DEFAULT_GROUP", "content": RULES % target}
            ).raise_for_status()
            rule_ms.append((wait_for(lambda: balancer.decide("orders", beta).subset == target, TIMEOUT) - t0) * 1000)

        reg_ms = []
        for r in range(rounds // 2):
            version = f"3.0.{r}"
            t0 = time.perf_counter()
            admin.post(
                "/v1/ns/instance",
                params={
                    "serviceName": "orders",
                    "ip": "127.0.0.1",
                    "port": 9100 + r,
                    "ephemeral": "false",
                    "metadata": f'{{"version":"{version}"}}',
                },
            ).raise_for_status()
            pinned = graylb.GrayContext(pins={"orders": version})

            def routable() -> bool:
                try:
                    return balancer.start("orders", beta, pinned).next_instance().version == version
                except graylb.NoInstanceAvailable:
                    return False

            reg_ms.append((wait_for(routable, TIMEOUT) - t0) * 1000)
            time.sleep(random.uniform(0, REFRESH))  # land at different points of the refresh cycle
        balancer.close()

    rows = [
        [
            "config write -> first call on the new rule",
            f"{statistics.median(rule_ms):.1f}",
            f"{percentile(rule_ms, 0.9):.1f}",
            f"{max(rule_ms):.1f}",
            "<= 100",
            "yes" if statistics.median(rule_ms) <= 100 else "NO",
        ],
        [
            f"instance registered -> routable (refresh {REFRESH:g} s)",
            f"{statistics.median(reg_ms):.1f}",
            f"{percentile(reg_ms, 0.9):.1f}",
            f"{max(reg_ms):.1f}",
            f"<= {REFRESH * 1000 + 50:.0f}",
            "yes" if statistics.median(reg_ms) <= REFRESH * 1000 + 50 else "NO",
        ],
    ]
    print(
        table(
            f"Nacos change to first call, ms, FakeNacos in a child process ({machine()})",
            ["change", "p50", "p90", "max", "target p50", "met"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
