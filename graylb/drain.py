"""Leaving without losing a request: the serving side of a lossless release.

An instance that stops must vanish from every caller's view *before* it stops taking calls, and
whatever still reaches it afterwards must be sent elsewhere by the caller, not lost. A
:class:`Drain` walks the instance through that, in order:

1. **draining** -- deregister (the registry tells callers), and keep serving normally for a
   ``grace`` period while callers' views catch up (default: the registry's change-propagation
   time, :meth:`~graylb.registration.Registration.propagation_time`);
2. **refusing** -- new requests are refused with ``503`` and the :data:`DRAIN_HEADER` marker
   (:mod:`graylb.drain_middleware` does that): the marker tells a graylb caller the request was
   *not processed*, so it is retried on another instance whatever its method, POST included;
   requests already in flight run to completion;
3. **drained** -- nothing in flight (or ``timeout`` passed): the server may stop.

Callers that are not graylb see a plain 503 with ``Retry-After: 0`` and ``Connection: close``.
``drain()`` is idempotent and may be called from several places at once (an orchestrator's
pre-stop hook and SIGTERM): the second caller waits for the first drain and gets its result.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .registration import Registration

__all__ = ["Drain", "DrainResult", "DRAIN_HEADER", "SERVING", "DRAINING", "REFUSING", "DRAINED"]

log = logging.getLogger("graylb.drain")

#: Response header (HTTP) / trailing metadata key (gRPC) a draining instance sets on a request it
#: refused without processing it: safe for the caller to send again, anywhere else.
DRAIN_HEADER = "graylb-draining"

SERVING = "serving"
DRAINING = "draining"  # deregistered, still serving while callers notice
REFUSING = "refusing"  # refusing new requests (503 + marker), finishing those in flight
DRAINED = "drained"


@dataclasses.dataclass(frozen=True)
class DrainResult:
    """How a drain went: ``in_flight_left`` is 0 unless ``timeout`` cut the wait short."""

    grace: float
    seconds: float
    in_flight_left: int
    refused: int
    deregistered: bool

    @property
    def clean(self) -> bool:
        return self.in_flight_left == 0


class Drain:
    """The drain state of one serving process (see the module docstring).

    ``registration`` is deregistered first (None: nothing to deregister, e.g. a test server).
    ``grace`` (seconds) defaults to ``registration.propagation_time()``, or 0 without one;
    ``timeout`` bounds the wait for in-flight requests. The per-request side is
    :meth:`admit` / :meth:`release`, which the middleware calls; :attr:`state` says where the
    drain is.
    """

    def __init__(
        self,
        registration: Registration | None = None,
        *,
        grace: float | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registration = registration
        self.grace = grace
        self.timeout = timeout
        self._clock = clock
        self._cond = threading.Condition()
        self._in_flight = 0
        self._refused = 0
        self._state = SERVING
        self._started = False
        self._result: DrainResult | None = None
        self._cut_grace = threading.Event()

    # -- per request (the middleware) -----------------------------------------------------------

    def admit(self) -> bool:
        """Whether to process a request now arriving; if True, :meth:`release` when it is done.
        False once refusing: answer 503 with :data:`DRAIN_HEADER` without touching the app."""
        with self._cond:
            if self._state is REFUSING or self._state is DRAINED:
                self._refused += 1
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._in_flight <= 0:
                self._cond.notify_all()

    # -- the drain ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def drain(self, grace: float | None = None, timeout: float | None = None) -> DrainResult:
        """Deregister, serve through the grace period, refuse new requests, wait for those in
        flight; returns when drained (or ``timeout`` after refusing began). Blocks: run it in a
        thread from async code (the middleware's pre-stop route does)."""
        with self._cond:
            if self._started:  # another caller is draining: wait for its result
                while self._result is None:
                    self._cond.wait()
                return self._result
            self._started = True
            self._state = DRAINING
        began = self._clock()
        grace = self._grace(grace)
        deregistered = self._deregister()
        log.info("graylb: draining: serving for %.3gs more while callers notice the deregistration", grace)
        self._cut_grace.wait(grace)
        timeout = self.timeout if timeout is None else timeout
        with self._cond:
            self._state = REFUSING
            deadline = self._clock() + timeout
            while self._in_flight > 0:
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._cond.wait(left)
            left_over = max(0, self._in_flight)
            self._state = DRAINED
            result = self._result = DrainResult(grace, self._clock() - began, left_over, self._refused, deregistered)
            self._cond.notify_all()
        if left_over:
            log.warning("graylb: drained with %d request(s) still in flight after %.3gs", left_over, timeout)
        else:
            log.info(
                "graylb: drained in %.3gs (%d request(s) refused for callers to resend)", result.seconds, result.refused
            )
        return result

    def end_grace(self) -> None:
        """Stop serving through the grace period now (tests; an operator who knows callers
        have moved on)."""
        self._cut_grace.set()

    def _grace(self, grace: float | None) -> float:
        if grace is None:
            grace = self.grace
        if grace is None:
            grace = self.registration.propagation_time() if self.registration is not None else 0.0
        return max(0.0, float(grace))

    def _deregister(self) -> bool:
        registration = self.registration
        if registration is None:
            return False
        try:
            registration.deregister()
        except Exception as exc:  # noqa: BLE001 - keep draining: callers still learn from the 503s
            log.warning("graylb: draining: could not deregister (%s); refusing after the grace period anyway", exc)
            return False
        return True

    def __repr__(self) -> str:
        return f"Drain(state={self._state!r}, in_flight={self._in_flight})"
