"""`api_version` routes over real HTTP servers on 127.0.0.1, for the sync and async transports
(the ``mode`` fixture): an Accept-versioned call and a path-versioned call each reach the
instances that serve that API version."""

from __future__ import annotations

import pytest

import graylb
from tests.conftest import Fleet, Sender

RULES = {
    "services": {
        "orders": {
            "subsets": {"api-v1": {"version": "^1"}, "api-v2": {"version": "^2"}},
            "default": "api-v1",
            "routes": [
                {
                    "name": "accept-v2",
                    "match": [{"api_version": {"from": "accept", "vendor": "myapp", "version": "^2"}}],
                    "to": [{"subset": "api-v2"}],
                },
                {
                    "name": "path-v2",
                    "match": [{"api_version": {"from": "path", "prefix": "/api/", "version": "2"}}],
                    "to": [{"subset": "api-v2"}],
                },
            ],
        }
    }
}

V2_ACCEPT = ("accept", "application/vnd.myapp.v2+json")

# (url, header lines, route, version served). httpx sends Accept: */* when none is given.
CASES = [
    ("http://orders/users/7", [V2_ACCEPT], "accept-v2", "2.0.0"),
    ("http://orders/users/7", [("accept", "application/vnd.myapp+json; version=2")], "accept-v2", "2.0.0"),
    ("http://orders/users/7", [("accept", "text/html;q=0.5"), V2_ACCEPT], "accept-v2", "2.0.0"),  # two lines
    ("http://orders/api/v2/users", [], "path-v2", "2.0.0"),
    ("http://orders/api/v2/users?expand=1", [("accept", "application/json")], "path-v2", "2.0.0"),
    ("http://orders/api/v1/users", [("accept", "application/vnd.myapp.v1+json")], "default", "1.4.2"),
    ("http://orders/users/7", [("accept", "application/vnd.other.v2+json")], "default", "1.4.2"),
    ("http://orders/users/7", [("accept", "text/html, application/vnd.myapp.v2+json")], "default", "1.4.2"),
    ("http://orders/users/v2", [("accept", "garbage;;;")], "default", "1.4.2"),
]


def test_accept_and_path_versions_reach_their_subset(fleet: Fleet, mode: str) -> None:
    fleet.start("v1", "orders", "1.4.2")
    fleet.start("v2", "orders", "2.0.0")
    sender = Sender(mode, graylb.Balancer(fleet.registry, RULES))
    responses = sender.many([(url, lines) for url, lines, _, _ in CASES])  # type: ignore[misc]
    got = []
    for r in responses:
        assert not isinstance(r, Exception), r
        assert r.status_code == 200
        got.append((r.extensions["graylb"].route, r.json()["version"]))
    assert got == [(route, version) for _, _, route, version in CASES]


@pytest.mark.parametrize("selector", ["2", "v2", "^2"])
def test_the_selector_spellings_teams_use_all_select_v2(fleet: Fleet, mode: str, selector: str) -> None:
    fleet.start("v1", "orders", "1.4.2")
    fleet.start("v2", "orders", "2.0.0")
    rules = {
        "services": {
            "orders": {
                **RULES["services"]["orders"],
                "routes": [
                    {
                        "name": "api-v2",
                        "match": [
                            {"api_version": {"from": "accept", "vendor": "myapp", "version": selector}},
                            {"api_version": {"from": "path", "version": selector}},
                        ],
                        "to": [{"subset": "api-v2"}],
                    },
                ],
            }
        }
    }
    sender = Sender(mode, graylb.Balancer(fleet.registry, rules))
    by_accept, by_path, neither = sender.many(
        [("http://orders/x", [V2_ACCEPT]), ("http://orders/v2/x", []), ("http://orders/v1/x", [])]
    )  # type: ignore[list-item]
    assert by_accept.json()["version"] == "2.0.0"  # type: ignore[union-attr]
    assert by_path.json()["version"] == "2.0.0"  # type: ignore[union-attr]
    assert neither.json()["version"] == "1.4.2"  # type: ignore[union-attr]


def test_explain_takes_accept_lines_from_repeated_h_options(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    root = Path(__file__).resolve().parents[2]

    def explain(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "graylb.cli", "rules", "explain", str(rules), "-s", "orders", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=root,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    two_lines = explain("-H", "accept:text/html;q=0.5", "-H", "Accept: application/vnd.myapp.v2+json")
    assert "=> route 'accept-v2', subset 'api-v2'" in two_lines
    assert "this call: Accept prefers 'application/vnd.myapp.v2+json': version 'v2'" in two_lines
    by_path = explain("--path", "/api/v2/users", "-H", "accept:application/json")
    assert "=> route 'path-v2', subset 'api-v2'" in by_path
    assert (
        "api version from Accept (vnd.myapp) matches '^2'; this call: Accept prefers 'application/json': not a "
        "vendor media type" in by_path
    )
