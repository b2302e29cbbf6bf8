"""The one watch loop every registry watch runs: discovery watches (one per service) and rule
sources (one per rules document) alike.

A watcher supplies ``poll(cursor) -> cursor``: one query — blocking (Consul index), long-polled
(Nacos MD5) or plain — that applies whatever it found and returns the cursor for the next one
(None means "start over with a non-blocking query"). The loop owns everything about *when* to
query and what a failure means, once:

- a token bucket limits the query rate (Consul asks clients to; a flapping key or service must
  not turn every client into a busy loop), a burst keeps the first few changes instant;
- any exception is a failed poll: the watcher's ``failed(message)`` keeps the last good state in
  force and records why (stale-if-error), the first failure of a run is logged as a warning,
  the cursor is reset, and the next try waits a jittered exponential backoff;
- the first success after failures is logged once, and ``recovered()`` is told;
- cancellation ends the loop at once (``close()`` of a registry or source cancels its tasks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .discovery.backoff import ExponentialJitter, TokenBucket

__all__ = ["watch_forever"]


async def watch_forever(
    poll: Callable[[Any], Awaitable[Any]],
    *,
    what: str,
    log: logging.Logger,
    stopped: Callable[[], bool],
    failed: Callable[[str], None],
    kept: Callable[[], str],
    recovered: Callable[[], None] = lambda: None,
    backoff: ExponentialJitter | None = None,
    bucket: TokenBucket | None = None,
) -> None:
    """Poll until ``stopped()``. ``what`` names the watched thing in log lines (``consul:
    service 'orders'``); ``kept()`` says what stays in force during a failure (``serving the
    last good snapshot (12s old)``) for the first warning."""
    backoff = backoff or ExponentialJitter()
    bucket = bucket or TokenBucket()
    cursor: Any = None
    failures = 0
    while not stopped():
        delay = bucket.wait_time()
        if delay:
            await asyncio.sleep(delay)
        try:
            cursor = await poll(cursor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: keep what is in force, try again later
            failures += 1
            message = str(exc) or type(exc).__name__
            if failures == 1:
                log.warning("graylb: cannot read %s: %s; %s", what, message, kept())
            failed(message)
            cursor = None  # start over with a non-blocking query once it is back
            await asyncio.sleep(backoff.delay(failures))
            continue
        if failures:
            log.info("graylb: %s readable again after %d failed attempt(s)", what, failures)
            failures = 0
        recovered()
