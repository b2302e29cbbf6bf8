"""Backends for the contract suite: ``fake-consul``, ``real-consul``, ``fake-nacos``, ``real-nacos``.

Each test takes the ``backend`` fixture and runs once per backend. Servers start once per
session (on free 127.0.0.1 ports) and stop at its end.

Real servers come from the cache ``make real-registries`` fills (``scripts/real_registries.py``;
``${GRAYLB_CACHE:-${XDG_CACHE_HOME:-~/.cache}/graylb}``, its ``manifest.json`` records what was
obtained). Availability policy:

- locally, a real backend that is not there (binary missing, or it does not start) is skipped
  with a one-line reason;
- with ``CI=true`` that is a failure (every test of the backend errors with the reason) —
  except for a backend the manifest records as ``unavailable`` (cannot be obtained on this
  machine at all: Nacos), which is skipped with the recorded reason;
- ``real-nacos`` may also be an already running server: ``GRAYLB_NACOS_URL`` (+
  ``GRAYLB_NACOS_USERNAME`` / ``GRAYLB_NACOS_PASSWORD``; auth must be on).

The terminal summary ends with a "contract backends" block: what ran on each backend.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from contract_backends import (
    BACKENDS,
    Backend,
    StartFailed,
    real_nacos_from_env,
    recipe,
    start_fake_consul,
    start_fake_nacos,
    start_real_consul,
    start_rnacos,
)

_ID = re.compile(r"\[(" + "|".join(re.escape(b) for b in BACKENDS) + r")\]")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _manifest(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads((cache / "manifest.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _unavailable(name: str, reason: str) -> None:
    """Skip locally; fail in CI."""
    message = f"{name}: {reason}"
    if _in_ci():
        pytest.fail(f"{message} (CI=true: a real backend must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _clean_registry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
        "NACOS_ADDR",
        "NACOS_SERVER_ADDR",
        "NACOS_USERNAME",
        "NACOS_PASSWORD",
        "NACOS_NAMESPACE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def fake_consul_backend() -> Iterator[Backend]:
    backend = start_fake_consul()
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def fake_nacos_backend() -> Iterator[Backend]:
    backend = start_fake_nacos()
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def real_consul_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    rr = recipe()
    cache = rr.cache_dir()
    binary = cache / f"consul-{rr.CONSUL_VERSION}" / "consul"
    entry = _manifest(cache).get("consul") or {}
    if not binary.is_file():
        if "unavailable" in entry:
            pytest.skip(f"real-consul: {entry['unavailable']}")
        why = f"recipe failed: {entry['failed']}" if "failed" in entry else "run `make real-registries`"
        _unavailable("real-consul", f"{why} (no consul binary in {binary.parent})")
    try:
        backend = start_real_consul(binary, tmp_path_factory.mktemp("real-consul"))
    except StartFailed as exc:
        _unavailable("real-consul", f"consul v{rr.CONSUL_VERSION} did not start: {exc}")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def real_nacos_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A Nacos 2.x named by GRAYLB_NACOS_URL, else rnacos from the cache (a Nacos-compatible
    server written in Rust: the one real implementation obtainable here)."""
    backend = real_nacos_from_env()
    if backend is None:
        rr = recipe()
        cache = rr.cache_dir()
        entry = _manifest(cache).get("nacos") or {}
        if "unavailable" in entry:
            pytest.skip(f"real-nacos: {entry['unavailable']}")  # unobtainable here: a skip even in CI
        binary = Path(entry.get("binary", ""))
        if not entry.get("binary") or not binary.is_file():
            why = f"recipe failed: {entry['failed']}" if "failed" in entry else "run `make real-registries`"
            _unavailable("real-nacos", f"{why} (no rnacos in {cache})")
        try:
            backend = start_rnacos(binary, tmp_path_factory.mktemp("real-nacos"))  # retries a failed start
        except StartFailed as exc:
            _unavailable("real-nacos", f"rnacos v{entry.get('version')}: {exc}")
    yield backend
    backend.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param.replace("-", "_") + "_backend")


# ------------------------------------------------------------------------- "contract backends"

_results: dict[str, dict[str, Any]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    m = _ID.search(report.nodeid)
    if not m or "tests/contract/" not in report.nodeid.replace("\\", "/"):
        return
    entry = _results.setdefault(m.group(1), {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "reasons": {}})
    if report.when == "call" and report.passed:
        entry["passed"] += 1
    elif report.failed:
        entry["failed" if report.when == "call" else "errors"] += 1
        crash = getattr(report.longrepr, "reprcrash", None)
        message = (getattr(crash, "message", "") or str(report.longrepr)).strip().splitlines()
        if report.when != "call" and message:
            entry.setdefault("error", message[0])
    elif report.skipped:
        entry["skipped"] += 1
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _results:
        return
    tr = terminalreporter
    tr.section("contract backends")
    for name in BACKENDS:
        entry = _results.get(name)
        if entry is None:
            tr.write_line(f"{name}: not selected")
            continue
        ran = entry["passed"] + entry["failed"]
        if ran == 0 and entry["errors"] == 0 and len(entry["reasons"]) == 1:
            reason = next(iter(entry["reasons"])).removeprefix(f"{name}: ")
            tr.write_line(f"{name}: skipped ({entry['skipped']} tests): {reason}")
            continue
        parts = [f"{entry['passed']} passed"]
        if entry["failed"]:
            parts.append(f"{entry['failed']} failed")
        if entry["errors"]:
            parts.append(f"{entry['errors']} errors")
        if entry["skipped"]:
            parts.append(f"{entry['skipped']} skipped")
        tr.write_line(f"{name}: ran {ran} tests ({', '.join(parts)})")
        if entry.get("error"):
            tr.write_line(f"    error: {entry['error']}")
        for reason, count in sorted(entry["reasons"].items()):
            tr.write_line(f"    skipped {count}: {reason}")
