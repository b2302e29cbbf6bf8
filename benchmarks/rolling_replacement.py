"""Lossless releases, measured: a rolling replacement under load, and the warm-up ramp.

    python benchmarks/rolling_replacement.py [--quick] [--real]

1. ``examples/rolling_release.py``'s replacement of 3 v1 instances by 3 v2 instances (start,
   ready, register, warm up, then drain and stop the old one; ~200 requests/s of GET and POST
   through graylb), with graylb's drain and without it (today's behaviour before it: deregister
   and exit at once), over FakeConsul and FakeNacos; ``--real`` adds the real Consul and rnacos
   that ``make real-registries`` cached.
2. The warm-up ramp: two warm instances and one new one under ``warmup: {window: 5s}``; the share
   of picks the new one gets in each second of the window, against what the rules configure
   (share s of its weight -> s / (2 + s) of the picks).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/, tests/ (the real registries)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rolling_release
from _util import machine, table

import graylb


def real_backends() -> list[tuple[str, str, object, object]]:
    """(label, kind, config, closer) for the cached real registries."""
    from scripts.real_registries import cache_dir
    from tests.contract.contract_backends import start_real_consul, start_rnacos

    manifest_file = cache_dir() / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    out = []
    consul = manifest.get("consul") or {}
    if consul.get("binary"):
        backend = start_real_consul(Path(consul["binary"]), Path(tempfile.mkdtemp(prefix="graylb-roll-consul-")))
        out.append((f"Consul {consul['version']}", "consul", backend.config(), backend))
    nacos = manifest.get("nacos") or {}
    if nacos.get("binary"):
        backend = start_rnacos(Path(nacos["binary"]), Path(tempfile.mkdtemp(prefix="graylb-roll-rnacos-")))
        out.append((f"rnacos {nacos['version']}", "nacos", backend.config(), backend))
    if not out:
        raise SystemExit(f"--real: nothing cached in {cache_dir()} (run make real-registries)")
    return out


def replacement_rows(quick: bool, real: bool) -> list[list[str]]:
    backends: list[tuple[str, str, object, object]] = [
        ("FakeConsul", "consul", None, None),
        ("FakeNacos", "nacos", None, None),
    ]
    if real:
        backends += real_backends()
    rows = []
    try:
        for label, kind, config, _ in backends:
            for drain in (True, False):
                sent, failed, duplicated = rolling_release.run(kind, drain, quick, config)
                rows.append(
                    [
                        label,
                        "graylb drain" if drain else "without (deregister, exit)",
                        str(sent),
                        str(len(failed)),
                        str(duplicated),
                    ]
                )
    finally:
        for *_, backend in backends:
            if backend is not None:
                backend.close()  # type: ignore[attr-defined]
    return rows


def warmup_rows(window: float) -> list[list[str]]:
    def inst(name: str) -> dict:
        return {"host": "10.0.0.1", "port": 8000 + len(name), "version": "1.0.0", "id": name}

    static = graylb.StaticDiscovery({"orders": [inst("a"), inst("bb")]})
    rules = {"services": {"orders": {"warmup": {"window": f"{window}s", "min_share": 0.1}}}}
    balancer = graylb.Balancer(static, rules)
    info = graylb.RequestInfo()
    balancer.start("orders", info)
    static.add(inst("new"), "orders")
    started = time.monotonic()
    per_second: dict[int, Counter[str]] = {}
    while (elapsed := time.monotonic() - started) < window + 1:
        counts = per_second.setdefault(int(elapsed), Counter())
        for _ in range(200):
            counts[balancer.start("orders", info).next_instance().id] += 1
    rows = []

    def configured(t: float) -> float:
        """The share of picks the rules configure at ``t``: the ramp as ten steps, each step's
        share taken at its start (where the rebuild computes it)."""
        step = math.floor(t / window * 10) / 10 * window
        share = 1.0 if step >= window else max(0.1, step / window)
        return share / (2 + share)

    for second, counts in sorted(per_second.items()):
        expected = statistics.fmean(configured(second + k / 100) for k in range(100))
        got = counts["new"] / sum(counts.values())
        rows.append([f"{second}-{second + 1} s", f"{expected:.1%}", f"{got:.1%}", f"{sum(counts.values())}"])
    return rows


def main() -> None:
    quick = "--quick" in sys.argv
    rows = replacement_rows(quick, "--real" in sys.argv)
    print(
        table(
            f"rolling replacement of 3 x v1 by 3 x v2 under ~{rolling_release.RATE:.0f} req/s of GET + POST "
            f"({'quick' if quick else 'full'}; {machine()})",
            ["registry", "stopping instances", "requests", "failed", "POSTs processed twice"],
            rows,
        )
    )
    print()
    window = 2.0 if quick else 5.0
    print(
        table(
            f"warm-up: share of picks to a new instance beside two warm ones, window {window:g} s, min_share 0.1 "
            "(configured: in ten steps, each at the first call after it)",
            ["second of the window", "configured share of picks", "measured", "picks"],
            warmup_rows(window),
        )
    )
    with_drain = [r for r in rows if r[1] == "graylb drain"]
    if any(r[3] != "0" or r[4] != "0" for r in with_drain):
        raise SystemExit("graylb's drain lost or duplicated requests: see the table")


if __name__ == "__main__":
    main()
