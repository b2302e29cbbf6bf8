#!/usr/bin/env python3
"""``make monitoring``: the demo with a bad canary, a real Prometheus and Jaeger, on 127.0.0.1.

Starts ``graylb demo --metrics-port N --no-checks`` (orders 2.0.0 failing 5 %), Prometheus with
monitoring/prometheus's config, rules and alerts (scraping the demo), and -- where
``make real-registries`` built it -- Jaeger receiving the demo's traces over OTLP. Prints the
URLs, then every 10 seconds a few live PromQL answers; Ctrl-C (or SIGTERM) stops everything.

``--once`` prints the first complete answer (both versions measured) and exits: the smoke test
tests/monitoring runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "monitoring" / "prometheus"


def manifest() -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "scripts"))
    import real_registries  # the one place that knows where the cache is

    path = real_registries.cache_dir() / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def usable(entry: Any) -> bool:
    return isinstance(entry, dict) and "binary" in entry and Path(entry["binary"]).is_file()


def port_or_free(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    body = get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(check: Callable[[], bool], timeout: float, what: str, procs: dict[str, subprocess.Popen[Any]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}")
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.3)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def live_answers(prometheus: str) -> tuple[str, bool]:
    """A few lines of live PromQL answers, and whether both versions of orders are measured."""
    lines = []
    rates = {
        s["metric"].get("graylb_version", ""): float(s["value"][1])
        for s in query(prometheus, 'graylb_version:attempts:rate5m{graylb_service="orders"}')
    }
    errors = {
        s["metric"].get("graylb_version", ""): float(s["value"][1])
        for s in query(prometheus, 'graylb_version:attempt_error_ratio:rate5m{graylb_service="orders"}')
    }
    for version in sorted(rates):
        ratio = errors.get(version)
        shown = f"{ratio:.2%}" if ratio is not None else "-"
        lines.append(f"  orders {version:<8} {rates[version]:7.1f} attempts/s   error ratio {shown}")
    alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    for alert in alerts:
        labels = alert["labels"]
        where = " ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k.startswith("graylb_"))
        lines.append(f"  alert {labels['alertname']} {alert['state']} {where}")
    if not alerts:
        lines.append("  no alert pending or firing yet")
    return "\n".join(lines), len([r for r in rates.values() if r > 0]) >= 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--once", action="store_true", help="print one complete answer, then stop everything")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between answers (10)")
    args = parser.parse_args(argv)

    found = manifest()
    prometheus = next((found[k] for k in ("prometheus", "prometheus-debian") if usable(found.get(k))), None)
    if prometheus is None:
        print("make monitoring: no Prometheus in the cache; run `make real-registries` first", file=sys.stderr)
        return 1
    jaeger = found.get("jaeger") if usable(found.get("jaeger")) else None

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    procs: dict[str, subprocess.Popen[Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="graylb-monitoring-"))
    logs = []
    failed = True  # logs are kept for a failed run
    try:
        metrics_port = port_or_free(9464)
        prom_port = port_or_free(9090)
        demo_cmd = [sys.executable, "-m", "graylb.cli", "demo", "--metrics-port", str(metrics_port), "--no-checks"]
        if args.once:
            demo_cmd += ["--warmup", "0"]  # a smoke test: no 30 s ejection of the canary before it is measured
        if jaeger is not None:
            otlp_http, query_port, query_grpc = port_or_free(4318), port_or_free(16686), port_or_free(16685)
            env = dict(os.environ)
            env.update(
                JAEGER_OTLP_HTTP_PORT=str(otlp_http),
                JAEGER_QUERY_HTTP_PORT=str(query_port),
                JAEGER_QUERY_GRPC_PORT=str(query_grpc),
            )
            log = (work / "jaeger.log").open("w")
            logs.append(log)
            procs["jaeger"] = subprocess.Popen(
                [jaeger["binary"], f"--config=file:{REPO / 'monitoring' / 'jaeger' / 'jaeger.yaml'}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            demo_cmd += ["--otlp-endpoint", f"http://127.0.0.1:{otlp_http}"]
        log = (work / "demo.log").open("w")
        logs.append(log)
        procs["demo"] = subprocess.Popen(demo_cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

        for name in ("recording-rules.yml", "alerts.yml"):
            shutil.copy(PROMETHEUS_DIR / name, work)
        config_text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
        (work / "prometheus.yml").write_text(re.sub(r"127\.0\.0\.1:9464", f"127.0.0.1:{metrics_port}", config_text))
        log = (work / "prometheus.log").open("w")
        logs.append(log)
        procs["prometheus"] = subprocess.Popen(
            [
                prometheus["binary"],
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        prom_url = f"http://127.0.0.1:{prom_port}"
        wait_for(
            lambda: get_json(f"{prom_url}/api/v1/status/buildinfo")["status"] == "success", 60, "Prometheus", procs
        )
        print(f"demo metrics : http://127.0.0.1:{metrics_port}/metrics  (logs in {work})")
        # Built from the module proxy, neither Prometheus nor Jaeger embeds its web UI (the UIs
        # are built with npm in their release pipelines): their HTTP APIs and Grafana are the way in.
        print(f"prometheus   : {prom_url}/api/v1/alerts , {prom_url}/api/v1/query?query=... (v{prometheus['version']})")
        if jaeger is not None:
            print(
                f"jaeger       : http://127.0.0.1:{query_port}/api/traces?service=graylb-demo&tags=%7B%22error%22%3A%22true%22%7D"
                f"  (v{jaeger['version']})"
            )
        else:
            print("jaeger       : not built (make real-registries builds it); no traces")
        print("grafana      : import monitoring/grafana/graylb-dashboard.json, data source = the Prometheus above")
        print("Ctrl-C stops everything.\n", flush=True)
        while not stop.is_set():
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; its log is in {work}")
            try:
                text, complete = live_answers(prom_url)
            except (OSError, ValueError, KeyError) as exc:
                text, complete = f"  (Prometheus not answering: {exc})", False
            if not args.once or complete:
                print(time.strftime("%H:%M:%S") + "\n" + text, flush=True)
            if args.once and complete:
                break
            stop.wait(args.every if not args.once else 1.0)
        failed = False
    except KeyboardInterrupt:
        failed = False
    except RuntimeError as exc:
        print(f"make monitoring: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in reversed(list(procs.values())):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
        if not failed and not os.environ.get("GRAYLB_KEEP_MONITORING_LOGS"):
            shutil.rmtree(work, ignore_errors=True)
        print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
