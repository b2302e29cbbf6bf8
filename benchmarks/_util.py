"""Shared bits for the benchmark scripts: machine description and table printing."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()} on {sys.platform}"


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [f"\n{title}", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def median_ci(xs: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of ``xs``: the order statistics
    whose ranks a Binomial(n, 1/2) puts around the middle with at least ``confidence``. No
    normality assumed -- round timings on a shared machine have long right tails."""
    xs = sorted(xs)
    n = len(xs)
    if n < 6:
        return xs[0], xs[-1]
    pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
    lo = 0
    # xs[j] .. xs[n-1-j] covers the median when j < B <= n-1-j, B ~ Binomial(n, 1/2): widen from
    # the middle until that has `confidence`
    for j in range((n - 1) // 2, -1, -1):
        if sum(pmf[j + 1 : n - j]) >= confidence:
            lo = j
            break
    return xs[lo], xs[n - 1 - lo]


def spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    """``median [low, high]``: the median and its 95 % interval, formatted."""
    lo, hi = median_ci(xs)
    return f"{fmt.format(median(xs))} [{fmt.format(lo)}, {fmt.format(hi)}]"


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each variant's round function ``rounds`` times, interleaved: round r runs every
    variant once, in an order that rotates (and reverses on odd rounds), so a machine getting
    busier or quieter hits all of them alike. Returns each variant's per-round results, in round
    order, so paired differences (``paired``) can be taken round by round."""
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            out[name].append(variants[name]())
    return out


def paired(a: list[float], b: list[float]) -> list[float]:
    """Round-by-round ``b - a`` of two ``interleaved`` results: drift shared by the pair cancels."""
    return [y - x for x, y in zip(a, b)]


def _serve_in_child(conn, start) -> None:
    server = start()
    conn.send(server.url)
    try:
        conn.recv()  # until the parent says stop (or goes away)
    except EOFError:
        pass
    server.stop()


def _start_fake(kind: str, kwargs: dict):
    if kind == "consul":
        from graylb.testing.fake_consul import FakeConsul as Fake
    else:
        from graylb.testing.fake_nacos import FakeNacos as Fake
    return Fake(**kwargs).start()


class InChildProcess:
    """A server in its own process, as a real registry or service would be: it does not compete
    with the measured client for the GIL. ``start`` is a picklable callable returning an object
    with ``url`` and ``stop()``; ``InChildProcess.fake("consul")`` runs a fake registry."""

    def __init__(self, start) -> None:
        self._start = start

    @classmethod
    def fake(cls, kind: str = "consul", **kwargs) -> InChildProcess:
        import functools

        return cls(functools.partial(_start_fake, kind, kwargs))

    def __enter__(self):
        import multiprocessing
        from urllib.parse import urlsplit

        self._parent, child = multiprocessing.Pipe()
        self._proc = multiprocessing.Process(target=_serve_in_child, args=(child, self._start), daemon=True)
        self._proc.start()
        self.url = self._parent.recv()
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        return self

    def __exit__(self, *exc) -> None:
        self._parent.send("stop")
        self._proc.join(10)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


# A rules document whose beta route points at the subset given by ``%`` (stable / canary): the
# latency benchmarks flip it and time how long the balancer takes to route the new way.
FLIP_RULES = """
services:
  orders:
    subsets: {stable: {version: "^1"}, canary: {version: "^2"}}
    default: stable
    routes: [{name: beta, match: [{headers: {user-group: beta}}], to: [{subset: %s}]}]
"""


def wait_for(predicate, timeout: float) -> float:
    """Spin (0.5 ms) until ``predicate()``; returns the perf_counter time it became true."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"change not seen within {timeout:g} s")
        time.sleep(0.0005)
    return time.perf_counter()
