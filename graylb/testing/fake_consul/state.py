"""FakeConsul's registry state: the agent's nodes, services, checks and KV store with their raft
indexes (per table, per service name, KV tombstones, the "extinction" and streaming-view
indexes), and what the agent does on its own: TTL expiry, HTTP / TCP probes, deferred output
syncs and reaping services critical for too long (``DeregisterCriticalServiceAfter``).

:class:`_ConsulState` is the part of :class:`~graylb.testing.fake_consul.FakeConsul` that holds
and changes that state (its test controls ``register`` ... ``reset_index`` included); the HTTP
API in :mod:`.server` reads it under the same lock.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from .decoding import _q

_STATUSES = ("passing", "warning", "critical")
_META_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_ACCESSOR_NS = uuid.UUID("5b1f3c1e-8f6e-4d0a-9a57-6f0c2a1b7e11")
_CONSUL_VERSION = "1.16.1"  # the agent version the fake reports (node Meta, the consul service)


# --------------------------------------------------------------------------------------------
# Records (a node, a service instance, a check, a KV entry) and raft transactions
# --------------------------------------------------------------------------------------------


class _Indexed(Protocol):
    """What every record carries: the raft indexes it was created and last modified at."""

    create_index: int
    modify_index: int


@dataclasses.dataclass
class _Node:
    name: str
    address: str
    id: str
    create_index: int
    modify_index: int


@dataclasses.dataclass
class _Service:
    id: str
    name: str
    node: str
    tags: list[str] | None
    address: str
    port: int
    meta: dict[str, str] | None
    weights: tuple[int, int]
    enable_tag_override: bool = False
    tagged_addresses: dict[str, dict[str, Any]] | None = None
    kind: str = ""
    local: bool = True  # managed by the agent (visible in /v1/agent/services)
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: _Service) -> bool:
        return (
            self.id,
            self.name,
            self.node,
            self.tags,
            self.address,
            self.port,
            self.meta,
            self.weights,
            self.enable_tag_override,
            self.tagged_addresses,
            self.kind,
        ) == (
            other.id,
            other.name,
            other.node,
            other.tags,
            other.address,
            other.port,
            other.meta,
            other.weights,
            other.enable_tag_override,
            other.tagged_addresses,
            other.kind,
        )


@dataclasses.dataclass
class _Check:
    id: str
    name: str
    node: str
    status: str
    output: str = ""
    notes: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: list[str] | None = None
    type: str = ""
    interval_ns: int = 0
    timeout_ns: int = 0
    ttl_ns: int = 0
    http: str = ""
    method: str = ""
    header: dict[str, list[str]] | None = None
    tls_skip_verify: bool = False
    tcp: str = ""
    reap_after: float = 0.0  # seconds; 0 = never
    create_index: int = 0
    modify_index: int = 0
    # agent-side runtime
    agent_output: str = ""
    pending_since: float | None = None  # an output-only change waiting for check_update_interval
    ttl_deadline: float | None = None
    critical_since: float | None = None
    next_probe: float | None = None
    probing: bool = False

    def visible(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.status,
            self.output,
            self.notes,
            self.service_id,
            self.service_name,
            self.service_tags,
            self.type,
            self.interval_ns,
            self.timeout_ns,
        )


@dataclasses.dataclass
class _KV:
    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int


class _Txn:
    """One raft apply: every change in it shares one index, allocated on first use."""

    def __init__(self, fake: _ConsulState) -> None:
        self.fake = fake
        self.idx: int | None = None

    def bump(self) -> int:
        if self.idx is None:
            self.idx = self.fake._index + 1
        return self.idx


# --------------------------------------------------------------------------------------------
# What the agent checks and adds when a service is registered (HTTP or register())
# --------------------------------------------------------------------------------------------


def _default_tagged_addresses(
    tagged: dict[str, dict[str, Any]] | None, address: str, port: int
) -> dict[str, dict[str, Any]] | None:
    """What the agent adds to a service registered with an IP address (``addServiceInternal``):
    ``lan_ipv4`` / ``wan_ipv4`` (or ``lan_ipv6`` / ``wan_ipv6``) = that address and port, unless
    the registration gave them. A host name or an empty address adds nothing."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return tagged
    fam = "ipv4" if ip.version == 4 else "ipv6"
    out = dict(tagged or {})
    for key in (f"lan_{fam}", f"wan_{fam}"):
        out.setdefault(key, {"Address": address, "Port": port})
    return out


def _weights_error(w: tuple[int, int]) -> str | None:
    """Consul's structs.ValidateWeights."""
    passing, warning = w
    if passing < 1:
        return "Passing must be greater than 0"
    if warning < 0:
        return "Warning must be greater or equal than 0"
    if passing > 65535 or warning > 65535:
        return "DNS Weight must be between 0 and 65535"
    return None


def _meta_error(meta: dict[str, str]) -> str | None:
    """Consul's structs.ValidateMetadata (service kind: no reserved keys allowed)."""
    if len(meta) > 64:
        return "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in sorted(meta.items()):
        problem = None
        if key == "":
            problem = "Key cannot be blank"
        elif not _META_KEY_RE.match(key):
            problem = "Key contains invalid characters"
        elif len(key) > 128:
            problem = "Key is too long (limit: 128 characters)"
        elif key.startswith("consul-"):
            problem = "Key prefix 'consul-' is reserved for internal use"
        elif len(value) > 512:
            problem = "Value is too long (limit: 512 characters)"
        if problem:
            return f"Couldn't load metadata pair ('{key}', '{value}'): {problem}"
    return None


# --------------------------------------------------------------------------------------------
# The state and its changes
# --------------------------------------------------------------------------------------------


class _ConsulState:
    """The registry state of :class:`~graylb.testing.fake_consul.FakeConsul` and everything that
    changes it. A mixin: FakeConsul calls :meth:`_init_state` once ``_init_base`` has made the
    lock and ``node`` / ``node_address`` are set; the reaper thread calls :meth:`_reap_once`."""

    # from FakeBase / FakeConsul
    _lock: threading.RLock
    node: str
    node_address: str
    check_update_interval: float

    # ---- set-up and restart -----------------------------------------------------------------

    def _init_state(self) -> None:
        node, node_address = self.node, self.node_address
        self._cond = threading.Condition(self._lock)  # every write and stop() notify it
        self._abandon = 0  # bumped by reset_index(): parked queries answer at once

        self._nodes: dict[str, _Node] = {}
        self._services: dict[tuple[str, str], _Service] = {}
        self._checks: dict[tuple[str, str], _Check] = {}
        self._kv: dict[str, _KV] = {}
        self._tombstones: dict[str, int] = {}
        self._nodes_index = self._services_index = self._checks_index = self._kv_index = 0
        self._svc_index: dict[str, int] = {}
        self._extinction_index = 0
        # The agent serves blocking health queries from a streaming "materialized view" per
        # service name: its index starts at the name's index when the view is first made, then
        # moves only with changes of that name (see _view_index).
        self._name_events: dict[str, int] = {}
        self._views: dict[str, int] = {}
        self._index = 4
        with self._txn() as t:  # the agent's node, its serfHealth and (a server agent) the consul service
            self._ensure_node(t, node_address)
            idx = t.bump()
            self._services[(node, "consul")] = _Service(
                "consul",
                "consul",
                node,
                [],
                "",
                8300,
                {
                    "non_voter": "false",
                    "raft_version": "3",
                    "read_replica": "false",
                    "serf_protocol_current": "2",
                    "serf_protocol_max": "5",
                    "serf_protocol_min": "1",
                    "version": _CONSUL_VERSION,
                },
                (1, 1),
                local=False,
                create_index=idx,
                modify_index=idx,
            )
            self._services_index = idx
            self._svc_index["consul"] = idx
        self._index = 10

    def _restarted(self, now: float) -> None:
        self._views.clear()  # a restarted agent has no materialized views yet
        for chk in self._checks.values():  # an agent restart restarts the check timers
            if chk.ttl_ns:
                chk.ttl_deadline = now + chk.ttl_ns / 1e9
            if chk.status == "critical":
                chk.critical_since = now
            if chk.type in ("http", "tcp"):
                chk.probing = False
                chk.next_probe = now + random.uniform(0, chk.interval_ns / 1e9)

    # ---- test controls ----------------------------------------------------------------------

    @property
    def index(self) -> int:
        with self._lock:
            return self._index

    def register(
        self,
        name: str,
        *,
        id: str | None = None,
        address: str = "",
        port: int = 0,
        tags: list[str] | None = None,
        meta: Mapping[str, str] | None = None,
        weights: Mapping[str, int] | int | None = None,
        check_status: str | None = "passing",
        node_address: str | None = None,
    ) -> str:
        if not name:
            raise ValueError("name is required")
        if check_status is not None and check_status not in _STATUSES:
            raise ValueError(f"check_status must be one of {_STATUSES} or None")
        sid = id or name
        if isinstance(weights, int):
            w = (weights, 1)
        elif weights is not None:
            low = {k.lower(): v for k, v in weights.items()}
            w = (int(low.get("passing", 0)), int(low.get("warning", 0)))
        else:
            w = (1, 1)
        if weights is not None and (err := _weights_error(w)):
            raise ValueError(f"Invalid Weights: {err}")
        if meta is not None and (err := _meta_error(dict(meta))):
            raise ValueError(f"Invalid Service Meta: {err}")
        now = time.monotonic()
        with self._txn() as t:
            node = self._ensure_node(t, self.node_address if node_address is None else node_address)
            local = node.name == self.node
            svc = _Service(
                sid,
                name,
                node.name,
                list(tags) if tags is not None else None,
                address,
                int(port),
                dict(meta) if meta is not None else None,
                w,
                tagged_addresses=_default_tagged_addresses(None, address, int(port)) if local else None,
                local=local,
            )
            checks = (
                [_Check(f"service:{sid}", f"Service '{name}' check", node.name, check_status)] if check_status else []
            )
            self._apply_registration(t, svc, checks, replace=True, now=now, restore=False)
        return sid

    def deregister(self, service_id: str) -> None:
        with self._txn() as t:
            key = self._find_service(service_id)
            if key is None:
                raise KeyError(f"unknown service id {service_id!r}")
            self._remove_service(t, key)

    def set_check_status(self, service_id_or_check_id: str, status: str) -> None:
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}")
        now = time.monotonic()
        with self._txn() as t:
            chk = self._find_check(service_id_or_check_id)
            if chk is not None:
                targets = [chk]
            else:
                key = self._find_service(service_id_or_check_id)
                if key is None:
                    raise KeyError(f"no check or service with id {service_id_or_check_id!r}")
                targets = [c for c in self._checks.values() if c.node == key[0] and c.service_id == key[1]]
                if not targets:
                    raise KeyError(f"service {service_id_or_check_id!r} has no checks")
            for chk in targets:
                if chk.ttl_ns:
                    chk.ttl_deadline = now + chk.ttl_ns / 1e9
                chk.pending_since = None
                chk.agent_output = chk.output
                if chk.status != status:
                    self._write_check(t, chk, status, chk.output, now)

    def kv_put(self, key: str, value: bytes | str | None, flags: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        with self._txn() as t:
            self._kv_set(t, key, data, flags)

    def kv_get(self, key: str) -> bytes | None:
        with self._lock:
            ent = self._kv.get(key)
            return None if ent is None else (ent.value or b"")

    def kv_delete(self, key: str) -> None:
        with self._txn() as t:
            self._kv_delete(t, key)

    def reset_index(self, to: int = 1) -> None:
        """Simulate a snapshot restore: indexes go backwards to ``to`` and parked queries wake."""
        if to < 1:
            raise ValueError("to must be >= 1")
        with self._lock:

            def clamp(v: int) -> int:
                return min(v, to)

            records: list[_Indexed] = [
                *self._nodes.values(),
                *self._services.values(),
                *self._checks.values(),
                *self._kv.values(),
            ]
            for obj in records:
                obj.create_index, obj.modify_index = clamp(obj.create_index), clamp(obj.modify_index)
            self._tombstones = {k: clamp(v) for k, v in self._tombstones.items()}
            self._svc_index = {k: clamp(v) for k, v in self._svc_index.items()}
            self._nodes_index, self._services_index = clamp(self._nodes_index), clamp(self._services_index)
            self._checks_index, self._kv_index = clamp(self._checks_index), clamp(self._kv_index)
            self._extinction_index = clamp(self._extinction_index)
            self._name_events = {k: clamp(v) for k, v in self._name_events.items()}
            self._views.clear()  # the agent's streaming views start over from the restored state
            self._index = to
            self._abandon += 1
            self._cond.notify_all()

    # ---- state changes (lock held) ----------------------------------------------------------

    @contextmanager
    def _txn(self) -> Iterator[_Txn]:
        with self._cond:
            t = _Txn(self)
            try:
                yield t
            finally:
                if t.idx is not None:
                    self._index = t.idx
                    self._cond.notify_all()

    def _ensure_node(self, t: _Txn, address: str) -> _Node:
        name = self.node if address == self.node_address else f"{self.node}-{address or 'no-address'}"
        node = self._nodes.get(name)
        if node is None:
            idx = t.bump()
            node = _Node(name, address, str(uuid.uuid5(_ACCESSOR_NS, "node:" + name)), idx, idx)
            self._nodes[name] = node
            self._nodes_index = idx
            self._checks[(name, "serfHealth")] = _Check(
                "serfHealth",
                "Serf Health Status",
                name,
                "passing",
                "Agent alive and reachable",
                agent_output="Agent alive and reachable",
                create_index=idx,
                modify_index=idx,
            )
            self._checks_index = idx
        return node

    def _find_service(self, service_id: str) -> tuple[str, str] | None:
        if (self.node, service_id) in self._services:
            return (self.node, service_id)
        for key in self._services:
            if key[1] == service_id:
                return key
        return None

    def _find_check(self, check_id: str) -> _Check | None:
        chk = self._checks.get((self.node, check_id))
        if chk is not None:
            return chk
        return next((c for c in self._checks.values() if c.id == check_id), None)

    def _touch_name(self, t: _Txn, name: str) -> None:
        self._svc_index[name.lower()] = self._name_events[name.lower()] = t.bump()

    def _apply_registration(
        self, t: _Txn, svc: _Service, checks: list[_Check], *, replace: bool, now: float, restore: bool = True
    ) -> None:
        key = (svc.node, svc.id)
        old = self._services.get(key)
        if old is None or not old.same(svc):
            idx = t.bump()
            svc.create_index = old.create_index if old else idx
            svc.modify_index = idx
            self._services[key] = svc
            self._services_index = idx
            self._touch_name(t, svc.name)
            if old is not None and old.name.lower() != svc.name.lower():
                self._after_instance_removed(t, old.name)
        else:
            old.local = svc.local
            svc = old
        wanted: set[str] = set()
        for chk in checks:
            wanted.add(chk.id)
            chk.service_id, chk.service_name, chk.service_tags = (
                svc.id,
                svc.name,
                (list(svc.tags) if svc.tags is not None else None),
            )
            prev = self._checks.get((svc.node, chk.id))
            if prev is not None and restore:  # the agent restores a re-registered check's state
                chk.status, chk.output, chk.agent_output = prev.status, prev.output, prev.agent_output
                chk.pending_since, chk.critical_since = prev.pending_since, prev.critical_since
            if chk.ttl_ns:
                chk.ttl_deadline = now + chk.ttl_ns / 1e9
            if chk.type in ("http", "tcp"):
                chk.next_probe = now + random.uniform(0, chk.interval_ns / 1e9)
            if chk.status == "critical" and chk.critical_since is None:
                chk.critical_since = now
            if prev is not None and prev.visible() == chk.visible():
                chk.create_index, chk.modify_index = prev.create_index, prev.modify_index
            else:
                idx = t.bump()
                chk.create_index = prev.create_index if prev else idx
                chk.modify_index = idx
                self._checks_index = idx
                self._touch_name(t, svc.name)
            self._checks[(svc.node, chk.id)] = chk
        if replace:
            for ckey, c in list(self._checks.items()):
                if c.node == svc.node and c.service_id == svc.id and c.id not in wanted:
                    del self._checks[ckey]
                    self._checks_index = t.bump()
                    self._touch_name(t, svc.name)

    def _remove_service(self, t: _Txn, key: tuple[str, str]) -> None:
        svc = self._services.pop(key)
        idx = t.bump()
        self._services_index = idx
        for ckey, c in list(self._checks.items()):
            if c.node == svc.node and c.service_id == svc.id:
                del self._checks[ckey]
                self._checks_index = idx
        self._after_instance_removed(t, svc.name)

    def _after_instance_removed(self, t: _Txn, name: str) -> None:
        lname = name.lower()
        if any(s.name.lower() == lname for s in self._services.values()):
            self._svc_index[lname] = self._name_events[lname] = t.bump()
        else:
            self._svc_index.pop(lname, None)
            self._extinction_index = self._name_events[lname] = t.bump()

    def _write_check(self, t: _Txn, chk: _Check, status: str, output: str, now: float) -> None:
        """A change the catalog sees at once (status changes; synced output)."""
        idx = t.bump()
        if status == "critical" and chk.status != "critical":
            chk.critical_since = now
        elif status != "critical":
            chk.critical_since = None
        chk.status, chk.output, chk.modify_index = status, output, idx
        self._checks_index = idx
        if chk.service_id:
            svc = self._services.get((chk.node, chk.service_id))
            if svc is not None:
                self._touch_name(t, svc.name)
        else:  # a node check changes the health of every instance on the node
            for s in self._services.values():
                if s.node == chk.node:
                    self._touch_name(t, s.name)

    def _agent_update(self, t: _Txn, chk: _Check, status: str, output: str, now: float) -> None:
        """The local agent updates a check (TTL endpoint, TTL expiry, probe result)."""
        chk.agent_output = output
        if chk.status == status:
            if chk.output == output:
                chk.pending_since = None
            elif chk.pending_since is None:  # output-only: synced after check_update_interval
                chk.pending_since = now
            return
        chk.pending_since = None
        self._write_check(t, chk, status, output, now)

    def _kv_set(self, t: _Txn, key: str, value: bytes | None, flags: int) -> None:
        value = value or None
        old = self._kv.get(key)
        if old is not None and old.value == value and old.flags == flags:
            return
        idx = t.bump()
        self._kv[key] = _KV(key, value, flags, old.create_index if old else idx, idx)
        self._kv_index = idx

    def _kv_delete(self, t: _Txn, key: str) -> None:
        if key in self._kv:
            idx = t.bump()
            del self._kv[key]
            self._tombstones[key] = idx
            self._kv_index = idx

    # ---- background: TTLs, probes, deferred output, reaping --------------------------------

    def _reap_once(self) -> None:
        now = time.monotonic()
        with self._txn() as t:
            for chk in list(self._checks.values()):
                if chk.ttl_ns and chk.ttl_deadline is not None and now >= chk.ttl_deadline:
                    chk.ttl_deadline = None  # the timer fires once; an update restarts it
                    last = chk.agent_output
                    expired = (
                        "TTL expired"
                        if not last or last.startswith("TTL expired")
                        else f"TTL expired (last output before timeout follows): {last}"
                    )
                    self._agent_update(t, chk, "critical", expired, now)
                if chk.pending_since is not None and now - chk.pending_since >= self.check_update_interval:
                    chk.pending_since = None
                    self._write_check(t, chk, chk.status, chk.agent_output, now)
                if chk.next_probe is not None and not chk.probing and now >= chk.next_probe:
                    chk.probing = True
                    threading.Thread(
                        target=self._probe, args=(chk,), name=f"fake-consul-probe-{chk.id}", daemon=True
                    ).start()
            reaped: set[tuple[str, str]] = set()
            for chk in list(self._checks.values()):
                key = (chk.node, chk.service_id)
                if (
                    chk.reap_after
                    and chk.service_id
                    and chk.status == "critical"
                    and chk.critical_since is not None
                    and now - chk.critical_since > chk.reap_after
                    and key not in reaped
                    and key in self._services
                ):
                    reaped.add(key)
                    self._remove_service(t, key)

    def _probe(self, chk: _Check) -> None:
        timeout = (chk.timeout_ns or 10_000_000_000) / 1e9
        if chk.type == "http":
            method = chk.method or "GET"
            headers = {"User-Agent": "Consul Health Check", "Accept": "text/plain, text/*, */*"}
            for name, values in (chk.header or {}).items():
                if values:
                    headers[name] = values[0]
            handlers: list[Any] = [urllib.request.ProxyHandler({})]
            if chk.tls_skip_verify:
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                handlers.append(urllib.request.HTTPSHandler(context=ctx))
            opener = urllib.request.build_opener(*handlers)
            try:
                try:
                    with opener.open(
                        urllib.request.Request(chk.http, method=method, headers=headers), timeout=timeout
                    ) as r:
                        code, reason, body = r.status, r.reason, r.read(4096)
                except urllib.error.HTTPError as e:
                    code, reason, body = e.code, e.reason, e.read(4096)
                status = "passing" if 200 <= code < 300 else "warning" if code == 429 else "critical"
                output = f"HTTP {method} {chk.http}: {code} {reason} Output: {body.decode(errors='replace')}"
            except Exception as e:  # noqa: BLE001
                status, output = (
                    "critical",
                    f"{method[:1]}{method[1:].lower()} {_q(chk.http)}: {getattr(e, 'reason', e)}",
                )
        else:
            host, _, port = chk.tcp.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
                status, output = "passing", f"TCP connect {chk.tcp}: Success"
            except (OSError, ValueError) as e:
                status, output = "critical", f"dial tcp {chk.tcp}: {e}"
        now = time.monotonic()
        with self._txn() as t:
            chk.probing = False
            if self._checks.get((chk.node, chk.id)) is chk:
                chk.next_probe = now + chk.interval_ns / 1e9
                self._agent_update(t, chk, status, output, now)

    # ---- indexes a read reports -------------------------------------------------------------

    def _health_index(self, lname: str) -> int:
        if lname in self._svc_index:
            return self._svc_index[lname]
        if self._extinction_index:
            return self._extinction_index
        return max(self._nodes_index, self._services_index, self._checks_index)

    def _view_index(self, lname: str) -> int:
        """Index of a blocking (``?index=N``) health query, which a real agent answers from its
        streaming view of the service: the view starts at the name's index when it is first
        made and from then on moves only with events for that name. So, unlike a non-blocking
        read of a service without instances (extinction or catalog index), a blocking one is not
        woken by other services' changes."""
        created = self._views.get(lname)
        if created is None:
            created = self._views[lname] = self._health_index(lname)
        return max(created, self._name_events.get(lname, 0))

    def _prefix_index(self, prefix: str) -> int:
        if not prefix:
            return self._kv_index
        lindex = max(
            [e.modify_index for k, e in self._kv.items() if k.startswith(prefix)]
            + [i for k, i in self._tombstones.items() if k.startswith(prefix)],
            default=0,
        )
        return lindex or self._kv_index
