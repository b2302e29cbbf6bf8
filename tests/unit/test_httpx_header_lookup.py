"""The routing header lookup in the httpx transport must answer as ``httpx.Headers.get`` does."""

from __future__ import annotations

import httpx
import pytest

from graylb.routing import header_names
from graylb.transports.httpx import _HeaderLookup

CASES = [
    [("x-user-id", "u1")],
    [("User-Group", "beta"), ("X-User-Id", "u-ä")],
    [("accept", "application/json"), ("Accept", "application/vnd.myapp.v1+json"), ("x", "")],
    [("baggage", "a=1"), ("baggage", "user-group=beta")],
    [],
]
NAMES = ["x-user-id", "user-group", "accept", "baggage", "x", "absent"]


@pytest.mark.parametrize("declared", [False, True], ids=["asked-on-demand", "decoded-up-front"])
@pytest.mark.parametrize("lines", CASES)
@pytest.mark.parametrize("encoding", [None, "utf-8"])
def test_lookup_equals_headers_get(lines: list[tuple[str, str]], encoding: str | None, declared: bool) -> None:
    # Names a compiled rule reads are decoded in the one pass over the lines; any other name is
    # asked of httpx. (Declaring is process-wide and only ever adds names: the second run of a
    # case sees the first path's names declared, which is the point of running both.)
    if declared:
        for name in NAMES:
            header_names.declare(name)
    assert all(n in header_names.current[1] for n in NAMES) or not declared
    headers = httpx.Headers([(k, v.encode("utf-8")) for k, v in lines])
    if encoding:
        headers.encoding = encoding
    lookup = _HeaderLookup(headers)
    for _ in range(2):  # the second pass reads decoded values back from the dict
        assert [lookup.get(n) for n in NAMES] == [headers.get(n) for n in NAMES]


def test_lookup_without_httpx_internals_falls_back_to_multi_items() -> None:
    class Opaque:
        encoding = "ascii"

        def multi_items(self) -> list[tuple[str, str]]:
            return [("accept", "a"), ("accept", "b"), ("x-user-id", "u1")]

    lookup = _HeaderLookup(Opaque())  # type: ignore[arg-type]
    assert (lookup.get("accept"), lookup.get("x-user-id"), lookup.get("nope")) == ("a, b", "u1", None)


def test_a_rule_compiled_declares_the_headers_it_reads() -> None:
    from graylb.rules.compiled import HashKey
    from graylb.rules.load import parse_rules

    parse_rules(
        {
            "services": {
                "orders": {
                    "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
                    "default": "stable",
                    "routes": [
                        {"match": [{"headers": {"x-lookup-test": {"exact": "1"}}}], "to": [{"subset": "canary"}]}
                    ],
                }
            }
        }
    )
    HashKey(header="x-lookup-sticky")
    assert {"x-lookup-test", "x-lookup-sticky", "baggage"} <= set(header_names.current[1])
    assert header_names.current[0][b"x-lookup-test"] == "x-lookup-test"
