"""The routing header lookup in the httpx transport must answer as ``httpx.Headers.get`` does."""

from __future__ import annotations

import httpx
import pytest

from graylb.transports.httpx import _HeaderLookup

CASES = [
    [("x-user-id", "u1")],
    [("User-Group", "beta"), ("X-User-Id", "u-ä")],
    [("accept", "application/json"), ("Accept", "application/vnd.myapp.v1+json"), ("x", "")],
    [("baggage", "a=1"), ("baggage", "user-group=beta")],
    [],
]
NAMES = ["x-user-id", "user-group", "accept", "baggage", "x", "absent"]


@pytest.mark.parametrize("lines", CASES)
@pytest.mark.parametrize("encoding", [None, "utf-8"])
def test_lookup_equals_headers_get(lines: list[tuple[str, str]], encoding: str | None) -> None:
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
