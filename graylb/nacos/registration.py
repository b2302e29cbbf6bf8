"""Serving side: register this process in Nacos with the metadata graylb routes on, keep the
ephemeral instance alive with heartbeats, and deregister on shutdown.

```python
reg = NacosRegistration(NacosConfig.from_env(), "orders", ip="10.0.0.7", port=8080,
                        version="2.0.0", lane=None, weight=1.0)
with reg:                          # register(); close() on the way out
    reg.install_signal_handlers()  # SIGTERM / SIGINT deregister first, then behave as before
    serve_forever()
```

What Nacos receives (``POST /{v1|v2}/ns/instance``, form body): ``serviceName``, ``groupName``,
``namespaceId``, ``clusterName``, ``ip``, ``port``, ``weight`` (Nacos's double, 0..10000;
graylb's discovery routes by weight × 100, so 1.0 weighs like graylb's default 100 and 0 means
no traffic), ``enabled``, ``healthy``, ``ephemeral`` and ``metadata`` — the caller's metadata
plus ``version``, ``image`` and ``commit`` (each when known) and ``lane`` (when set), as JSON.
Version, image and commit come from the arguments, else from the build's environment
(``SERVICE_VERSION``, ``OTEL_SERVICE_VERSION``, ``OTEL_RESOURCE_ATTRIBUTES``, ``SERVICE_IMAGE``,
``SERVICE_COMMIT``: see :mod:`graylb.build_info`); with no version at all the constructor
raises :class:`~graylb.errors.MissingVersion` unless ``require_version=False``. A
``beat_interval`` other than Nacos's 5 s is declared as ``preserved.heart.beat.interval`` (ms)
— the server echoes it back as the beat interval to use — and, from 15 s up, with unhealthy /
delete timeouts of 3× / 6× the interval.

Ephemeral instances (the default) live only while they beat: a daemon thread sends
``PUT /v1/ns/instance/beat`` (the one beat endpoint every 1.x / 2.x server has, whatever
``api_version`` says) every ``beat_interval`` seconds, or every ``clientBeatInterval`` ms once
the server's reply names one. Like the official Java client, beats carry the ``beat`` JSON
(ip, port, cluster, weight, metadata) until the server answers ``lightBeatEnabled: true``, and
are "light" (no ``beat``) from then on. A reply with code ``10200`` (the server does not know
the instance: restarted, or the instance expired during an outage) makes it register again
with the full definition, and the next beat carries the ``beat`` JSON again. Outages are
retried on the same schedule, with one warning per outage and one line on recovery.
Persistent instances (``ephemeral=False``) send no beats; Nacos health-checks them itself.

The token (see :mod:`graylb.nacos.auth`) is never logged.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import httpx

from ..registration import Readiness, Registration
from .auth import NacosAuth
from .client import NacosConfig, NacosError, _v2_envelope, check_response

__all__ = ["NacosRegistration", "MAX_NACOS_WEIGHT", "RESOURCE_NOT_FOUND"]

log = logging.getLogger("graylb.nacos")

MAX_NACOS_WEIGHT = 10000.0
RESOURCE_NOT_FOUND = 10200  # beat reply: the server does not know this instance
_NOT_FOUND_CODES = (20004, 21003)  # v2: resource / instance not found
_MIN_INTERVAL = 0.05  # never beat faster than this, whatever the server says
_HB_INTERVAL = "preserved.heart.beat.interval"
_HB_TIMEOUT = "preserved.heart.beat.timeout"
_IP_DELETE_TIMEOUT = "preserved.ip.delete.timeout"


class NacosRegistration(Registration):
    """One instance of ``service`` in Nacos, for as long as this object is open.

    The instance ID is Nacos's ``ip#port#cluster#group@@service``. ``weight`` is Nacos's
    0..10000 double (0 = no traffic). ``version`` / ``image`` / ``commit`` default to the
    build's environment (``env``, default ``os.environ``; see :mod:`graylb.build_info`);
    :attr:`version_source` says where the version came from. No version anywhere raises
    :class:`~graylb.errors.MissingVersion` here, unless ``require_version=False``.
    ``register()`` returns once Nacos accepted the instance (it is healthy from then on).
    ``close()`` is idempotent and safe from a signal handler and at interpreter exit
    (``register()`` installs an ``atexit`` hook that ``close()`` removes).
    """

    _log = log
    _registry = "Nacos"
    _error = NacosError
    _thread_prefix = "graylb-nacos-beat-"

    def __init__(
        self,
        config: NacosConfig,
        service: str,
        *,
        ip: str,
        port: int,
        version: str | None = None,
        lane: str | None = None,
        weight: float = 1.0,
        metadata: Mapping[str, Any] | None = None,
        cluster: str = "DEFAULT",
        ephemeral: bool = True,
        beat_interval: float = 5.0,
        image: str | None = None,
        commit: str | None = None,
        require_version: bool = True,
        env: Mapping[str, str] | None = None,
        ready: Readiness = None,
        ready_timeout: float = 30.0,
    ) -> None:
        if not service or "@@" in service:
            raise ValueError(
                f"service name {service!r} must not be empty or contain '@@' (give the group in NacosConfig.group)"
            )
        if not ip:
            raise ValueError(f"service '{service}': ip must not be empty")
        if not 0 < int(port) < 65536:
            raise ValueError(f"service '{service}': port {port} outside 1..65535")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"service '{service}': weight {weight!r} is not a number") from None
        if not (math.isfinite(weight) and 0.0 <= weight <= MAX_NACOS_WEIGHT):
            raise ValueError(
                f"service '{service}': weight {weight} outside 0..{MAX_NACOS_WEIGHT:g} (Nacos's range; 0 = no traffic)"
            )
        if not beat_interval > 0:
            raise ValueError(f"service '{service}': beat_interval must be positive, got {beat_interval!r}")
        if not cluster:
            raise ValueError(f"service '{service}': cluster must not be empty")
        meta: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
        build = self._resolve_build(
            service,
            version=version,
            image=image,
            commit=commit,
            meta=meta,
            meta_name="metadata",
            env=env,
            require_version=require_version,
        )
        meta.update(build.metadata())
        if lane is not None:
            meta["lane"] = str(lane)
        # The server answers every beat with clientBeatInterval = this instance's
        # preserved.heart.beat.interval (default 5000 ms), and the client obeys it: so a
        # beat_interval other than 5 s must be declared, as the Java client does. Nacos also
        # insists that the interval is below the unhealthy / delete timeouts (15 s / 30 s).
        interval_ms = round(float(beat_interval) * 1000)
        if ephemeral and interval_ms != 5000 and _HB_INTERVAL not in meta:
            meta[_HB_INTERVAL] = str(interval_ms)
            if interval_ms >= 15000:
                meta.setdefault(_HB_TIMEOUT, str(interval_ms * 3))
                meta.setdefault(_IP_DELETE_TIMEOUT, str(interval_ms * 6))
        self.config = config
        self.service = service
        self.ip = str(ip)
        self.port = int(port)
        self.version = build.version
        self.image = build.image
        self.commit = build.commit
        self.lane = lane
        self.weight = weight
        self.metadata: dict[str, str] = meta
        self.cluster = cluster
        self.ephemeral = bool(ephemeral)
        self.beat_interval = float(beat_interval)
        self.group = config.group
        self.instance_id = f"{self.ip}#{self.port}#{cluster}#{self.group}@@{service}"
        #: seconds until the next beat: ``beat_interval`` until the server names its own
        self.current_interval = self.beat_interval
        self._light_beats = False  # the server said lightBeatEnabled: beats without the JSON
        self.auth = NacosAuth(config)

        self._http: httpx.Client | None = None
        super().__init__(ready=ready, ready_timeout=ready_timeout)

    def __repr__(self) -> str:
        return (
            f"NacosRegistration({self.service!r}, id={self.instance_id!r}, nacos={self.config.address}, "
            f"namespace={self.config.namespace!r})"
        )

    # ------------------------------------------------------------------ the wire

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = self.config.client()
        return self._http

    def _path(self) -> str:
        return f"/{self.config.api_version}/ns/instance"

    def _ident(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "serviceName": self.service,
            "groupName": self.group,
            "namespaceId": self.config.namespace,
            "clusterName": self.cluster,
            "ip": self.ip,
            "port": self.port,
            "ephemeral": self.ephemeral,
        }
        if self.config.api_version == "v2":
            params["cluster"] = self.cluster  # early 2.x v2 controllers call it "cluster"
        return params

    def _beat_info(self) -> dict[str, Any]:
        return {
            "serviceName": f"{self.group}@@{self.service}",
            "ip": self.ip,
            "port": self.port,
            "cluster": self.cluster,
            "weight": self.weight,
            "metadata": self.metadata,
            "scheduled": False,
            "period": int(self.current_interval * 1000),
            "stopped": False,
            "ephemeral": self.ephemeral,
        }

    def _put_registration(self) -> None:
        form = {
            **self._ident(),
            "weight": self.weight,
            "enabled": True,
            "healthy": True,
            "metadata": json.dumps(self.metadata, separators=(",", ":"), ensure_ascii=False),
        }
        response = self.auth.request(self._client(), "POST", self._path(), data=form)
        check_response(response, f"registering instance {self.instance_id} (namespace '{self.config.namespace}')")
        self._light_beats = False  # the first beat after a registration carries the JSON

    def _send_beat(self) -> bool:
        """One heartbeat; False when the server does not know the instance (code 10200).
        Adopts the server's ``clientBeatInterval`` for the next beat."""
        params = self._ident()
        params.pop("cluster", None)
        if not self._light_beats:
            params["beat"] = json.dumps(self._beat_info(), separators=(",", ":"), ensure_ascii=False)
        response = self.auth.request(self._client(), "PUT", "/v1/ns/instance/beat", params=params)
        check_response(response, f"sending a heartbeat for {self.instance_id}")
        try:
            body = response.json()
        except ValueError:
            return True  # a 1.x server that answers "ok": alive
        if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping) and "message" in body:
            body = body["data"]  # v2 envelope
        if not isinstance(body, Mapping):
            return True
        code = body.get("code")
        if isinstance(code, int) and code == RESOURCE_NOT_FOUND:
            # Its clientBeatInterval is the server-wide default, not ours: ignore it.
            self._light_beats = False
            return False
        self._light_beats = body.get("lightBeatEnabled") is True
        interval = body.get("clientBeatInterval")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval > 0:
            new = max(_MIN_INTERVAL, float(interval) / 1000.0)
            if abs(new - self.current_interval) > 1e-9:
                log.debug("graylb: Nacos asks %s to beat every %.3gs", self.instance_id, new)
            self.current_interval = new
        return True

    def _delete_registration(self) -> None:
        response = self.auth.request(self._client(), "DELETE", self._path(), params=self._ident())
        envelope = _v2_envelope(response)
        gone = response.status_code == 404 or (envelope is not None and envelope[0] in _NOT_FOUND_CODES)
        if not gone:  # already gone is what we wanted
            check_response(response, f"deregistering instance {self.instance_id}")

    # ------------------------------------------------------------------ hooks for Registration

    @property
    def _log_id(self) -> str:
        return self.instance_id

    def _registered_note(self) -> str:
        return f"namespace {self.config.namespace}"

    def _needs_heartbeat(self) -> bool:
        return self.ephemeral

    def _probe_origin(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def propagation_time(self) -> float:
        """3 s: graylb's Nacos discovery polls every ``refresh_interval`` (1 s by default), so
        two polls plus a second for the server to apply the deregistration."""
        return 3.0

    def _beat_interval(self) -> float:
        return self.current_interval

    def _beat(self) -> None:
        if not self._send_beat():
            log.warning(
                "graylb: Nacos at %s no longer knows %s (code %d; server restarted or instance expired): "
                "registering again",
                self.config.address,
                self.instance_id,
                RESOURCE_NOT_FOUND,
            )
            self._put_registration()

    def _after_deregister(self) -> None:
        with self._lock:
            if self._http is not None and not self._registered:
                http, self._http = self._http, None
                http.close()

    # ------------------------------------------------------------------ public API

    def register(self) -> None:
        """Register (or re-register: Nacos replaces an instance with the same ID) and, for an
        ephemeral instance, start the heartbeat. Raises NacosError subclasses on failure."""
        super().register()

    def deregister(self) -> None:
        """Stop the heartbeat and remove the instance. Idempotent: calling it again, or for an
        instance Nacos already forgot, is fine. Raises NacosUnavailable when Nacos cannot be
        reached (an ephemeral instance then expires by itself once its beats stop)."""
        super().deregister()

    def close(self) -> None:
        """:meth:`deregister`, but never raises (a failure is logged), then closes the HTTP
        client: for ``finally`` blocks, signal handlers and interpreter exit. Safe to call any
        number of times."""
        super().close()
