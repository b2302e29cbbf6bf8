"""``make monitoring`` (scripts/monitoring.py) end to end, in its ``--once`` smoke mode: the demo,
Prometheus and Jaeger start on 127.0.0.1, the live PromQL answer shows both versions of orders,
and everything is stopped afterwards."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from tests.monitoring.conftest import REPO, program

pytestmark = pytest.mark.timeout(240)


def test_make_monitoring_starts_everything_answers_and_stops_it_all() -> None:
    program("prometheus")
    program("jaeger")
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "monitoring.py"), "--once"],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    rates = dict(re.findall(r"orders (\S+)\s+([\d.]+) attempts/s", text))
    assert set(rates) == {"1.4.2", "2.0.0"} and all(float(r) > 0 for r in rates.values()), text
    urls = re.findall(r"(http://127\.0\.0\.1:\d+)/", text)
    assert len(urls) >= 3, text  # demo metrics, Prometheus, Jaeger: all on loopback
    assert text.rstrip().endswith("stopped."), text
    for url in urls:  # and all of them stopped
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=2)
