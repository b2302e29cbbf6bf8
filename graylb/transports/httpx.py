"""httpx transports that route requests for registry services to a version-picked instance.

``GrayTransport`` / ``AsyncGrayTransport`` wrap any inner httpx transport (the default is
``httpx.HTTPTransport()``, TLS verification on). A request whose host is a service name
(``http://orders/api``) is routed by the balancer; any other host goes straight to the inner
transport untouched. The sync and async twins share everything but the awaits.

Per routed request: route + pick, inject the gray context headers, send to ``host:port`` of the
instance (the ``Host`` header keeps the service name), retry by the service's policy on another
instance, report each attempt to outlier detection, and put a :class:`~graylb.call.Served` in
``response.extensions["graylb"]`` and on the current span.

Telemetry (:mod:`graylb.telemetry`; nothing of it runs without an OpenTelemetry SDK): each
attempt is one CLIENT span, a child of the caller's span, whose ``traceparent`` (the global
propagator's headers) replaces any earlier attempt's in the request; the inner transport runs
with OpenTelemetry's HTTP instrumentation suppressed, so ``opentelemetry-instrumentation-httpx``
adds no second span or header for it; and one ``http.client.request.duration`` measurement. The
call as a whole is ``graylb.client.calls`` / ``graylb.client.call.duration``.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote

import httpx

from .. import telemetry
from ..balancer import Balancer
from ..call import CONNECT_FAILURE, CONNECT_REFUSED, DRAINING, RESET, TIMEOUT, Call
from ..drain import DRAIN_HEADER
from ..errors import NoInstanceAvailable
from ..instance import Instance
from ..propagation.codec import BAGGAGE_HEADER, HeaderCodec
from ..propagation.context import GrayContext, current
from ..propagation.outbound import inject_gray
from ..routing import header_names
from ..routing.request import RequestInfo
from ..telemetry import Attempt

__all__ = ["GrayTransport", "AsyncGrayTransport"]


def _start(balancer: Balancer, service: str, request: httpx.Request) -> Call:
    info, lookup = _routing_input(request)
    ctx = current()
    try:
        call = balancer.start(service, info, ctx)
    except NoInstanceAvailable as exc:
        telemetry.record_no_instance(exc.service, exc.subset)
        raise
    _inject(balancer, ctx, lookup, request)
    return call


async def _astart(balancer: Balancer, service: str, request: httpx.Request) -> Call:
    # The twin of _start: the first call to a service awaits its first snapshot.
    info, lookup = _routing_input(request)
    ctx = current()
    try:
        call = await balancer.astart(service, info, ctx)
    except NoInstanceAvailable as exc:
        telemetry.record_no_instance(exc.service, exc.subset)
        raise
    _inject(balancer, ctx, lookup, request)
    return call


def _routing_input(request: httpx.Request) -> tuple[RequestInfo, _HeaderLookup]:
    url = request.url
    ref: Any = getattr(url, "_uri_reference", None)
    if type(ref) is _PARSE_RESULT:
        # httpx's parsed fields as they are: ``URL.path`` unquotes (a call even with no "%" in
        # the path) and ``URL.query`` encodes the str that routing would decode again.
        path = ref.path or "/"
        if "%" in path:
            path = unquote(path)
        query = ref.query or ""
    else:  # not the shape this was written for: httpx's public properties
        path = url.path
        query = url.query.decode("ascii", "replace")
    headers = request.headers
    lookup = _HeaderLookup(headers)
    # get_list (a bound method) builds its list only if a rule asks for every line.
    info = lookup.info = RequestInfo(request.method, path, lookup.get, query, headers.get_list)
    return info, lookup


def _inject(balancer: Balancer, ctx: GrayContext, lookup: _HeaderLookup, request: httpx.Request) -> None:
    # With an empty context and no baggage there is nothing to write or strip (inject_gray's
    # contract): the routing lookup answers that without another scan of the headers.
    found = lookup.found
    if ctx.is_empty and (found if found is not None else lookup.build())[BAGGAGE_HEADER] is None:
        return
    inject_gray(balancer.codec, ctx, request.headers, HEADERS, HEADERS)


class _HeaderLookup:
    """``httpx.Headers.get`` for routing, built on the first lookup. httpx's own ``get`` scans
    and decodes every header line per call (~0.8 us), and a call through five routes looks up
    several names, most of them absent. The first lookup makes one pass over httpx's parsed
    lines (``Headers._list``), decodes only the names compiled rules read
    (:mod:`~graylb.routing.header_names`), and hands the request view the resulting dict's own
    ``__getitem__``: every later lookup is one C call, and a name no rule declared is asked of
    ``httpx.Headers.get`` (``_Found.__missing__``). Lines of one name are joined with ", ", as
    ``Headers.get`` joins them. Headers of another shape go through ``multi_items()``;
    ``tests/unit/test_httpx_header_lookup.py`` pins the equivalence."""

    __slots__ = ("_headers", "info", "found")

    def __init__(self, headers: httpx.Headers) -> None:
        self._headers = headers
        self.info: RequestInfo | None = None
        self.found: _Found | None = None

    def build(self) -> _Found:
        headers = self._headers
        wanted, blank = header_names.current
        found = _Found(blank)
        found.headers = headers
        try:
            # Headers.encoding, unless set, is "ascii" when every line decodes as ASCII; a
            # wanted line that does not raises here and takes the slow path. Asking
            # Headers.encoding instead would decode every line.
            encoding = headers._encoding or "ascii"
            for _, key, value in headers._list:  # (raw name, lower-case name, value), all bytes
                name = wanted.get(key)
                if name is not None:
                    earlier = found[name]
                    text = value.decode(encoding)
                    found[name] = text if earlier is None else f"{earlier}, {text}"
        except (AttributeError, TypeError, ValueError):  # not the shape this was written for
            found = _Found(blank)
            found.headers = None  # every line is in: a name not found was not sent
            for name, text in headers.multi_items():
                earlier = found.get(name)
                found[name] = text if earlier is None else f"{earlier}, {text}"
        self.found = found
        if self.info is not None:
            self.info._get_header = found.__getitem__  # later lookups skip this method altogether
        return found

    def get(self, name: str) -> str | None:
        found = self.found
        if found is None:
            found = self.build()
        return found[name]


class _Found(dict[str, "str | None"]):
    """Decoded header values by lower-case name (None: not sent); a name it was not built with
    is looked up in ``headers`` on first use (None: every line was decoded already)."""

    __slots__ = ("headers",)
    headers: httpx.Headers | None

    def __missing__(self, name: str) -> str | None:
        headers = self.headers
        value = None if headers is None else headers.get(name)
        self[name] = value
        return value


class _Headers:
    """``httpx.Headers`` as the carrier of :func:`~graylb.propagation.outbound.inject_gray`."""

    @staticmethod
    def get(headers: httpx.Headers, key: str) -> list[str]:
        return headers.get_list(key)

    @staticmethod
    def set(headers: httpx.Headers, key: str, value: str | None) -> None:
        if value is not None:
            headers[key] = value  # replaces every line of that name, in place
        elif key in headers:
            del headers[key]


HEADERS = _Headers()


def _replayable(request: httpx.Request) -> bool:
    return isinstance(request.stream, httpx.ByteStream)


def _failure_kind(exc: Exception) -> str | None:
    if isinstance(exc, httpx.ConnectError) and _refused(exc):
        return CONNECT_REFUSED
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return CONNECT_FAILURE
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        return RESET
    if isinstance(exc, httpx.TimeoutException):
        return TIMEOUT
    return None


def _refused(exc: BaseException) -> bool:
    """Whether a connect error was a refused connection (httpx chains httpcore's error, which
    chains the socket's ``ConnectionRefusedError``)."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 8:
        if isinstance(cause, ConnectionRefusedError):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def _outcome(response: httpx.Response) -> str | int:
    """The attempt's outcome: its status, or :data:`DRAINING` for a draining instance's refusal."""
    status = response.status_code
    return DRAINING if status == 503 and DRAIN_HEADER in response.headers else status


def _target(url: httpx.URL, instance: Instance) -> httpx.URL:
    """``url`` with the instance's host and port.

    ``URL.copy_with`` re-parses the whole URL (~35 us, most of graylb's per-request cost);
    the instance host comes from the registry, already a plain host, so replacing the two
    fields of httpx's parsed form is enough (~1.5 us). Falls back to ``copy_with`` if httpx's
    internals ever change shape; ``tests/unit/test_httpx_target.py`` pins the equivalence.
    """
    ref: Any = getattr(url, "_uri_reference", None)
    if type(ref) is _PARSE_RESULT:
        new = _URL_NEW(httpx.URL)
        # the namedtuple's own constructor, positionally: a third of ``_replace``'s cost
        new._uri_reference = _TUPLE_NEW(
            type(ref), (ref[0], ref[1], instance.host.lower(), instance.port, ref[4], ref[5], ref[6])
        )
        return new
    return url.copy_with(host=instance.host, port=instance.port)


_URL_NEW = httpx.URL.__new__
_TUPLE_NEW = tuple.__new__
_PARSED_FIELDS = ("scheme", "userinfo", "host", "port", "path", "query", "fragment")


def _parse_result_type() -> type | None:
    """The type of httpx's parsed URL, when it has the fields the fast paths above read;
    None (every request takes httpx's public properties) if a release changes it."""
    ref = getattr(httpx.URL("http://checked/"), "_uri_reference", None)
    return type(ref) if getattr(ref, "_fields", None) == _PARSED_FIELDS else None


_PARSE_RESULT: Any = _parse_result_type()


# -- telemetry (README "Telemetry"): nothing of this runs without an OpenTelemetry SDK -----------

_KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})


def _begin(
    obs: telemetry.Observer, codec: HeaderCodec, call: Call, instance: Instance, request: httpx.Request, url: httpx.URL
) -> Attempt:
    """Start the attempt's telemetry: its span (a child of the caller's), its ``traceparent`` in
    the request headers, the instrumentations of the inner transport suppressed."""
    method = request.method
    if method not in _KNOWN_METHODS:
        method = "_OTHER"
    port = url.port or (443 if url.scheme == "https" else 80)
    attrs = telemetry.base_attributes(call, instance)
    attrs["http.request.method"] = method
    attrs["server.address"] = url.host
    attrs["server.port"] = port
    span_attrs = None
    if obs.tracer is not None:
        span_attrs = {
            "http.request.method": method,
            "server.address": url.host,
            "server.port": port,
            "url.full": str(url if not url.userinfo else url.copy_with(username="REDACTED", password="REDACTED")),
            **telemetry.span_attributes(call, instance),
        }
        if call.attempts > 1:
            span_attrs["http.request.resend_count"] = call.attempts - 1
    # The conventions' span name is the method, "HTTP" for one they do not know.
    attempt = Attempt(obs, telemetry.http_duration, attrs, "HTTP" if method == "_OTHER" else method, span_attrs)
    headers = telemetry.inject(attempt)
    if headers:
        _put_trace_headers(codec, request.headers, headers)
    attempt.enter()
    return attempt


def _put_trace_headers(codec: HeaderCodec, target: httpx.Headers, headers: dict[str, str]) -> None:
    for name, value in headers.items():
        target[name] = value  # replaces: one header per name, whatever an earlier attempt wrote
    if "baggage" in headers:  # the propagator's baggage replaced ours: merge the gray members back
        inject_gray(codec, current(), target, HEADERS, HEADERS)


def _answered(attempt: Attempt | None, status: int, retrying: bool) -> None:
    if attempt is None:
        return
    attempt.end(
        "ok" if status < 500 else "http_5xx",
        telemetry.status_class(status),
        str(status) if status >= 400 else None,
        {"http.response.status_code": status},
        retrying=retrying,
    )


def _raised(attempt: Attempt | None, exc: BaseException, retrying: bool) -> None:
    if attempt is not None:
        attempt.end("error", None, type(exc).__qualname__, None, exc, retrying)


def _finish(
    call: Call, instance: Instance, response: httpx.Response, started: float, obs: telemetry.Observer | None
) -> httpx.Response:
    served = call.served(instance)
    response.extensions["graylb"] = served
    if obs is not None:
        if obs.tracer is not None:
            telemetry.annotate_span(served)
        if obs.metering:
            status = response.status_code
            telemetry.record_call(
                served,
                call.in_lane,
                "ok" if status < 500 else "http_5xx",
                time.perf_counter() - started,
                telemetry.status_class(status),
                str(status) if status >= 400 else None,
            )
    return response


def _failed(call: Call, instance: Instance, started: float, obs: telemetry.Observer | None, exc: BaseException) -> None:
    if obs is not None and obs.metering:
        telemetry.record_call(
            call.served(instance), call.in_lane, "error", time.perf_counter() - started, None, type(exc).__qualname__
        )


class GrayTransport(httpx.BaseTransport):
    """Sync transport: ``httpx.Client(transport=GrayTransport(balancer))``."""

    def __init__(self, balancer: Balancer, transport: httpx.BaseTransport | None = None) -> None:
        self.balancer = balancer
        self.transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        service = self.balancer.routed_service(url.host)
        if service is None:
            return self.transport.handle_request(request)
        obs = telemetry.observer()
        started = time.perf_counter() if obs is not None else 0.0  # the call's duration is telemetry
        call = _start(self.balancer, service, request)
        try:
            while True:
                instance = call.next_instance()
                request.url = _target(url, instance)
                attempt = None if obs is None else _begin(obs, self.balancer.codec, call, instance, request, url)
                try:
                    response = self.transport.handle_request(request)
                except httpx.TransportError as exc:
                    kind = _failure_kind(exc)
                    call.done(instance, False, kind)
                    retrying = kind is not None and call.can_retry(kind, request.method, _replayable(request))
                    _raised(attempt, exc, retrying)
                    if retrying:
                        continue
                    _failed(call, instance, started, obs, exc)
                    raise
                except BaseException as exc:  # interrupted (KeyboardInterrupt, a bug below): not the instance's fault
                    call.done(instance, ok=True)
                    _raised(attempt, exc, False)
                    _failed(call, instance, started, obs, exc)
                    raise
                status = response.status_code
                ok = status < 500
                outcome = status if ok else _outcome(response)
                call.done(instance, ok, outcome)
                retrying = not ok and call.can_retry(outcome, request.method, _replayable(request))
                _answered(attempt, status, retrying)
                if retrying:
                    response.close()
                    continue
                return _finish(call, instance, response, started, obs)
        finally:
            # The client joins redirects against request.url: give it back the service URL.
            request.url = url

    def close(self) -> None:
        self.transport.close()


class AsyncGrayTransport(httpx.AsyncBaseTransport):
    """Async twin: ``httpx.AsyncClient(transport=AsyncGrayTransport(balancer))``."""

    def __init__(self, balancer: Balancer, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.balancer = balancer
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        service = self.balancer.routed_service(url.host)
        if service is None:
            return await self.transport.handle_async_request(request)
        obs = telemetry.observer()
        started = time.perf_counter() if obs is not None else 0.0  # the call's duration is telemetry
        call = await _astart(self.balancer, service, request)
        try:
            while True:
                instance = call.next_instance()
                request.url = _target(url, instance)
                attempt = None if obs is None else _begin(obs, self.balancer.codec, call, instance, request, url)
                try:
                    response = await self.transport.handle_async_request(request)
                except httpx.TransportError as exc:
                    kind = _failure_kind(exc)
                    call.done(instance, False, kind)
                    retrying = kind is not None and call.can_retry(kind, request.method, _replayable(request))
                    _raised(attempt, exc, retrying)
                    if retrying:
                        continue
                    _failed(call, instance, started, obs, exc)
                    raise
                except BaseException as exc:  # cancelled (asyncio.wait_for, a closing client): not the instance's fault
                    call.done(instance, ok=True)
                    _raised(attempt, exc, False)
                    _failed(call, instance, started, obs, exc)
                    raise
                status = response.status_code
                ok = status < 500
                outcome = status if ok else _outcome(response)
                call.done(instance, ok, outcome)
                retrying = not ok and call.can_retry(outcome, request.method, _replayable(request))
                _answered(attempt, status, retrying)
                if retrying:
                    await response.aclose()
                    continue
                return _finish(call, instance, response, started, obs)
        finally:
            request.url = url

    async def aclose(self) -> None:
        await self.transport.aclose()
