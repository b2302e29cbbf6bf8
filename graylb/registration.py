"""The registry-neutral half of the serving side: what :class:`~graylb.consul.ConsulRegistration`
and :class:`~graylb.nacos.NacosRegistration` share.

:class:`Registration` owns the lifecycle — ``register()`` / ``deregister()`` / ``close()``, the
context manager, the ``atexit`` hook, signal handlers that deregister first and then behave as
before, and the heartbeat thread that keeps trying through outages with one warning per outage
and one line on recovery. A subclass supplies only the wire: how to register, deregister and
send one heartbeat (re-registering when the registry forgot the instance), plus its logger,
error class and the names used in log lines.

Both subclasses resolve the build they announce (version, image, commit) with
:meth:`Registration._resolve_build`, i.e. :func:`graylb.build_info.resolve_build_info`: explicit
arguments first, then the environment a container build sets. Without any version they refuse
to be constructed (:class:`~graylb.errors.MissingVersion`) unless ``require_version=False``.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import httpx

from .build_info import MISSING_VERSION_HINT, BuildInfo, resolve_build_info
from .drain import DRAINED, SERVING, Drain, DrainResult
from .errors import MissingVersion, NotReady

__all__ = ["Registration", "grpc_serving"]

R = TypeVar("R", bound="Registration")

#: A readiness probe: a callable (ready when it returns true) or an HTTP path on the instance
#: (ready on 2xx), or None (always ready).
Readiness = Callable[[], object] | str | None


def grpc_serving(target: str, timeout: float = 1.0) -> Callable[[], bool]:
    """A readiness probe for a gRPC service (``ready=grpc_serving("127.0.0.1:50051")``): ready
    once a plaintext channel to ``target`` connects within ``timeout`` seconds."""

    def serving() -> bool:
        import grpc

        with grpc.insecure_channel(target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=timeout)
            except grpc.FutureTimeoutError:
                return False
        return True

    serving.__qualname__ = f"grpc_serving({target!r})"
    return serving


class Registration:
    """Lifecycle of one registered instance. Subclasses set the class attributes, call
    ``super().__init__()`` at the end of their own ``__init__`` and implement the hooks below.

    The subclass needs ``config.address`` and ``config.timeout`` (used in log lines and to bound
    the wait for the heartbeat thread on deregistration).
    """

    #: the subclass's logger
    _log: ClassVar[logging.Logger]
    #: the registry's name in log lines ("Consul", "Nacos")
    _registry: ClassVar[str]
    #: the registry's base exception: logged as a warning (not a traceback) by close() and the heartbeat
    _error: ClassVar[type[Exception]]
    #: heartbeat thread name, followed by :attr:`_log_id`
    _thread_prefix: ClassVar[str]

    config: Any
    #: what this instance announces and where each value came from (set by :meth:`_resolve_build`)
    build: BuildInfo = BuildInfo()

    def __init__(self, *, ready: Readiness = None, ready_timeout: float = 30.0) -> None:
        if ready_timeout <= 0:
            raise ValueError(f"ready_timeout must be positive, got {ready_timeout!r}")
        self.ready = ready
        self.ready_timeout = ready_timeout
        self._not_ready = False  # the probe failed at the last heartbeat (say it once)
        self._lock = threading.RLock()  # reentrant: close() may run in a signal handler mid-call
        self._registered = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = False
        self._atexit_installed = False
        self._prev_handlers: dict[int, Any] = {}
        self._drain: Drain | None = None
        self._drain_on_signal = False

    def _resolve_build(
        self,
        service: str,
        *,
        version: object,
        image: object,
        commit: object,
        meta: Mapping[str, object],
        meta_name: str,
        env: Mapping[str, str] | None,
        require_version: bool,
    ) -> BuildInfo:
        """Resolve (and keep in :attr:`build`) the version, image and commit to announce.
        Raises :class:`MissingVersion` when there is no version and ``require_version``."""
        build = resolve_build_info(version=version, image=image, commit=commit, meta=meta, meta_name=meta_name, env=env)
        if build.version is None and require_version:
            raise MissingVersion(f"{type(self).__name__}({service!r})", MISSING_VERSION_HINT)
        self.build = build
        return build

    @property
    def version_source(self) -> str | None:
        """Where the version came from: ``"argument"``, ``"meta"`` / ``"metadata"`` (the
        caller's own metadata), ``"SERVICE_VERSION"``, ``"OTEL_SERVICE_VERSION"`` or
        ``"OTEL_RESOURCE_ATTRIBUTES"``; None when registering without a version."""
        return self.build.version_source

    # ------------------------------------------------------------------ hooks (the wire)

    @property
    def _log_id(self) -> str:
        """The instance as named in log lines."""
        raise NotImplementedError

    def _registered_note(self) -> str:
        """What goes in parentheses after "registered ... at <address>"."""
        raise NotImplementedError

    def _put_registration(self) -> None:
        """Register (or re-register) the instance; raise the registry's errors on failure."""
        raise NotImplementedError

    def _delete_registration(self) -> None:
        """Remove the instance; an instance the registry already forgot is not an error."""
        raise NotImplementedError

    def _needs_heartbeat(self) -> bool:
        """Whether this instance has to be kept alive by a heartbeat thread."""
        raise NotImplementedError

    def _beat_interval(self) -> float:
        """Seconds until the next heartbeat (also the retry interval during an outage)."""
        raise NotImplementedError

    def propagation_time(self) -> float:
        """Seconds until callers have seen this instance leave the registry: the default grace
        of :meth:`drain`."""
        raise NotImplementedError

    def _probe_origin(self) -> str:
        """``http://host:port`` of the instance, where a readiness path is probed."""
        raise NotImplementedError

    def _mark_not_ready(self, why: str) -> None:
        """The instance stopped being ready: tell the registry (default: send no heartbeat, so it
        lapses to unhealthy as it would for a hung process)."""

    def _beat(self) -> None:
        """One heartbeat, under the lock; re-registers when the registry no longer knows the
        instance. Raises the registry's errors on failure."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API

    def probe(self) -> tuple[bool, str | None]:
        """Run the readiness probe once: (ready, what it answered when not). Always ready
        without one. A callable is ready when it returns true (raising: not ready); a path is
        ready when ``GET http://host:port<path>`` answers 2xx."""
        ready = self.ready
        if ready is None:
            return True, None
        try:
            if callable(ready):
                return (True, None) if ready() else (False, "returned false")
            response = httpx.get(self._probe_origin() + ready, timeout=2.0)
            if response.is_success:
                return True, None
            return False, f"HTTP {response.status_code}"
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means "not ready"
            return False, f"{type(exc).__name__}: {exc}"

    def _describe_probe(self) -> str:
        ready = self.ready
        if isinstance(ready, str):
            return f"GET {self._probe_origin()}{ready}"
        return getattr(ready, "__qualname__", repr(ready))

    def wait_ready(self, timeout: float | None = None) -> None:
        """Return once the readiness probe passes; raise :class:`~graylb.errors.NotReady` after
        ``timeout`` (default ``ready_timeout``). :meth:`register` calls it first."""
        if self.ready is None:
            return
        waited = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + waited
        pause = 0.02
        while True:
            ok, last = self.probe()
            if ok:
                return
            if time.monotonic() + pause > deadline:
                raise NotReady(self._log_id, self._describe_probe(), waited, last)
            self._stop.wait(pause)
            pause = min(pause * 2, 0.5)

    def register(self) -> None:
        """Wait for the readiness probe (if any), register (or re-register) and start the
        heartbeat when the instance needs one."""
        self.wait_ready()
        with self._lock:
            self._put_registration()
            self._registered = True
            self._outage = False
            if not self._atexit_installed:
                atexit.register(self.close)
                self._atexit_installed = True
            if self._needs_heartbeat() and (self._thread is None or not self._thread.is_alive()):
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._heartbeat, name=f"{self._thread_prefix}{self._log_id}", daemon=True
                )
                self._thread.start()
        # The build (and where its version came from) goes in this one line: it is what an
        # operator checks first when the registry shows an unexpected version.
        self._log.info(
            "graylb: registered %s in %s at %s (%s; %s)",
            self._log_id,
            self._registry,
            self.config.address,
            self._registered_note(),
            self.build.describe(),
        )

    def deregister(self) -> None:
        """Stop the heartbeat and remove the instance. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.config.timeout + 1.0)
        with self._lock:
            if not self._registered:
                return
            self._delete_registration()
            self._registered = False
            self._thread = None
        self._log.info("graylb: deregistered %s from %s at %s", self._log_id, self._registry, self.config.address)

    @property
    def drainer(self) -> Drain:
        """The :class:`~graylb.drain.Drain` of this instance: hand it to the drain middleware
        (``DrainASGIMiddleware(app, registration.drainer)``) so requests see the drain."""
        with self._lock:
            if self._drain is None:
                self._drain = Drain(self)
            return self._drain

    def drain(self, grace: float | None = None, timeout: float | None = None) -> DrainResult:
        """Leave without losing a request (:mod:`graylb.drain`): deregister, keep serving for
        ``grace`` seconds (default :meth:`propagation_time`) while callers notice, then refuse
        new requests with the drain marker and wait up to ``timeout`` for those in flight."""
        return self.drainer.drain(grace, timeout)

    def close(self) -> None:
        """:meth:`deregister`, but never raises (a failure is logged): for ``finally`` blocks,
        signal handlers and interpreter exit. Safe to call any number of times."""
        try:
            self.deregister()
        except self._error as exc:
            self._log.warning("graylb: could not deregister %s: %s", self._log_id, exc)
        except Exception:  # noqa: BLE001 - close() must not raise at exit
            self._log.exception("graylb: could not deregister %s", self._log_id)
        self._after_deregister()
        if self._atexit_installed:
            atexit.unregister(self.close)
            self._atexit_installed = False

    def _after_deregister(self) -> None:
        """Called by :meth:`close` after deregistering (successful or not): release resources."""

    @property
    def registered(self) -> bool:
        return self._registered

    def __enter__(self: R) -> R:
        self.register()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def install_signal_handlers(
        self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT), *, drain: bool = False
    ) -> None:
        """On each signal: :meth:`close`, then what the signal did before — the previous Python
        handler is called (for SIGINT that is normally the one raising KeyboardInterrupt); a
        default disposition is restored and the signal re-sent, so the process dies of it as it
        would have; an ignored signal stays ignored after deregistering. Main thread only.

        ``drain=True``: :meth:`drain` first, on a thread of its own (the main thread keeps
        serving), and only then the above, signal re-sent to this process once drained."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "install_signal_handlers() must be called from the main thread (Python delivers signals there)"
            )
        for sig in signals:
            previous = signal.getsignal(sig)
            if previous != self._on_signal:  # installing twice must not chain to ourselves
                self._prev_handlers[int(sig)] = previous
            signal.signal(sig, self._on_signal)
        self._drain_on_signal = drain

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._drain_on_signal:
            drainer = self.drainer
            if drainer.state == SERVING:
                threading.Thread(
                    target=self._drain_then_resend, args=(signum,), name="graylb-drain", daemon=True
                ).start()
                return
            if drainer.state != DRAINED:
                return  # a drain is under way: the signal is re-sent when it ends
        self.close()
        previous = self._prev_handlers.get(signum, signal.SIG_DFL)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # SIG_DFL (or unknown: a handler installed from C): die of the signal as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _drain_then_resend(self, signum: int) -> None:
        try:
            self.drain()
        finally:
            os.kill(os.getpid(), signum)  # now drained: the handler closes and does what it did before

    # ------------------------------------------------------------------ heartbeat

    def _still_ready(self) -> bool:
        """Probe before each heartbeat: the registry reflects readiness after registering too.
        Says it once when the instance stops being ready and once when it is ready again."""
        if self.ready is None:
            return True
        ok, last = self.probe()
        if ok:
            if self._not_ready:
                self._not_ready = False
                self._log.info("graylb: %s ready again: heartbeat resumed", self._log_id)
            return True
        if not self._not_ready:
            self._not_ready = True
            self._log.warning(
                "graylb: %s not ready (%s: %s): %s no longer sees it healthy",
                self._log_id,
                self._describe_probe(),
                last,
                self._registry,
            )
        try:
            with self._lock:
                if self._registered and not self._stop.is_set():
                    self._mark_not_ready(f"readiness probe: {last}")
        except Exception as exc:  # noqa: BLE001 - the heartbeat keeps going
            self._log.warning("graylb: could not mark %s not ready: %s", self._log_id, exc)
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._beat_interval()):
            try:
                if not self._still_ready():
                    continue
                with self._lock:
                    if self._stop.is_set() or not self._registered:
                        return
                    self._beat()
                recovered, self._outage = self._outage, False
                if recovered:
                    self._log.info("graylb: %s heartbeat for %s recovered", self._registry, self._log_id)
            except self._error as exc:
                if not self._outage:
                    self._outage = True
                    self._log.warning(
                        "graylb: %s heartbeat for %s failing, will keep trying every %.3gs: %s",
                        self._registry,
                        self._log_id,
                        self._beat_interval(),
                        exc,
                    )
            except Exception:  # noqa: BLE001 - the heartbeat must survive anything
                if not self._outage:
                    self._outage = True
                    self._log.exception("graylb: %s heartbeat for %s failed", self._registry, self._log_id)
