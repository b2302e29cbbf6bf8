"""The ``guard`` of a service in the rules document: validated like the rest (each problem named
by its path), compiled to a GuardPolicy, described by explain, and classifying outcomes as the
document says."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from graylb.call import CONNECT_FAILURE, RESET, TIMEOUT
from graylb.errors import RuleError
from graylb.guard.runtime import CanaryGuard
from graylb.routing.explain import describe_guard
from graylb.rules.load import parse_rules

DOC: dict[str, Any] = {
    "version": 1,
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "v1"}, "canary": {"version": "v2"}},
            "default": "stable",
            "routes": [
                {"name": "split", "to": [{"subset": "canary", "weight": 5}, {"subset": "stable", "weight": 95}]}
            ],
            "guard": {"canary": "canary"},
        },
        "inventory": {},
    },
}


def _with_guard(**guard: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc["services"]["orders"]["guard"] = guard
    return doc


def _problems(doc: dict[str, Any]) -> str:
    with pytest.raises(RuleError) as err:
        parse_rules(doc)
    return str(err.value)


def test_defaults_compile_to_a_policy_against_the_default_subset() -> None:
    g = parse_rules(DOC).services["orders"].guard
    assert g is not None
    assert (g.canary, g.baseline, g.window, g.min_requests, g.testers, g.action) == (
        "canary",
        "stable",
        30.0,
        50,
        "keep",
        "shed",
    )
    assert g.errors is not None and g.latency is None
    assert g.errors.connect_failure and g.errors.reset and g.errors.timeout
    assert 503 in g.errors.statuses and 404 not in g.errors.statuses
    assert g.errors.grpc_codes == {"UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED", "DATA_LOSS"}


def test_an_error_list_replaces_the_default_one() -> None:
    doc = _with_guard(canary="canary", errors={"on": ["5xx", 429, "UNAVAILABLE", "connect-failure"], "margin": 0.01})
    e = parse_rules(doc).services["orders"].guard.errors  # type: ignore[union-attr]
    assert e is not None and e.margin == 0.01
    assert 429 in e.statuses and 500 in e.statuses and 404 not in e.statuses
    assert e.grpc_codes == {"UNAVAILABLE"} and e.connect_failure and not e.reset and not e.timeout


@pytest.mark.parametrize(
    ("guard", "where", "says"),
    [
        ({"canary": "canery"}, "services.orders.guard.canary", "unknown subset 'canery' (known: canary, stable)"),
        ({"canary": "stable"}, "services.orders.guard.canary", "canary and baseline are the same subset"),
        ({"canary": "canary", "baseline": "nope"}, "services.orders.guard.baseline", "unknown subset 'nope'"),
        ({"canary": "canary", "errors": None}, "services.orders.guard", "judge nothing"),
        ({"canary": "canary", "errors": {"on": ["teapot"]}}, "services.orders.guard.errors.on[0]", "unknown error"),
        (
            {"canary": "canary", "errors": {"confidence": 1.5}},
            "services.orders.guard.errors.confidence",
            "must be < 1.0",
        ),
        ({"canary": "canary", "latency": {"p99_ratio": None}}, "services.orders.guard.latency", "p50_ratio"),
        ({"canary": "canary", "window": "soon"}, "services.orders.guard.window", "invalid duration"),
        ({"canary": "canary", "action": "panic"}, "services.orders.guard.action", "'shed' or 'rollback'"),
        ({"canary": "canary", "testrs": "keep"}, "services.orders.guard.testrs", "did you mean 'testers'"),
    ],
)
def test_a_bad_guard_is_named_by_its_path(guard: dict[str, Any], where: str, says: str) -> None:
    text = _problems(_with_guard(**guard))
    assert where in text and says in text, text


def test_a_guard_without_a_baseline_or_default_is_an_error() -> None:
    doc = _with_guard(canary="canary")
    del doc["services"]["orders"]["default"]
    assert "set guard.baseline or the service's default subset" in _problems(doc)


def test_a_bad_webhook_url_is_refused_without_echoing_it() -> None:
    text = _problems(_with_guard(canary="canary", webhook={"url": "hooks.example.com/T0/B0/s3cr3t"}))
    assert "services.orders.guard.webhook.url" in text and "s3cr3t" not in text


def test_each_service_has_its_own_digest() -> None:
    """A trip resets when the service's rules change, and only then."""
    before = parse_rules(DOC).services
    other = copy.deepcopy(DOC)
    other["services"]["inventory"] = {"fallback": "any"}
    changed = _with_guard(canary="canary", window="20s")
    assert parse_rules(other).services["orders"].digest == before["orders"].digest
    assert parse_rules(changed).services["orders"].digest != before["orders"].digest


def test_explain_describes_the_guard() -> None:
    g = (
        parse_rules(_with_guard(canary="canary", latency={}, action="rollback", testers="shed"))
        .services["orders"]
        .guard
    )
    text = describe_guard(g)  # type: ignore[arg-type]
    for part in (
        "subset 'canary' judged against 'stable' over 30s",
        "99.9% confidence per window",
        "5xx",
        "p99 > 2x",
        "every route and pin",
        "rollback",
    ):
        assert part in text, text


@pytest.mark.parametrize(
    ("ok", "outcome", "error"),
    [
        (True, 200, False),
        (True, 404, False),  # 4xx: the caller's fault unless listed
        (False, 503, True),
        (False, CONNECT_FAILURE, True),
        (False, RESET, True),
        (False, TIMEOUT, True),
        (False, "UNAVAILABLE", True),
        (True, "INVALID_ARGUMENT", False),
        (False, None, True),  # the transport said only "failed"
        (True, None, False),
    ],
)
def test_outcomes_are_errors_as_the_rules_say(ok: bool, outcome: str | int | None, error: bool) -> None:
    guard = CanaryGuard("orders", parse_rules(DOC).services["orders"].guard, "d")  # type: ignore[arg-type]
    assert guard.is_error(ok, outcome) is error


def test_listed_4xx_count_and_unlisted_kinds_do_not() -> None:
    doc = _with_guard(canary="canary", errors={"on": [429, "DEADLINE_EXCEEDED"]})
    guard = CanaryGuard("orders", parse_rules(doc).services["orders"].guard, "d")  # type: ignore[arg-type]
    assert guard.is_error(True, 429) and not guard.is_error(False, 503)
    assert guard.is_error(False, "DEADLINE_EXCEEDED") and not guard.is_error(False, CONNECT_FAILURE)
