"""Every examples/*.py runs as `python examples/<name>.py` from the repo root, exits 0, and prints
the lines that prove its point.

Examples check their own promises (they exit non-zero when one breaks); this test adds the
lines a reader would look for. A new example is picked up by the glob and fails until its
expected lines are added to EXPECTED. The examples are independent, so the selected ones run in
parallel (one process each, as many at a time as there are CPUs); nothing here measures time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# file name -> substrings its output must contain
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": ["2.0.0", "ten-percent", "1.4.2"],
    "grpc_canary.py": ["2.0.0", "1.4.2 ten-percent", "1.4.2"],
    "consul_quickstart.py": ["2.0.0", "1.4.2"],
    "nacos_quickstart.py": ["2.0.0", "1.4.2"],
    "http_canary.py": [
        "canary 5%",
        "canary 50%",
        "canary 100%         0.0%    100.0%   0",
        "rollback          100.0%      0.0%",
        "rolled back service 'orders'",
        "removed route(s): canary",
        "OK: shares follow the weights, users only moved v1 -> v2, rollback sent 100% to v1",
    ],
    "header_beta.py": [
        "beta group             user-group: beta",
        "beta-group",
        "staff",
        "internal-tools",
        "pilot-users",
        "OK: every beta caller reached v2, everyone else v1",
    ],
    "registry_labels.py": [
        "10/90 split by labels v2/v1, 1000 users: v1 90.1%, v2 9.9%",
        "-> my-service:v1.2.0  (route pin)",
        "-> commit-abc123      (route pin)",
        "Accept: application/vnd.myapp.v2+json                      -> v2                 (route api-v2)",
        "GET /api/v2/users                                          -> v2                 (route api-v2)",
        "OK: labels v1/v2, an image tag, a commit and API versions in Accept and path all routed as written",
    ],
    "sticky_users.py": [
        "users whose version changed: 0",
        "OK: every user kept their version; the split matches the weights",
    ],
    "full_link_lanes.py": [
        "gateway@1.0.0 -> orders@1.5.0-beta.1/beta -> inventory@3.2.0-beta.1/beta",
        "gateway@1.0.0 -> orders@1.4.2 -> inventory@3.1.0",
        "OK: lane requests used the beta instances at every hop; other requests never did",
    ],
    "consul_end_to_end.py": [
        "pushed canary 10% to graylb/rules",
        "pushed canary 50% to graylb/rules",
        "rolled back service 'orders' in graylb/rules",
        "0.0% of 1000 users on v2 (rules say 0%)",
        "OK: the live split followed every push, and the rollback sent everyone to v1",
    ],
    "canary_guard.py": [
        "guard quiet",
        "trip: errors: canary",
        "after the trip: 0 of 500 calls on 2.0.0",
        "routes [], annotation: ",
        "after graylb rules undo: route(s) ['ten-percent']",
        "OK: the guard tripped on the bad canary, shed it at once, and wrote one rollback for the fleet",
    ],
    "progressive_rollout.py": [
        "rollout of 'canary' started: step 1 of 4, 5% to the canary",
        "step   5% to v2: live share",
        "step 100% to v2: live share 100.0%",
        "  runner after the pause: promoted",
        "default subset now 'canary'",
        "runner: complete (step 4, 100%)",
        "after graylb rollback: 0% on 2.0.0",
        "OK: 5% -> 25% -> 50% -> 100% by the runner, then one rollback back to the named baseline 1.4.2",
    ],
    "rolling_release.py": [
        "rolling 3 x v1 -> 3 x v2 over consul, with drain",
        "  step 3: v2 on",
        "0 failed, 0 POSTs processed twice",
        "OK: nothing lost, nothing duplicated",
    ],
    "nacos_end_to_end.py": [
        "pushed canary 10% to graylb-rules",
        "pushed canary 50% to graylb-rules",
        "rolled back service 'orders' in graylb-rules",
        "0.0% of 1000 users on v2 (rules say 0%)",
        "OK: the live split followed every push, and the rollback sent everyone to v1",
    ],
}


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest):
    """Start the selected examples in the background; each test waits for its own."""
    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(len(selected), os.cpu_count() or 2))) as pool:
        yield {path: pool.submit(_run, path) for path in selected}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_and_shows_its_point(path: Path, runs: dict[Path, Future]) -> None:
    assert path.name in EXPECTED, (
        f"no expected output for examples/{path.name}: add the lines that prove its point to EXPECTED in "
        f"{Path(__file__).name}"
    )
    result = runs[path].result()
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, f"examples/{path.name} exited {result.returncode}\n{output}"
    missing = [line for line in EXPECTED[path.name] if line not in result.stdout]
    assert not missing, f"examples/{path.name} did not print {missing}\n{output}"


def test_expectations_name_existing_examples() -> None:
    stale = sorted(set(EXPECTED) - {p.name for p in EXAMPLES})
    assert not stale, f"EXPECTED lists examples that no longer exist: {stale}"
