"""Rules documents: validation errors as users see them, and the compiled output."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from graylb.errors import RuleError
from graylb.rules.compile import compile_rules, to_document
from graylb.rules.compiled import DEFAULT_RETRY, HashKey, WeightedTarget
from graylb.rules.load import load_document, parse_rules, validate_rules
from graylb.rules.model import RulesDocument, parse_duration

BASE = """
services:
  orders:
    subsets:
      stable: {version: "^1.4"}
      canary: {version: "2.0.0-rc.1", labels: {zone: a}}
    default: stable
    routes:
      - name: beta-users
        match: [{headers: {user-group: {exact: beta}}}]
        to: [{subset: canary}]
      - name: five-percent
        to: [{subset: canary, weight: 5}, {subset: stable, weight: 95}]
        sticky: {header: X-User-Id}
"""


def errors_of(doc, source: str = "") -> list[tuple[str, str]]:
    with pytest.raises(RuleError) as info:
        parse_rules(textwrap.dedent(doc) if isinstance(doc, str) else doc, source)
    return info.value.errors


def with_service(body: str) -> str:
    """A document whose `orders` service has the two subsets of BASE plus ``body``."""
    head = """
    services:
      orders:
        subsets:
          stable: {version: "^1.4"}
          canary: {version: "2.0.0-rc.1"}
    """
    return textwrap.dedent(head) + textwrap.indent(textwrap.dedent(body), "    ")


# --------------------------------------------------------------------------- errors


def test_unknown_subset_in_route_names_location_and_known_subsets():
    doc = with_service(
        """
        routes:
          - to: [{subset: canary}]
          - to: [{subset: canery}]
        """
    )
    err = errors_of(doc)
    assert err == [("services.orders.routes[1].to[0].subset", "unknown subset 'canery' (known: canary, stable)")]


def test_rule_error_str_has_one_line_per_problem_with_location_and_source():
    doc = with_service("routes: [{to: [{subset: canery}]}]")
    with pytest.raises(RuleError) as info:
        parse_rules(doc, "rules.yaml")
    text = str(info.value)
    assert "rules.yaml" in text.splitlines()[0]
    assert (
        "  services.orders.routes[0].to[0].subset: unknown subset 'canery' (known: canary, stable)" in text.splitlines()
    )


def test_all_zero_weights():
    doc = with_service("routes: [{to: [{subset: canary, weight: 0}, {subset: stable, weight: 0}]}]")
    assert errors_of(doc) == [("services.orders.routes[0].to", "weights are all 0")]


def test_weight_out_of_range_and_empty_targets():
    doc = with_service(
        """
        routes:
          - to: [{subset: canary, weight: 10001}]
          - to: []
        """
    )
    assert errors_of(doc) == [
        ("services.orders.routes[0].to[0].weight", "must be <= 10000, got 10001"),
        ("services.orders.routes[1].to", "needs at least one target"),
    ]


def test_bad_regex_names_the_field_and_the_reason():
    doc = with_service("routes: [{match: [{headers: {x-debug: {regex: '('}}}], to: [{subset: canary}]}]")
    assert errors_of(doc) == [
        (
            "services.orders.routes[0].match[0].headers.x-debug.regex",
            "invalid regex '(': missing ), unterminated subpattern at position 0",
        )
    ]


def test_bad_version_range():
    doc = """
    services:
      orders:
        subsets: {stable: {version: "^^1"}}
    """
    ((loc, msg),) = errors_of(doc)
    assert loc == "services.orders.subsets.stable.version"
    assert msg.startswith("invalid version range '^^1': ")


def test_unquoted_float_version_is_rejected_not_silently_converted():
    # YAML reads 1.10 as the float 1.1; accepting it would select the wrong version.
    ((loc, msg),) = errors_of("services: {orders: {subsets: {old: {version: 1.10}}}}")
    assert loc == "services.orders.subsets.old.version"
    assert "quote it" in msg


def test_unknown_field_typo_is_named_with_a_suggestion():
    doc = with_service("routes: [{to: [{subset: canary, waight: 5}]}]")
    assert errors_of(doc) == [
        ("services.orders.routes[0].to[0].waight", "unknown field 'waight' (did you mean 'weight'?)")
    ]


def test_ring_hash_without_hash_on():
    ((loc, msg),) = errors_of(with_service("load_balancer: ring_hash"))
    assert loc == "services.orders.load_balancer"
    assert msg.startswith("ring_hash needs hash_on")
    # The object form too.
    ((loc, msg),) = errors_of(with_service("load_balancer: {policy: ring_hash}"))
    assert loc == "services.orders.load_balancer"


def test_duplicate_route_names():
    doc = with_service(
        """
        routes:
          - {name: canary, to: [{subset: canary}]}
          - {name: other, to: [{subset: stable}]}
          - {name: canary, to: [{subset: stable}]}
        """
    )
    assert errors_of(doc) == [("services.orders.routes[2].name", "duplicate route name 'canary' (also routes[0])")]


def test_default_naming_a_missing_subset():
    assert errors_of(with_service("default: stabel")) == [
        ("services.orders.default", "unknown subset 'stabel' (known: canary, stable)")
    ]


def test_default_without_any_subsets():
    assert errors_of("services: {orders: {default: stable}}") == [
        ("services.orders.default", "unknown subset 'stable' (no subsets defined)")
    ]


@pytest.mark.parametrize("value", ["30x", "ms", "-5s", "0s", True])
def test_bad_duration(value):
    doc = {"services": {"orders": {"outlier_detection": {"base_ejection_time": value}}}}
    ((loc, msg),) = errors_of(doc)
    assert loc == "services.orders.outlier_detection.base_ejection_time"
    assert "duration" in msg


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("1m", 60.0), ("1h", 3600.0), ("1m30s", 90.0), (2, 2.0), ("2.5", 2.5)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_multiple_problems_are_reported_together_model_and_reference_errors():
    doc = with_service(
        """
        default: nope
        fallback: sometimes
        routes:
          - to: [{subset: canery, waight: 1}]
        retries: {attempts: 11, on: [reset, tmeout]}
        """
    )
    locs = [loc for loc, _ in errors_of(doc)]
    assert sorted(locs) == sorted(
        [
            "services.orders.fallback",
            "services.orders.routes[0].to[0].waight",
            "services.orders.retries.attempts",
            "services.orders.retries.on[1]",
            "services.orders.default",
            "services.orders.routes[0].to[0].subset",
        ]
    )


def test_string_matcher_needs_exactly_one_kind():
    doc = with_service("routes: [{match: [{path: {exact: /a, prefix: /b}}], to: [{subset: canary}]}]")
    assert errors_of(doc) == [
        (
            "services.orders.routes[0].match[0].path",
            "needs exactly one of exact, prefix, regex, in, present (got exact, prefix)",
        )
    ]


def test_subset_needs_a_selector_and_sticky_exactly_one_source():
    doc = """
    services:
      orders:
        subsets: {all: {}}
        routes: [{to: [{subset: all}], sticky: {header: a, query: b}}]
    """
    assert errors_of(doc) == [
        ("services.orders.subsets.all", "needs at least one of version, labels, lane"),
        ("services.orders.routes[0].sticky", "needs exactly one of header, query, context (got header, query)"),
    ]


def test_unknown_retry_condition_and_status_range():
    doc = with_service("retries: {on: [connect-failure, 5xx, 700]}")
    errs = dict(errors_of(doc))
    assert errs["services.orders.retries.on[1]"].startswith("unknown retry condition '5xx'")
    assert errs["services.orders.retries.on[2]"] == "HTTP status 700 outside 100..599"


def test_unsupported_version_and_wrong_shapes():
    assert errors_of("version: 2\nservices: {}") == [
        ("version", "unsupported rules version 2 (this graylb reads version 1)")
    ]
    assert errors_of("- a\n- b") == [("", "expected a mapping at the top level, got a list")]
    assert errors_of("services: {orders: {routes: {to: x}}}") == [
        ("services.orders.routes", "expected a list, got a mapping")
    ]


def test_empty_document_is_rejected():
    # An empty file is more often a half-written one than "no rules": it must not wipe the rules.
    assert errors_of("") == [("", "document is empty (write `services: {}` to have no rules)")]
    assert parse_rules("services: {}").services == {}


# --------------------------------------------------------------------------- loading


def test_yaml_syntax_error_has_line_and_column():
    err = errors_of("services:\n  orders: [1, 2\n", "broken.yaml")
    assert len(err) == 1
    loc, msg = err[0]
    assert loc == ""
    assert msg.startswith("line 3 column 1: ")


def test_duplicate_yaml_key_is_an_error():
    err = errors_of("services:\n  orders: {}\n  orders: {}\n")
    assert err == [("", "line 3 column 3: duplicate key 'orders'")]


def test_yaml_on_key_is_not_read_as_a_boolean():
    # Plain YAML 1.1 reads `on` as True; the retry list must still arrive.
    rules = parse_rules(with_service("retries: {on: [timeout]}"))
    policy = rules.services["orders"].retries
    assert policy.on_timeout and not policy.on_connect_failure
    # ... also when the caller parsed it with yaml.safe_load themselves.
    doc = yaml.safe_load(with_service("retries: {on: [timeout]}"))
    assert parse_rules(doc).services["orders"].retries.on_timeout


def test_json_input_and_json_syntax_error():
    doc = yaml.safe_load(BASE)
    rules = parse_rules(json.dumps(doc))
    assert set(rules.services["orders"].subsets) == {"stable", "canary"}
    assert parse_rules(json.dumps(doc).encode()).revision == rules.revision
    ((_loc, msg),) = errors_of('{"services": {"orders": [1,, 2]}}')
    assert msg.startswith("line 1 column ")


def test_load_document_accepts_bytes_and_returns_plain_data():
    assert load_document(b"services: {}\n") == {"services": {}}


# --------------------------------------------------------------------------- compile


def test_compile_shape_targets_sticky_subsets_and_defaults():
    rules = parse_rules(BASE, "base.yaml", revision="r1")
    assert rules.revision == "r1" and rules.source == "base.yaml"
    svc = rules.service("orders")
    assert svc is not None
    assert svc.default == "stable"
    assert [r.name for r in svc.routes] == ["beta-users", "five-percent"]
    assert svc.routes[0].to == (WeightedTarget("canary", 100),)
    assert svc.routes[1].to == (WeightedTarget("canary", 5), WeightedTarget("stable", 95))
    assert svc.routes[1].match is None
    assert svc.routes[1].sticky == HashKey(header="x-user-id")
    assert svc.subsets["canary"].labels == {"zone": "a"}
    assert svc.subsets["stable"].version is not None and svc.subsets["stable"].version.matches("1.5.0")
    assert not svc.subsets["stable"].version.matches("2.0.0")
    assert svc.fallback == "default" and svc.load_balancer == "weighted_random" and svc.hash_key is None
    assert svc.retries == DEFAULT_RETRY and svc.outlier is None


def test_unnamed_route_and_lane_subset():
    rules = parse_rules("services: {o: {subsets: {b: {lane: beta}}, routes: [{to: [{subset: b}]}]}}")
    svc = rules.services["o"]
    assert svc.routes[0].name == "routes[0]"
    assert svc.subsets["b"].labels == {"lane": "beta"} and svc.subsets["b"].selects_lane
    assert svc.default is None


def test_retry_flags_come_only_from_on():
    rules = parse_rules(with_service("retries: {attempts: 3, on: [timeout, 503, '504'], idempotent_only: false}"))
    p = rules.services["orders"].retries
    assert (p.attempts, p.on_connect_failure, p.on_reset, p.on_timeout) == (3, False, False, True)
    assert p.statuses == frozenset({503, 504}) and p.idempotent_only is False
    # `on` omitted: connect-failure + reset.
    p = parse_rules(with_service("retries: {attempts: 1}")).services["orders"].retries
    assert (p.attempts, p.on_connect_failure, p.on_reset, p.on_timeout, p.statuses) == (
        1,
        True,
        True,
        False,
        frozenset(),
    )


def test_load_balancer_forms_and_outlier_policy():
    doc = with_service(
        """
        load_balancer: {policy: ring_hash, hash_on: {header: X-User-Id}}
        outlier_detection: {consecutive_errors: 3, base_ejection_time: 500ms, max_ejection_percent: 20}
        """
    )
    svc = parse_rules(doc).services["orders"]
    assert svc.load_balancer == "ring_hash" and svc.hash_key == HashKey(header="x-user-id")
    assert (svc.outlier.consecutive_errors, svc.outlier.base_ejection_time, svc.outlier.max_ejection_percent) == (
        3,
        0.5,
        20,
    )
    svc = parse_rules(with_service("load_balancer: least_request")).services["orders"]
    assert svc.load_balancer == "least_request" and svc.hash_key is None


def test_revision_is_a_content_hash_independent_of_formatting():
    a = parse_rules(BASE)
    b = parse_rules(json.dumps(yaml.safe_load(BASE), indent=4))
    c = parse_rules(BASE.replace("weight: 5}", "weight: 6}"))
    assert a.revision and a.revision == b.revision != c.revision


def test_to_document_round_trips_what_was_written():
    model = validate_rules(BASE + "    load_balancer: round_robin\n    outlier_detection: {base_ejection_time: 1m}\n")
    doc = to_document(model)
    svc = doc["services"]["orders"]
    # Shorthands and omitted defaults stay as written.
    assert svc["load_balancer"] == "round_robin"
    assert "fallback" not in svc
    assert svc["routes"][0]["to"] == [{"subset": "canary"}]
    assert svc["outlier_detection"] == {"base_ejection_time": "1m"}
    assert validate_rules(yaml.safe_dump(doc)) == model


def test_to_document_then_edit_then_validate_again():
    # What a rollback does: move every canary weight to 0 where another target remains.
    doc = to_document(validate_rules(BASE))
    doc["services"]["orders"]["routes"][1]["to"][0]["weight"] = 0
    rules = parse_rules(yaml.safe_dump(doc))
    assert rules.services["orders"].routes[1].to[0] == WeightedTarget("canary", 0)


def test_compile_rules_checks_references_of_models_built_in_code():
    model = RulesDocument.model_validate({"services": {"o": {"routes": [{"to": [{"subset": "nope"}]}]}}})
    with pytest.raises(RuleError) as info:
        compile_rules(model)
    assert info.value.errors == [("services.o.routes[0].to[0].subset", "unknown subset 'nope' (no subsets defined)")]
