"""The canary guard's arithmetic: a sliding window of attempt outcomes per side, and the tests
that judge the canary against its baseline.

What is judged, and how (``benchmarks/guard_stats.py`` simulates it: false trips, time to trip):

* **Errors** -- one-sided, "the canary's error proportion is above the baseline's (+ ``margin``)".
  With ``margin == 0``: Fisher's exact test (the hypergeometric tail of the canary's share of all
  the window's errors). With ``margin > 0``: an exact binomial test of the canary's errors against
  the baseline's Wilson upper bound + margin (Berger & Boos' confidence-interval p-value). Both
  are exact in the canary's counts, so they stay valid at the small counts a canary has: 3 errors
  in 60 requests is judged on the real tail, not on a normal approximation that would be off by
  orders of magnitude that far out.
* **Latency** -- the canary's p99 (and/or p50) above the baseline's by a ratio *and* by
  ``min_delta`` seconds, *and* a one-sided Mann-Whitney rank test ("canary slower") on the two
  histograms, so a ratio of two noisy p99s over a few hundred samples does not trip alone.
* **Continuous judging.** The runtime judges the window every 100 ms. A test at level 1e-3
  repeated that often over a sliding window rejects somewhere in a window far more often than
  1e-3 of the time, so ``confidence`` is read *per window*: ``1 - confidence`` is the chance that
  a canary exactly as good as its baseline trips during one window's worth of continuous judging,
  and each single judgement uses the smaller level :func:`per_look_alpha` derives from it (about
  1/17 of it at 0.999; see there). Errors and latency each get that budget when both are judged.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import operator
from collections.abc import Sequence
from statistics import NormalDist

from ..rules.compiled import GuardErrors, GuardLatency, GuardPolicy

__all__ = [
    "LATENCY_BOUNDS",
    "Window",
    "SideTotals",
    "Verdict",
    "ErrorTest",
    "LatencyTest",
    "wilson_interval",
    "per_look_alpha",
    "hypergeom_sf",
    "binom_sf",
    "error_excess_test",
    "mann_whitney_slower",
    "latency_test",
    "judge",
]

#: Upper bounds (seconds) of the latency histogram's buckets: 0.5 ms x 2^(k/3) for k = 0..48, i.e.
#: 0.5 ms ... 32.768 s, three buckets per doubling (every power of two of a millisecond is a
#: bound: 1, 2, 4, ... 16, 32 ms ...). Each bucket spans a factor 2^(1/3) = 1.26 (26 %), so a
#: quantile is never off by more than one bucket (+-26 % at worst); interpolating linearly inside
#: the bucket, as Prometheus' ``histogram_quantile`` does, puts it within ~1-3 % of the truth for
#: smooth latency distributions (lognormal p50 / p99 from 10^4 samples: under 2 %). Below 0.5 ms
#: everything is one bucket [0, 0.5 ms]; above 32.768 s one overflow bucket, whose quantiles read
#: as 32.768 s.
LATENCY_BOUNDS: tuple[float, ...] = tuple(0.0005 * 2 ** (k / 3) for k in range(49))
_NLAT = len(LATENCY_BOUNDS) + 1  # + the overflow bucket
_ZEROS = (0,) * (2 * _NLAT)
_NEVER = -(2**62)  # the epoch of a bucket that holds nothing
_NORMAL = NormalDist()


@dataclasses.dataclass(frozen=True, slots=True)
class SideTotals:
    """One side's (canary's or baseline's) attempts in the window: ``requests`` attempts, of
    which ``errors`` failed; ``latency_counts`` counts the *answered* ones (not errors) per bucket
    of :data:`LATENCY_BOUNDS` (``len(LATENCY_BOUNDS) + 1`` counts, the last one the overflow)."""

    requests: int = 0
    errors: int = 0
    latency_counts: tuple[int, ...] = ()

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def answered(self) -> int:
        """Attempts with a latency sample (the ones that were not errors)."""
        return sum(self.latency_counts)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0..1) of the answered attempts' latency, interpolated linearly
        within its bucket like Prometheus' ``histogram_quantile``: the first bucket starts at 0,
        and a quantile that falls in the overflow bucket reads as the last bound. None when there
        is no sample."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, not {q}")
        counts = self.latency_counts
        total = sum(counts)
        if total == 0:
            return None
        rank = q * total
        below = 0
        for i, count in enumerate(counts):
            if count and below + count >= rank:
                if i >= len(LATENCY_BOUNDS):
                    return LATENCY_BOUNDS[-1]
                start = LATENCY_BOUNDS[i - 1] if i else 0.0
                end = LATENCY_BOUNDS[i]
                return start + (end - start) * max(0.0, rank - below) / count
            below += count
        return LATENCY_BOUNDS[-1]  # not reached: the last non-empty bucket holds rank <= total


class Window:
    """The last ``seconds`` of attempts, per side, in a ring of ``buckets`` time buckets.

    A bucket covers ``seconds / buckets`` of time; :meth:`totals` adds up the current bucket and
    the ``buckets - 1`` before it, so it sees between the last ``seconds * (1 - 1/buckets)`` and
    ``seconds`` of attempts (27-30 s for 30 s in 10 buckets), never anything older. Buckets that
    fall out are zeroed lazily, when :meth:`add` reuses them or :meth:`totals` passes over them:
    nothing runs in the background. :meth:`add` is O(1) (a bisect over 49 bounds, a few list
    updates; one bucket's zeroing per bucket period) and allocates nothing.

    Not thread-safe: the caller holds one lock around :meth:`add`, :meth:`totals` and
    :meth:`clear`. ``now`` is the caller's monotonic clock (seconds); an :meth:`add` whose ``now``
    is a whole window behind the newest bucket is dropped.
    """

    __slots__ = ("seconds", "buckets", "_width", "_epochs", "_counts", "_latency")

    def __init__(self, seconds: float, buckets: int = 10) -> None:
        if not seconds > 0 or buckets < 1:
            raise ValueError(f"a window needs seconds > 0 and buckets >= 1, not {seconds}, {buckets}")
        self.seconds = float(seconds)
        self.buckets = buckets
        self._width = self.seconds / buckets
        self._epochs = [_NEVER] * buckets  # which bucket period (now // width) each slot holds
        # Per slot: [canary requests, canary errors, baseline requests, baseline errors], and the
        # latency counts: the canary's _NLAT buckets, then the baseline's.
        self._counts = [[0, 0, 0, 0] for _ in range(buckets)]
        self._latency = [list(_ZEROS) for _ in range(buckets)]

    def add(self, canary: bool, error: bool, seconds: float, now: float) -> None:
        """Count one attempt on the canary (``canary``) or the baseline: an error or not, and
        for one that is not an error its latency ``seconds``."""
        epoch = int(now // self._width)
        slot = epoch % self.buckets
        counts = self._counts[slot]
        if self._epochs[slot] != epoch:
            if self._epochs[slot] > epoch:
                return  # a window older than what the slot holds: outside every window from now on
            self._epochs[slot] = epoch
            counts[0] = counts[1] = counts[2] = counts[3] = 0
            self._latency[slot][:] = _ZEROS
        if canary:
            counts[0] += 1
            if error:
                counts[1] += 1
            else:
                self._latency[slot][bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        else:
            counts[2] += 1
            if error:
                counts[3] += 1
            else:
                self._latency[slot][_NLAT + bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def totals(self, now: float) -> tuple[SideTotals, SideTotals]:
        """(canary, baseline) over the buckets still inside the window at ``now``."""
        oldest = int(now // self._width) - self.buckets  # this period and older are out
        c_requests = c_errors = b_requests = b_errors = 0
        latency: list[int] | None = None
        for slot in range(self.buckets):
            epoch = self._epochs[slot]
            if epoch <= oldest:
                if epoch != _NEVER:  # expired: zero it now, once
                    self._epochs[slot] = _NEVER
                    self._counts[slot][:] = (0, 0, 0, 0)
                    self._latency[slot][:] = _ZEROS
                continue
            counts = self._counts[slot]
            c_requests += counts[0]
            c_errors += counts[1]
            b_requests += counts[2]
            b_errors += counts[3]
            lat = self._latency[slot]
            latency = list(lat) if latency is None else list(map(operator.add, latency, lat))
        if latency is None:
            latency = list(_ZEROS)
        return (
            SideTotals(c_requests, c_errors, tuple(latency[:_NLAT])),
            SideTotals(b_requests, b_errors, tuple(latency[_NLAT:])),
        )

    def clear(self) -> None:
        """Forget every attempt."""
        for slot in range(self.buckets):
            self._epochs[slot] = _NEVER
            self._counts[slot][:] = (0, 0, 0, 0)
            self._latency[slot][:] = _ZEROS


# -- statistics ------------------------------------------------------------------------------


def _wilson(errors: int, n: int, z: float) -> tuple[float, float]:
    p = errors / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if errors <= 0 else max(0.0, centre - half)
    high = 1.0 if errors >= n else min(1.0, centre + half)
    return low, high


def wilson_interval(errors: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Wilson score interval for a proportion ``errors / n`` at ``confidence``.

    With p = errors / n and z the normal quantile 1 - (1 - confidence) / 2:

        centre = (p + z²/2n) / (1 + z²/n)
        half   = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)
        (low, high) = centre -+ half

    Unlike the Wald interval p -+ z·sqrt(p(1-p)/n) it is never degenerate at 0 errors (0/10 at
    95 %: [0, 0.278]) and keeps close to its nominal coverage down to small n: the right bound
    for "how bad could the baseline really be" from a few dozen errors. Either one-sided bound
    alone holds at (1 + confidence) / 2. ``n == 0``: (0, 1).
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), not {confidence}")
    return _wilson(errors, n, _NORMAL.inv_cdf(0.5 + confidence / 2))


@functools.lru_cache(maxsize=64)
def per_look_alpha(alpha_window: float) -> float:
    """The level of one judgement such that judging continuously (every 100 ms, or as often as
    you like) trips a canary as good as its baseline in at most ``alpha_window`` of windows.

    Over a sliding window the test statistic at time t and t + s shares 1 - s/window of its
    data: approximately a stationary Gaussian process with correlation 1 - |s|/window (the
    moving sum of a Poisson stream, standardised). Pickands' asymptotics for such a process give
    the chance that it crosses z at least once during one window's time:

        P(max > z) ~= Q(z) + z·φ(z)          (Q = 1 - Φ, the normal tail; φ its density)

    against Q(z) ~= φ(z)/z for a single look: continuous judging costs a factor of about z² + 1
    (17 at z = 3.85). This function solves Q(z) + z·φ(z) = alpha_window for z and returns Q(z):
    1e-2 -> 8.5e-4 per judgement (z = 3.14), 1e-3 -> 6.0e-5 (z = 3.85), 1e-4 -> 4.6e-6 (z = 4.43).
    An approximation, not a guarantee; measured with ``benchmarks/guard_stats.py`` (10 % canary,
    1 % errors both sides, 30 s windows): the error test, exact and so conservative at small
    counts, stays under it -- 0.052 per window at confidence 0.9, 0.0042 at 0.99, 0.0003 at 0.999
    (200 rps, 3,333 windows); 0.092 at 0.9 and 0.006 at 0.99 at 2,000 rps (499 windows). The rank
    test alone runs about at it: 0.006 at 0.99 (200 rps), 0.014 (2,000 rps, +-0.01).

    Each client process judges its own attempts: N processes are N guards, so somewhere in a
    fleet a healthy canary trips about N times as often.
    """
    if not 0.0 < alpha_window < 1.0:
        raise ValueError(f"alpha must be within (0, 1), not {alpha_window}")

    def crossing(z: float) -> float:
        return 0.5 * math.erfc(z / math.sqrt(2.0)) + z * _NORMAL.pdf(z)

    low, high = 0.0, 40.0  # crossing(z) falls from 0.5 to ~0 on [0, 40]
    if crossing(low) <= alpha_window:
        return alpha_window  # a huge alpha: no correction to speak of
    for _ in range(100):
        mid = (low + high) / 2
        if crossing(mid) > alpha_window:
            low = mid
        else:
            high = mid
    return 0.5 * math.erfc(high / math.sqrt(2.0))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def hypergeom_sf(x: int, total: int, marked: int, drawn: int) -> float:
    """P(X >= x) for X ~ Hypergeometric: ``drawn`` items out of ``total``, ``marked`` of which
    are marked. Summed exactly, term by term from a log-gamma start, over the smaller side: the
    upper tail from x when x is above the mean, else 1 - the lower tail from x - 1 (so a term
    too small for a float, far from the mode, never stands for the whole tail)."""
    lowest, highest = max(0, drawn + marked - total), min(drawn, marked)
    if x <= lowest:
        return 1.0
    if x > highest:
        return 0.0
    rest = total - marked - drawn  # pmf(k) ∝ C(marked, k) · C(total - marked, drawn - k)

    def log_pmf(k: int) -> float:
        return _log_comb(marked, k) + _log_comb(total - marked, drawn - k) - _log_comb(total, drawn)

    if x * total > drawn * marked:  # above the mean: sum the upper tail, pmf(k+1)/pmf(k) each step
        term, tail = math.exp(log_pmf(x)), 0.0
        for k in range(x, highest + 1):
            tail += term
            term *= (marked - k) * (drawn - k) / ((k + 1) * (rest + k + 1))
            if term <= tail * 1e-17:  # unimodal, past the mode: the rest is negligible
                break
        return min(1.0, tail)
    term, head = math.exp(log_pmf(x - 1)), 0.0
    for k in range(x - 1, lowest - 1, -1):
        head += term
        term *= k * (rest + k) / ((marked - k + 1) * (drawn - k + 1))  # pmf(k-1) / pmf(k)
        if term <= head * 1e-17:
            break
    return max(0.0, 1.0 - head)


def binom_sf(x: int, n: int, p: float) -> float:
    """P(X >= x) for X ~ Binomial(n, p), summed exactly like :func:`hypergeom_sf`."""
    if x <= 0:
        return 1.0
    if x > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    odds = p / (1.0 - p)

    def log_pmf(k: int) -> float:
        return _log_comb(n, k) + k * math.log(p) + (n - k) * math.log1p(-p)

    if x > n * p:
        term, tail = math.exp(log_pmf(x)), 0.0
        for k in range(x, n + 1):
            tail += term
            term *= (n - k) / (k + 1) * odds
            if term <= tail * 1e-17:
                break
        return min(1.0, tail)
    term, head = math.exp(log_pmf(x - 1)), 0.0
    for k in range(x - 1, -1, -1):
        head += term
        term *= k / ((n - k + 1) * odds)
        if term <= head * 1e-17:
            break
    return max(0.0, 1.0 - head)


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorTest:
    """The outcome of :func:`error_excess_test`: ``p_value`` against the per-judgement level
    ``alpha``; ``method`` "fisher" or "binomial"; ``null_ratio`` the error ratio the canary was
    tested against ("binomial": the baseline's upper bound + margin; "fisher": the pooled ratio,
    for the record)."""

    significant: bool
    p_value: float
    alpha: float
    method: str
    null_ratio: float


def error_excess_test(
    canary_errors: int, canary_n: int, baseline_errors: int, baseline_n: int, *, margin: float, alpha: float
) -> ErrorTest:
    """One-sided test of H0 "canary error ratio <= baseline error ratio + ``margin``" at level
    ``alpha`` (one judgement's level, see :func:`per_look_alpha`).

    ``margin == 0`` -- **Fisher's exact test**. Given the window's K = x_c + x_b errors among
    N = n_c + n_b attempts, under H0 (equal ratios) the canary's count is hypergeometric: the
    n_c canary attempts are a random draw from the N, so

        p = P(X >= x_c),  X ~ Hypergeometric(N, K, n_c)

    Exact at any count, so valid where a canary is small (a z-test at p ~ 1e-4 with 3 errors is
    off by orders of magnitude), and it uses the baseline's own noise properly instead of
    treating the baseline's ratio as known. It is conditional, hence slightly conservative.

    ``margin > 0`` -- **exact binomial test against the baseline's upper bound + margin**
    (Berger & Boos' confidence-interval p-value, for the nuisance baseline ratio). With
    gamma = alpha / 10 and U the baseline's one-sided 1 - gamma Wilson upper bound,

        p = P(X >= x_c) + gamma,  X ~ Binomial(n_c, min(1, U + margin))

    valid because either the baseline's true ratio is above U (probability <= gamma) or the
    binomial tail at U + margin bounds the tail at the true ratio + margin. The price: U is above
    the baseline's ratio, so it needs more canary evidence than Fisher's test at margin 0.
    """
    if canary_n <= 0 or baseline_n <= 0:
        return ErrorTest(False, 1.0, alpha, "fisher" if margin <= 0 else "binomial", math.nan)
    if margin <= 0.0:
        total_errors = canary_errors + baseline_errors
        p = hypergeom_sf(canary_errors, canary_n + baseline_n, total_errors, canary_n)
        return ErrorTest(p <= alpha, p, alpha, "fisher", total_errors / (canary_n + baseline_n))
    gamma = alpha / 10
    upper = _wilson(baseline_errors, baseline_n, _NORMAL.inv_cdf(1.0 - gamma))[1]
    null = min(1.0, upper + margin)
    p = min(1.0, binom_sf(canary_errors, canary_n, null) + gamma)
    return ErrorTest(p <= alpha, p, alpha, "binomial", null)


def mann_whitney_slower(canary: Sequence[int], baseline: Sequence[int]) -> float:
    """One-sided p-value of the Mann-Whitney U test that the canary's latencies are
    stochastically larger than the baseline's, from two histograms over the same buckets.

    Every sample in a bucket ties with the others there (mid-ranks). With n1, n2 samples,
    c_i / b_i the canary's / baseline's count in bucket i and t_i = c_i + b_i:

        U   = sum_i c_i · (b_0 + ... + b_(i-1) + b_i / 2)   (canary-slower pairs, ties halved)
        E U = n1·n2 / 2
        Var = n1·n2/12 · ((N + 1) - sum_i (t_i³ - t_i) / (N (N - 1))),  N = n1 + n2
        p   = Q((U - E U - 1/2) / sqrt(Var))                 (continuity-corrected normal tail)

    The normal approximation is good once both sides have a few dozen samples (the latency
    criterion asks for 200). It compares whole distributions, so it backs up a quantile ratio
    rather than replacing it: it has little power for a regression confined to the slowest 1 %.
    """
    n1, n2 = sum(canary), sum(baseline)
    if n1 == 0 or n2 == 0:
        return 1.0
    u = 0.0
    below = 0
    ties = 0
    for c, b in zip(canary, baseline):
        if c:
            u += c * (below + b / 2)
        below += b
        t = c + b
        ties += t * t * t - t
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0.0:
        return 1.0  # every sample in one bucket: no evidence either way
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyTest:
    """The outcome of :func:`latency_test`. ``slower``: a configured quantile is above the
    baseline's by its ratio and by ``min_delta``; ``p_value`` the rank test's (None: too few
    samples to judge); ``trip`` both, at level ``alpha``."""

    trip: bool
    slower: bool
    p_value: float | None
    alpha: float
    waiting: str = ""


def latency_test(canary: SideTotals, baseline: SideTotals, latency: GuardLatency, alpha: float) -> LatencyTest:
    """Is the canary slower? Only with ``latency.min_requests`` answered attempts on each side;
    then a quantile criterion (p99 above the baseline's p99 x ``p99_ratio`` and by at least
    ``min_delta`` seconds, or the same for p50 / ``p50_ratio``; a ratio of None is not judged,
    both None: latency never trips) *and* the rank test at level ``alpha``."""
    n_c, n_b = canary.answered, baseline.answered
    if n_c < latency.min_requests or n_b < latency.min_requests:
        side, n = ("canary", n_c) if n_c < latency.min_requests else ("baseline", n_b)
        return LatencyTest(False, False, None, alpha, f"{side} has {n} of {latency.min_requests} answered requests")
    slower = False
    for q, ratio in ((0.99, latency.p99_ratio), (0.5, latency.p50_ratio)):
        if ratio is None:
            continue
        c, b = canary.quantile(q), baseline.quantile(q)
        if c is not None and b is not None and c >= b * ratio and c - b >= latency.min_delta:
            slower = True
    p = mann_whitney_slower(canary.latency_counts, baseline.latency_counts)
    return LatencyTest(slower and p <= alpha, slower, p, alpha)


# -- the verdict -----------------------------------------------------------------------------

Evidence = dict[str, float | int | str | None]


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """One judgement of the window: ``trip`` or not, ``reason`` "errors" / "latency" ("" when not
    tripping), and the ``evidence``: each side's requests, errors, error ratio, p50 / p99
    (seconds), the p-values and the levels they were held to, the window and thresholds;
    ``waiting`` (text) while a side has too few requests to judge."""

    trip: bool
    reason: str
    evidence: Evidence = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One human line, e.g. ``canary 12/240 errors (5.0%) vs baseline 9/2160 (0.42%),
        p=1.2e-06 <= 6e-05 over 30s``."""
        ev = self.evidence
        window = f"over {_num(ev.get('window'))}s"
        if "waiting" in ev:
            return f"waiting: {ev['waiting']} ({window})"
        errors = (
            f"canary {ev.get('canary_errors')}/{ev.get('canary_requests')} errors"
            f" ({_pct(ev.get('canary_error_ratio'))}) vs baseline"
            f" {ev.get('baseline_errors')}/{ev.get('baseline_requests')} ({_pct(ev.get('baseline_error_ratio'))})"
        )
        errors_p = _test("p", ev.get("errors_p"), ev.get("errors_alpha"))
        latency = (
            f"canary p50/p99 {_ms(ev.get('canary_p50'))}/{_ms(ev.get('canary_p99'))}"
            f" vs baseline {_ms(ev.get('baseline_p50'))}/{_ms(ev.get('baseline_p99'))}"
        )
        latency_p = _test("rank p", ev.get("latency_p"), ev.get("latency_alpha"))
        if self.reason == "errors":
            return f"{errors}, {errors_p} {window}"
        if self.reason == "latency":
            return f"{latency}, {latency_p} {window}"
        parts = [errors + (f", {errors_p}" if "errors_p" in ev else "")]
        if "latency_p" in ev or "latency_waiting" in ev:
            waiting = ev.get("latency_waiting")
            parts.append(latency + (f", {latency_p}" if waiting is None else f" (waiting: {waiting})"))
        return f"no trip: {'; '.join(parts)} {window}"


def _num(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else "?"


def _pct(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    pct = value * 100
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 1 else f"{pct:.2f}%"


def _ms(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value * 1000:.0f}ms" if value >= 0.01 else f"{value * 1000:.1f}ms"


def _test(name: str, p: object, alpha: object) -> str:
    if not isinstance(p, float) or not isinstance(alpha, float):
        return f"{name}=-"
    return f"{name}={p:.2g} {'<=' if p <= alpha else '>'} {alpha:.2g}"


def judge(canary: SideTotals, baseline: SideTotals, policy: GuardPolicy) -> Verdict:
    """Judge the canary's window against the baseline's under ``policy``.

    Nothing trips below ``policy.min_requests`` attempts on either side (``waiting`` says which).
    Then errors (unless ``policy.errors`` is None), then latency (unless ``policy.latency`` is
    None): the first that trips gives the reason. Each criterion's ``confidence`` is per window of
    continuous judging (see :func:`per_look_alpha`), so a canary as good as its baseline trips on
    it in about ``1 - confidence`` of windows at most.
    """
    ev: Evidence = {
        "window": policy.window,
        "min_requests": policy.min_requests,
        "canary_requests": canary.requests,
        "canary_errors": canary.errors,
        "canary_error_ratio": canary.error_ratio,
        "baseline_requests": baseline.requests,
        "baseline_errors": baseline.errors,
        "baseline_error_ratio": baseline.error_ratio,
        "canary_p50": canary.quantile(0.5),
        "canary_p99": canary.quantile(0.99),
        "baseline_p50": baseline.quantile(0.5),
        "baseline_p99": baseline.quantile(0.99),
    }
    short = [
        f"{name} has {side.requests} of {policy.min_requests} requests"
        for name, side in (("canary", canary), ("baseline", baseline))
        if side.requests < policy.min_requests
    ]
    if short:
        ev["waiting"] = ", ".join(short)
        return Verdict(False, "", ev)
    errors: GuardErrors | None = policy.errors
    if errors is not None:
        test = error_excess_test(
            canary.errors,
            canary.requests,
            baseline.errors,
            baseline.requests,
            margin=errors.margin,
            alpha=per_look_alpha(1.0 - errors.confidence),
        )
        ev.update(
            errors_p=test.p_value,
            errors_alpha=test.alpha,
            errors_confidence=errors.confidence,
            errors_margin=errors.margin,
            errors_null_ratio=test.null_ratio,
        )
        if test.significant:
            return Verdict(True, "errors", ev)
    latency: GuardLatency | None = policy.latency
    if latency is not None:
        lt = latency_test(canary, baseline, latency, per_look_alpha(1.0 - latency.confidence))
        ev.update(
            latency_p=lt.p_value,
            latency_alpha=lt.alpha,
            latency_confidence=latency.confidence,
            latency_slower=int(lt.slower),
            p99_ratio=latency.p99_ratio,
            p50_ratio=latency.p50_ratio,
            min_delta=latency.min_delta,
            latency_min_requests=latency.min_requests,
        )
        if lt.waiting:
            ev["latency_waiting"] = lt.waiting
        if lt.trip:
            return Verdict(True, "latency", ev)
    return Verdict(False, "", ev)
