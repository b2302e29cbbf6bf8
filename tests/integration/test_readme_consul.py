"""The README's Consul section works as written against FakeConsul."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from graylb.testing import FakeConsul

ROOT = Path(__file__).resolve().parents[2]


def test_consul_shell_walkthrough_runs_as_written() -> None:
    section = (ROOT / "README.md").read_text().split("## Consul", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("graylb ")]
    assert len(commands) == 4
    with FakeConsul() as consul:
        consul.register("orders", id="o1", address="127.0.0.1", port=9001, meta={"version": "1.4.2"})
        consul.register("orders", id="o2", address="127.0.0.1", port=9002, meta={"version": "2.0.0"})
        env = {**os.environ, "CONSUL_HTTP_ADDR": consul.url}
        env.pop("CONSUL_HTTP_TOKEN", None)
        outputs = []
        for cmd in commands:
            argv = shlex.split(cmd)
            r = subprocess.run(
                [sys.executable, "-m", "graylb.cli", *argv[1:]],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0, f"{cmd}: {r.stderr}"
            outputs.append(r.stdout)
        assert outputs[0].startswith("pushed graylb/demo/rules.yaml to graylb/rules")
        assert "2.0.0" in outputs[1] and "five-percent" in outputs[1]
        after_undo = consul.kv_get("graylb/rules").decode()
        assert "five-percent" in after_undo  # undo brought the routes back


def test_consul_quickstart_example_runs() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "consul_quickstart.py")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2.0.0", "1.4.2"]


def test_the_rollout_walkthrough_runs_as_written() -> None:
    """README "Releasing v2 step by step": every graylb command of its shell block, in order,
    against FakeConsul; the rollout ends with the canary the default and the rollback back."""
    import yaml

    section = (ROOT / "README.md").read_text().split("## Releasing v2 step by step", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("graylb ")]
    assert len(commands) == 9
    with FakeConsul() as consul:
        env = {**os.environ, "CONSUL_HTTP_ADDR": consul.url}
        env.pop("CONSUL_HTTP_TOKEN", None)
        defaults = []
        for cmd in commands:
            r = subprocess.run(
                [sys.executable, "-m", "graylb.cli", *shlex.split(cmd)[1:]],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0, f"{cmd}: {r.stderr}"
            defaults.append(yaml.safe_load(consul.kv_get("graylb/rules") or b"")["services"]["orders"]["default"])
        assert defaults[-3:] == ["canary", "canary", "stable"]  # completed; history reads; rolled back
        history = subprocess.run(
            [sys.executable, "-m", "graylb.cli", "rules", "history", "orders", "--key", "graylb/rules"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert "abort" in history and "-- 5xx on v2" in history and "rollback" in history
