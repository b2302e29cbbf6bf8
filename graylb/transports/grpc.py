"""A gray gRPC channel: every RPC is routed by the balancer and picks its own instance.

``GrayChannel(balancer, "orders")`` implements ``grpc.Channel`` (``AioGrayChannel`` the
``grpc.aio.Channel`` twin), so generated stubs take it as they are:
``EchoStub(GrayChannel(balancer, "orders"))``. Per RPC: route on the full method name (``path``)
and the call's metadata (``headers``), pick an instance, inject the gray context into the
metadata, and send through one real sub-channel per instance (created on first use, reused,
closed when the instance leaves the snapshot). A unary RPC failing with UNAVAILABLE is retried
on another instance within its deadline; UNAVAILABLE and INTERNAL feed outlier detection.
A stream stays on the instance it started on. ``with_call`` returns a call object whose
``graylb`` attribute is the :class:`~graylb.call.Served` record.

Every RPC shape -- unary (``__call__``, ``with_call``, ``future``), unary-stream, stream-unary
(``__call__``, ``with_call``, ``future``), stream-stream, sync and aio -- ends each attempt
exactly once, however it ends (answered, failed, cancelled, past its deadline, or unable to
start): the balancer's in-flight count for the instance goes back down (the least_request
picker reads it) and the outcome feeds outlier detection (UNAVAILABLE and INTERNAL only).

Telemetry (:mod:`graylb.telemetry`; nothing of it runs without an OpenTelemetry SDK): every
attempt is one CLIENT span (``rpc.*`` attributes, the version that served it) whose
``traceparent`` goes out in that attempt's metadata, with grpc's OpenTelemetry interceptor, if
the sub-channel has one, suppressed underneath; and one ``rpc.client.call.duration``
measurement. Each RPC also records one call (``graylb.client.calls`` / ``.call.duration``) when
it ends, outcome ``ok`` or ``error`` (cancelled and past-deadline calls included). The caller's
span gets the routing attributes when a unary call ends (after its retries), when a future or
stream starts (its end is seen on grpc's thread, outside the caller's context).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .. import telemetry
from ..balancer import Balancer
from ..call import CONNECT_FAILURE, CONNECT_REFUSED, DRAINING, Call, Served
from ..discovery.base import Snapshot
from ..drain import DRAIN_HEADER
from ..errors import NoInstanceAvailable
from ..instance import Instance
from ..propagation.codec import HeaderCodec
from ..propagation.context import current
from ..routing.request import RequestInfo
from ..telemetry import Attempt
from .grpc_interceptors import outbound_metadata

__all__ = ["GrayChannel", "AioGrayChannel"]

log = logging.getLogger("graylb")

_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
Metadata = Sequence[tuple[str, Any]]
AioMetadata = grpc.aio.Metadata | Sequence[tuple[str, Any]]
Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]

# The channels serve every method of every service, so requests and responses are Any; so are
# the call objects handed back: grpc's own (from a sub-channel) or stand-ins that forward to one
# (_ServedCall, _AioUnaryCall, _DeferredAioCall), which grpc's type stubs do not know.
if TYPE_CHECKING:
    # Generic in grpc's type stubs; the sync ones are not subscriptable at run time.
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable[Any, Any]
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable[Any, Any]
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable[Any, Any]
    _StreamStreamBase = grpc.StreamStreamMultiCallable[Any, Any]
    _AioUnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable[Any, Any]
    _AioUnaryStreamBase = grpc.aio.UnaryStreamMultiCallable[Any, Any]
    _AioStreamUnaryBase = grpc.aio.StreamUnaryMultiCallable[Any, Any]
    _AioStreamStreamBase = grpc.aio.StreamStreamMultiCallable[Any, Any]
else:
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.StreamStreamMultiCallable
    _AioUnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable
    _AioUnaryStreamBase = grpc.aio.UnaryStreamMultiCallable
    _AioStreamUnaryBase = grpc.aio.StreamUnaryMultiCallable
    _AioStreamStreamBase = grpc.aio.StreamStreamMultiCallable

# The event loop holds only weak references to tasks: the fire-and-forget ones started here are
# kept alive until they finish.
_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


class _SubChannels:
    """One real channel per instance id; lookups take no lock, creation and pruning do."""

    def __init__(self, factory: Callable[[str], Any], closer: Callable[[Any], None]) -> None:
        self._factory, self._closer = factory, closer
        self._channels: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, instance: Instance) -> Any:
        entry = self._channels.get(instance.id)
        if entry is not None and entry[0] == instance.address:
            return entry[1]
        with self._lock:
            entry = self._channels.get(instance.id)
            if entry is None or entry[0] != instance.address:
                if entry is not None:
                    self._closer(entry[1])
                entry = (instance.address, self._factory(instance.address))
                self._channels = {**self._channels, instance.id: entry}
            return entry[1]

    def retain(self, snapshot: Snapshot) -> None:
        live = {i.id for i in snapshot.instances}
        with self._lock:
            gone = [k for k in self._channels if k not in live]
            if gone:
                for k in gone:
                    self._closer(self._channels[k][1])
                self._channels = {k: v for k, v in self._channels.items() if k not in gone}

    def __len__(self) -> int:
        return len(self._channels)

    def close_all(self) -> list[Any]:
        with self._lock:
            channels, self._channels = [c for _, c in self._channels.values()], {}
        return channels


def _values_of(md: list[tuple[str, Any]]) -> Callable[[str], list[str]]:
    """``header_values`` for a call's metadata: every text entry with that key, in order. The
    list is built only when a rule asks (``header`` reads the one-value-per-key dict that
    :meth:`_Router.start` builds)."""

    def values(name: str) -> list[str]:
        return [v for k, v in md if isinstance(v, str) and k.lower() == name]

    return values


def _metadata_with_context(balancer: Balancer, metadata: AioMetadata | None) -> list[tuple[str, Any]]:
    """The call's metadata plus the gray context, exactly as the client interceptors do it."""
    md = outbound_metadata(balancer.codec, current(), metadata)
    return list(metadata or ()) if md is None else md


class _Router:
    """What the sync and aio channels share: routing, metadata, sub-channels, served records."""

    def __init__(
        self, balancer: Balancer, service: str, factory: Callable[[str], Any], closer: Callable[[Any], None]
    ) -> None:
        self.balancer = balancer
        self.service = service
        self.subchannels = _SubChannels(factory, closer)
        watch = balancer.discovery.watch(service)
        watch.add_listener(self.subchannels.retain)
        self._watch = watch

    def start(self, method: str, metadata: AioMetadata | None) -> tuple[Call, list[tuple[str, Any]]]:
        md = _metadata_with_context(self.balancer, metadata)
        headers = {k.lower(): v for k, v in md if isinstance(v, str)}
        try:
            call = self.balancer.start(
                self.service, RequestInfo("POST", method, headers.get, "", _values_of(md)), current()
            )
        except NoInstanceAvailable as exc:
            telemetry.record_no_instance(exc.service, exc.subset)
            raise
        return call, md

    async def astart(self, method: str, metadata: AioMetadata | None) -> tuple[Call, list[tuple[str, Any]]]:
        """:meth:`start` for grpc.aio: the first RPCs await the service's first snapshot."""
        if not self.balancer.ready(self.service):
            try:
                await self.balancer.wait_ready(self.service)
            except NoInstanceAvailable as exc:
                telemetry.record_no_instance(exc.service, exc.subset)
                raise
        return self.start(method, metadata)

    def begin(
        self, obs: telemetry.Observer, call: Call, instance: Instance, method: str, md: list[tuple[str, Any]]
    ) -> tuple[Attempt, list[tuple[str, Any]]]:
        """Start an attempt's telemetry (README "Telemetry"): its span, and the metadata to send
        with ``traceparent`` for that span. Only with an SDK installed."""
        rpc_method = method[1:] if method.startswith("/") else method
        attrs = telemetry.base_attributes(call, instance)
        attrs["rpc.system.name"] = "grpc"
        attrs["rpc.method"] = rpc_method
        attrs["server.address"] = self.service
        span_attrs = None
        if obs.tracer is not None:
            span_attrs = {
                "rpc.system.name": "grpc",
                "rpc.method": rpc_method,
                "server.address": self.service,
                **telemetry.span_attributes(call, instance),
            }
        attempt = Attempt(obs, telemetry.rpc_duration, attrs, rpc_method, span_attrs)
        headers = telemetry.inject(attempt)
        if headers:
            md = _with_trace_headers(self.balancer.codec, md, headers)
        return attempt, md

    def finish(
        self,
        call: Call,
        instance: Instance,
        started: float,
        obs: telemetry.Observer | None,
        code: grpc.StatusCode | None,
        error: BaseException | None = None,
    ) -> Served:
        """The call is over (after its retries): its record, the caller's span, the call metrics."""
        served = call.served(instance)
        if obs is not None:
            if obs.tracer is not None:
                telemetry.annotate_span(served)
            if obs.metering:
                outcome, status, error_type, _ = _outcome(code, error)
                telemetry.record_call(served, call.in_lane, outcome, time.perf_counter() - started, status, error_type)
        return served

    def close(self) -> list[Any]:
        self._watch.remove_listener(self.subchannels.retain)
        return self.subchannels.close_all()


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _ServedCall:
    """A grpc call object with ``graylb`` (the :class:`Served` record) added."""

    def __init__(self, inner: Any, served: Served) -> None:
        self._inner = inner
        self.graylb = served

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _code_of(exc: BaseException) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    try:
        return code() if callable(code) else None
    except Exception:  # a status-less RpcError
        return None


def _reported(code: grpc.StatusCode | None, error: BaseException | None) -> str | None:
    """What an attempt reports to outlier detection and the guard: the status code's name, or
    :data:`~graylb.call.DRAINING` / :data:`~graylb.call.CONNECT_REFUSED` for an instance that is
    leaving (an UNAVAILABLE carrying the drain marker, or a refused connection)."""
    if code is None:
        return None
    if code == grpc.StatusCode.UNAVAILABLE and error is not None:
        try:
            trailing = error.trailing_metadata() or ()  # type: ignore[attr-defined]
            if any(key == DRAIN_HEADER for key, _ in trailing):
                return DRAINING
            if "connection refused" in (error.details() or "").lower():  # type: ignore[attr-defined]
                return CONNECT_REFUSED
        except Exception:  # noqa: BLE001 - an error without them: just its code
            pass
    return code.name


def _outcome(
    code: grpc.StatusCode | None, error: BaseException | None
) -> tuple[str, str | None, str | None, dict[str, str] | None]:
    """(graylb.outcome, graylb.status, error.type, response attributes) of an attempt or call."""
    if code is not None:
        name = code.name
        extra = {"rpc.response.status_code": name}
        if code == grpc.StatusCode.OK:
            return "ok", name, None, extra
        return "error", name, name, extra
    return "error", None, type(error).__qualname__ if error is not None else "_OTHER", None


def _ended(
    attempt: Attempt | None, code: grpc.StatusCode | None, error: BaseException | None = None, retrying: bool = False
) -> None:
    if attempt is not None:
        outcome, status, error_type, extra = _outcome(code, error)
        attempt.end(outcome, status, error_type, extra, error, retrying)


def _with_trace_headers(
    codec: HeaderCodec, md: list[tuple[str, Any]], headers: dict[str, str]
) -> list[tuple[str, Any]]:
    """``md`` with the propagator's headers (lower-case names) replacing any of the same name --
    an earlier attempt's ``traceparent`` -- and gray baggage members merged back when the
    propagator wrote a ``baggage`` of its own."""
    out = [(k, v) for k, v in md if not (isinstance(k, str) and k.lower() in headers)]
    out.extend(headers.items())
    if "baggage" in headers:
        merged = outbound_metadata(codec, current(), out)
        if merged is not None:
            return merged
    return out


_PENDING = object()


def _finished_code(rpc: Any) -> Any:
    """The status code of a finished grpc.aio call, read in its done callback. ``code()`` is a
    coroutine, but once the call is done it completes at its first step: no task needed (a task
    would run after the caller saw the end, or never, if the loop stops first). ``_PENDING`` if
    it would have to wait after all; ``None`` if there is no status to read."""
    try:
        coro = rpc.code()
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    except Exception:  # no status: the attempt still ends
        return None
    coro.close()
    return _PENDING


class _Attempt:
    """The one attempt of an RPC that is never retried (a future, a stream): ends it exactly once
    with its outcome -- ``Call.done`` (in-flight count, outlier detection), its telemetry (the
    attempt and the call are the same thing here) -- from whichever path sees the end first: the
    call's done callback, or the error that kept the RPC from starting. The caller's span is
    annotated at the start, in the caller's context (a done callback runs on grpc's thread, or in
    no particular context); so is the attempt's span started, and ``md`` is the metadata to send
    (with ``traceparent`` when tracing). :meth:`invoking` brackets the call that starts the RPC."""

    __slots__ = ("call", "instance", "open", "served", "started", "obs", "telemetry", "md")

    def __init__(self, router: _Router, method: str, call: Call, md: list[tuple[str, Any]]) -> None:
        self.call = call
        self.instance = instance = call.next_instance()
        self.served = call.served(instance)
        self.started = time.perf_counter()
        self.open = True
        self.obs = obs = telemetry.observer()
        self.telemetry: Attempt | None = None
        if obs is not None:
            if obs.tracer is not None:
                telemetry.annotate_span(self.served)
            self.telemetry, md = router.begin(obs, call, instance, method, md)
        self.md = md

    def invoking(self) -> None:
        """Around the call that starts the RPC (``invoked`` after it, in the same thread): the
        attempt's span is current and grpc's OpenTelemetry interceptor, if any, stands aside."""
        if self.telemetry is not None:
            self.telemetry.enter(everything=True)

    def invoked(self) -> None:
        if self.telemetry is not None:
            self.telemetry.leave()

    def end(self, code: grpc.StatusCode | None, error: BaseException | None = None) -> None:
        """``code`` ``None``: the RPC ended without a status (it never started, or a local error)."""
        if not self.open:
            return
        self.open = False
        self.call.done(self.instance, code not in _FAILURES, _reported(code, error))
        obs = self.obs
        if obs is not None:
            _ended(self.telemetry, code, error)
            if obs.metering:
                outcome, status, error_type, _ = _outcome(code, error)
                telemetry.record_call(
                    self.served, self.call.in_lane, outcome, time.perf_counter() - self.started, status, error_type
                )

    def _end_in_callback(self, code: grpc.StatusCode | None) -> None:
        try:
            self.end(code)
        except Exception:  # never into grpc's callback loop or status handling
            log.exception("graylb: could not report the end of a gRPC call")

    def on_done(self, rpc: Any) -> None:
        """Done callback of a sync call or future: grpc runs it once, however the RPC ended."""
        try:
            code = rpc.code()
        except Exception:  # no status: the attempt still ends
            code = None
        self._end_in_callback(code)

    def on_aio_done(self, rpc: Any) -> None:
        """Done callback of a grpc.aio call: runs inside grpc's status handling."""
        code = _finished_code(rpc)
        if code is not _PENDING:
            self._end_in_callback(code)
            return

        async def later() -> None:  # not expected: a finished call's code() does not wait
            try:
                status = await rpc.code()
            except Exception:
                status = None
            self._end_in_callback(status)

        _spawn(later())


# -- sync ------------------------------------------------------------------------------------


class _UnaryUnary(_UnaryUnaryBase):
    def __init__(
        self, channel: GrayChannel, method: str, ser: Serializer | None, deser: Deserializer | None, kw: dict[str, Any]
    ) -> None:
        self._ch, self._method, self._ser, self._deser, self._kw = channel, method, ser, deser, kw
        self._per_channel: dict[Any, Any] = {}  # sub-channel -> its multicallable (~7 us to make)

    def _sub(self, instance: Instance) -> Any:
        channel = self._ch._router.subchannels.get(instance)
        mc = self._per_channel.get(channel)
        if mc is None:
            if len(self._per_channel) > 2 * len(self._ch._router.subchannels) + 8:
                self._per_channel = {}  # drop entries of closed sub-channels
            mc = self._per_channel[channel] = channel.unary_unary(self._method, self._ser, self._deser, **self._kw)
        return mc

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self.with_call(request, timeout, metadata, credentials, wait_for_ready, compression)[0]

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, Any]:
        router = self._ch._router
        call, md = router.start(self._method, metadata)
        started = time.perf_counter()
        obs = telemetry.observer()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            instance = call.next_instance()
            attempt, sent = (None, md) if obs is None else router.begin(obs, call, instance, self._method, md)
            try:
                sub = self._sub(instance)
                if attempt is not None:
                    attempt.enter(everything=True)
                response, rpc = sub.with_call(
                    request,
                    timeout=_remaining(deadline),
                    metadata=sent,
                    credentials=credentials,
                    wait_for_ready=wait_for_ready,
                    compression=compression,
                )
            except grpc.RpcError as exc:
                code = _code_of(exc)
                call.done(instance, code not in _FAILURES, _reported(code, exc))
                retrying = (
                    code == grpc.StatusCode.UNAVAILABLE
                    and call.can_retry(CONNECT_FAILURE, "POST")
                    and (deadline is None or time.monotonic() < deadline)
                )
                _ended(attempt, code, exc, retrying)
                if retrying:
                    continue
                router.finish(call, instance, started, obs, code, exc)
                raise
            except BaseException as exc:  # not the instance's doing (a local error, an interrupt)
                call.done(instance, ok=True)
                _ended(attempt, None, exc)
                router.finish(call, instance, started, obs, None, exc)
                raise
            call.done(instance, ok=True)
            _ended(attempt, grpc.StatusCode.OK)
            return response, _ServedCall(rpc, router.finish(call, instance, started, obs, grpc.StatusCode.OK))

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        # A future is handed back before the RPC ends: route and pick once, no retry.
        router = self._ch._router
        call, md = router.start(self._method, metadata)
        attempt = _Attempt(router, self._method, call, md)
        try:
            sub = self._sub(attempt.instance)
            attempt.invoking()
            try:
                fut = sub.future(
                    request,
                    timeout=timeout,
                    metadata=attempt.md,
                    credentials=credentials,
                    wait_for_ready=wait_for_ready,
                    compression=compression,
                )
            finally:
                attempt.invoked()
        except BaseException as exc:
            attempt.end(None, exc)
            raise
        fut.add_done_callback(attempt.on_done)
        return fut


class _Streaming:
    """unary-stream, stream-unary and stream-stream: one pick per call, no retry. The attempt
    ends when the RPC does: in its done callback, or before returning for a blocking call."""

    def __init__(
        self,
        channel: GrayChannel,
        kind: str,
        method: str,
        ser: Serializer | None,
        deser: Deserializer | None,
        kw: dict[str, Any],
    ) -> None:
        self._ch, self._kind, self._method, self._ser, self._deser, self._kw = channel, kind, method, ser, deser, kw

    def _start(
        self, metadata: Metadata | None, invoke: Callable[[Any, list[tuple[str, Any]]], Any]
    ) -> tuple[_Attempt, Any]:
        """Route, pick, and ``invoke(sub multicallable, metadata)``; an error that keeps the RPC
        from starting ends the attempt."""
        router = self._ch._router
        call, md = router.start(self._method, metadata)
        attempt = _Attempt(router, self._method, call, md)
        try:
            sub = getattr(router.subchannels.get(attempt.instance), self._kind)(
                self._method, self._ser, self._deser, **self._kw
            )
            attempt.invoking()
            try:
                return attempt, invoke(sub, attempt.md)
            finally:
                attempt.invoked()
        except grpc.RpcError as exc:  # a blocking call's status
            attempt.end(_code_of(exc), exc)
            raise
        except BaseException as exc:
            attempt.end(None, exc)
            raise


class _ResponseStreaming(_Streaming):
    """unary-stream and stream-stream: the call object is the response iterator."""

    def __call__(
        self,
        request_or_iterator: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        attempt, rpc = self._start(
            metadata,
            lambda sub, md: sub(
                request_or_iterator,
                timeout=timeout,
                metadata=md,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            ),
        )
        rpc.add_done_callback(attempt.on_done)
        return rpc


class _UnaryStream(_ResponseStreaming, _UnaryStreamBase):
    pass


class _StreamUnary(_Streaming, _StreamUnaryBase):
    def __call__(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self.with_call(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)[0]

    def with_call(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, Any]:
        attempt, (response, rpc) = self._start(
            metadata,
            lambda sub, md: sub.with_call(
                request_iterator,
                timeout=timeout,
                metadata=md,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            ),
        )
        attempt.end(grpc.StatusCode.OK)
        return response, _ServedCall(rpc, attempt.served)

    def future(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        attempt, fut = self._start(
            metadata,
            lambda sub, md: sub.future(
                request_iterator,
                timeout=timeout,
                metadata=md,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            ),
        )
        fut.add_done_callback(attempt.on_done)
        return fut


class _StreamStream(_ResponseStreaming, _StreamStreamBase):
    pass


class GrayChannel(grpc.Channel):
    """``grpc.Channel`` for one registry service. ``credentials`` (``grpc.ssl_channel_credentials``)
    makes every sub-channel secure; ``options`` are passed to each sub-channel."""

    def __init__(
        self,
        balancer: Balancer,
        service: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        def factory(address: str) -> grpc.Channel:
            if credentials is not None:
                return grpc.secure_channel(address, credentials, options)
            return grpc.insecure_channel(address, options)

        self._router = _Router(balancer, service, factory, lambda ch: ch.close())

    @property
    def subchannel_count(self) -> int:
        return len(self._router.subchannels)

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        **kw: Any,
    ) -> _UnaryUnary:
        return _UnaryUnary(self, method, request_serializer, response_deserializer, kw)

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        **kw: Any,
    ) -> _UnaryStream:
        return _UnaryStream(self, "unary_stream", method, request_serializer, response_deserializer, kw)

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        **kw: Any,
    ) -> _StreamUnary:
        return _StreamUnary(self, "stream_unary", method, request_serializer, response_deserializer, kw)

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        **kw: Any,
    ) -> _StreamStream:
        return _StreamStream(self, "stream_stream", method, request_serializer, response_deserializer, kw)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        callback(grpc.ChannelConnectivity.READY)  # routing state, not one connection's

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        pass

    def close(self) -> None:
        for ch in self._router.close():
            ch.close()

    def __enter__(self) -> GrayChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- grpc.aio -------------------------------------------------------------------------------


class _AioUnaryCall:
    """Awaitable result of an aio unary RPC through the gray channel; after it completes,
    ``graylb`` holds the :class:`Served` record and ``call`` the last real grpc.aio call."""

    def __init__(self, owner: _AioUnaryUnary, request: Any, kw: dict[str, Any]) -> None:
        self._owner, self._request, self._kw = owner, request, kw
        self.graylb: Served | None = None
        self.call: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._run().__await__()

    async def _run(self) -> Any:
        owner = self._owner
        owner._ch._reap_soon()
        router = owner._ch._router
        call, md = await router.astart(owner._method, self._kw.pop("metadata", None))
        timeout = self._kw.pop("timeout", None)
        started = time.perf_counter()
        obs = telemetry.observer()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            instance = call.next_instance()
            attempt, sent = (None, md) if obs is None else router.begin(obs, call, instance, owner._method, md)
            self.call = None
            try:
                sub = router.subchannels.get(instance).unary_unary(owner._method, owner._ser, owner._deser, **owner._kw)
                if attempt is not None:
                    attempt.enter(everything=True)  # grpc.aio's interceptors run in a task made here
                try:
                    self.call = sub(self._request, timeout=_remaining(deadline), metadata=sent, **self._kw)
                finally:
                    if attempt is not None:
                        attempt.leave()
                response = await self.call
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                call.done(instance, code not in _FAILURES, _reported(code, exc))
                retrying = (
                    code == grpc.StatusCode.UNAVAILABLE
                    and call.can_retry(CONNECT_FAILURE, "POST")
                    and (deadline is None or time.monotonic() < deadline)
                )
                _ended(attempt, code, exc, retrying)
                if retrying:
                    continue
                router.finish(call, instance, started, obs, code, exc)
                raise
            except BaseException as exc:  # cancelled by the caller, or a local error
                if isinstance(exc, asyncio.CancelledError) and self.call is not None:
                    self.call.cancel()  # the caller gave up: so does the RPC on the wire
                call.done(instance, ok=True)
                local = grpc.StatusCode.CANCELLED if isinstance(exc, asyncio.CancelledError) else None
                _ended(attempt, local, exc)
                router.finish(call, instance, started, obs, local, exc)
                raise
            call.done(instance, ok=True)
            _ended(attempt, grpc.StatusCode.OK)
            self.graylb = router.finish(call, instance, started, obs, grpc.StatusCode.OK)
            return response


class _AioUnaryUnary(_AioUnaryUnaryBase):
    def __init__(
        self,
        channel: AioGrayChannel,
        method: str,
        ser: Serializer | None,
        deser: Deserializer | None,
        kw: dict[str, Any],
    ) -> None:
        self._ch, self._method, self._ser, self._deser, self._kw = channel, method, ser, deser, kw

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: AioMetadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        kw = {
            "timeout": timeout,
            "metadata": metadata,
            "credentials": credentials,
            "wait_for_ready": wait_for_ready,
            "compression": compression,
        }
        return _AioUnaryCall(self, request, kw)


class _AioStreaming:
    def __init__(
        self,
        channel: AioGrayChannel,
        kind: str,
        method: str,
        ser: Serializer | None,
        deser: Deserializer | None,
        kw: dict[str, Any],
    ) -> None:
        self._ch, self._kind, self._method, self._ser, self._deser, self._kw = channel, kind, method, ser, deser, kw

    def _start_call(self, request: Any, kw: dict[str, Any]) -> Any:
        self._ch._reap_soon()
        router = self._ch._router
        if router.balancer.ready(router.service):
            return self._begin(request, kw)
        # grpc.aio hands the call object back at once: before the first snapshot, hand back one
        # that starts the RPC when the snapshot is here instead of blocking the event loop.
        return _DeferredAioCall(self._begin_when_ready(request, kw))

    async def _begin_when_ready(self, request: Any, kw: dict[str, Any]) -> Any:
        router = self._ch._router
        waited = time.monotonic()
        try:
            await router.balancer.wait_ready(router.service)
        except NoInstanceAvailable as exc:
            telemetry.record_no_instance(exc.service, exc.subset)
            raise
        if kw["timeout"] is not None:  # the wait counts against the call's deadline
            kw["timeout"] = max(0.0, kw["timeout"] - (time.monotonic() - waited))
        return self._begin(request, kw)

    def _begin(self, request: Any, kw: dict[str, Any]) -> Any:
        router = self._ch._router
        call, md = router.start(self._method, kw.pop("metadata"))
        attempt = _Attempt(router, self._method, call, md)
        try:
            sub = getattr(router.subchannels.get(attempt.instance), self._kind)(
                self._method, self._ser, self._deser, **self._kw
            )
            args = () if request is None and self._kind == "stream_stream" else (request,)
            attempt.invoking()
            try:
                rpc = sub(*args, metadata=attempt.md, **kw)
            finally:
                attempt.invoked()
        except BaseException as exc:
            attempt.end(None, exc)
            raise
        rpc.add_done_callback(attempt.on_aio_done)
        rpc.graylb = attempt.served
        return rpc


class _DeferredAioCall:
    """A grpc.aio streaming call made before its service's first snapshot arrived.

    The real call starts as soon as the snapshot is here (in a task started at once); every
    awaitable method waits for it and then forwards, so code written for a grpc.aio call —
    ``async for``, ``read``/``write``/``done_writing``, ``await call``, ``code()`` — works
    unchanged. Without a snapshot in time, they raise :class:`~graylb.errors.NoSnapshot`.
    """

    _FORWARDED = frozenset(
        {
            "read",
            "write",
            "done_writing",
            "initial_metadata",
            "trailing_metadata",
            "code",
            "details",
            "wait_for_connection",
        }
    )

    def __init__(self, begin: Any) -> None:
        self._task: asyncio.Task[Any] = asyncio.ensure_future(begin)
        self._callbacks: list[Callable[[Any], None]] = []
        self._task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            for callback in self._callbacks:  # it never started: it is done, with no RPC
                callback(self)
            return
        for callback in self._callbacks:
            task.result().add_done_callback(callback)

    async def _rpc(self) -> Any:
        return await asyncio.shield(self._task)  # a reader giving up must not cancel the start

    @property
    def graylb(self) -> Served | None:
        rpc = self._started_rpc()
        return None if rpc is None else rpc.graylb

    def _started_rpc(self) -> Any:
        task = self._task
        if task.done() and not task.cancelled() and task.exception() is None:
            return task.result()
        return None

    def __getattr__(self, name: str) -> Any:
        if name not in self._FORWARDED:
            raise AttributeError(name)

        async def forward(*args: Any, **kw: Any) -> Any:
            return await getattr(await self._rpc(), name)(*args, **kw)

        return forward

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for item in await self._rpc():
            yield item

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        return await (await self._rpc())

    def cancel(self) -> bool:
        rpc = self._started_rpc()
        return rpc.cancel() if rpc is not None else self._task.cancel()

    def cancelled(self) -> bool:
        rpc = self._started_rpc()
        return rpc.cancelled() if rpc is not None else self._task.cancelled()

    def done(self) -> bool:
        rpc = self._started_rpc()
        return rpc.done() if rpc is not None else self._task.done()

    def time_remaining(self) -> float | None:
        rpc = self._started_rpc()
        return rpc.time_remaining() if rpc is not None else None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        rpc = self._started_rpc()
        if rpc is not None:
            rpc.add_done_callback(callback)
        else:
            self._callbacks.append(callback)


class _AioUnaryStream(_AioStreaming, _AioUnaryStreamBase):
    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: AioMetadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        kw = {
            "timeout": timeout,
            "metadata": metadata,
            "credentials": credentials,
            "wait_for_ready": wait_for_ready,
            "compression": compression,
        }
        return self._start_call(request, kw)


class _AioRequestStreaming(_AioStreaming):
    """stream-unary and stream-stream: grpc.aio takes their options positionally too."""

    def __call__(
        self,
        request_iterator: AsyncIterable[Any] | Iterable[Any] | None = None,
        timeout: float | None = None,
        metadata: AioMetadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        kw = {
            "timeout": timeout,
            "metadata": metadata,
            "credentials": credentials,
            "wait_for_ready": wait_for_ready,
            "compression": compression,
        }
        return self._start_call(request_iterator, kw)


class _AioStreamUnary(_AioRequestStreaming, _AioStreamUnaryBase):
    pass


class _AioStreamStream(_AioRequestStreaming, _AioStreamStreamBase):
    pass


class AioGrayChannel(grpc.aio.Channel):
    """The ``grpc.aio.Channel`` twin of :class:`GrayChannel`; create and use it on one event loop."""

    def __init__(
        self,
        balancer: Balancer,
        service: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        def factory(address: str) -> grpc.aio.Channel:
            if credentials is not None:
                return grpc.aio.secure_channel(address, credentials, options)
            return grpc.aio.insecure_channel(address, options)

        self._pending_close: list[Any] = []
        self._router = _Router(balancer, service, factory, self._pending_close.append)

    @property
    def subchannel_count(self) -> int:
        return len(self._router.subchannels)

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        **kw: Any,
    ) -> _AioUnaryUnary:
        return _AioUnaryUnary(self, method, request_serializer, response_deserializer, kw)

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        **kw: Any,
    ) -> _AioUnaryStream:
        return _AioUnaryStream(self, "unary_stream", method, request_serializer, response_deserializer, kw)

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        **kw: Any,
    ) -> _AioStreamUnary:
        return _AioStreamUnary(self, "stream_unary", method, request_serializer, response_deserializer, kw)

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        **kw: Any,
    ) -> _AioStreamStream:
        return _AioStreamStream(self, "stream_stream", method, request_serializer, response_deserializer, kw)

    async def close(self, grace: float | None = None) -> None:
        await self.reap()
        for ch in self._router.close():
            await ch.close(grace)

    def _reap_soon(self) -> None:
        if self._pending_close:  # one list check per RPC; closing happens in a task
            _spawn(self.reap())

    async def reap(self) -> int:
        """Close sub-channels of instances that left the snapshot. aio channels must be closed on
        their own loop, so the snapshot listener only queues them; the next RPC (or this call)
        closes them. Returns how many were closed."""
        pending, self._pending_close[:] = list(self._pending_close), []
        for ch in pending:
            await ch.close()
        return len(pending)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        raise NotImplementedError("a gray channel has no single connectivity state")

    async def channel_ready(self) -> None:
        """Waits for the service's first snapshot (raises :class:`~graylb.errors.NoSnapshot`
        when none comes within the balancer's ``first_snapshot_timeout``)."""
        await self._router.balancer.wait_ready(self._router.service)

    async def __aenter__(self) -> AioGrayChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
