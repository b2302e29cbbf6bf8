"""Outlier detection: consecutive errors eject, ejections expire and grow, groups cap ejections."""

from __future__ import annotations

import random
import sys
import threading

import pytest

from graylb.picking import MAX_EJECTION_TIME, OutlierDetector
from graylb.rules.compiled import OutlierPolicy


class FakeClock:
    """A monotonic clock the test moves by hand (no sleeping)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def detector(
    clock: FakeClock, errors: int = 3, base: float = 30.0, pct: int = 50, groups: list[set[str]] | None = None
) -> OutlierDetector:
    policy = OutlierPolicy(consecutive_errors=errors, base_ejection_time=base, max_ejection_percent=pct)
    d = OutlierDetector(policy, clock=clock)
    if groups is not None:
        d.set_groups(groups)
    return d


def fail(d: OutlierDetector, instance_id: str, times: int) -> list[bool]:
    return [d.record_failure(instance_id) for _ in range(times)]


FOUR = [{"a", "b", "c", "d"}]


def test_ejects_after_consecutive_failures(clock: FakeClock) -> None:
    d = detector(clock, groups=FOUR)
    assert fail(d, "a", 2) == [False, False]
    assert not d.is_ejected("a")
    assert d.record_failure("a") is True
    assert d.is_ejected("a")
    assert d.ejected() == {"a"}
    assert d.next_release == clock.now + 30


def test_success_resets_the_streak(clock: FakeClock) -> None:
    d = detector(clock, groups=FOUR)
    fail(d, "a", 2)
    d.record_success("a")
    assert fail(d, "a", 2) == [False, False]
    assert not d.is_ejected("a")
    assert d.record_failure("a") is True


def test_failures_of_other_instances_do_not_add_up(clock: FakeClock) -> None:
    d = detector(clock, groups=FOUR)
    for instance_id in "abcd":
        fail(d, instance_id, 2)
    assert d.ejected() == frozenset()


def test_released_after_base_time(clock: FakeClock) -> None:
    d = detector(clock, groups=FOUR)
    fail(d, "a", 3)
    clock.advance(29.9)
    assert d.is_ejected("a") and d.ejected() == {"a"}
    clock.advance(0.1)
    assert d.ejected() == frozenset()
    assert not d.is_ejected("a")
    assert d.next_release is None


def test_failures_while_ejected_neither_count_nor_extend(clock: FakeClock) -> None:
    d = detector(clock, groups=FOUR)
    fail(d, "a", 3)
    release = d.next_release
    clock.advance(10)
    assert fail(d, "a", 10) == [False] * 10
    assert d.next_release == release
    clock.advance(20)
    # Released with a clean streak: it takes a full new streak to eject again.
    assert fail(d, "a", 2) == [False, False]
    assert not d.is_ejected("a")


def test_second_ejection_lasts_twice_as_long(clock: FakeClock) -> None:
    d = detector(clock, groups=FOUR)
    fail(d, "a", 3)
    clock.advance(30)
    assert not d.is_ejected("a")
    assert fail(d, "a", 3)[-1] is True
    assert d.next_release == clock.now + 60
    clock.advance(59)
    assert d.is_ejected("a")
    clock.advance(1)
    assert not d.is_ejected("a")
    fail(d, "a", 3)
    assert d.next_release == clock.now + 90


def test_ejection_time_is_capped(clock: FakeClock) -> None:
    d = detector(clock, base=100.0, groups=FOUR)
    durations = []
    for _ in range(5):
        fail(d, "a", 3)
        assert d.next_release is not None
        durations.append(d.next_release - clock.now)
        clock.now = d.next_release
    assert durations == [100, 200, 300, 300, 300]
    assert MAX_EJECTION_TIME == 300


def test_cap_is_base_when_base_is_longer(clock: FakeClock) -> None:
    d = detector(clock, base=400.0, groups=FOUR)
    for _ in range(3):
        fail(d, "a", 3)
        assert d.next_release == clock.now + 400
        clock.advance(400)


def test_multiplier_decays_while_healthy(clock: FakeClock) -> None:
    d = detector(clock, groups=FOUR)
    fail(d, "a", 3)  # 30 s
    clock.advance(30)
    fail(d, "a", 3)  # 60 s (multiplier 2)
    clock.advance(60)
    clock.advance(30)  # one full base period healthy: multiplier 2 -> 1
    fail(d, "a", 3)
    assert d.next_release == clock.now + 60  # (1 + 1) x base
    clock.advance(60)
    clock.advance(3600)  # long healthy: back to a first ejection
    fail(d, "a", 3)
    assert d.next_release == clock.now + 30


def test_max_ejection_percent_per_group(clock: FakeClock) -> None:
    d = detector(clock, pct=50, groups=FOUR)
    assert fail(d, "a", 3)[-1] is True
    assert fail(d, "b", 3)[-1] is True
    assert fail(d, "c", 3) == [False, False, False]  # would make 75 % of the group ejected
    assert d.ejected() == {"a", "b"}
    # c keeps its streak: once a is released, c's next failure ejects it.
    clock.advance(30)
    assert d.ejected() == frozenset()
    assert d.record_failure("c") is True
    assert d.ejected() == {"c"}


def test_single_instance_of_a_group_may_always_be_ejected(clock: FakeClock) -> None:
    # The canary subset has one instance: ejecting it is 100 % of its group, still allowed.
    d = detector(clock, pct=10, groups=[{"s1", "s2", "s3"}, {"canary"}])
    assert fail(d, "canary", 3)[-1] is True
    assert d.ejected() == {"canary"}
    # Also a bigger group with a tiny percentage may lose one, but not two.
    assert fail(d, "s1", 3)[-1] is True
    assert fail(d, "s2", 3) == [False, False, False]
    assert d.ejected() == {"canary", "s1"}


def test_every_group_of_an_instance_must_allow_it(clock: FakeClock) -> None:
    d = detector(clock, pct=50, groups=[{"a", "b"}, {"a", "c", "d", "e"}])
    assert fail(d, "b", 3)[-1] is True
    # The big group would allow a (1 of 4), but {a, b} would be fully ejected.
    assert fail(d, "a", 3) == [False, False, False]
    assert not d.is_ejected("a")


def test_ids_in_no_group_are_judged_against_all_known(clock: FakeClock) -> None:
    d = detector(clock, pct=50)  # set_groups never called
    fail(d, "a", 1)
    fail(d, "b", 1)
    assert fail(d, "a", 2)[-1] is True  # 1 of 2 known
    assert fail(d, "b", 3) == [False, False, False]  # 2 of 2 would exceed 50 %
    d.set_groups([{"x", "y", "z"}])
    # "lone" belongs to no group; the known set is {x, y, z, lone}.
    assert fail(d, "lone", 3)[-1] is True


def test_set_groups_forgets_departed_instances(clock: FakeClock) -> None:
    d = detector(clock, groups=FOUR)
    fail(d, "a", 3)
    fail(d, "b", 2)
    d.set_groups([{"b", "c", "d", "e"}])
    assert d.ejected() == frozenset()
    assert d.next_release is None
    assert d.record_failure("b") is True  # b's state (its streak) survived the regroup
    d.set_groups([{"a", "b", "c", "d"}])
    assert d.ejected() == {"b"}
    assert fail(d, "a", 2) == [False, False]  # a came back with a fresh streak


def test_next_release_is_the_earliest_end(clock: FakeClock) -> None:
    d = detector(clock, groups=FOUR)
    assert d.next_release is None
    start = clock.now
    fail(d, "a", 3)
    clock.advance(10)
    fail(d, "b", 3)
    assert d.next_release == start + 30
    clock.advance(20)
    assert clock() >= d.next_release  # the balancer's hot-path check says "rebuild"
    assert d.ejected() == {"b"}
    assert d.next_release == start + 40
    clock.advance(10)
    assert d.ejected() == frozenset()
    assert d.next_release is None


def test_zero_consecutive_errors_disables(clock: FakeClock) -> None:
    d = detector(clock, errors=0, groups=FOUR)
    assert fail(d, "a", 100) == [False] * 100
    assert d.ejected() == frozenset()


def test_policy_can_be_replaced(clock: FakeClock) -> None:
    d = detector(clock, errors=5, groups=FOUR)
    fail(d, "a", 1)
    d.policy = OutlierPolicy(consecutive_errors=2, base_ejection_time=10, max_ejection_percent=50)
    assert d.record_failure("a") is True
    assert d.next_release == clock.now + 10


def test_concurrent_reports_never_raise_or_overshoot(clock: FakeClock) -> None:
    ids = [f"i{n}" for n in range(8)]
    d = detector(clock, errors=2, pct=25, groups=[set(ids)])
    errors: list[BaseException] = []
    overshoot: list[frozenset[str]] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                instance_id = rng.choice(ids)
                if rng.random() < 0.7:
                    d.record_failure(instance_id)
                else:
                    d.record_success(instance_id)
                ejected = d.ejected()
                if len(ejected) > 2:  # 25 % of 8
                    overshoot.append(ejected)
                if rng.random() < 0.01:
                    clock.advance(5)
                if rng.random() < 0.002:
                    d.set_groups([set(ids)])
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to provoke races
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert overshoot == []
