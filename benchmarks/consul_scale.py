"""500 watched services in one process: threads, memory, idle CPU, connections.

    python benchmarks/consul_scale.py [--quick] [--services N]

FakeConsul (child process) holds N services; one ConsulDiscovery watches all of them. The
watches are tasks on graylb's single background event loop, so the thread count must not grow
with N.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from _util import InChildProcess, machine, table

from graylb.consul.client import ConsulConfig
from graylb.consul.discovery import ConsulDiscovery


def proc_status(field: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return "?"


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    n = 500
    if "--services" in sys.argv:
        n = int(sys.argv[sys.argv.index("--services") + 1])
    idle = 5.0 if "--quick" in sys.argv else 30.0
    with InChildProcess.fake("consul") as fake, httpx.Client(base_url=fake.url) as admin:
        for i in range(n):
            admin.put(
                "/v1/agent/service/register",
                json={
                    "Name": f"svc-{i}",
                    "ID": f"svc-{i}",
                    "Address": "127.0.0.1",
                    "Port": 10000 + i,
                    "Meta": {"version": "1.0.0"},
                },
            ).raise_for_status()
        threads_before, rss_before = threading.active_count(), proc_status("VmRSS")
        disco = ConsulDiscovery(ConsulConfig(fake.url), wait=60)
        t0 = time.perf_counter()
        watches = [disco.watch(f"svc-{i}") for i in range(n)]
        for w in watches:
            w.wait_ready(30)
        ready_s = time.perf_counter() - t0
        assert all(w.snapshot and len(w.snapshot.instances) == 1 for w in watches)
        time.sleep(1.0)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        time.sleep(idle)
        cpu_pct = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0) * 100
        rows = [
            ["watched services", str(n)],
            ["all first snapshots ready in", f"{ready_s:.2f} s"],
            [
                "threads (before -> watching)",
                f"{threads_before} -> {threading.active_count()} (OS: {proc_status('Threads')})",
            ],
            ["RSS (before -> watching)", f"{rss_before} -> {proc_status('VmRSS')}"],
            [f"CPU while idle ({idle:.0f} s)", f"{cpu_pct:.1f} % of one core"],
            ["HTTP connections (max) / blocking slots", f"{disco.max_connections} / {disco.blocking_slots}"],
            ["blocking wait per query", f"{disco._wait_now():.0f} s"],
        ]
        disco.close()
    print(table(f"ConsulDiscovery at scale ({machine()})", ["measure", "value"], rows))


if __name__ == "__main__":
    main()
