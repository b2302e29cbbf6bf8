"""The canary guard's statistics: the sliding window, quantiles, Wilson, the error and latency
tests and the verdict. Deterministic (seeded), no timing."""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
from itertools import pairwise, product

import pytest

from graylb.guard.stats import (
    LATENCY_BOUNDS,
    SideTotals,
    Window,
    binom_sf,
    error_excess_test,
    hypergeom_sf,
    judge,
    mann_whitney_slower,
    per_look_alpha,
    wilson_interval,
)
from graylb.rules.compiled import GuardErrors, GuardLatency, GuardPolicy

POLICY = GuardPolicy("canary", "stable")  # 30 s, 50 requests a side, errors at 0.99, no latency
LATENCY = GuardPolicy("canary", "stable", errors=None, latency=GuardLatency())
NLAT = len(LATENCY_BOUNDS) + 1


def side(requests: int, errors: int, latencies: list[float] = ()) -> SideTotals:  # type: ignore[assignment]
    counts = [0] * NLAT
    for seconds in latencies:
        counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
    return SideTotals(requests, errors, tuple(counts))


def lognormal(rng: random.Random, n: int, median: float, sigma: float = 0.5) -> list[float]:
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]


def answered(latencies: list[float]) -> SideTotals:
    return side(len(latencies), 0, latencies)


# -- window ----------------------------------------------------------------------------------


def test_the_window_counts_each_side() -> None:
    w = Window(30.0)
    for _ in range(3):
        w.add(True, False, 0.010, now=100.0)
    w.add(True, True, 5.0, now=100.5)
    for _ in range(5):
        w.add(False, False, 0.020, now=101.0)
    w.add(False, True, 0.001, now=101.0)
    canary, baseline = w.totals(101.0)
    assert (canary.requests, canary.errors, canary.answered) == (4, 1, 3)
    assert (baseline.requests, baseline.errors, baseline.answered) == (6, 1, 5)
    assert canary.error_ratio == 0.25 and baseline.error_ratio == pytest.approx(1 / 6)
    # only answered attempts have a latency sample: the canary's 5 s error is not in it
    assert canary.latency_counts[bisect.bisect_left(LATENCY_BOUNDS, 0.010)] == 3
    assert sum(canary.latency_counts) == 3 and len(canary.latency_counts) == NLAT
    assert baseline.latency_counts[bisect.bisect_left(LATENCY_BOUNDS, 0.020)] == 5


def test_adds_older_than_the_window_drop_out_at_bucket_boundaries() -> None:
    w = Window(30.0, buckets=10)  # 3 s buckets: [0, 3), [3, 6), ...
    w.add(True, False, 0.01, now=2.999)  # bucket 0
    w.add(True, True, 0.01, now=3.0)  # bucket 1
    assert w.totals(3.0)[0].requests == 2
    assert w.totals(29.999)[0].requests == 2  # bucket 9: buckets 0..9 inside
    canary, _ = w.totals(30.0)  # bucket 10: bucket 0 is out
    assert (canary.requests, canary.errors) == (1, 1)
    assert w.totals(32.999)[0].requests == 1  # bucket 1 is still in: between 27 and 30 s of history
    assert w.totals(33.0)[0].requests == 0
    assert w.totals(1000.0) == (SideTotals(0, 0, (0,) * NLAT), SideTotals(0, 0, (0,) * NLAT))


def test_a_reused_bucket_starts_from_zero() -> None:
    w = Window(10.0, buckets=5)  # 2 s buckets, 5 slots
    for _ in range(7):
        w.add(False, True, 0.01, now=0.5)  # slot 0, period 0
    w.add(False, False, 0.01, now=10.5)  # slot 0 again, period 5: the 7 errors are gone
    _, baseline = w.totals(10.5)
    assert (baseline.requests, baseline.errors, baseline.answered) == (1, 0, 1)


def test_the_window_slides_continuously() -> None:
    w = Window(30.0)
    for t in range(100):  # one canary attempt a second
        w.add(True, False, 0.01, now=float(t))
        n = w.totals(float(t))[0].requests
        assert min(t + 1, 28) <= n <= min(t + 1, 30)


def test_an_add_a_whole_window_late_is_dropped_and_clear_forgets() -> None:
    w = Window(30.0)
    w.add(True, False, 0.01, now=31.0)  # period 10, slot 0
    w.add(True, True, 0.01, now=1.0)  # period 0, slot 0: older than what the slot holds
    canary, _ = w.totals(31.0)
    assert (canary.requests, canary.errors) == (1, 0)
    w.clear()
    assert w.totals(31.0)[0].requests == 0


def test_a_window_needs_a_length() -> None:
    with pytest.raises(ValueError):
        Window(0.0)
    with pytest.raises(ValueError):
        Window(30.0, buckets=0)


# -- quantiles -------------------------------------------------------------------------------


def test_latency_bounds_are_log_spaced_from_half_a_millisecond_to_half_a_minute() -> None:
    assert LATENCY_BOUNDS[0] == 0.0005 and LATENCY_BOUNDS[-1] == pytest.approx(32.768)
    assert 40 <= len(LATENCY_BOUNDS) <= 60
    ratios = {round(b / a, 9) for a, b in pairwise(LATENCY_BOUNDS)}
    assert ratios == {round(2 ** (1 / 3), 9)}


@pytest.mark.parametrize("median,sigma", [(0.002, 0.3), (0.020, 0.5), (0.300, 1.0)])
def test_quantiles_are_within_one_bucket_of_the_truth(median: float, sigma: float) -> None:
    rng = random.Random(7)
    xs = lognormal(rng, 5000, median, sigma)
    totals = answered(xs)
    xs.sort()
    for q in (0.1, 0.5, 0.9, 0.99):
        truth = xs[math.ceil(q * len(xs)) - 1]
        estimate = totals.quantile(q)
        assert estimate is not None
        assert truth / 2 ** (1 / 3) <= estimate <= truth * 2 ** (1 / 3), (q, estimate, truth)


def test_quantile_interpolates_within_the_bucket_like_prometheus() -> None:
    i = LATENCY_BOUNDS.index(0.016)  # the bucket (0.0127, 0.016]
    counts = [0] * NLAT
    counts[i] = 4
    totals = SideTotals(4, 0, tuple(counts))
    low, high = LATENCY_BOUNDS[i - 1], LATENCY_BOUNDS[i]
    assert totals.quantile(0.5) == pytest.approx(low + (high - low) * 0.5)
    assert totals.quantile(1.0) == pytest.approx(high)
    assert totals.quantile(0.0) == pytest.approx(low)
    first = SideTotals(2, 0, (2,) + (0,) * (NLAT - 1))  # the first bucket starts at 0
    assert first.quantile(0.5) == pytest.approx(0.00025)
    overflow = SideTotals(2, 0, (0,) * (NLAT - 1) + (2,))  # > 32.768 s reads as the last bound
    assert overflow.quantile(0.99) == LATENCY_BOUNDS[-1]


def test_quantile_of_nothing_is_none_and_q_must_be_a_fraction() -> None:
    assert SideTotals(3, 3, (0,) * NLAT).quantile(0.5) is None
    assert SideTotals().quantile(0.99) is None and SideTotals().error_ratio is None
    with pytest.raises(ValueError):
        SideTotals().quantile(1.5)


# -- Wilson, tails, looks --------------------------------------------------------------------


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(0, 10, 0.95) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 100, 0.95) == pytest.approx((0.0215, 0.1118), abs=1e-4)
    assert wilson_interval(10, 10, 0.95) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(50, 100, 0.99) == pytest.approx((0.3753, 0.6247), abs=1e-4)
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)


def _hypergeom_pmf(k: int, total: int, marked: int, drawn: int) -> float:
    return math.comb(marked, k) * math.comb(total - marked, drawn - k) / math.comb(total, drawn)


def test_hypergeometric_and_binomial_tails_match_brute_force() -> None:
    for total, marked, drawn in [(20, 5, 8), (50, 10, 25), (30, 0, 10), (12, 12, 4)]:
        for x in range(-1, drawn + 2):
            brute = sum(_hypergeom_pmf(k, total, marked, drawn) for k in range(max(x, 0), drawn + 1) if k <= marked)
            assert hypergeom_sf(x, total, marked, drawn) == pytest.approx(brute, rel=1e-9, abs=1e-300)
    for n, p in [(10, 0.3), (40, 0.01), (5, 0.0), (5, 1.0)]:
        for x in range(-1, n + 2):
            brute = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(max(x, 0), n + 1))
            assert binom_sf(x, n, p) == pytest.approx(brute, rel=1e-9, abs=1e-300)


def test_tails_far_from_the_mean_neither_underflow_nor_flip() -> None:
    # 1 canary error where ~1000 are expected: P(X >= 1) is 1, not an underflowed 0 (a trip!)
    assert hypergeom_sf(1, 60_000, 10_000, 6_000) == 1.0
    assert binom_sf(1, 100_000, 0.5) == 1.0
    assert hypergeom_sf(3_000, 60_000, 10_000, 6_000) == 0.0
    assert binom_sf(90_000, 100_000, 0.5) == 0.0
    assert not judge(side(6_000, 1), side(54_000, 9_999), POLICY).trip


def test_per_look_alpha_pays_for_judging_continuously() -> None:
    assert per_look_alpha(1e-3) == pytest.approx(6.0e-5, rel=0.02)
    assert per_look_alpha(1e-2) == pytest.approx(8.5e-4, rel=0.02)
    alphas = (0.2, 0.1, 0.01, 1e-3, 1e-4, 1e-6)
    levels = [per_look_alpha(a) for a in alphas]
    assert levels == sorted(levels, reverse=True)
    assert all(level < a / 10 for level, a in zip(levels[2:], alphas[2:]))  # ~z² + 1 looks
    with pytest.raises(ValueError):
        per_look_alpha(0.0)


# -- the error test --------------------------------------------------------------------------


def test_errors_trip_on_a_clear_regression() -> None:
    verdict = judge(side(200, 20), side(2000, 10), POLICY)
    assert verdict.trip and verdict.reason == "errors"
    ev = verdict.evidence
    assert ev["canary_errors"] == 20 and ev["baseline_requests"] == 2000
    assert isinstance(ev["errors_p"], float) and isinstance(ev["errors_alpha"], float)
    assert ev["errors_p"] <= ev["errors_alpha"] < 1 - POLICY.errors.confidence  # type: ignore[union-attr]
    summary = verdict.summary()
    assert summary.startswith("canary 20/200 errors (10%) vs baseline 10/2000 (0.50%), p=")
    assert summary.endswith("over 30s")


@pytest.mark.parametrize("canary,baseline", [((200, 20), (2000, 200)), ((200, 2), (2000, 20)), ((60, 0), (500, 0))])
def test_errors_do_not_trip_on_equal_ratios(canary: tuple[int, int], baseline: tuple[int, int]) -> None:
    verdict = judge(side(*canary), side(*baseline), POLICY)
    assert not verdict.trip and verdict.reason == ""
    assert verdict.summary().startswith("no trip: canary")


def test_nothing_trips_below_min_requests() -> None:
    verdict = judge(side(12, 12), side(2000, 0), POLICY)
    assert not verdict.trip and verdict.reason == ""
    assert verdict.evidence["waiting"] == "canary has 12 of 50 requests"
    assert verdict.summary() == "waiting: canary has 12 of 50 requests (over 30s)"
    both = judge(side(12, 12), side(3, 0), POLICY)
    assert both.evidence["waiting"] == "canary has 12 of 50 requests, baseline has 3 of 50 requests"


def test_the_margin_is_respected() -> None:
    canary, baseline = side(1000, 100), side(2000, 10)  # 10 % vs 0.5 %
    with_margin = lambda m: dataclasses.replace(POLICY, errors=GuardErrors(margin=m, confidence=0.99))  # noqa: E731
    assert judge(canary, baseline, with_margin(0.05)).trip  # 10 % is well above 0.5 % + 5 points
    assert not judge(canary, baseline, with_margin(0.08)).trip  # not clearly above 0.5 % + 8 points
    assert not judge(canary, baseline, with_margin(0.2)).trip
    direct = error_excess_test(100, 1000, 10, 2000, margin=0.05, alpha=1e-4)
    assert direct.method == "binomial" and direct.null_ratio > 0.055


def test_the_error_test_is_exact_at_small_counts() -> None:
    # k errors in 50 canary attempts against none in 5000: all K = k errors fell on the canary,
    # P = C(50, k) / C(5050, k) exactly (1 error: 0.0099; 2 errors: 9.6e-5)
    for k in (1, 2, 3):
        t = error_excess_test(k, 50, 0, 5000, margin=0.0, alpha=1.0)
        assert t.method == "fisher" and t.p_value == pytest.approx(math.comb(50, k) / math.comb(5050, k), rel=1e-9)
    assert not error_excess_test(1, 50, 0, 5000, margin=0.0, alpha=per_look_alpha(0.01)).significant
    assert error_excess_test(2, 50, 0, 5000, margin=0.0, alpha=per_look_alpha(0.01)).significant
    # against a baseline at 1 % (50 / 5000) the same 2 errors are nothing
    assert error_excess_test(2, 50, 50, 5000, margin=0.0, alpha=1.0).p_value > 0.05


def test_criteria_can_be_switched_off() -> None:
    bad = side(600, 300, [0.5] * 300), side(2000, 0, [0.01] * 2000)
    assert not judge(*bad, dataclasses.replace(POLICY, errors=None)).trip
    assert judge(*bad, dataclasses.replace(LATENCY, errors=GuardErrors())).reason == "errors"
    assert judge(*bad, LATENCY).reason == "latency"


# -- latency ---------------------------------------------------------------------------------


def test_latency_trips_on_three_times_slower_with_enough_samples() -> None:
    rng = random.Random(3)
    verdict = judge(answered(lognormal(rng, 300, 0.060)), answered(lognormal(rng, 2700, 0.020)), LATENCY)
    assert verdict.trip and verdict.reason == "latency"
    ev = verdict.evidence
    assert isinstance(ev["latency_p"], float) and ev["latency_p"] < 1e-10
    assert ev["canary_p99"] >= 2 * ev["baseline_p99"]  # type: ignore[operator]
    assert verdict.summary().startswith("canary p50/p99 ")


def test_latency_does_not_trip_on_few_samples() -> None:
    rng = random.Random(4)
    verdict = judge(answered(lognormal(rng, 150, 0.060)), answered(lognormal(rng, 2700, 0.020)), LATENCY)
    assert not verdict.trip
    assert verdict.evidence["latency_waiting"] == "canary has 150 of 200 answered requests"
    assert verdict.summary().endswith("(waiting: canary has 150 of 200 answered requests) over 30s")


def test_a_slow_quantile_alone_does_not_trip() -> None:
    # one slow outlier in 60 samples doubles the canary's p99; the rank test sees no shift
    rng = random.Random(5)
    few = dataclasses.replace(LATENCY, latency=GuardLatency(min_requests=50))
    canary = answered([*lognormal(rng, 59, 0.020), 2.0])
    verdict = judge(canary, answered(lognormal(rng, 400, 0.020)), few)
    assert verdict.evidence["latency_slower"] == 1
    assert not verdict.trip and verdict.evidence["latency_p"] > 0.01  # type: ignore[operator]


def test_latency_does_not_trip_within_min_delta() -> None:
    rng = random.Random(6)  # 3x slower, but p99 ~19 ms vs ~6 ms: under the 25 ms min_delta
    canary, baseline = answered(lognormal(rng, 500, 0.006)), answered(lognormal(rng, 2000, 0.002))
    verdict = judge(canary, baseline, LATENCY)
    assert not verdict.trip and verdict.evidence["latency_slower"] == 0
    assert verdict.evidence["latency_p"] < 1e-10  # type: ignore[operator]
    tighter = dataclasses.replace(LATENCY, latency=GuardLatency(min_delta=0.005))
    assert judge(canary, baseline, tighter).trip


def test_mann_whitney_on_histograms() -> None:
    same = [0, 5, 10, 5, 0]
    assert mann_whitney_slower(same, same) > 0.4
    assert mann_whitney_slower([0, 0, 0, 10, 10], [10, 10, 0, 0, 0]) < 1e-6
    assert mann_whitney_slower([10, 10, 0, 0, 0], [0, 0, 0, 10, 10]) > 0.999
    assert mann_whitney_slower([7, 0], [9, 0]) == 1.0  # all tied: no evidence
    assert mann_whitney_slower([0, 0], [1, 2]) == 1.0
    # against the U statistic counted pair by pair, on small unbinned-looking data
    c, b = [1, 2, 0, 3], [2, 1, 2, 0]
    u = sum(
        ci * bj * (1.0 if i > j else 0.5 if i == j else 0.0) for (i, ci), (j, bj) in product(enumerate(c), enumerate(b))
    )
    n1, n2 = sum(c), sum(b)
    p = mann_whitney_slower(c, b)
    assert (p < 0.5) == (u > n1 * n2 / 2)


# -- a small false-trip run ------------------------------------------------------------------


def test_a_healthy_canary_does_not_trip() -> None:
    rng = random.Random(2024)
    policy = GuardPolicy("canary", "stable", latency=GuardLatency())
    w = Window(policy.window)
    now, next_judge, trips, judged = 0.0, 0.0, 0, 0
    for _ in range(20_000):  # 100 s at 200 rps, 10 % canary, 1 % errors on both sides
        now += rng.expovariate(200.0)
        canary = rng.random() < 0.1
        w.add(canary, rng.random() < 0.01, rng.lognormvariate(math.log(0.02), 0.5), now)
        if now >= next_judge:
            next_judge = now + 0.1
            judged += 1
            trips += judge(*w.totals(now), policy).trip
    assert judged > 900 and trips == 0
