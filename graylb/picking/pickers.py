"""Pickers: choose one instance of a subset for one call.

After grpc-go's picker: a picker is an immutable snapshot, built once whenever the instance set
(or the ejected set) changes, and then shared by every call until the next change. The contract
every picker keeps:

* ``pick()`` never blocks, never takes a lock, does no I/O and never raises;
* it only returns instances with ``weight > 0`` (weight 0 means "receives no traffic");
* it returns None when nothing is eligible, or when ``info.exclude`` covers everything eligible;
* ``info.exclude`` (instance ids already tried, for retries) is honoured by choosing among the
  remaining eligible instances with the same policy; the common no-exclude path stays the fastest.

All the cost (sorting, cumulative weights, the hash ring) is paid in ``__init__``.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from hashlib import blake2b
from typing import ClassVar

from ..instance import Instance
from ..routing.hashing import stable_hash64

__all__ = [
    "PickInfo",
    "NO_PICK_INFO",
    "LoadStats",
    "Picker",
    "WeightedRandomPicker",
    "RoundRobinPicker",
    "LeastRequestPicker",
    "RingHashPicker",
    "POLICIES",
    "make_picker",
]

# Module-level aliases: a global lookup is cheaper than ``random.random`` (global + attribute).
_random = random.random

# Draws tried before an exclude-aware pick falls back to scanning all instances.
_REJECTION_TRIES = 4


@dataclasses.dataclass(frozen=True, slots=True)
class PickInfo:
    """Per-call input to :meth:`Picker.pick`.

    ``hash_key`` is the ring-hash key (a user id ...), ignored by other policies; ``exclude``
    holds ids of instances already tried by this call, so a retry goes elsewhere.
    """

    hash_key: str | None = None
    exclude: frozenset[str] = frozenset()


#: Shared default: most calls carry no key and exclude nothing, so they allocate nothing.
NO_PICK_INFO = PickInfo()


class LoadStats:
    """In-flight request counts per instance id, shared by all pickers of one balancer.

    The transport calls ``begin(id)`` before and ``end(id)`` after each call. There are no locks:
    each operation is a dict get followed by a set under the GIL, so two racing updates may lose
    one count (the numbers are approximate under races) but a count never goes negative and no
    operation ever raises. Ids whose count drops to zero are removed, so departed instances leave
    nothing behind.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        # Never replaced: LeastRequestPicker keeps a reference to this dict's ``get``.
        self._counts: dict[str, int] = {}

    def begin(self, instance_id: str) -> None:
        counts = self._counts
        counts[instance_id] = counts.get(instance_id, 0) + 1

    def end(self, instance_id: str) -> None:
        counts = self._counts
        n = counts.get(instance_id, 0) - 1
        if n > 0:
            counts[instance_id] = n
        else:
            # pop with a default: a racing end() may have removed it already.
            counts.pop(instance_id, None)

    def inflight(self, instance_id: str) -> int:
        return self._counts.get(instance_id, 0)

    def __repr__(self) -> str:
        return f"LoadStats({dict(self._counts)!r})"


class Picker:
    """Base class and contract (see the module docstring).

    ``instances`` holds the eligible instances (weight > 0, first occurrence of each id) in the
    order given; ``len(picker)`` is their number. ``stats`` is the balancer's shared
    :class:`LoadStats` (only :class:`LeastRequestPicker` reads it). Subclasses implement
    :meth:`pick` and set ``policy``, the rule-document name of the policy.
    """

    policy: ClassVar[str] = ""
    __slots__ = ("instances", "stats")

    def __init__(self, instances: Sequence[Instance], stats: LoadStats | None = None) -> None:
        seen: set[str] = set()
        eligible: list[Instance] = []
        for inst in instances:
            # Duplicated ids would skew weights and break the ring's determinism; keep the first.
            if inst.weight > 0 and inst.id not in seen:
                seen.add(inst.id)
                eligible.append(inst)
        self.instances: tuple[Instance, ...] = tuple(eligible)
        self.stats = stats

    def pick(self, info: PickInfo = NO_PICK_INFO) -> Instance | None:
        """One instance for this call, or None when nothing eligible is left."""
        raise NotImplementedError

    def _remaining(self, exclude: frozenset[str]) -> list[Instance]:
        return [i for i in self.instances if i.id not in exclude]

    def __len__(self) -> int:
        return len(self.instances)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(i.id for i in self.instances)})"


def _weighted_choice(candidates: Sequence[Instance]) -> Instance | None:
    """Weighted random choice by a linear scan; for the (rare) retry path only."""
    total = 0
    for inst in candidates:
        total += inst.weight
    if total <= 0:
        return None
    point = _random() * total
    for inst in candidates:
        point -= inst.weight
        if point < 0:
            return inst
    return candidates[-1]  # float rounding on the last step


class WeightedRandomPicker(Picker):
    """Probability proportional to registry weight.

    Precomputes cumulative weights once; a pick is one ``random()`` and one ``bisect``. When all
    weights are equal (the usual case) it skips the bisect and indexes directly.
    """

    policy = "weighted_random"
    __slots__ = ("_n", "_cumulative", "_total")

    def __init__(self, instances: Sequence[Instance], stats: LoadStats | None = None) -> None:
        super().__init__(instances, stats)
        self._n = len(self.instances)
        if len({i.weight for i in self.instances}) > 1:
            # Floats, not ints: bisect compares them with a float point, and float-to-float
            # comparison is much faster than int-to-float. Sums stay exact (< 2**53).
            cumulative = itertools.accumulate(i.weight for i in self.instances)
            self._cumulative: list[float] | None = [float(c) for c in cumulative]
            self._total = self._cumulative[-1]
        else:
            self._cumulative = None  # equal weights: uniform choice
            self._total = 0.0

    def pick(self, info: PickInfo = NO_PICK_INFO) -> Instance | None:
        if info.exclude:
            return self._pick_excluding(info.exclude)
        cumulative = self._cumulative
        if cumulative is None:
            n = self._n
            # random() < 1 and n is an int, so int(random() * n) <= n - 1 (the product cannot
            # round up to n in IEEE double arithmetic).
            return self.instances[int(_random() * n)] if n else None
        # point < total, so bisect_right lands on an index < n; a point equal to a cumulative
        # boundary belongs to the next instance, which keeps every slot exactly weight wide.
        return self.instances[bisect_right(cumulative, _random() * self._total)]

    def _pick_excluding(self, exclude: frozenset[str]) -> Instance | None:
        # Rejection sampling: drawing from the full distribution and discarding excluded draws
        # gives exactly the weighted distribution over the rest, and usually succeeds at once
        # (retries exclude one or two instances). Fall back to an exact scan after a few misses.
        for _ in range(_REJECTION_TRIES):
            inst = self.pick()
            if inst is None:
                return None
            if inst.id not in exclude:
                return inst
        return _weighted_choice(self._remaining(exclude))


class RoundRobinPicker(Picker):
    """Cycles through the eligible instances in order; weight only matters as "0 = excluded".

    The position is an ``itertools.count``: ``next()`` on it is a single C call, atomic under the
    GIL, so concurrent callers never get the same position without a lock. The start is random so
    that many callers (and picker rebuilds) do not all begin with the first instance.
    """

    policy = "round_robin"
    __slots__ = ("_n", "_next")

    def __init__(self, instances: Sequence[Instance], stats: LoadStats | None = None) -> None:
        super().__init__(instances, stats)
        self._n = len(self.instances)
        self._next = itertools.count(random.randrange(self._n) if self._n else 0).__next__

    def pick(self, info: PickInfo = NO_PICK_INFO) -> Instance | None:
        n = self._n
        if not n:
            return None
        start = self._next()
        if not info.exclude:
            return self.instances[start % n]
        exclude = info.exclude
        for k in range(start, start + n):  # the next one in rotation that is not excluded
            inst = self.instances[k % n]
            if inst.id not in exclude:
                return inst
        return None


class LeastRequestPicker(Picker):
    """Power of two choices: sample two distinct eligible instances, take the one with fewer
    requests in flight (from ``stats``); on a tie the higher weight wins, then either at random.

    Without a shared ``stats`` the picker gets a private, always-empty one, so it degrades to
    "random, preferring heavier instances" rather than failing.
    """

    policy = "least_request"
    __slots__ = ("_n", "_inflight")

    def __init__(self, instances: Sequence[Instance], stats: LoadStats | None = None) -> None:
        super().__init__(instances, stats if stats is not None else LoadStats())
        self._n = len(self.instances)
        assert self.stats is not None
        self._inflight = self.stats._counts.get  # one C call per lookup, no method hop

    def pick(self, info: PickInfo = NO_PICK_INFO) -> Instance | None:
        exclude = info.exclude
        if not exclude:
            # Inlined _choose/_pair/_better: this is the per-call path.
            n = self._n
            if n <= 1:
                return self.instances[0] if n else None
            i = int(_random() * n)
            j = int(_random() * (n - 1))
            if j >= i:
                j += 1
            a = self.instances[i]
            b = self.instances[j]
            inflight = self._inflight
            load_a = inflight(a.id, 0)
            load_b = inflight(b.id, 0)
            if load_a != load_b:
                return a if load_a < load_b else b
            if a.weight != b.weight:
                return a if a.weight > b.weight else b
            return a
        if self._n > 2:
            # Rejection sampling over pairs: a uniform pair of the full set, redrawn while either
            # member is excluded, is a uniform pair of the remaining ones (see WeightedRandomPicker).
            for _ in range(_REJECTION_TRIES):
                i, j = self._pair(self._n)
                a = self.instances[i]
                b = self.instances[j]
                if a.id not in exclude and b.id not in exclude:
                    return self._better(a, b)
        return self._choose(self._remaining(exclude))

    def _choose(self, candidates: Sequence[Instance]) -> Instance | None:
        n = len(candidates)
        if n <= 1:
            return candidates[0] if n else None
        i, j = self._pair(n)
        return self._better(candidates[i], candidates[j])

    @staticmethod
    def _pair(n: int) -> tuple[int, int]:
        """A uniformly random ordered pair of distinct indices below n (n >= 2)."""
        i = int(_random() * n)
        j = int(_random() * (n - 1))  # drawn from the n - 1 others
        return (i, j + 1) if j >= i else (i, j)

    def _better(self, a: Instance, b: Instance) -> Instance:
        inflight = self._inflight
        load_a = inflight(a.id, 0)
        load_b = inflight(b.id, 0)
        if load_a != load_b:
            return a if load_a < load_b else b
        if a.weight != b.weight:
            return a if a.weight > b.weight else b
        # Full tie: (a, b) is a uniformly random ordered pair, so taking a is a fair coin.
        return a


class RingHashPicker(Picker):
    """Consistent hashing: the same ``hash_key`` lands on the same instance while it is present.

    A key goes to the first virtual node at or after ``stable_hash64(hash_key)`` on a 64-bit
    ring, wrapping around. An instance's nodes are the big-endian 64-bit words of
    ``blake2b(f"{id}#{j}".encode()).digest()`` (64 bytes = 8 nodes per digest) for j = 0, 1, ...,
    taken in order, so the ring depends only on the set of (id, weight): never on input order,
    process or Python version. (Eight nodes per digest makes a 100-instance ring build several
    times faster than one hash per node.)

    Node counts are proportional to weight, scaled so the heaviest instance gets
    ``VNODES_PER_MAX_WEIGHT`` nodes (100) and every instance at least one; instances lighter than
    1/100 of the heaviest are therefore over-weighted on the ring. Scaling against the heaviest
    weight rather than the total means adding or removing an instance leaves every other
    instance's nodes untouched, so only the keys on the removed instance move. The exceptions:
    the heaviest weight changes, or the ring would exceed ``MAX_RING_SIZE`` nodes (more than 163
    equal instances), when counts are scaled down (each instance keeps a prefix of its nodes).

    Without a ``hash_key`` it picks by weight, like :class:`WeightedRandomPicker`; with
    ``exclude`` it walks the ring to the next node whose instance is not excluded.
    """

    policy = "ring_hash"
    VNODES_PER_MAX_WEIGHT: ClassVar[int] = 100
    MAX_RING_SIZE: ClassVar[int] = 16384
    __slots__ = ("_points", "_owners", "_size", "_ids", "_by_weight")

    def __init__(self, instances: Sequence[Instance], stats: LoadStats | None = None) -> None:
        super().__init__(instances, stats)
        self._by_weight = WeightedRandomPicker(self.instances, stats)
        self._ids = frozenset(i.id for i in self.instances)
        # Owners are numbered in id order, so equal points (an astronomically rare 64-bit
        # collision) resolve the same way whatever the input order.
        ordered = sorted(self.instances, key=lambda i: i.id)
        # Each node is one int, point << _OWNER_BITS | owner number: sorting plain ints is much
        # faster than sorting tuples and creates nothing for the garbage collector to scan.
        ring: list[int] = []
        if ordered:
            max_weight = max(i.weight for i in ordered)
            per_max = self.VNODES_PER_MAX_WEIGHT
            total = sum(_vnode_count(i.weight, per_max, max_weight) for i in ordered)
            if total > self.MAX_RING_SIZE:
                per_max = max(1, per_max * self.MAX_RING_SIZE // total)
            for owner, inst in enumerate(ordered):
                count = _vnode_count(inst.weight, per_max, max_weight)
                ring.extend(point << _OWNER_BITS | owner for point in _vnode_points(inst.id, count))
        ring.sort()
        self._points = [node >> _OWNER_BITS for node in ring]
        self._owners = tuple(ordered[node & _OWNER_MASK] for node in ring)
        self._size = len(ring)

    def pick(self, info: PickInfo = NO_PICK_INFO) -> Instance | None:
        key = info.hash_key
        if key is None:
            return self._by_weight.pick(info)
        size = self._size
        if not size:
            return None
        i = bisect_left(self._points, stable_hash64(key))
        if i == size:
            i = 0  # wrap around
        exclude = info.exclude
        if not exclude:
            return self._owners[i]
        if self._ids <= exclude:
            return None  # everything tried: do not walk the whole ring for nothing
        owners = self._owners
        for k in range(i, i + size):
            inst = owners[k % size]
            if inst.id not in exclude:
                return inst
        return None  # unreachable: some id is not excluded and owns at least one node


_unpack_points = struct.Struct(">8Q").unpack
_OWNER_BITS = 32  # room for any realistic number of instances
_OWNER_MASK = (1 << _OWNER_BITS) - 1


def _vnode_count(weight: int, per_max: int, max_weight: int) -> int:
    return max(1, round(weight * per_max / max_weight))


def _vnode_points(instance_id: str, count: int) -> list[int]:
    """The first ``count`` ring points of ``instance_id`` (a stable prefix as count grows)."""
    points: list[int] = []
    for j in range((count + 7) // 8):
        seed = f"{instance_id}#{j}".encode("utf-8", "surrogatepass")
        points.extend(_unpack_points(blake2b(seed).digest()))
    del points[count:]
    return points


POLICIES: dict[str, type[Picker]] = {
    cls.policy: cls for cls in (WeightedRandomPicker, RoundRobinPicker, LeastRequestPicker, RingHashPicker)
}


def make_picker(policy: str, instances: Sequence[Instance], stats: LoadStats | None = None) -> Picker:
    """Build the picker named ``policy`` (a ``load_balancer`` value of the rule document).

    Raises ValueError naming the unknown policy and the known ones.
    """
    try:
        cls = POLICIES[policy]
    except (KeyError, TypeError):
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown load balancer policy {policy!r}; known policies: {known}") from None
    return cls(instances, stats)
