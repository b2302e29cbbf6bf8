"""The README's Nacos section works as written against FakeNacos."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from graylb.testing import FakeNacos

ROOT = Path(__file__).resolve().parents[2]


def test_nacos_shell_walkthrough_runs_as_written() -> None:
    section = (ROOT / "README.md").read_text().split("## Nacos", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    commands = [line.strip() for line in block.splitlines() if line.startswith("graylb ")]
    assert len(commands) == 4
    with FakeNacos() as nacos:
        nacos.register("orders", "127.0.0.1", 9001, metadata={"version": "1.4.2"})
        nacos.register("orders", "127.0.0.1", 9002, metadata={"version": "2.0.0"})
        env = {k: v for k, v in os.environ.items() if not k.startswith("NACOS_")}
        outputs = []
        for cmd in commands:
            argv = [a.replace("http://127.0.0.1:8848", nacos.url) for a in shlex.split(cmd)]
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
        assert outputs[0].startswith("pushed graylb/demo/rules.yaml")
        assert "2.0.0" in outputs[1] and "five-percent" in outputs[1]
        assert "five-percent" in nacos.get_config("graylb-rules", "DEFAULT_GROUP")


def test_nacos_quickstart_example_runs() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "nacos_quickstart.py")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2.0.0", "1.4.2"]
