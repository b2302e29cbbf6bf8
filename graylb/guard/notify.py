"""Telling people about a trip, off the calling thread.

A :class:`Notifier` owns one daemon thread (``graylb-guard-notify``, started on the first
:meth:`~Notifier.submit`) that delivers trips in the order they were submitted: first the
application's callbacks, then the rules' webhook (``POST`` of :meth:`GuardTrip.to_json`). Submitting
never blocks the call that caused the trip: the queue is bounded, and a trip that finds it full is
dropped with a warning.

Webhook URLs often carry their secret in the path (Slack's, for one), and the bearer token read
from ``GRAYLB_GUARD_WEBHOOK_TOKEN`` is a secret too: log records name only the webhook's
``scheme://host[:port]`` (see :func:`url_origin`), never the token; httpx's own per-request log
records (they carry the full URL) are filtered out on the notifier's thread.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx

from ..rules.compiled import GuardWebhook
from .trip import GuardTrip

__all__ = ["Notifier", "default_notifier", "url_origin", "TOKEN_ENV", "THREAD_NAME"]

log = logging.getLogger("graylb")

#: The environment variable holding the webhook's bearer token (read at each send).
TOKEN_ENV = "GRAYLB_GUARD_WEBHOOK_TOKEN"
#: The name of every notifier's delivery thread.
THREAD_NAME = "graylb-guard-notify"

_FIRST_BACKOFF = 0.5  # seconds before the first retry; doubled for each next one
_MAX_BACKOFF = 5.0

TripCallback = Callable[[GuardTrip], None]


class _Job(NamedTuple):
    trip: GuardTrip
    callbacks: tuple[TripCallback, ...]
    webhook: GuardWebhook | None


class _NotifyThread(threading.Thread):
    """The delivery thread's class: :class:`_QuietOnNotifyThread` recognises it by type."""


class _QuietOnNotifyThread(logging.Filter):
    """Drops httpx's records logged on a notifier's thread: httpx logs every request's full URL
    (at INFO), and a webhook's path may be its secret. Other threads' records pass untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(threading.current_thread(), _NotifyThread)


_HTTPX_FILTER = _QuietOnNotifyThread()


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what a log line may say about a webhook. The path,
    query, fragment and any ``user:password@`` are left out (they may hold secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or not host:
        return "<invalid url>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _backoff(retry: int) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): 0.5, 1, 2, 4, 5, 5, ..."""
    return min(_FIRST_BACKOFF * 2.0**retry, _MAX_BACKOFF)


def _describe(exc: Exception, url: str, token: str | None) -> str:
    """The exception's type and message, with the URL, its path and the token scrubbed out."""
    message = str(exc)
    secrets = [url, url[len(url_origin(url)) :] if url.startswith(url_origin(url)) else ""]
    if token:
        secrets.append(token)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) > 1:  # a bare "/" is no secret, and scrubbing it would mangle the message
            message = message.replace(secret, "<redacted>")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _callback_name(callback: TripCallback) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)


class Notifier:
    """Delivers trips to callbacks and a webhook on one daemon thread, in submission order.

    ``sleep``: waits between webhook retries (tests inject one that records the delays).
    ``maxsize``: how many trips may wait; a trip submitted beyond that is dropped with a warning.
    """

    def __init__(self, *, sleep: Callable[[float], object] = time.sleep, maxsize: int = 100) -> None:
        self._sleep = sleep
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=maxsize)  # None: stop
        self._cond = threading.Condition(threading.Lock())
        self._submitted = 0  # trips queued (dropped ones not counted)
        self._handled = 0  # trips the thread is done with, delivered or not
        self._closed = False
        self._thread: _NotifyThread | None = None
        self._client: httpx.Client | None = None  # the thread's; created on the first webhook

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` has been called: submits are dropped from then on."""
        return self._closed

    def submit(
        self,
        trip: GuardTrip,
        callbacks: Sequence[TripCallback],
        webhook: GuardWebhook | None,
    ) -> None:
        """Queue ``trip`` for ``callbacks`` (called in order) and then ``webhook``. Never blocks:
        a full queue drops the trip (with a warning), a closed notifier drops it (debug line)."""
        job = _Job(trip, tuple(callbacks), webhook)
        with self._cond:
            closed = self._closed
            if not closed:
                if self._thread is None:
                    self._start()
                try:
                    self._queue.put_nowait(job)
                except queue.Full:
                    full = True
                else:
                    full = False
                    self._submitted += 1
        if closed:
            log.debug("graylb guard: notifier closed; dropped the trip of service %r", trip.service)
        elif full:
            log.warning(
                "graylb guard: notification queue full (%d waiting); dropped the trip of service %r",
                self._queue.maxsize,
                trip.service,
            )

    def flush(self, timeout: float) -> bool:
        """Wait until every trip submitted so far has been handled; ``False`` on timeout."""
        with self._cond:
            target = self._submitted
            if self._handled >= target:
                return True
            if threading.current_thread() is self._thread:
                return False  # a callback flushing would wait on itself
            return self._cond.wait_for(lambda: self._handled >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then stop the thread and close the HTTP client (the thread does,
        on its way out). Later submits are dropped. Idempotent; waits at most ``timeout``."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return  # never started: no thread, no client
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=max(0.0, timeout))
        except queue.Full:
            log.warning("graylb guard: notifier still busy after %.1fs; left to finish in the background", timeout)
            return
        if threading.current_thread() is thread:
            return  # closed from a callback: the thread stops once it is back in its loop
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("graylb guard: notifier still busy after %.1fs; left to finish in the background", timeout)

    # -- the delivery thread ------------------------------------------------------------------

    def _start(self) -> None:  # under self._cond
        logging.getLogger("httpx").addFilter(_HTTPX_FILTER)  # idempotent: one filter object
        self._thread = _NotifyThread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                try:
                    self._deliver(job)
                except Exception:  # noqa: BLE001 -- the thread must outlive any one trip
                    log.exception("graylb guard: notifying the trip of service %r failed", job.trip.service)
                finally:
                    with self._cond:
                        self._handled += 1
                        self._cond.notify_all()
        finally:
            client, self._client = self._client, None
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 -- closing is best effort
                    log.debug("graylb guard: closing the webhook client failed", exc_info=True)

    def _deliver(self, job: _Job) -> None:
        trip = job.trip
        for callback in job.callbacks:
            try:
                callback(trip)
            except Exception:  # noqa: BLE001 -- one failing callback must not silence the others
                log.exception(
                    "graylb guard: trip callback %s failed for service %r", _callback_name(callback), trip.service
                )
        if job.webhook is not None:
            self._post(trip, job.webhook)

    def _post(self, trip: GuardTrip, webhook: GuardWebhook) -> None:
        url = webhook.url
        origin = url_origin(url)
        try:
            body = json.dumps(trip.to_json(), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            log.warning("graylb guard: webhook %s: the trip of service %r is not JSON (%s)", origin, trip.service, exc)
            return
        if self._client is None:
            self._client = httpx.Client()  # TLS verification on (httpx's default); no redirects
        attempts = max(0, webhook.retries) + 1
        made = 0
        problem = ""
        for attempt in range(attempts):
            if attempt:
                self._sleep(_backoff(attempt - 1))
            headers = {"Content-Type": "application/json"}
            token = os.environ.get(TOKEN_ENV) or None
            if token:
                headers["Authorization"] = f"Bearer {token}"
            made += 1
            try:
                response = self._client.post(url, content=body, headers=headers, timeout=webhook.timeout)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                problem = _describe(exc, url, token)
                break  # no retry makes a bad URL good
            except httpx.TransportError as exc:  # connect / read / write errors and timeouts
                problem = _describe(exc, url, token)
                continue
            status = response.status_code
            if 200 <= status < 300:
                log.debug("graylb guard: webhook %s: trip of service %r delivered", origin, trip.service)
                return
            problem = f"HTTP {status}"
            if status == 429 or status >= 500:
                continue
            break  # another 4xx (or a 1xx/3xx): retrying would get the same answer
        log.warning(
            "graylb guard: webhook %s: gave up on the trip of service %r after %d attempt(s): %s",
            origin,
            trip.service,
            made,
            problem,
        )


_default: Notifier | None = None
_default_lock = threading.Lock()


def default_notifier() -> Notifier:
    """The process-wide :class:`Notifier` (created on first use; closed at interpreter exit)."""
    global _default
    notifier = _default
    if notifier is None:
        with _default_lock:
            notifier = _default
            if notifier is None:
                notifier = _default = Notifier()
                atexit.register(notifier.close)
    return notifier
