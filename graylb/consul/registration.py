"""Serving side: register this process in the local Consul agent with the metadata graylb routes
on, keep its health check alive, and deregister on shutdown.

```python
reg = ConsulRegistration(ConsulConfig.from_env(), "orders", address="10.0.0.7", port=8080,
                         version="2.0.0", lane=None, weight=100)
with reg:                         # register(); close() on the way out
    reg.install_signal_handlers() # SIGTERM / SIGINT deregister first, then behave as before
    serve_forever()
```

What the agent receives (``PUT /v1/agent/service/register``, sent through py-consul):

- ``Meta``: ``version``, ``image`` and ``commit`` (each when known), ``lane`` (when set),
  ``weight`` (always) and the caller's ``meta``. Version, image and commit come from the
  arguments, else from the build's environment (``SERVICE_VERSION``, ``OTEL_SERVICE_VERSION``,
  ``OTEL_RESOURCE_ATTRIBUTES``, ``SERVICE_IMAGE``, ``SERVICE_COMMIT``: see
  :mod:`graylb.build_info`); with no version at all the constructor raises
  :class:`~graylb.errors.MissingVersion` unless ``require_version=False``;
- ``Weights``: ``{"Passing": weight, "Warning": 1}`` for Consul's own consumers (DNS SRV
  weights). graylb's discovery reads ``Meta["weight"]`` first (0..10000), so the weight it
  routes by is exactly the one given here. Consul rejects ``Passing`` < 1, while in graylb
  weight 0 means "receives no traffic": weight 0 is sent as ``Passing: 1`` with
  ``Meta["weight"] = "0"``;
- one check: a TTL check (the default, ``ttl=10.0``) that a daemon thread keeps passing with
  ``PUT /v1/agent/check/pass/<check id>`` every ``ttl / 3`` seconds, or an HTTP check that the
  agent runs itself (``http_check=URL``, ``check_interval``); ``ttl=None`` and no
  ``http_check`` registers no check at all;
- ``DeregisterCriticalServiceAfter`` from ``deregister_after`` as a Go duration (``60`` ->
  ``"1m"``): the agent removes the instance after that long in ``critical`` (a crashed process
  cleans itself up). Consul's minimum is one minute; smaller values are passed through as given.

The heartbeat re-registers when the agent answers 404 for the check (it restarted and forgot
us) and keeps trying through outages, logging one warning per outage and one line on recovery.
The ACL token travels only in the ``X-Consul-Token`` header and is never logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..instance import MAX_WEIGHT
from ..registration import Readiness, Registration
from .client import ConsulConfig, ConsulError, py_consul_call

__all__ = ["ConsulRegistration", "go_duration"]

log = logging.getLogger("graylb.consul")

T = TypeVar("T")

_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration string Consul parses: ``60`` -> ``"1m"``, ``0.6`` -> ``"600ms"``."""
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {seconds!r}")
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    ms = seconds * 1000.0
    if float(ms).is_integer():
        return f"{int(ms)}ms"
    return f"{round(ms * 1000)}us"


class ConsulRegistration(Registration):
    """One service instance in the local Consul agent, for as long as this object is open.

    ``service_id`` defaults to ``<service>-<address>-<port>`` (unique per agent). ``weight`` is
    graylb's 0..10000 (0 = no traffic, see the module docs for how it is carried).
    ``version`` / ``image`` / ``commit`` default to the build's environment (``env``, default
    ``os.environ``; see :mod:`graylb.build_info`); :attr:`version_source` says where the version
    came from. No version anywhere raises :class:`~graylb.errors.MissingVersion` here, unless
    ``require_version=False``.
    ``register()`` returns once the instance is passing (TTL check) or registered (HTTP check:
    the agent's first probe decides). ``close()`` is idempotent and safe from a signal handler
    and at interpreter exit (``register()`` installs an ``atexit`` hook that ``close()`` removes).
    """

    _log = log
    _registry = "Consul"
    _error = ConsulError
    _thread_prefix = "graylb-consul-ttl-"

    def __init__(
        self,
        config: ConsulConfig,
        service: str,
        *,
        address: str,
        port: int,
        version: str | None = None,
        lane: str | None = None,
        weight: int = 100,
        meta: Mapping[str, str] | None = None,
        tags: Sequence[str] = (),
        service_id: str | None = None,
        ttl: float | None = 10.0,
        http_check: str | None = None,
        check_interval: float = 10.0,
        deregister_after: float | None = 60.0,
        image: str | None = None,
        commit: str | None = None,
        require_version: bool = True,
        env: Mapping[str, str] | None = None,
        ready: Readiness = None,
        ready_timeout: float = 30.0,
    ) -> None:
        if not service:
            raise ValueError("service name must not be empty")
        if not 0 < int(port) < 65536:
            raise ValueError(f"service '{service}': port {port} outside 1..65535")
        if not 0 <= int(weight) <= MAX_WEIGHT:
            raise ValueError(f"service '{service}': weight {weight} outside 0..{MAX_WEIGHT} (0 = no traffic)")
        if ttl is not None and ttl <= 0:
            raise ValueError(f"service '{service}': ttl must be positive, got {ttl!r}")
        if check_interval <= 0:
            raise ValueError(f"service '{service}': check_interval must be positive, got {check_interval!r}")
        full_meta: dict[str, str] = {str(k): str(v) for k, v in (meta or {}).items()}
        build = self._resolve_build(
            service,
            version=version,
            image=image,
            commit=commit,
            meta=full_meta,
            meta_name="meta",
            env=env,
            require_version=require_version,
        )
        full_meta.update(build.metadata())
        if lane is not None:
            full_meta["lane"] = str(lane)
        full_meta["weight"] = str(int(weight))  # what graylb's discovery routes by (Weights.Passing can't be 0)
        for key in full_meta:
            if not _META_KEY.match(key) or key.startswith("consul-"):
                raise ValueError(
                    f"service '{service}': meta key {key!r} is not allowed by Consul (letters, digits, '-', '_'; at "
                    "most 128; no 'consul-' prefix)"
                )
        self.config = config
        self.service = service
        self.address = address
        self.port = int(port)
        self.version = build.version
        self.image = build.image
        self.commit = build.commit
        self.lane = lane
        self.weight = int(weight)
        self.meta: dict[str, str] = full_meta
        self.tags = list(tags)
        self.service_id = service_id or _ID_UNSAFE.sub("-", f"{service}-{address}-{port}")
        self.ttl = ttl if http_check is None else None
        self.http_check = http_check
        self.check_interval = check_interval
        self.deregister_after = deregister_after
        self.check_id: str | None = f"service:{self.service_id}" if (self.ttl is not None or http_check) else None

        self._client: Any = None  # py-consul client, created on first use
        super().__init__(ready=ready, ready_timeout=ready_timeout)

    def __repr__(self) -> str:
        return (
            f"ConsulRegistration({self.service!r}, id={self.service_id!r}, address={self.address}:{self.port}, "
            f"consul={self.config.address})"
        )

    # ------------------------------------------------------------------ the wire (py-consul)

    def _consul(self) -> Any:
        if self._client is None:
            self._client = self.config.py_consul()
        return self._client

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run one py-consul call; its exceptions become graylb's Consul exceptions."""
        with py_consul_call(self.config, what):
            return fn(self._consul())

    def _definition(self) -> dict[str, Any]:
        check: dict[str, Any] | None = None
        if self.ttl is not None:
            check = {
                "CheckID": self.check_id,
                "Name": f"graylb TTL heartbeat for {self.service}",
                "TTL": go_duration(self.ttl),
            }
        elif self.http_check:
            check = {
                "CheckID": self.check_id,
                "Name": f"graylb HTTP check for {self.service}",
                "HTTP": self.http_check,
                "Interval": go_duration(self.check_interval),
            }
        if check is not None and self.deregister_after is not None:
            check["DeregisterCriticalServiceAfter"] = go_duration(self.deregister_after)
        return {
            "name": self.service,
            "service_id": self.service_id,
            "address": self.address,
            "port": self.port,
            "tags": self.tags or None,
            "meta": self.meta or None,
            "weights": {"Passing": max(1, self.weight), "Warning": 1},
            "check": check,
        }

    def _put_registration(self) -> None:
        definition = self._definition()
        self._call(
            f"registering service '{self.service}' (id {self.service_id})",
            lambda c: c.agent.service.register(**definition),
        )
        # First pass right away: the instance is passing when register() returns.
        if self.ttl is not None and not self._pass():
            raise ConsulError(
                f"Consul agent at {self.config.address} lost check {self.check_id!r} right after registering it"
            )

    def _pass(self) -> bool:
        """One TTL heartbeat; False when the agent does not know the check (404)."""
        check_id = self.check_id or ""
        return bool(
            self._call(
                f"passing check '{check_id}'", lambda c: c.agent.check.ttl_pass(check_id, token=self.config.token)
            )
        )

    def _delete_registration(self) -> None:
        self._call(
            f"deregistering service id '{self.service_id}'",
            lambda c: c.agent.service.deregister(self.service_id, token=self.config.token),
        )

    # ------------------------------------------------------------------ hooks for Registration

    @property
    def _log_id(self) -> str:
        return self.service_id

    def _registered_note(self) -> str:
        return f"check {self.check_id or 'none'}"

    def _needs_heartbeat(self) -> bool:
        return self.ttl is not None

    def _probe_origin(self) -> str:
        return f"http://{self.address}:{self.port}"

    def propagation_time(self) -> float:
        """2 s: graylb's Consul discovery (and Consul's own clients) hold blocking queries that
        answer within milliseconds of a deregistration; the rest is margin for a caller whose
        query was between two requests, or backing off after an error."""
        return 2.0

    def _mark_not_ready(self, why: str) -> None:
        # The TTL check goes critical now, not a TTL later: passing-only callers drop it at once.
        check_id = self.check_id or ""
        self._call(
            f"failing check '{check_id}'",
            lambda c: c.agent.check.ttl_fail(check_id, notes=why, token=self.config.token),
        )

    def _beat_interval(self) -> float:
        assert self.ttl is not None
        return self.ttl / 3.0

    def _beat(self) -> None:
        if not self._pass():
            log.warning(
                "graylb: Consul agent at %s no longer knows check %s (agent restarted?): registering %s again",
                self.config.address,
                self.check_id,
                self.service_id,
            )
            self._put_registration()

    # ------------------------------------------------------------------ public API

    def register(self) -> None:
        """Register (or re-register: the agent replaces a service with the same ID) and start
        the heartbeat for a TTL check. Raises ConsulError subclasses on failure."""
        super().register()

    def deregister(self) -> None:
        """Stop the heartbeat and remove the instance from the agent. Idempotent: calling it
        again, or for an ID the agent no longer knows (404), is fine. Raises ConsulUnavailable
        when the agent cannot be reached (the instance is then still registered; with a check,
        ``deregister_after`` cleans it up)."""
        super().deregister()
