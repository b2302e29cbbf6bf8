"""examples/pytest_pinning is a user's suite: it passes as shipped, and fails loudly, naming
the versions on offer, when the version it pins does not exist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pytest_pinning"


def _run(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE)],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_example_suite_passes() -> None:
    result = _run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout


def test_the_example_suite_fails_loudly_when_the_pinned_version_is_missing() -> None:
    result = _run(ORDERS_VERSION="3.0.0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 failed, 5 passed" in result.stdout
    assert "no instance available for service 'orders' subset 'pin 3.0.0'" in result.stdout
    assert "routable versions: 1.4.2, 2.0.0, 2.1.0" in result.stdout
    assert "graylb: pin_version('orders', '3.0.0'): 4 call(s) found no instance" in result.stdout
