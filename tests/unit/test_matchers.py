"""Route match clauses compiled into closures: what matches and what does not."""

from __future__ import annotations

from typing import Any

import pytest

from graylb.propagation.context import EMPTY, GrayContext
from graylb.routing.matchers import compile_match, describe
from graylb.routing.request import RequestInfo
from graylb.rules.load import parse_rules
from graylb.rules.model import MatchClause


def matcher(*clauses: dict[str, Any]):
    return compile_match([MatchClause.model_validate(c) for c in clauses])


def req(method: str = "GET", path: str = "/", headers: dict[str, str] | None = None, qs: str = "") -> RequestInfo:
    return RequestInfo(method=method, path=path, headers=headers, query_string=qs)


# --------------------------------------------------------------------------- string matcher kinds


def test_header_exact_and_case_insensitive_header_name():
    m = matcher({"headers": {"User-Group": {"exact": "beta"}}})
    assert m(req(headers={"user-group": "beta"}), EMPTY)
    assert m(req(headers={"USER-GROUP": "beta"}), EMPTY)  # RequestInfo lower-cases; the rule did too
    assert not m(req(headers={"user-group": "Beta"}), EMPTY)  # values stay case-sensitive
    assert not m(req(), EMPTY)  # missing header never matches exact


def test_plain_string_is_exact():
    m = matcher({"headers": {"x-env": "staging"}})
    assert m(req(headers={"x-env": "staging"}), EMPTY)
    assert not m(req(headers={"x-env": "staging-2"}), EMPTY)


def test_prefix():
    m = matcher({"path": {"prefix": "/api/v2"}})
    assert m(req(path="/api/v2/orders"), EMPTY)
    assert not m(req(path="/api/v1/orders"), EMPTY)


def test_regex_is_a_full_match():
    m = matcher({"headers": {"x-user-id": {"regex": r"[0-9]+7"}}})
    assert m(req(headers={"x-user-id": "12347"}), EMPTY)
    assert not m(req(headers={"x-user-id": "123470"}), EMPTY)  # search would match; full match does not
    assert not m(req(headers={"x-user-id": "a12347"}), EMPTY)
    assert not m(req(), EMPTY)


def test_in_matches_one_of_a_list_of_values():
    users = [f"user-{i}" for i in range(5000)]  # a pilot list: a set lookup, however long
    m = matcher({"headers": {"x-user-id": {"in": ["alice", "bob", *users]}}})
    assert m(req(headers={"x-user-id": "bob"}), EMPTY)
    assert m(req(headers={"x-user-id": "user-4999"}), EMPTY)
    assert not m(req(headers={"x-user-id": "bobby"}), EMPTY)  # whole values, not prefixes
    assert not m(req(headers={"x-user-id": "Bob"}), EMPTY)  # case-sensitive, like exact
    assert not m(req(), EMPTY)
    outside = matcher({"headers": {"x-user-id": {"in": ["alice"], "invert": True}}})
    assert outside(req(headers={"x-user-id": "bob"}), EMPTY) and not outside(req(headers={"x-user-id": "alice"}), EMPTY)
    method = matcher({"method": {"in": ["get", "HEAD"]}})
    assert (
        method(req(method="GET"), EMPTY) and method(req(method="head"), EMPTY) and not method(req(method="POST"), EMPTY)
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"in": []}, "'in' needs at least one value"),
        ({"in": ["a"], "exact": "a"}, "needs exactly one of exact, prefix, regex, in, present (got exact, in)"),
        ({"in": "alice"}, "expected a list, got a string ('alice')"),
    ],
)
def test_in_refuses_bad_lists_with_its_location(spec, message):
    from graylb.errors import RuleError

    doc = {
        "services": {
            "orders": {
                "routes": [{"name": "pilot", "match": [{"headers": {"x-user-id": spec}}], "to": [{"subset": "*"}]}]
            }
        }
    }
    with pytest.raises(RuleError) as err:
        parse_rules(doc)
    assert "services.orders.routes[0].match[0].headers.x-user-id" in str(err.value) and message in str(err.value)


def test_present_true_and_false():
    present = matcher({"headers": {"x-debug": {"present": True}}})
    absent = matcher({"headers": {"x-debug": {"present": False}}})
    assert present(req(headers={"x-debug": ""}), EMPTY)  # an empty value is still present
    assert not present(req(), EMPTY)
    assert absent(req(), EMPTY)
    assert not absent(req(headers={"x-debug": "1"}), EMPTY)


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ({"exact": "beta", "invert": True}, "beta", False),
        ({"exact": "beta", "invert": True}, "alpha", True),
        ({"exact": "beta", "invert": True}, None, True),  # missing never matches exact, so invert does
        ({"prefix": "be", "invert": True}, "beta", False),
        ({"prefix": "be", "invert": True}, None, True),
        ({"regex": "b.*", "invert": True}, "beta", False),
        ({"regex": "b.*", "invert": True}, None, True),
        ({"present": True, "invert": True}, None, True),
        ({"present": True, "invert": True}, "x", False),
    ],
)
def test_invert(spec, value, expected):
    m = matcher({"headers": {"user-group": spec}})
    headers = {"user-group": value} if value is not None else None
    assert m(req(headers=headers), EMPTY) is expected


# --------------------------------------------------------------------------- value sources


def test_query_parameter():
    m = matcher({"query": {"debug": {"present": True}, "v": {"exact": "2"}}})
    assert m(req(qs="debug&v=2"), EMPTY)
    assert m(req(qs="debug=&v=2&v=3"), EMPTY)  # first value wins
    assert not m(req(qs="v=2"), EMPTY)
    assert not m(req(qs="debug=1&v=3"), EMPTY)


def test_method_is_case_insensitive():
    m = matcher({"method": {"exact": "get"}})
    assert m(req(method="GET"), EMPTY)
    assert m(req(method="get"), EMPTY)
    assert not m(req(method="POST"), EMPTY)
    r = matcher({"method": {"regex": "get|head"}})
    assert r(req(method="HEAD"), EMPTY) and not r(req(method="PUT"), EMPTY)


def test_context_values_and_lane():
    m = matcher({"context": {"user-group": {"exact": "beta"}}})
    assert m(req(), GrayContext(values={"user-group": "beta"}))
    assert not m(req(), GrayContext(values={"user-group": "alpha"}))
    assert not m(req(), EMPTY)
    lane = matcher({"context": {"lane": {"exact": "beta"}}})
    assert lane(req(), GrayContext(lane="beta"))
    assert not lane(req(), GrayContext(values={"other": "beta"}))


# --------------------------------------------------------------------------- combinations


def test_and_within_one_clause():
    m = matcher({"headers": {"user-group": "beta"}, "path": {"prefix": "/api"}, "method": "GET"})
    assert m(req("GET", "/api/x", {"user-group": "beta"}), EMPTY)
    assert not m(req("POST", "/api/x", {"user-group": "beta"}), EMPTY)
    assert not m(req("GET", "/web", {"user-group": "beta"}), EMPTY)
    assert not m(req("GET", "/api/x"), EMPTY)


def test_or_across_clauses():
    m = matcher(
        {"headers": {"user-group": "beta"}}, {"query": {"canary": {"present": True}}}, {"context": {"lane": "beta"}}
    )
    assert m(req(headers={"user-group": "beta"}), EMPTY)
    assert m(req(qs="canary=1"), EMPTY)
    assert m(req(), GrayContext(lane="beta"))
    assert not m(req(headers={"user-group": "alpha"}, qs="other=1"), GrayContext(lane="alpha"))


def test_empty_or_absent_match_compiles_to_none():
    assert compile_match(None) is None
    assert compile_match([]) is None
    assert matcher({}) is None
    assert matcher({"headers": {"a": "b"}}, {}) is None  # an empty clause matches everything
    assert describe(None) == "*"


def test_single_condition_is_the_condition_itself_and_describes_itself():
    m = matcher({"headers": {"User-Group": {"exact": "beta"}}})
    assert m.__code__.co_name == "exact"  # not wrapped in an AND/OR loop
    assert describe(m) == "header user-group == 'beta'"
    both = matcher({"headers": {"a": "1"}, "path": {"prefix": "/x"}}, {"method": {"exact": "put", "invert": True}})
    assert describe(both) == "(header a == '1' and path starts with '/x') or (method != 'PUT')"


def test_compiled_route_carries_the_matcher():
    rules = parse_rules(
        """
        services:
          orders:
            subsets: {canary: {version: "2.0.0"}}
            routes:
              - match: [{headers: {user-group: {exact: beta}}}]
                to: [{subset: canary}]
              - to: [{subset: canary}]
        """
    )
    first, catch_all = rules.services["orders"].routes
    assert first.match is not None and first.match(req(headers={"user-group": "beta"}), EMPTY)
    assert not first.match(req(), EMPTY)
    assert catch_all.match is None
