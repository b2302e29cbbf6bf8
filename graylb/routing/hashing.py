"""Stable hashing for sticky routing and ring hash.

Contract: the same key gives the same value in every process, on every machine and every Python
version, so a user stays on the same version across caller restarts and replicas. That rules
out the built-in ``hash()`` (salted per process by PYTHONHASHSEED). BLAKE2b with an 8-byte digest
is in the standard library, fast for short keys and well mixed in every bit.

These run once per call for sticky users, so they avoid any per-call setup; there is deliberately
no cache (user ids are unbounded, and hashing a short key costs about as much as a cache lookup).
"""

from __future__ import annotations

from hashlib import blake2b as _blake2b

__all__ = ["stable_hash64", "unit_interval"]

# Copying a ready-made hasher skips parsing the ``digest_size`` keyword on every call, which is
# about a fifth of the cost for short keys. ``copy()`` only reads the template, so sharing it
# across threads is safe; the output is identical to ``blake2b(data, digest_size=8)``.
_copy_template = _blake2b(digest_size=8).copy
_from_bytes = int.from_bytes
_TWO_POW_MINUS_53 = 2.0**-53


def stable_hash64(key: str) -> int:
    """An unsigned 64-bit hash of ``key``: BLAKE2b (digest_size=8) of its UTF-8 bytes, big-endian.

    Never raises for any ``str``: lone surrogates (e.g. from headers decoded with
    ``surrogateescape``) are encoded with ``surrogatepass`` instead of failing the call.
    """
    try:
        data = key.encode()  # the default codec path is the fastest one
    except UnicodeEncodeError:
        data = key.encode("utf-8", "surrogatepass")
    h = _copy_template()
    h.update(data)
    return _from_bytes(h.digest(), "big")


_UNIT_CACHE: dict[str, float] = {}
_UNIT_CACHE_MAX = 8192


def unit_interval(key: str) -> float:
    """A stable float in [0, 1) for ``key``, uniform over keys.

    Uses the top 53 bits of :func:`stable_hash64` so the result is exact and can never round up
    to 1.0 (``h / 2**64`` would, for the largest hashes). Sticky keys (user ids) repeat, so the
    last few thousand are remembered: a dict hit costs a tenth of the hash. The cache is emptied
    when full rather than kept in LRU order -- no lock, and each operation is one dict call.
    """
    point = _UNIT_CACHE.get(key)
    if point is None:
        point = (stable_hash64(key) >> 11) * _TWO_POW_MINUS_53
        if len(_UNIT_CACHE) >= _UNIT_CACHE_MAX:
            _UNIT_CACHE.clear()
        _UNIT_CACHE[key] = point
    return point
