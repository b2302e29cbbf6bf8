"""The monitoring kit against real servers: promtool, Prometheus and Jaeger from the cache
``make real-registries`` fills (``scripts/real_registries.py``, manifest keys ``prometheus``,
``prometheus-debian``, ``jaeger``).

A program missing from the manifest or recorded as ``failed`` skips its tests locally and fails
them with ``CI=true``; one recorded as ``unavailable`` (cannot be had on this machine) is a skip
with the recorded reason, even in CI -- as for the real registries of tests/contract.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.contract.contract_backends import recipe

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
PROMETHEUS_VERSIONS = ("prometheus", "prometheus-debian")  # 3.x built from source; Debian's 2.42


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def program(key: str) -> dict[str, Any]:
    """The manifest entry of ``key`` with runnable binaries, or skip (fail in CI) saying why."""
    cache = recipe().cache_dir()
    try:
        manifest = json.loads((cache / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    entry = manifest.get(key)
    if isinstance(entry, dict) and "unavailable" in entry:
        pytest.skip(f"{key}: {entry['unavailable']}")  # cannot be had here: a skip even in CI
    problem = None
    if not isinstance(entry, dict):
        problem = f"run `make real-registries` (no {key} entry in {cache / 'manifest.json'})"
    elif "failed" in entry:
        problem = f"`make real-registries` failed to build it: {entry['failed']}"
    else:
        missing = [v for k, v in entry.items() if k in ("binary", "promtool") and not Path(v).is_file()]
        if missing:
            problem = f"recorded but missing: {', '.join(missing)} (run `make real-registries`)"
    if problem is not None:
        message = f"{key}: {problem}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: the real server must run)", pytrace=False)
        pytest.skip(message)
    assert isinstance(entry, dict)
    return entry


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=PROMETHEUS_VERSIONS)
def promtool(request: pytest.FixtureRequest) -> str:
    """promtool of each Prometheus version the manifest has."""
    return str(program(request.param)["promtool"])


def stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate ``proc``, kill it if it does not go within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def running_prometheus(binary: str, directory: Path, target: str, rule_files: Sequence[str], job: str) -> Iterator[str]:
    """A real Prometheus on a free 127.0.0.1 port, scraping ``target`` and evaluating
    ``rule_files`` (already in ``directory``) every second; yields its URL once ready, stops it
    after."""
    from tests.conftest import wait_until

    config = directory / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": list(rule_files),
                "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, f"prometheus exited: {log_path.read_text()[-3000:]}"
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout=60, interval=0.2, message=f"prometheus ({binary}) to be ready")
        yield url
    finally:
        stop(proc)
