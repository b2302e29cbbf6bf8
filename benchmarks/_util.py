"""Shared bits for the benchmark scripts: machine description and table printing."""

from __future__ import annotations

import os
import platform
import statistics
import sys


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


def _serve_fake(kind: str, conn, kwargs: dict) -> None:
    if kind == "consul":
        from graylb.testing.fake_consul import FakeConsul as Fake
    else:
        from graylb.testing.fake_nacos import FakeNacos as Fake
    fake = Fake(**kwargs).start()
    conn.send(fake.url)
    try:
        conn.recv()
    except EOFError:
        pass
    fake.stop()


class FakeInChildProcess:
    """A fake registry in its own process, as a real registry would be: it does not compete
    with the measured client for the GIL. Driven over its HTTP API only."""

    def __init__(self, kind: str = "consul", **kwargs) -> None:
        self.kind, self.kwargs = kind, kwargs

    def __enter__(self):
        import multiprocessing

        self._parent, child = multiprocessing.Pipe()
        self._proc = multiprocessing.Process(target=_serve_fake, args=(self.kind, child, self.kwargs), daemon=True)
        self._proc.start()
        self.url = self._parent.recv()
        return self

    def __exit__(self, *exc) -> None:
        self._parent.send("stop")
        self._proc.join(10)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]
