"""The canary guard's notifier against a real loopback webhook: callbacks and the webhook run off
the caller's thread, in order; retries back off; secrets (the bearer token, the URL's path and
query) never reach a log record; submitting never blocks; close drains, then stops."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from graylb.guard.notify import THREAD_NAME, TOKEN_ENV, Notifier, default_notifier, url_origin
from graylb.guard.trip import GuardTrip
from graylb.rules.compiled import GuardWebhook
from graylb.testing.http_server import WSGIServer, serve_wsgi
from tests.conftest import wait_until

WAIT = 10.0  # an upper bound for conditions other threads make true, never a measured delay
TOKEN = "tok-3f9a1c7e-never-logged"
SECRET_PATH = "/services/T0001/B0002/XyZsecretPathPart"
SECRET_QUERY = "sig=querySecret42"


def make_trip(service: str = "orders", **changes: Any) -> GuardTrip:
    fields: dict[str, Any] = {
        "service": service,
        "canary": "canary",
        "baseline": "stable",
        "reason": "errors",
        "summary": "canary 12.0% errors vs baseline 0.5% (120 vs 400 requests)",
        "evidence": {"canary_error_rate": 0.12, "baseline_error_rate": 0.005, "canary_requests": 120, "note": None},
        "revision": "rev-7",
        "versions": ("2.0.0", "2.0.1"),
        "at": 1714566896.789,
        "process": "host-a:4242",
        "action": "shed",
    }
    fields.update(changes)
    return GuardTrip(**fields)


class Hook:
    """A webhook receiver: records every request and answers from ``statuses`` (then 200);
    with ``gate`` set up, each request waits on it (``entered`` says one has arrived)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[dict[str, Any]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.server: WSGIServer = serve_wsgi(self.app)

    def url(self, path: str = SECRET_PATH, query: str = SECRET_QUERY) -> str:
        return f"{self.server.url}{path}" + (f"?{query}" if query else "")

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.requests.append(
            {
                "method": environ["REQUEST_METHOD"],
                "path": environ["PATH_INFO"],
                "query": environ["QUERY_STRING"],
                "content_type": environ.get("CONTENT_TYPE"),
                "authorization": environ.get("HTTP_AUTHORIZATION"),
                "body": environ["wsgi.input"].read(length),
            }
        )
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(WAIT * 3)
        status = self.statuses.pop(0) if self.statuses else 200
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [b"ok"]


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    try:
        yield receiver
    finally:
        if receiver.gate is not None:
            receiver.gate.set()
        receiver.server.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def notifier(sleeps: list[float]) -> Iterator[Notifier]:
    n = Notifier(sleep=sleeps.append)
    try:
        yield n
    finally:
        n.close(timeout=WAIT)


@pytest.fixture(autouse=True)
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def rendered(records: list[logging.LogRecord]) -> list[str]:
    """Each record as a handler would write it: message, arguments and any traceback."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [formatter.format(record) for record in records]


def assert_no_secrets(records: list[logging.LogRecord]) -> None:
    for text in rendered(records):
        for secret in (TOKEN, SECRET_PATH, "XyZsecretPathPart", SECRET_QUERY, "querySecret42"):
            assert secret not in text, text


def graylb_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "graylb" and r.levelno == logging.WARNING]


# -- the trip ------------------------------------------------------------------------------------


def test_trip_to_json_is_plain_json_with_every_field() -> None:
    trip = make_trip(evidence={"p99_ms": 812.5, "bad": float("nan"), "n": 3})
    doc = trip.to_json()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc == {
        "service": "orders",
        "canary": "canary",
        "baseline": "stable",
        "reason": "errors",
        "summary": trip.summary,
        "evidence": {"p99_ms": 812.5, "bad": None, "n": 3},
        "revision": "rev-7",
        "versions": ["2.0.0", "2.0.1"],
        "at": 1714566896.789,
        "at_iso": "2024-05-01T12:34:56.789Z",
        "process": "host-a:4242",
        "action": "shed",
    }
    assert doc["evidence"] is not trip.evidence


def test_url_origin_keeps_only_scheme_host_port() -> None:
    assert url_origin("https://hooks.example.com/services/T0/B0/secret?x=1#f") == "https://hooks.example.com"
    assert url_origin("http://user:pw@127.0.0.1:8080/a/b") == "http://127.0.0.1:8080"
    assert url_origin("http://[::1]:9/x") == "http://[::1]:9"
    assert url_origin("not a url") == "<invalid url>"


# -- callbacks -----------------------------------------------------------------------------------


def test_callbacks_run_in_order_off_the_callers_thread(notifier: Notifier, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, str, str]] = []

    def first(trip: GuardTrip) -> None:
        seen.append(("first", trip.service, threading.current_thread().name))

    def broken(trip: GuardTrip) -> None:
        seen.append(("broken", trip.service, threading.current_thread().name))
        raise RuntimeError("callback exploded")

    def last(trip: GuardTrip) -> None:
        seen.append(("last", trip.service, threading.current_thread().name))

    notifier.submit(make_trip("orders"), [first, broken, last], None)
    notifier.submit(make_trip("payments"), [first, last], None)
    assert notifier.flush(WAIT)

    assert threading.current_thread().name != THREAD_NAME
    assert seen == [
        ("first", "orders", THREAD_NAME),
        ("broken", "orders", THREAD_NAME),
        ("last", "orders", THREAD_NAME),
        ("first", "payments", THREAD_NAME),
        ("last", "payments", THREAD_NAME),
    ]
    failures = [r for r in caplog.records if r.name == "graylb" and r.exc_info]
    assert len(failures) == 1
    record = failures[0]
    assert record.levelno == logging.ERROR
    assert "broken" in record.getMessage() and "'orders'" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert "Traceback" in caplog.text and "callback exploded" in caplog.text


# -- the webhook ---------------------------------------------------------------------------------


def test_webhook_gets_the_json_and_the_bearer_token_and_logs_no_secret(
    notifier: Notifier, hook: Hook, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx's and httpcore's too
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    trip = make_trip()
    notifier.submit(trip, [], GuardWebhook(hook.url()))
    assert notifier.flush(WAIT)

    [request] = hook.requests
    assert request["method"] == "POST"
    assert request["path"] == SECRET_PATH and request["query"] == SECRET_QUERY
    assert request["content_type"] == "application/json"
    assert request["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request["body"]) == trip.to_json()
    assert set(json.loads(request["body"])) == {
        "service",
        "canary",
        "baseline",
        "reason",
        "summary",
        "evidence",
        "revision",
        "versions",
        "at",
        "at_iso",
        "process",
        "action",
    }
    assert caplog.records  # the debug lines are there, and hold no secret
    assert_no_secrets(caplog.records)
    assert not graylb_warnings(caplog)


def test_no_authorization_header_without_the_token(notifier: Notifier, hook: Hook) -> None:
    notifier.submit(make_trip(), [], GuardWebhook(hook.url()))
    assert notifier.flush(WAIT)
    [request] = hook.requests
    assert request["authorization"] is None


def test_503_twice_then_200_is_delivered_after_two_retries(
    notifier: Notifier, hook: Hook, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    hook.statuses = [503, 503, 200]
    notifier.submit(make_trip(), [], GuardWebhook(hook.url(), retries=3))
    assert notifier.flush(WAIT)
    assert len(hook.requests) == 3
    assert sleeps == [0.5, 1.0]
    assert not graylb_warnings(caplog)


def test_429_is_retried_and_the_backoff_doubles_up_to_its_cap(
    notifier: Notifier,
    hook: Hook,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    hook.statuses = [429] + [500] * 6
    notifier.submit(make_trip(), [], GuardWebhook(hook.url(), retries=6))
    assert notifier.flush(WAIT)
    assert len(hook.requests) == 7
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    [warning] = graylb_warnings(caplog)
    assert "7 attempt(s)" in warning.getMessage() and "HTTP 500" in warning.getMessage()
    assert_no_secrets(caplog.records)


def test_400_is_not_retried(
    notifier: Notifier,
    hook: Hook,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    hook.statuses = [400]
    notifier.submit(make_trip(), [], GuardWebhook(hook.url(), retries=3))
    assert notifier.flush(WAIT)
    assert len(hook.requests) == 1
    assert sleeps == []
    [warning] = graylb_warnings(caplog)
    message = warning.getMessage()
    assert "HTTP 400" in message and "1 attempt(s)" in message and "'orders'" in message
    assert_no_secrets(caplog.records)


def test_connection_refused_retries_then_warns_naming_only_the_origin(
    notifier: Notifier, sleeps: list[float], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    port = free_port()
    url = f"http://127.0.0.1:{port}{SECRET_PATH}?{SECRET_QUERY}"
    notifier.submit(make_trip(), [], GuardWebhook(url, timeout=5.0, retries=2))
    assert notifier.flush(WAIT)

    assert sleeps == [0.5, 1.0]  # retries + 1 = 3 attempts, a wait between each two
    [warning] = graylb_warnings(caplog)
    message = warning.getMessage()
    assert f"http://127.0.0.1:{port}" in message
    assert "3 attempt(s)" in message and "'orders'" in message and "ConnectError" in message
    assert_no_secrets(caplog.records)


# -- never blocking ------------------------------------------------------------------------------


def test_submit_does_not_block_while_the_webhook_hangs(notifier: Notifier, hook: Hook) -> None:
    hook.gate = threading.Event()
    webhook = GuardWebhook(hook.url(), timeout=WAIT * 3, retries=0)
    notifier.submit(make_trip("s1"), [], webhook)
    assert hook.entered.wait(WAIT)  # the first delivery now hangs in the handler
    notifier.submit(make_trip("s2"), [], webhook)
    notifier.submit(make_trip("s3"), [], webhook)
    # Both submits returned, and the handler is still held: they did not wait for the webhook.
    assert not hook.gate.is_set()
    assert len(hook.requests) == 1
    assert not notifier.flush(0)

    hook.gate.set()
    assert notifier.flush(WAIT)
    assert [json.loads(r["body"])["service"] for r in hook.requests] == ["s1", "s2", "s3"]


def test_a_full_queue_drops_the_trip_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(maxsize=1)
    gate, busy = threading.Event(), threading.Event()
    seen: list[str] = []

    def slow(trip: GuardTrip) -> None:
        busy.set()
        gate.wait(WAIT * 3)
        seen.append(trip.service)

    try:
        notifier.submit(make_trip("first"), [slow], None)
        assert busy.wait(WAIT)  # the thread holds "first"; the queue is empty
        notifier.submit(make_trip("second"), [slow], None)  # fills the queue (maxsize 1)
        notifier.submit(make_trip("payments"), [slow], None)  # finds it full
        assert not gate.is_set()
        [warning] = graylb_warnings(caplog)
        assert "'payments'" in warning.getMessage() and "full" in warning.getMessage()

        gate.set()
        assert notifier.flush(WAIT)
        assert seen == ["first", "second"]
    finally:
        gate.set()
        notifier.close(timeout=WAIT)


# -- closing -------------------------------------------------------------------------------------


def test_close_drains_pending_trips_then_stops(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="graylb")
    notifier = Notifier()
    gate, busy = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []

    def held(trip: GuardTrip) -> None:
        threads.append(threading.current_thread())
        busy.set()
        gate.wait(WAIT * 3)

    webhook = GuardWebhook(hook.url(), retries=0)
    notifier.submit(make_trip("s1"), [held], webhook)
    notifier.submit(make_trip("s2"), [], webhook)
    notifier.submit(make_trip("s3"), [], webhook)
    assert busy.wait(WAIT)

    closer = threading.Thread(target=notifier.close, kwargs={"timeout": WAIT * 3}, name="closer")
    try:
        closer.start()
        wait_until(lambda: notifier.closed, message="close() began")
        notifier.submit(make_trip("late"), [held], webhook)  # closing: dropped
        assert any("dropped" in r.getMessage() and "'late'" in r.getMessage() for r in caplog.records)
    finally:
        gate.set()
        closer.join(WAIT * 3)
    assert not closer.is_alive()

    # close() returned only after the pending trips went out, and the thread has stopped.
    assert [json.loads(r["body"])["service"] for r in hook.requests] == ["s1", "s2", "s3"]
    assert len(threads) == 1 and not threads[0].is_alive()

    notifier.submit(make_trip("after"), [held], webhook)  # closed: dropped
    notifier.close()  # idempotent
    assert notifier.flush(WAIT)
    assert len(threads) == 1 and len(hook.requests) == 3
    assert any("'after'" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_close_of_a_notifier_never_used() -> None:
    notifier = Notifier()
    notifier.close()
    notifier.close()
    notifier.submit(make_trip(), [], None)
    assert notifier.closed and notifier.flush(0)


def test_default_notifier_is_one_per_process() -> None:
    got: list[Notifier] = []
    workers = [threading.Thread(target=lambda: got.append(default_notifier())) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert len(got) == 8 and all(n is got[0] for n in got)
    assert default_notifier() is got[0]
