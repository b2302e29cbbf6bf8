"""The demo and the README's quick start run as written."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from graylb.demo import run

ROOT = Path(__file__).resolve().parents[2]


def test_demo_passes_its_own_checks() -> None:
    out = io.StringIO()
    assert run(out, requests=600) == 0, out.getvalue()
    text = out.getvalue()
    assert "failed requests: 0" in text
    assert "inventory 3.2.0-dev [lane feature-x]" in text


def test_readme_quick_start_runs_as_written() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code == (ROOT / "examples" / "quickstart.py").read_text(), (
        "README quick start and examples/quickstart.py differ"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "2.0.0" and lines[1].endswith("ten-percent") and lines[2] == "1.4.2"


def test_readme_grpc_quick_start_runs_as_written() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## gRPC quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code == (ROOT / "examples" / "grpc_canary.py").read_text(), (
        "README gRPC quick start and examples/grpc_canary.py differ"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2.0.0", "1.4.2 ten-percent", "1.4.2"]


def test_readme_recipes_point_at_every_example_and_only_at_real_ones() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((examples/[^)#]+)\)", readme))
    for link in linked:
        assert (ROOT / link).exists(), f"README links to missing {link}"
    shipped = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")} | {"examples/pytest_pinning"}
    recipes = readme.split("## Recipes", 1)[1].split("\n## ", 1)[0]
    missing = {e for e in shipped if e not in recipes} - {
        "examples/quickstart.py",
        "examples/consul_quickstart.py",
        "examples/nacos_quickstart.py",
    }
    assert not missing, f"examples without a README recipe: {sorted(missing)}"
