"""inject_gray: the one outbound injection, and its carriers (httpx headers, gRPC metadata) giving
the same headers for the same input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from graylb.propagation import EMPTY, GrayContext, HeaderCodec
from graylb.propagation.outbound import inject_gray
from graylb.transports.grpc_interceptors import outbound_metadata
from graylb.transports.httpx import HEADERS


class Pairs:
    """A plain carrier for the contract tests: header pairs, names compared lower-case."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = list(pairs)
        self.writes: list[tuple[str, str | None]] = []

    @staticmethod
    def get(carrier: Pairs, key: str) -> list[str] | None:
        return [v for k, v in carrier.pairs if k.lower() == key] or None

    @staticmethod
    def set(carrier: Pairs, key: str, value: str | None) -> None:
        carrier.writes.append((key, value))
        carrier.pairs = [(k, v) for k, v in carrier.pairs if k.lower() != key]
        if value is not None:
            carrier.pairs.append((key, value))


def inject(ctx: GrayContext, pairs: list[tuple[str, str]]) -> tuple[bool, Pairs]:
    carrier = Pairs(pairs)
    changed = inject_gray(HeaderCodec(), ctx, carrier, Pairs, Pairs)
    return changed, carrier


def test_nothing_to_do_touches_nothing() -> None:
    changed, carrier = inject(EMPTY, [("x-a", "1"), ("x-gray-lane", "kept")])
    assert not changed and carrier.writes == []


def test_context_goes_into_plain_headers_and_baggage() -> None:
    changed, carrier = inject(GrayContext(lane="beta", pins={"orders": "2.0.0"}), [("x-a", "1")])
    assert changed
    assert carrier.pairs == [
        ("x-a", "1"),
        ("x-gray-lane", "beta"),
        ("x-gray-pin", "orders=2.0.0"),
        ("baggage", "gray.lane=beta,gray.pin.orders=2.0.0"),
    ]


def test_existing_baggage_is_merged_once_and_stale_gray_members_dropped() -> None:
    pairs = [("baggage", "k1=v1,gray.lane=stale"), ("x-a", "1"), ("Baggage", "k2=v2,gray.pin.orders=9")]
    _, carrier = inject(GrayContext(lane="beta"), pairs)
    assert [v for k, v in carrier.pairs if k == "baggage"] == ["k1=v1,k2=v2,gray.lane=beta"]
    assert [k for k, _ in carrier.writes] == ["x-gray-lane", "baggage"]  # each header written once


def test_empty_context_still_strips_stale_gray_members() -> None:
    changed, carrier = inject(EMPTY, [("baggage", "k1=v1,gray.lane=stale")])
    assert changed and carrier.pairs == [("baggage", "k1=v1")]
    _, carrier = inject(EMPTY, [("baggage", "gray.lane=stale"), ("x-a", "1")])
    assert carrier.pairs == [("x-a", "1")]  # an emptied baggage header goes


def test_gray_headers_the_caller_set_are_replaced() -> None:
    _, carrier = inject(GrayContext(lane="beta"), [("X-Gray-Lane", "old"), ("x-gray-lane", "older")])
    assert [v for k, v in carrier.pairs if k.lower() == "x-gray-lane"] == ["beta"]


# -------------------------------------------------------------------------- carrier parity

CASES = [
    (EMPTY, []),
    (EMPTY, [("baggage", "k1=v1,gray.lane=stale"), ("baggage", "k2=v2")]),
    (EMPTY, [("baggage", "gray.lane=stale")]),
    (GrayContext(lane="beta", lane_forced=True), [("x-a", "1")]),
    (GrayContext(lane="beta"), [("x-gray-lane", "old"), ("baggage", "k=v"), ("x-gray-pin", "a=1")]),
    (GrayContext(pins={"orders": ">=1.2,<2"}, values={"user-group": "beta"}), [("baggage", "")]),
]


def _normalised(pairs: Any) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in pairs)


@pytest.mark.parametrize(("ctx", "pairs"), CASES)
def test_httpx_headers_and_grpc_metadata_get_the_same_headers(ctx: GrayContext, pairs: list[tuple[str, str]]) -> None:
    codec = HeaderCodec()
    _, plain = inject(ctx, pairs)
    headers = httpx.Headers(pairs)
    inject_gray(codec, ctx, headers, HEADERS, HEADERS)
    metadata = outbound_metadata(codec, ctx, pairs)
    expected = _normalised(plain.pairs)
    assert _normalised(headers.multi_items()) == expected
    assert _normalised(pairs if metadata is None else metadata) == expected


def test_grpc_metadata_keeps_order_and_binary_entries() -> None:
    metadata = (("trace-bin", b"\x00"), ("baggage", "k=v"), ("x-a", "1"))
    out = outbound_metadata(HeaderCodec(), GrayContext(lane="beta"), metadata)
    assert out == [("trace-bin", b"\x00"), ("x-a", "1"), ("x-gray-lane", "beta"), ("baggage", "k=v,gray.lane=beta")]
    assert outbound_metadata(HeaderCodec(), EMPTY, metadata[2:]) is None  # nothing changes: None
