"""The canary guard's statistics, simulated: false trips of a healthy canary, time to trip a bad one.

    python benchmarks/guard_stats.py [--quick] [--requests N] [--seeds N]

Seeded streams of attempts (Poisson arrivals, a canary share, an error ratio and a lognormal
latency per side) go through ``graylb.guard.stats.Window`` and ``judge`` on a simulated clock (no
sleeping), judged as the runtime does it: after an attempt, when 100 ms have passed since the
last judgement. Targets (the guard's issue): at most 1 false trip in 1,000 windows; detection as
fast as the evidence allows.

* false trips: canary and baseline alike; every trip is false; after one the window is cleared
  and the stream goes on. "trips / windows" = trips / (simulated seconds / window); "<= 95 %"
  the one-sided 95 % upper bound on the per-window rate from that count (3 / windows at 0 trips).
* detection: two healthy windows, then at t0 the canary turns bad; time from t0 to the trip
  (p50 / p90 over the seeds that tripped; "missed" = no trip within 120 s) and what the canary
  served meanwhile (errors / requests, p50 / p90). A false trip during the warm-up counts as a
  miss. The rows at 2,000 and 5,000 rps run a quarter of the seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import machine, table

from graylb.guard.stats import Window, judge
from graylb.rules.compiled import GuardErrors, GuardLatency, GuardPolicy

JUDGE_EVERY = 0.1  # graylb.guard.runtime.JUDGE_EVERY
HORIZON = 120.0  # seconds after t0 before a detection run counts as missed
MEDIAN_LATENCY = 0.020  # seconds; lognormal, sigma 0.5: p99 = 64 ms
SIGMA = 0.5
DEFAULT = GuardPolicy("canary", "stable")
WITH_LATENCY = GuardPolicy("canary", "stable", latency=GuardLatency())


@dataclasses.dataclass(frozen=True)
class Stream:
    rps: float = 200.0
    share: float = 0.10  # of attempts on the canary
    baseline_errors: float = 0.01
    canary_errors: float = 0.01  # before t0
    bad_errors: float | None = None  # the canary's error ratio from t0
    slow: float = 1.0  # the canary's latency factor from t0


@dataclasses.dataclass
class Run:
    trips: list[tuple[float, str]]
    seconds: float
    requests: int
    canary_errors_after: int = 0  # canary errors from t0 to the first trip after t0
    canary_requests_after: int = 0


def simulate(
    policy: GuardPolicy,
    s: Stream,
    rng: random.Random,
    *,
    requests: int | None = None,
    t0: float = math.inf,
    until: float = math.inf,
) -> Run:
    """Feed attempts until ``requests`` were made, or until the first trip after ``t0`` (or
    ``until`` seconds). Trips before ``t0`` clear the window and go on."""
    window = Window(policy.window)
    add, totals = window.add, window.totals
    expo, rand, lognorm = rng.expovariate, rng.random, rng.lognormvariate
    mu = math.log(MEDIAN_LATENCY)
    now = 0.0
    next_judge = 0.0
    trips: list[tuple[float, str]] = []
    n = 0
    c_err_after = c_req_after = 0
    limit = requests if requests is not None else sys.maxsize
    while n < limit and now < until:
        now += expo(s.rps)
        n += 1
        canary = rand() < s.share
        latency = lognorm(mu, SIGMA)
        if canary:
            if now >= t0:
                p = s.bad_errors if s.bad_errors is not None else s.canary_errors
                latency *= s.slow
                error = rand() < p
                c_req_after += 1
                c_err_after += error
            else:
                error = rand() < s.canary_errors
        else:
            error = rand() < s.baseline_errors
        add(canary, error, latency, now)
        if now < next_judge:
            continue
        next_judge = now + JUDGE_EVERY
        verdict = judge(*totals(now), policy)
        if verdict.trip:
            trips.append((now, verdict.reason))
            if now >= t0:
                break
            window.clear()
    return Run(trips, now, n, c_err_after, c_req_after)


def pct(q: float, xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def false_trips(name: str, policy: GuardPolicy, s: Stream, requests: int, seed: int) -> list[str]:
    run = simulate(policy, s, random.Random(seed), requests=requests)
    windows = run.seconds / policy.window
    k = len(run.trips)
    # one-sided 95 % upper bound of a Poisson count: 3.0 at 0, 4.74 at 1, 6.30 at 2 ...
    upper = _poisson_upper(k) / windows
    reasons = ",".join(sorted({r for _, r in run.trips}))
    return [
        name,
        f"{run.requests:,}",
        f"{k} / {windows:,.0f}" + (f" ({reasons})" if reasons else ""),
        f"{k / windows:.2g}",
        f"{upper:.2g}",
        "-",
        "-",
        "-",
    ]


def _poisson_upper(k: int, confidence: float = 0.95) -> float:
    low, high = 0.0, 10.0 * (k + 3)
    for _ in range(80):
        mid = (low + high) / 2
        cdf = sum(math.exp(-mid + i * math.log(mid) - math.lgamma(i + 1)) for i in range(k + 1)) if mid else 1.0
        if cdf > 1 - confidence:
            low = mid
        else:
            high = mid
    return high


def detection(name: str, policy: GuardPolicy, s: Stream, seeds: int, first_seed: int) -> list[str]:
    t0 = 2 * policy.window
    times: list[float] = []
    errors: list[float] = []
    served: list[float] = []
    missed = 0
    requests = 0
    for seed in range(first_seed, first_seed + seeds):
        run = simulate(policy, s, random.Random(seed), t0=t0, until=t0 + HORIZON)
        requests += run.requests
        after = [(t, r) for t, r in run.trips if t >= t0]
        if not after or len(run.trips) > 1:  # none after t0, or a false trip in the warm-up
            missed += 1
            continue
        times.append(after[0][0] - t0)
        errors.append(run.canary_errors_after)
        served.append(run.canary_requests_after)
    if not times:
        return [name, f"{requests:,}", f"missed {missed}/{seeds}", "-", "-", "-", "-", "-"]
    return [
        name,
        f"{requests:,}",
        f"{len(times)}/{seeds} tripped" + (f", missed {missed}" if missed else ""),
        "-",
        "-",
        f"{pct(0.5, times):.1f} / {pct(0.9, times):.1f} s",
        f"{pct(0.5, errors):.0f} / {pct(0.9, errors):.0f}",
        f"{pct(0.5, served):.0f} / {pct(0.9, served):.0f}",
    ]


def with_errors(policy: GuardPolicy, **changes: float) -> GuardPolicy:
    errors = policy.errors or GuardErrors()
    return dataclasses.replace(policy, errors=dataclasses.replace(errors, **changes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10^5 requests per false-trip row, 30 seeds")
    ap.add_argument("--requests", type=int, help="requests per false-trip row (default 10^6, quick 10^5)")
    ap.add_argument("--seeds", type=int, help="seeds per detection row (default 200, quick 30)")
    args = ap.parse_args()
    requests = args.requests or (10**5 if args.quick else 10**6)
    seeds = args.seeds or (30 if args.quick else 200)
    print(f"Machine: {machine()}")
    print(
        f"Policy defaults: window {DEFAULT.window:g}s, min_requests {DEFAULT.min_requests}, errors "
        f"confidence {GuardErrors().confidence} margin {GuardErrors().margin}; latency (where on) "
        f"p99_ratio {GuardLatency().p99_ratio} min_delta {GuardLatency().min_delta} "
        f"min_requests {GuardLatency().min_requests} confidence {GuardLatency().confidence}"
    )
    print(f"Streams: 200 rps, lognormal latency median {MEDIAN_LATENCY * 1000:g} ms sigma {SIGMA}; judged every 100 ms")
    print("Target: at most 1 false trip in 1,000 windows (per window <= 0.001)")
    started = time.perf_counter()
    healthy = Stream()
    strict = with_errors(DEFAULT, confidence=0.999)  # the recommended default
    rows = [
        false_trips("false: 1% vs 1%, 10% canary", DEFAULT, healthy, requests, 1),
        false_trips("false: 1% vs 1%, 5% canary", DEFAULT, dataclasses.replace(healthy, share=0.05), requests, 2),
        false_trips(
            "false: 0.1% vs 0.1%, 10% canary",
            DEFAULT,
            dataclasses.replace(healthy, baseline_errors=0.001, canary_errors=0.001),
            requests,
            3,
        ),
        false_trips("false: 1% vs 1%, + latency", WITH_LATENCY, healthy, requests, 4),
        false_trips("false: 1% vs 1%, confidence 0.9", with_errors(DEFAULT, confidence=0.9), healthy, requests, 5),
        false_trips("false: 1% vs 1%, confidence 0.999", strict, healthy, requests, 6),
        false_trips("false: 1% vs 1%, 5% canary, 0.999", strict, dataclasses.replace(healthy, share=0.05), requests, 7),
        false_trips(
            "false: 1% vs 1%, 0.999, window 10s", dataclasses.replace(strict, window=10.0), healthy, requests, 8
        ),
        false_trips(
            "false: 1% vs 1%, + latency, all 0.999",
            dataclasses.replace(strict, latency=GuardLatency(confidence=0.999)),
            healthy,
            requests,
            9,
        ),
        false_trips("false: 1% vs 1%, margin 0.005", with_errors(DEFAULT, margin=0.005), healthy, requests, 10),
    ]
    bad = Stream(baseline_errors=0.005, canary_errors=0.005, bad_errors=0.05)
    mild = dataclasses.replace(bad, bad_errors=0.015)
    slow = Stream(baseline_errors=0.005, canary_errors=0.005, slow=3.0)
    rows += [
        detection("detect: 0.5% -> 5% errors", DEFAULT, bad, seeds, 1000),
        detection("detect: 0.5% -> 5%, confidence 0.999", strict, bad, seeds, 1000),
        detection("detect: 0.5% -> 5%, 0.999, window 10s", dataclasses.replace(strict, window=10.0), bad, seeds, 1000),
        detection("detect: 0.5% -> 5%, margin 0.005", with_errors(DEFAULT, margin=0.005), bad, seeds, 1000),
        detection("detect: 0.5% -> 1.5%, 0.999", strict, mild, seeds, 1000),
        detection(
            "detect: 0.5% -> 1.5%, 0.999, window 10s", dataclasses.replace(strict, window=10.0), mild, seeds, 1000
        ),
        detection("detect: 0.5% -> 50% errors, 0.999", strict, dataclasses.replace(bad, bad_errors=0.5), seeds, 1000),
        detection(
            "detect: 0.5% -> 5%, 0.999, 2,000 rps",
            strict,
            dataclasses.replace(bad, rps=2000.0),
            max(10, seeds // 4),
            1000,
        ),
        detection(
            "detect: 0.5% -> 5%, 0.999, 5,000 rps, 5s",
            dataclasses.replace(strict, window=5.0),
            dataclasses.replace(bad, rps=5000.0),
            max(10, seeds // 4),
            1000,
        ),
        detection("detect: latency x3 (+ latency)", WITH_LATENCY, slow, seeds, 1000),
        detection(
            "detect: latency x3, all 0.999",
            dataclasses.replace(strict, latency=GuardLatency(confidence=0.999)),
            slow,
            seeds,
            1000,
        ),
    ]
    header = [
        "scenario",
        "requests",
        "trips / windows",
        "per window",
        "<= 95 %",
        "detect p50 / p90",
        "canary errors before trip p50 / p90",
        "canary requests before trip p50 / p90",
    ]
    print(table("Canary guard: false trips and detection", header, rows))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
