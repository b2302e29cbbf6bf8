"""Routing on the API version a request asks for: the Accept / path parsers, the `api_version`
match clause, its validation errors, repeated header lines, and what `explain` says."""

from __future__ import annotations

from typing import Any

import pytest

import graylb
from graylb.errors import RuleError
from graylb.propagation.context import EMPTY
from graylb.routing.api_version import MAX_ACCEPT_LENGTH, MAX_MEDIA_RANGES, accept_version, path_version
from graylb.routing.explain import explain_rules
from graylb.routing.matchers import compile_match, describe
from graylb.routing.request import RequestInfo
from graylb.rules.load import parse_rules
from graylb.rules.model import MatchClause

# --------------------------------------------------------------------------- Accept parser


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # one media type, the version in the type name, any or no +suffix, case-insensitive
        (["application/vnd.myapp.v2+json"], ("myapp", "v2")),
        (["application/vnd.myapp.v2+xml"], ("myapp", "v2")),
        (["application/vnd.myapp.v2"], ("myapp", "v2")),
        (["Application/VND.MyApp.V2+JSON"], ("myapp", "v2")),
        (["application/vnd.myapp.v1.4+json"], ("myapp", "v1.4")),
        (["application/vnd.mycorp.orders.v3+json"], ("mycorp.orders", "v3")),
        (["application/vnd.github.v3.raw+json"], ("github", "v3")),  # a variant after the version
        # the version as a parameter
        (["application/vnd.myapp+json; version=2"], ("myapp", "v2")),
        (["application/vnd.myapp+json;version=v2.1"], ("myapp", "v2.1")),
        (['application/vnd.myapp+json; version="3"'], ("myapp", "v3")),
        (["application/vnd.myapp+json; charset=utf-8; version=2"], ("myapp", "v2")),
        (["application/vnd.myapp.v2+json; version=3"], ("myapp", "v2")),  # the type name wins
        # several media types: the highest q decides, the first listed on ties
        (["application/vnd.myapp.v2+json, application/vnd.myapp.v1+json"], ("myapp", "v2")),
        (["application/vnd.myapp.v1+json;q=0.5, application/vnd.myapp.v2+json"], ("myapp", "v2")),
        (["application/vnd.myapp.v1+json;q=0.9, application/vnd.myapp.v2+json;q=0.9"], ("myapp", "v1")),
        (["text/html;q=0.1, application/vnd.myapp.v2+json;q=0.8, */*;q=0.5"], ("myapp", "v2")),
        # q=0 means "not acceptable": never preferred, however early
        (["application/vnd.myapp.v1+json;q=0, application/vnd.myapp.v2+json;q=0.1"], ("myapp", "v2")),
        # repeated header lines are one list
        (["text/html;q=0.2", "application/vnd.myapp.v2+json"], ("myapp", "v2")),
        (["application/vnd.myapp.v1+json;q=0.3", "application/vnd.myapp.v2+json;q=0.4"], ("myapp", "v2")),
        # a quoted parameter may hold commas and semicolons
        (['application/vnd.myapp.v2+json; note="a,b;c", text/html;q=0.1'], ("myapp", "v2")),
        # one broken entry does not hide a good one
        (["text/html;q=abc, application/vnd.myapp.v2+json"], ("myapp", "v2")),
    ],
)
def test_accept_preferred_vendor_version(lines: list[str], expected: tuple[str, str]) -> None:
    assert accept_version(lines) == expected


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [""],
        ["*/*"],
        ["application/json"],
        ["text/vnd.myapp.v2+json"],  # vendor trees count under application/ only
        ["application/vnd.myapp+json"],  # a vendor type without a version
        ["application/vnd.myapp+json; version=latest"],
        ["text/html, application/vnd.myapp.v2+json"],  # equal q: text/html is listed first
        ["*/*", "application/vnd.myapp.v2+json"],  # the same across lines
        ["application/vnd.myapp.v2+json;q=0.5, application/json"],
        ["application/vnd.myapp.v2+json;q=0"],  # the only type is not acceptable
    ],
)
def test_accept_without_a_preferred_vendor_version(lines: list[str]) -> None:
    assert accept_version(lines) is None


GARBAGE = [
    "garbage",
    ",,,;;;===",
    "application/",
    "/json",
    "application/vnd.myapp.v2+json;q=2",  # q outside 0..1
    "application/vnd.myapp.v2+json;q=0.5000",  # more than 3 decimals
    "application/vnd.myapp.v2+json;;=x",
    'application/vnd.myapp.v2+json; note="never closed',
    "application/vnd.myapp..v2+json",
    "application/vnd..v2+json",
    "application/vnd.+json",
    "application/vnd.myapp.v" + "9" * 5000 + "+json",  # far past the length limit
    "application/vnd.myapp.v12345678901+json",  # a version number too long to be real
    "application/vnd.myapp.v2+json text/html",
    "application/vnd.myapp.v2+json\x00",
    "\u00e9/\u00e9, application/vnd.myapp.v2\u00b2+json",
    "application/vnd.myapp.v2+json;" + "x=1;" * 300,  # past the length limit
    ", ".join(["text/plain;q=0.1"] * MAX_MEDIA_RANGES + ["application/vnd.myapp.v2+json"]),  # too many ranges
    "application/vnd.myapp.v2+json, " + "a" * MAX_ACCEPT_LENGTH,
]


@pytest.mark.parametrize("value", GARBAGE)
def test_malformed_or_huge_accept_is_no_version_and_never_raises(value: str) -> None:
    assert accept_version([value]) is None
    m = matcher({"api_version": {"from": "accept", "version": "*"}})
    assert not m(RequestInfo(headers={"accept": value}), EMPTY)


def test_the_limits_are_on_the_whole_header_across_lines() -> None:
    line = "text/plain;q=0.1, " * 10 + "application/vnd.myapp.v2+json"
    assert accept_version([line]) == ("myapp", "v2")
    assert accept_version([line] * (MAX_ACCEPT_LENGTH // len(line) + 1)) is None


# --------------------------------------------------------------------------- path


@pytest.mark.parametrize(
    ("path", "prefix", "expected"),
    [
        ("/api/v2/users", None, "v2"),
        ("/v1.1/orders", None, "v1.1"),
        ("/api/v2", None, "v2"),
        ("/users/v3/x", None, "v3"),  # without a prefix: the first such segment anywhere
        ("/api/v2/v3", None, "v2"),
        ("/api/users", None, None),
        ("/api/v2x/users", None, None),  # a whole segment only
        ("/api/xv2/users", None, None),
        ("/api/V2/users", None, None),  # paths are case-sensitive: a lower-case v only
        ("/download/v1.2.3/file", None, None),  # a release number, not an API version
        ("/api/v2\n", None, None),
        ("/api/v" + "1" * 20 + "/x", None, None),
        ("/api/v2/users", "/api/", "v2"),
        ("/api/v2/users", "/api", "v2"),  # the same prefix, normalised
        ("/api/v1.1", "/api/", "v1.1"),
        ("/api/users/v2", "/api/", None),  # only the segment right after the prefix
        ("/x/api/v2/users", "/api/", None),
        ("/apiv2/users", "/api", None),
        ("/public/v2/users", "/api/", None),
    ],
)
def test_path_version(path: str, prefix: str | None, expected: str | None) -> None:
    from graylb.routing.api_version import normalise_prefix

    assert path_version(path, normalise_prefix(prefix) if prefix else None) == expected


def test_absurdly_long_path_is_not_searched() -> None:
    assert path_version("/x" * 10_000 + "/v2/users") is None


# --------------------------------------------------------------------------- the match clause


def matcher(*clauses: dict[str, Any]):
    return compile_match([MatchClause.model_validate(c) for c in clauses])


def accept(*lines: str) -> RequestInfo:
    return RequestInfo("GET", "/", {"accept": list(lines)})


@pytest.mark.parametrize(
    ("version", "asked", "expected"),
    [
        ("^2", "application/vnd.myapp.v2+json", True),
        ("2", "application/vnd.myapp.v2+json", True),
        ("v2", "application/vnd.myapp.v2+json", True),
        ("v2", "application/vnd.myapp+json; version=2", True),
        ("^2", "application/vnd.myapp.v2.1+json", True),
        ("^2", "application/vnd.myapp.v1+json", False),
        ("v1.4", "application/vnd.myapp.v1.4+json", True),
        ("v1.4", "application/vnd.myapp.v1.5+json", False),
    ],
)
def test_accept_clause_compares_the_version_with_the_selector(version: str, asked: str, expected: bool) -> None:
    m = matcher({"api_version": {"from": "accept", "vendor": "myapp", "version": version}})
    assert m(accept(asked), EMPTY) is expected


def test_accept_clause_vendor_is_case_insensitive_and_optional() -> None:
    mine = matcher({"api_version": {"from": "accept", "vendor": "MyApp", "version": "2"}})
    anyone = matcher({"api_version": {"from": "accept", "version": "2"}})
    assert mine(accept("application/vnd.myapp.v2+json"), EMPTY)
    assert mine(accept("application/vnd.MYAPP.v2+json"), EMPTY)
    assert not mine(accept("application/vnd.other.v2+json"), EMPTY)
    assert anyone(accept("application/vnd.other.v2+json"), EMPTY)
    assert not anyone(accept("application/json"), EMPTY)
    assert not anyone(RequestInfo(), EMPTY)  # no Accept at all


def test_accept_clause_another_vendor_preferred_does_not_match() -> None:
    m = matcher({"api_version": {"from": "accept", "vendor": "myapp", "version": "2"}})
    assert not m(accept("application/vnd.other.v2+json, application/vnd.myapp.v2+json"), EMPTY)
    assert m(accept("application/vnd.other.v2+json;q=0.5, application/vnd.myapp.v2+json"), EMPTY)


def test_accept_clause_sees_every_header_line() -> None:
    m = matcher({"api_version": {"from": "accept", "vendor": "myapp", "version": "2"}})
    assert m(accept("text/html;q=0.1", "application/vnd.myapp.v2+json"), EMPTY)
    lines = ["text/html;q=0.1", "application/vnd.myapp.v2+json"]
    by_getter = RequestInfo("GET", "/", {"accept": lines[0]}.get, "", {"accept": lines}.get)
    assert m(by_getter, EMPTY)


def test_path_clause_with_and_without_prefix() -> None:
    anywhere = matcher({"api_version": {"from": "path", "version": "2"}})
    after_api = matcher({"api_version": {"from": "path", "prefix": "/api", "version": "v2"}})
    assert anywhere(RequestInfo("GET", "/api/v2/users"), EMPTY)
    assert anywhere(RequestInfo("GET", "/v2.3/users"), EMPTY)
    assert not anywhere(RequestInfo("GET", "/api/v1/users"), EMPTY)
    assert after_api(RequestInfo("GET", "/api/v2/users"), EMPTY)
    assert not after_api(RequestInfo("GET", "/web/v2/users"), EMPTY)


def test_api_version_and_other_conditions_in_one_clause_and_across_clauses() -> None:
    both = matcher({"method": "GET", "api_version": {"from": "path", "version": "2"}})
    assert both(RequestInfo("GET", "/api/v2/x"), EMPTY)
    assert not both(RequestInfo("POST", "/api/v2/x"), EMPTY)
    either = matcher(
        {"api_version": {"from": "accept", "vendor": "myapp", "version": "^2"}},
        {"api_version": {"from": "path", "prefix": "/api/", "version": "^2"}},
    )
    assert either(RequestInfo("GET", "/api/v2/x"), EMPTY)
    assert either(RequestInfo("GET", "/x", {"accept": "application/vnd.myapp.v2+json"}), EMPTY)
    assert not either(RequestInfo("GET", "/api/v1/x", {"accept": "application/vnd.myapp.v1+json"}), EMPTY)


def test_descriptions() -> None:
    assert describe(matcher({"api_version": {"from": "accept", "vendor": "myapp", "version": "^2"}})) == (
        "api version from Accept (vnd.myapp) matches '^2'"
    )
    assert (
        describe(matcher({"api_version": {"from": "accept", "version": 2}}))
        == "api version from Accept (any vendor) matches '2'"
    )
    assert describe(matcher({"api_version": {"from": "path", "version": "v2"}})) == "api version from path matches 'v2'"
    assert describe(
        matcher({"headers": {"x": "1"}, "api_version": {"from": "path", "prefix": "/api", "version": "2"}})
    ) == ("header x == '1' and api version from path after '/api/' matches '2'")


def test_a_clause_with_only_api_version_is_not_empty() -> None:
    assert not MatchClause.model_validate({"api_version": {"from": "path", "version": "2"}}).is_empty


# --------------------------------------------------------------------------- validation


def route_doc(api_version: Any) -> dict:
    return {
        "services": {
            "orders": {
                "subsets": {"v2": {"version": "^2"}},
                "routes": [{"name": "api-v2", "match": [{"api_version": api_version}], "to": [{"subset": "v2"}]}],
            }
        }
    }


LOC = "services.orders.routes[0].match[0].api_version"


@pytest.mark.parametrize(
    ("api_version", "loc", "message"),
    [
        ({"version": "2"}, f"{LOC}.from", "required"),
        ({"from": "header", "version": "2"}, f"{LOC}.from", "expected 'accept' or 'path', got 'header'"),
        ({"from": "accept"}, f"{LOC}.version", "required"),
        ({"from": "accept", "version": ""}, f"{LOC}.version", "must not be empty"),
        ({"from": "accept", "version": 1.1}, f"{LOC}.version", "expected a string, got 1.1 (quote it in YAML)"),
        ({"from": "accept", "version": ">=x"}, f"{LOC}.version", "invalid version range '>=x'"),
        ({"from": "path", "vendor": "myapp", "version": "2"}, f"{LOC}.vendor", "vendor only applies to from: accept"),
        ({"from": "accept", "prefix": "/api", "version": "2"}, f"{LOC}.prefix", "prefix only applies to from: path"),
        ({"from": "path", "prefix": "api/", "version": "2"}, f"{LOC}.prefix", "prefix must start with '/', got 'api/'"),
        (
            {"from": "accept", "vendor": "vnd.myapp", "version": "2"},
            f"{LOC}.vendor",
            "write the vendor without 'vnd.' ('myapp' for 'vnd.myapp')",
        ),
        ({"from": "accept", "vendor": "my app", "version": "2"}, f"{LOC}.vendor", "invalid vendor 'my app'"),
        (
            {"from": "accept", "vendor": "myapp.v2", "version": "2"},
            f"{LOC}.vendor",
            "vendor 'myapp.v2' contains a version: put it in version",
        ),
        ({"form": "accept", "version": "2"}, f"{LOC}.form", "unknown field 'form' (did you mean 'from'?)"),
        ("v2", LOC, "expected a mapping, got a string ('v2')"),
    ],
)
def test_validation_errors_name_their_location(api_version: Any, loc: str, message: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rules(route_doc(api_version))
    assert any(where == loc and message in what for where, what in err.value.errors), err.value.errors


def test_every_problem_of_a_clause_is_reported_together() -> None:
    with pytest.raises(RuleError) as err:
        parse_rules(route_doc({"from": "path", "vendor": "x", "prefix": "api", "version": "<<"}))
    assert sorted(loc for loc, _ in err.value.errors) == [f"{LOC}.prefix", f"{LOC}.vendor", f"{LOC}.version"]


def test_yaml_document_round_trips_as_written() -> None:
    from graylb.rules.compile import to_document
    from graylb.rules.load import validate_rules

    text = """
    services:
      orders:
        subsets: {v2: {version: "^2"}}
        routes:
          - match:
              - api_version: {from: accept, vendor: myapp, version: "^2"}
              - api_version: {from: path, prefix: /api/, version: 2}
            to: [{subset: v2}]
    """
    doc = to_document(validate_rules(text))
    assert doc["services"]["orders"]["routes"][0]["match"] == [
        {"api_version": {"from": "accept", "vendor": "myapp", "version": "^2"}},
        {"api_version": {"from": "path", "prefix": "/api/", "version": "2"}},
    ]


# --------------------------------------------------------------------------- RequestInfo.header_values


def test_header_values_from_a_mapping_of_lines() -> None:
    info = RequestInfo(headers={"Accept": ["a/b", "c/d"], "X-One": "1", "x-empty": []})
    assert info.header("accept") == "a/b"  # header() keeps giving one value
    assert info.header_values("accept") == ["a/b", "c/d"]
    assert info.header_values("x-one") == ["1"]
    assert info.header_values("x-empty") == [] and info.header("x-empty") is None
    assert info.header_values("missing") == []


def test_header_values_without_a_getter_for_them_is_the_one_value() -> None:
    assert RequestInfo(headers={"x": "1"}.get).header_values("x") == ["1"]
    assert RequestInfo(headers={"x": "1"}.get).header_values("y") == []
    assert RequestInfo().header_values("x") == []


def test_httpx_transport_hands_every_line_to_rules() -> None:
    import httpx

    from graylb.transports.httpx import _routing_input

    request = httpx.Request(
        "GET",
        "http://orders/api/v2/x%20y?debug=1",
        headers=[("accept", "text/html;q=0.1"), ("Accept", "application/vnd.myapp.v2+json")],
    )
    info, _ = _routing_input(request)
    assert info.header_values("accept") == ["text/html;q=0.1", "application/vnd.myapp.v2+json"]
    assert info.header("accept") == "text/html;q=0.1, application/vnd.myapp.v2+json"
    assert (info.path, info.query("debug")) == ("/api/v2/x y", "1")  # as httpx's URL.path and .params


API_RULES = {
    "services": {
        "orders": {
            "subsets": {"v1": {"version": "^1"}, "v2": {"version": "^2"}},
            "default": "v1",
            "routes": [
                {
                    "name": "api-v2",
                    "match": [{"api_version": {"from": "accept", "vendor": "myapp", "version": "^2"}}],
                    "to": [{"subset": "v2"}],
                }
            ],
        }
    }
}


def test_grpc_metadata_repeated_keys_reach_header_values() -> None:
    from graylb.transports.grpc import GrayChannel

    registry = graylb.StaticDiscovery(
        {
            "orders": [
                {"host": "127.0.0.1", "port": 1, "version": "1.0.0", "id": "one"},
                {"host": "127.0.0.1", "port": 2, "version": "2.0.0", "id": "two"},
            ]
        }
    )
    balancer = graylb.Balancer(registry, API_RULES)
    metadata = [
        ("accept", "text/html;q=0.1"),
        ("x-trace-bin", b"\x00\x01"),
        ("accept", "application/vnd.myapp.v2+json"),
    ]
    with GrayChannel(balancer, "orders") as channel:
        call, _ = channel._router.start("/demo.v1.Echo/Say", metadata)  # routes only: no RPC is sent
        assert call.request.header_values("accept") == ["text/html;q=0.1", "application/vnd.myapp.v2+json"]
        assert call.request.header_values("x-trace-bin") == []  # binary metadata is not text
        assert (call.decision.route, call.decision.subset) == ("api-v2", "v2")
        plain, _ = channel._router.start("/demo.v1.Echo/Say", [("accept", "application/json")])
        assert plain.decision.subset == "v1"


# --------------------------------------------------------------------------- explain


def explained(request: RequestInfo) -> tuple[str, list[str]]:
    rules = parse_rules(
        {
            "services": {
                "orders": {
                    "subsets": {"v1": {"version": "^1"}, "v2": {"version": "^2"}},
                    "default": "v1",
                    "routes": [
                        {
                            "name": "accept-v2",
                            "match": [{"api_version": {"from": "accept", "vendor": "myapp", "version": "^2"}}],
                            "to": [{"subset": "v2"}],
                        },
                        {
                            "name": "path-v2",
                            "match": [{"api_version": {"from": "path", "prefix": "/api/", "version": "2"}}],
                            "to": [{"subset": "v2"}],
                        },
                    ],
                }
            }
        }
    )
    e = explain_rules("orders", rules.service("orders"), request)
    return e.route or "", list(e.reasons)


def test_explain_says_what_version_the_call_asks_for() -> None:
    route, reasons = explained(
        RequestInfo("GET", "/x", {"accept": ["text/html;q=0.2", "application/vnd.myapp.v2+json"]})
    )
    assert route == "accept-v2"
    assert "route 'accept-v2' matches" in reasons
    assert (
        "route 'accept-v2': api version from Accept (vnd.myapp) matches '^2'; "
        "this call: Accept prefers 'application/vnd.myapp.v2+json': version 'v2'"
    ) in reasons


@pytest.mark.parametrize(
    ("headers", "seen"),
    [
        ({}, "no Accept header"),
        ({"accept": "text/html"}, "Accept prefers 'text/html': not a vendor media type"),
        (
            {"accept": "application/vnd.other.v2+json"},
            "Accept prefers 'application/vnd.other.v2+json': vendor 'other', not 'myapp'",
        ),
        ({"accept": "application/vnd.myapp+json"}, "Accept prefers 'application/vnd.myapp+json': no version in it"),
        ({"accept": "garbage"}, "Accept has no acceptable media type graylb can read"),
    ],
)
def test_explain_says_why_accept_did_not_match(headers: dict, seen: str) -> None:
    route, reasons = explained(RequestInfo("GET", "/x", headers))
    assert route == "default"
    assert "route 'accept-v2' does not match" in reasons
    assert any(
        r.startswith("route 'accept-v2': api version from Accept") and f"this call: {seen}" in r for r in reasons
    ), reasons


def test_explain_path_version() -> None:
    route, reasons = explained(RequestInfo("GET", "/api/v2/users"))
    assert route == "path-v2"
    assert (
        "route 'path-v2': api version from path after '/api/' matches '2'; "
        "this call: path '/api/v2/users': version 'v2'" in reasons
    )
    _, reasons = explained(RequestInfo("GET", "/web/v2/users"))
    assert (
        "route 'path-v2': api version from path after '/api/' matches '2'; "
        "this call: path '/web/v2/users' has no v<N> segment right after '/api/'" in reasons
    )


def test_parsed_accept_values_are_cached_within_bounds() -> None:
    from graylb.routing import api_version

    for i in range(3 * api_version._CACHE_SIZE):
        accept_version([f"application/vnd.myapp.v{i}+json"])
    accept_version(["application/vnd.myapp.v2+json, " + "a" * MAX_ACCEPT_LENGTH])
    assert len(api_version._cache) <= api_version._CACHE_SIZE
    assert all(len(key) <= MAX_ACCEPT_LENGTH for key in api_version._cache)
    assert accept_version(["application/vnd.myapp.v7+json"]) == ("myapp", "v7")  # still right after clearing
