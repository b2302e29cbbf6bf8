"""stable_hash64 / unit_interval: stable across processes and versions, well spread."""

from __future__ import annotations

import hashlib
import math

import pytest

from graylb.routing import hashing
from graylb.routing.hashing import stable_hash64, unit_interval

# Computed once from the algorithm in the contract. If one of these changes, every sticky user
# and every ring-hash key moves to another instance on upgrade: that must be a deliberate choice.
KNOWN = {
    "": 16476032584258269876,
    "user-42": 8043651368623730598,
    "héllo": 1395503932212621259,
}


@pytest.mark.parametrize("key,expected", sorted(KNOWN.items()))
def test_known_vectors(key: str, expected: int) -> None:
    assert stable_hash64(key) == expected


@pytest.mark.parametrize("key", ["", "user-42", "héllo", "日本語", "a" * 1000])
def test_is_blake2b_64_big_endian_of_utf8(key: str) -> None:
    want = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
    assert stable_hash64(key) == want


def test_lone_surrogate_does_not_raise() -> None:
    # Header values decoded with surrogateescape can carry lone surrogates; a call must not fail.
    h = stable_hash64("user-\udcff")
    assert 0 <= h < 2**64
    assert h == stable_hash64("user-\udcff")
    assert h != stable_hash64("user-\ufffd")


def test_range_and_no_collisions() -> None:
    hashes = {stable_hash64(f"user-{i}") for i in range(10_000)}
    assert len(hashes) == 10_000
    assert all(0 <= h < 2**64 for h in hashes)


def test_unit_interval_is_uniform() -> None:
    n, buckets = 10_000, 10
    counts = [0] * buckets
    for i in range(n):
        u = unit_interval(f"user-{i}")
        assert 0.0 <= u < 1.0
        counts[int(u * buckets)] += 1
    sigma = math.sqrt(n * (1 / buckets) * (1 - 1 / buckets))
    for c in counts:
        assert abs(c - n / buckets) < 5 * sigma, counts


def test_unit_interval_follows_the_hash() -> None:
    for key in ("a", "b", "user-7", "héllo"):
        assert abs(unit_interval(key) - stable_hash64(key) / 2**64) < 2**-52


def test_unit_interval_never_reaches_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # float(2**64 - 1) / 2**64 == 1.0; the largest hash must still map below 1.
    monkeypatch.setattr(hashing, "_UNIT_CACHE", {})
    monkeypatch.setattr(hashing, "stable_hash64", lambda key: 2**64 - 1)
    assert hashing.unit_interval("x") < 1.0
    monkeypatch.setattr(hashing, "stable_hash64", lambda key: 0)
    assert hashing.unit_interval("y") == 0.0


def test_unit_interval_remembers_a_bounded_number_of_keys() -> None:
    keys = [f"user-{i}" for i in range(3 * hashing._UNIT_CACHE_MAX)]
    first = [hashing.unit_interval(k) for k in keys]
    assert len(hashing._UNIT_CACHE) <= hashing._UNIT_CACHE_MAX
    assert [hashing.unit_interval(k) for k in keys] == first  # from the cache or not: the same point
    assert first == [(stable_hash64(k) >> 11) * 2.0**-53 for k in keys]


def test_low_and_high_bits_are_balanced() -> None:
    n = 10_000
    hashes = [stable_hash64(f"key:{i}") for i in range(n)]
    sigma = math.sqrt(n * 0.25)
    for bit in (0, 1, 31, 62, 63):
        ones = sum((h >> bit) & 1 for h in hashes)
        assert abs(ones - n / 2) < 5 * sigma, bit
