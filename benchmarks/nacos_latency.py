"""Nacos change -> first call (targets: config p50 <= 100 ms; registration p50 <=
refresh interval + 50 ms).

    python benchmarks/nacos_latency.py [--quick] [--real]

FakeNacos runs in a child process, driven over its Open API. With ``--real`` the same rounds
also run against rnacos (the Nacos-compatible server ``make real-registries`` builds; auth on,
loopback ports, started and stopped here), and the table puts the two side by side. Rules
arrive through the long-polling listener; instances through the instance-list poll (refresh
interval 1 s, the default). The measuring loop checks every 0.5 ms.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _util import FLIP_RULES as RULES
from _util import InChildProcess, machine, percentile, table, wait_for

import graylb
from graylb.nacos.client import NacosConfig
from graylb.nacos.discovery import NacosDiscovery
from graylb.nacos.rules import NacosRuleSource

REPO = Path(__file__).resolve().parent.parent
REFRESH = 1.0
TIMEOUT = 10.0  # s: a change not seen by then fails the run


@contextlib.contextmanager
def fake_nacos() -> Iterator[tuple[str, NacosConfig, Callable[..., httpx.Response]]]:
    with InChildProcess.fake("nacos") as fake, httpx.Client(base_url=fake.url + "/nacos") as admin:
        yield "FakeNacos (child process)", NacosConfig(fake.url), admin.request


@contextlib.contextmanager
def rnacos() -> Iterator[tuple[str, NacosConfig, Callable[..., httpx.Response]]]:
    """rnacos from the cache, started as the contract suite starts it (one place knows how)."""
    sys.path.insert(0, str(REPO))
    from scripts.real_registries import cache_dir
    from tests.contract.contract_backends import start_rnacos

    manifest = (
        json.loads((cache_dir() / "manifest.json").read_text()) if (cache_dir() / "manifest.json").exists() else {}
    )
    entry: dict[str, Any] = manifest.get("nacos") or {}
    if not entry.get("binary"):
        raise SystemExit(f"--real: no rnacos in {cache_dir()} ({entry.get('failed', 'run make real-registries')})")
    with tempfile.TemporaryDirectory(prefix="graylb-bench-rnacos-") as tmp:
        backend = start_rnacos(Path(entry["binary"]), Path(tmp))
        try:
            yield f"rnacos {entry['version']} (auth on)", backend.config(), backend.raw
        finally:
            backend.close()


def measure(config: NacosConfig, admin: Callable[..., httpx.Response], rounds: int) -> tuple[list[float], list[float]]:
    """(config write -> first call on it, registration -> routable) in ms, ``rounds`` of the
    first and ``rounds // 2`` of the second, through a Balancer on ``config``."""

    def register(port: int, version: str) -> None:
        metadata = json.dumps({"version": version})
        params = {"serviceName": "orders", "ip": "127.0.0.1", "port": port, "ephemeral": "false", "metadata": metadata}
        admin("POST", "/v1/ns/instance", params=params).raise_for_status()

    def publish(target: str) -> None:
        data = {"dataId": "graylb-rules", "group": "DEFAULT_GROUP", "content": RULES % target}
        admin("POST", "/v1/cs/configs", data=data).raise_for_status()

    for i, version in enumerate(("1.0.0", "2.0.0")):
        register(9000 + i, version)
    publish("canary")
    balancer = graylb.Balancer(
        NacosDiscovery(config, refresh_interval=REFRESH), NacosRuleSource(config, "graylb-rules")
    )
    try:
        beta = graylb.RequestInfo(headers={"user-group": "beta"})
        wait_for(lambda: balancer.decide("orders", beta).subset == "canary", TIMEOUT)

        rule_ms = []
        for r in range(rounds):
            target = "stable" if r % 2 == 0 else "canary"
            time.sleep(0.2)
            t0 = time.perf_counter()
            publish(target)
            rule_ms.append((wait_for(lambda: balancer.decide("orders", beta).subset == target, TIMEOUT) - t0) * 1000)

        reg_ms = []
        for r in range(rounds // 2):
            version = f"3.0.{r}"
            pinned = graylb.GrayContext(pins={"orders": version})

            def routable() -> bool:
                try:
                    return balancer.start("orders", beta, pinned).next_instance().version == version
                except graylb.NoInstanceAvailable:
                    return False

            t0 = time.perf_counter()
            register(9100 + r, version)
            reg_ms.append((wait_for(routable, TIMEOUT) - t0) * 1000)
            time.sleep(random.uniform(0, REFRESH))  # land at different points of the refresh cycle
    finally:
        balancer.close()
    return rule_ms, reg_ms


def main() -> None:
    rounds = 8 if "--quick" in sys.argv else 30
    servers = [fake_nacos, rnacos] if "--real" in sys.argv else [fake_nacos]
    rows = []
    for server in servers:
        with server() as (name, config, admin):
            rule_ms, reg_ms = measure(config, admin, rounds)
        for change, ms, target in (
            ("config write -> first call on the new rule", rule_ms, 100.0),
            (f"instance registered -> routable (refresh {REFRESH:g} s)", reg_ms, REFRESH * 1000 + 50),
        ):
            p50 = statistics.median(ms)
            rows.append(
                [
                    name,
                    change,
                    f"{p50:.1f}",
                    f"{percentile(ms, 0.9):.1f}",
                    f"{max(ms):.1f}",
                    f"<= {target:g}",
                    "yes" if p50 <= target else "NO",
                ]
            )
    print(
        table(
            f"Nacos change to first call, ms ({machine()})",
            ["server", "change", "p50", "p90", "max", "target p50", "met"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
