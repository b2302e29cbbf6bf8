"""Outlier detection: eject an instance after consecutive errors, Envoy style.

One :class:`OutlierDetector` lives as long as a service's balancer state and survives picker
rebuilds: its state is keyed by instance id, not by snapshot. Transports report each finished
call (``record_success`` / ``record_failure``); the balancer builds pickers without the ids in
:meth:`OutlierDetector.ejected` and rebuilds once ``clock() >= next_release``.

Threading: the record methods run on many threads after calls complete. Counting is plain
attribute arithmetic under the GIL (a race may lose one count, nothing worse). Only the rare
state changes (eject, release, regroup) take a private lock, so that two instances failing at
the same moment cannot both pass the ``max_ejection_percent`` check and empty a group. The pick
path never touches this object beyond reading ``next_release``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Iterable

from ..rules.compiled import OutlierPolicy

__all__ = ["OutlierDetector", "MAX_EJECTION_TIME", "LEAVING_EJECTION_TIME"]

#: How long an instance that said it is leaving stays out of picks: longer than the registries'
#: change-propagation time (the registry then drops it), short enough that an instance restarted
#: in place at the same address is back soon even if the registry never showed it gone.
LEAVING_EJECTION_TIME = 10.0

#: Ejection times grow with repeated ejections up to ``max(MAX_EJECTION_TIME, base)`` seconds.
MAX_EJECTION_TIME = 300.0


class _Host:
    """Mutable per-instance state; only ever reached through ``OutlierDetector._hosts``."""

    __slots__ = ("failures", "ejected_until", "ejections", "released_at")

    def __init__(self) -> None:
        self.failures = 0  # consecutive failures since the last success / ejection
        self.ejected_until: float | None = None  # clock time the current ejection ends
        self.ejections = 0  # ejection multiplier (decays while healthy)
        self.released_at: float | None = None  # when the last ejection ended (for the decay)


class OutlierDetector:
    """Consecutive-errors ejection with growing ejection times and a per-group ejection cap.

    * ``policy.consecutive_errors`` failures in a row (connect errors, 5xx) eject an instance; a
      success resets the streak; failures while ejected are ignored (they neither count nor
      extend the ejection). A value below 1 disables ejection.
    * The k-th ejection lasts ``base_ejection_time * k``, capped at ``max(300 s, base)``. Every
      full ``base_ejection_time`` spent un-ejected lowers k by one (computed lazily at the next
      ejection), so an instance that recovered for good starts again from a short ejection.
    * ``max_ejection_percent`` applies per group (see :meth:`set_groups`): an ejection must not
      leave more than that share of ANY group the instance belongs to ejected, except that one
      instance of a group may always be ejected (as in Envoy), so a lone broken canary can be
      taken out and its traffic re-normalised elsewhere.
    * Ejections end lazily: :meth:`ejected`, :meth:`is_ejected` and :meth:`record_failure`
      release expired ones when the clock says so. ``next_release`` is the clock time when the
      earliest current ejection ends (None when nothing is ejected).

    ``policy`` may be replaced by assignment when rules change; it applies from the next event.
    ``clock`` returns seconds (monotonic); tests pass a fake one.
    """

    def __init__(self, policy: OutlierPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()  # rare state changes only, never the per-call counting
        self._hosts: dict[str, _Host] = {}
        self._groups: tuple[frozenset[str], ...] = ()
        self._groups_of: dict[str, tuple[frozenset[str], ...]] = {}
        # Replaced wholesale (never mutated) so lock-free readers always see a consistent value.
        self._ejected: frozenset[str] = frozenset()
        self.next_release: float | None = None

    # -- configuration -------------------------------------------------------------------------

    def set_groups(self, groups: Iterable[Collection[str]]) -> None:
        """Declare the subsets (collections of instance ids) the instances belong to.

        Call it whenever the snapshot or the rules change, with every subset that can receive
        traffic (with no rules: one group holding the whole snapshot). State of ids in no group
        is forgotten. Ids recorded later without belonging to a group are judged against all
        known ids as one group.
        """
        frozen = tuple(frozenset(g) for g in groups)
        frozen = tuple(g for g in frozen if g)
        groups_of: dict[str, list[frozenset[str]]] = {}
        for g in frozen:
            for instance_id in g:
                groups_of.setdefault(instance_id, []).append(g)
        with self._lock:
            self._groups = frozen
            self._groups_of = {k: tuple(v) for k, v in groups_of.items()}
            self._hosts = {k: h for k, h in self._hosts.copy().items() if k in groups_of}
            self._publish()

    # -- per-call reports ----------------------------------------------------------------------

    def record_success(self, instance_id: str) -> None:
        """A call to ``instance_id`` succeeded: reset its consecutive error count."""
        host = self._hosts.get(instance_id)
        if host is not None and host.failures:
            host.failures = 0

    def record_failure(self, instance_id: str) -> bool:
        """A call to ``instance_id`` failed (connect error / 5xx). True iff this call ejected it."""
        threshold = self.policy.consecutive_errors
        if threshold < 1:
            return False
        host = self._hosts.get(instance_id)
        if host is None:
            # setdefault is atomic: two racing first failures share one _Host.
            host = self._hosts.setdefault(instance_id, _Host())
        until = host.ejected_until
        if until is not None:
            if self._clock() < until:
                return False  # already ejected: neither counted nor extended
            self._release_due()
        host.failures += 1
        if host.failures < threshold:
            return False
        return self._try_eject(instance_id, host)

    def record_leaving(self, instance_id: str) -> bool:
        """``instance_id`` said it is leaving (refused the connection, or answered with the drain
        marker): eject it now, for :data:`LEAVING_EJECTION_TIME`, whatever the streak, the
        ``max_ejection_percent`` cap or a disabled ``consecutive_errors`` -- traffic sent there
        is refused anyway. True iff this call ejected it."""
        host = self._hosts.get(instance_id)
        if host is None:
            host = self._hosts.setdefault(instance_id, _Host())
        with self._lock:
            if self._hosts.get(instance_id) is not host:
                return False
            now = self._clock()
            self._release_expired(now)
            if host.ejected_until is not None:
                return False
            host.ejected_until = now + LEAVING_EJECTION_TIME
            host.failures = 0
            self._publish()
            return True

    # -- reads ---------------------------------------------------------------------------------

    def ejected(self) -> frozenset[str]:
        """Ids ejected right now (expired ejections are released first)."""
        due = self.next_release
        if due is not None and self._clock() >= due:
            self._release_due()
        return self._ejected

    def is_ejected(self, instance_id: str) -> bool:
        return instance_id in self.ejected()

    def __repr__(self) -> str:
        return f"OutlierDetector(ejected={sorted(self._ejected)!r}, next_release={self.next_release!r})"

    # -- internals (all under the lock) --------------------------------------------------------

    def _try_eject(self, instance_id: str, host: _Host) -> bool:
        with self._lock:
            if self._hosts.get(instance_id) is not host:
                return False  # forgotten by set_groups meanwhile
            now = self._clock()
            self._release_expired(now)
            if host.ejected_until is not None or host.failures < max(1, self.policy.consecutive_errors):
                return False  # a racing thread ejected it (or a success reset it) first
            if not self._may_eject(instance_id):
                # Keep the streak: the next failure tries again, e.g. once another is released.
                return False
            base = max(0.0, float(self.policy.base_ejection_time))
            cap = max(MAX_EJECTION_TIME, base)
            multiplier = host.ejections
            if multiplier and host.released_at is not None and base > 0:
                # Lazy decay: one step per full base period spent un-ejected since the release.
                multiplier = max(0, multiplier - int((now - host.released_at) // base))
            # Growing the multiplier past the cap would only make the decay take longer.
            max_multiplier = max(1, math.ceil(cap / base)) if base > 0 else 1
            host.ejections = min(multiplier + 1, max_multiplier)
            host.ejected_until = now + min(base * host.ejections, cap)
            host.failures = 0
            self._publish()
            return True

    def _may_eject(self, instance_id: str) -> bool:
        groups = self._groups_of.get(instance_id)
        if not groups:
            # Not in any declared group: judge against every id this detector knows about.
            known = set(self._hosts.copy())
            for g in self._groups:
                known.update(g)
            groups = (frozenset(known),)
        pct = self.policy.max_ejection_percent
        ejected = self._ejected
        for g in groups:
            already = len(g & ejected)
            # Envoy: eject if the share after ejecting stays within the limit, or if none of the
            # group is ejected yet (at least one may always go).
            if already and (already + 1) * 100 > pct * len(g):
                return False
        return True

    def _release_due(self) -> None:
        with self._lock:
            self._release_expired(self._clock())

    def _release_expired(self, now: float) -> None:
        changed = False
        # dict.copy() is one C call, so a lock-free setdefault() in record_failure cannot change
        # the dict under our iteration (which would raise).
        for host in self._hosts.copy().values():
            until = host.ejected_until
            if until is not None and now >= until:
                host.ejected_until = None
                host.released_at = until  # decay counts from the scheduled end, not from when we noticed
                host.failures = 0
                changed = True
        if changed:
            self._publish()

    def _publish(self) -> None:
        """Recompute the lock-free views from ``_hosts`` (caller holds the lock)."""
        ejected = []
        earliest: float | None = None
        for instance_id, host in self._hosts.copy().items():
            until = host.ejected_until
            if until is not None:
                ejected.append(instance_id)
                if earliest is None or until < earliest:
                    earliest = until
        self._ejected = frozenset(ejected)
        self.next_release = earliest
