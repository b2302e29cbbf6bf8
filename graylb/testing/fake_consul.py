"""FakeConsul: a real Consul HTTP API on 127.0.0.1, for tests that must speak the real wire protocol.

It is a genuine HTTP/1.1 server (keep-alive, threads, real sockets), not a mock: your Consul client
code, ``py-consul`` or ``curl`` talk to it exactly as they would to a Consul agent. It models one
agent (a server in datacenter ``dc1``, node ``fake-node``) with the slice of the API graylb uses:
health and catalog reads with blocking queries, agent service registration with TTL / HTTP / TCP
checks, KV, and ACL tokens. Where behaviour had to be chosen it follows a real agent (Consul
1.16 source: ``agent/http.go``, ``health_endpoint.go``, ``kvs_endpoint.go``, ``agent_endpoint.go``),
and ``tests/contract`` runs the same assertions against FakeConsul and a real Consul 1.16.1 agent.

Example::

    from graylb.testing.fake_consul import FakeConsul

    with FakeConsul(min_deregister_after=0.5) as consul:          # started on a free port
        consul.register("orders", id="orders-1", address="10.0.0.1", port=8080,
                        meta={"version": "1.4.2"}, weights={"Passing": 10, "Warning": 1})
        consul.kv_put("graylb/rules", b"version: 1\\n")
        ...  # point your client at consul.url ("http://127.0.0.1:PORT") / consul.address
        consul.set_check_status("orders-1", "warning")         # wakes blocking queries at once
        consul.fail_next(503)                                   # the next API call answers 503
        consul.stop(); consul.start()                           # "agent crashed and came back"

Constructor
-----------
``FakeConsul(*, host="127.0.0.1", port=0, acl_tokens=None, datacenter="dc1", node="fake-node",
node_address="127.0.0.1", min_deregister_after=60.0, max_wait=600.0, null_tags=False, ssl_context=None)``

- ``ssl_context``: a server-side :class:`ssl.SSLContext` serves HTTPS (``url`` becomes
  ``https://...``); with ``verify_mode = CERT_REQUIRED`` it demands client certificates.

- ``acl_tokens``: ``None`` = ACLs disabled (tokens ignored). Otherwise ``{secret: level}`` with level
  ``"write"`` (everything), ``"read"`` (service:read, node:read, key:read... every ``*:read``) or
  ``"none"`` (a valid token without policies). No token = the anonymous token, which has no
  permissions (default policy deny). Each token's AccessorID is a UUID derived from its secret
  (:meth:`accessor_id`).
- ``min_deregister_after``: floor for a check's ``DeregisterCriticalServiceAfter`` (a real agent's
  floor is 1 minute; lower it in tests).
- ``max_wait``: cap for a blocking query's ``wait`` (real: 10 min).
- ``null_tags``: emit ``"Tags": null`` for services registered without tags, like old agents did.
  Current agents (and the default here) replace a nil tag list with ``[]``; ``Meta`` stays ``null``
  either way.

Attributes and controls (all thread-safe, no HTTP involved)
----------------------------------------------------------
- ``url`` (``http://127.0.0.1:PORT``), ``host``, ``port``, ``address`` (``127.0.0.1:PORT``),
  ``index`` (current raft index; starts at 10), ``running``.
- ``start()`` binds (the same port again after ``stop()``) and returns ``self``; ``stop()`` closes
  the listener *and* every open connection (``shutdown(SHUT_RDWR)``) and kills in-flight blocking
  queries with their connections, like a crashed agent. State is kept for a later ``start()``
  (TTL timers restart then, as on a real agent restart). Also a context manager.
- ``register(name, *, id=None, address="", port=0, tags=None, meta=None, weights=None,
  check_status="passing", node_address=None) -> service_id``: register (or update) an instance.
  ``check_status`` adds one plain check ``service:<id>`` with that status (``None`` = no check);
  ``node_address`` puts the instance on another node with that address (its own ``serfHealth``;
  ``""`` makes a node without an address), ``None`` keeps it on the agent's node.
- ``deregister(service_id)``; ``set_check_status(service_id_or_check_id, status)`` (a service id
  sets all its checks; ``"serfHealth"`` is the agent node's health, which drops every instance on
  it from ``?passing`` results).
- ``kv_put(key, value, flags=0)`` (``bytes | str | None``), ``kv_get(key) -> bytes | None`` (``None`` = missing;
  a key stored with an empty value reads ``b""``), ``kv_delete(key)``.
- ``reset_index(to=1)``: snapshot restore: every stored index is clamped to ``to``, the raft index
  continues from there (indexes go backwards) and parked blocking queries wake at once and answer
  from the restored state.
- ``fail_next(status, count=1, body=None)``, ``fail_all(status, body=None)``, ``heal()`` (clears both),
  ``stall(seconds)`` (0 = off): applied to every ``/v1`` request before routing. Default bodies:
  500 ``rpc error making call: EOF``, 429 ``rate limit exceeded``, 503 ``No cluster leader``.
- ``requests``: list of :class:`RecordedRequest` (method, path as sent, target, query as a dict of
  lists, lower-case headers, body); ``clear_requests()``.
- ``blocking_queries`` (how many are parked now) and ``wait_blocking(count=1, timeout=5.0) -> bool``
  (wait until that many are parked): lets a test change state exactly while a watcher is parked.
- ``check_update_interval`` (seconds, default 300): like a real agent, a TTL update that changes
  only the output (same status) is synced to the catalog after this long; status changes are
  immediate.

HTTP API
--------
Reads answer ``X-Consul-Index`` (never 0), ``X-Consul-Knownleader: true``, ``X-Consul-Lastcontact: 0``,
``X-Consul-Query-Backend`` (and ``X-Consul-Effective-Consistency`` on health/catalog). Header names
are sent in Go's canonical form, as a real agent does (``Knownleader``, not ``KnownLeader``;
HTTP header names are case-insensitive). Every API response carries
``X-Consul-Default-Acl-Policy`` (``allow`` / ``deny``). Errors are plain text; error responses carry
no index, except where a real agent sends one (KV 404; ``400 Invalid value for ?passing``).

- ``GET /v1/health/service/<name>``: ``passing`` (``?passing``, ``1``, ``true``...; ``false``/``0`` = off;
  anything else 400 after the query, as in Consul), ``tag`` (repeatable, case-insensitive, all
  must match), ``node-meta=k:v``, ``filter`` (a go-bexpr subset: ``==``, ``!=``, ``in``, ``not in``,
  ``contains``, ``matches``, ``is empty``, ``and``/``or``/``not``/``()``, over ``Node.*`` and
  ``Service.*`` such as ``Service.Meta.lane == "gray"`` or ``"v2" in Service.Tags``; anything else
  is a 500 ``Failed to create boolean expression evaluator: ...``, as in Consul 1.16), ``index``/``wait``, ``dc``,
  ``stale``/``consistent``, ``pretty``. Unknown service: ``200 []``. Service JSON as Consul's
  ``structs.NodeService``: ``Kind`` and ``Port`` are omitted when empty/0 (Go ``omitempty``),
  ``Meta`` is ``null`` when not registered, ``Weights`` defaults to ``{Passing:1, Warning:1}``; a
  service registered with an IP address gets ``TaggedAddresses`` ``lan_ipv4`` / ``wan_ipv4`` (or
  ``_ipv6``) = that address and port, as the agent adds them. ``Checks``: the node's checks
  (``serfHealth``) first, then the service's. The node's ``Meta`` has ``consul-version``.
- Blocking queries: ``index`` > 0 parks until the result's index exceeds it or ``wait`` (Go
  duration, default 5m, capped at ``max_wait``, plus up to wait/16 jitter) expires, then answers
  200 with the same body and index. Result indexes: per service name (register, deregister and
  check changes of its instances; node checks count for every instance on the node); a name
  without instances reports the index of the last time any service lost its last instance
  (Consul's "extinction" index), else the catalog's. A *blocking* health query
  (``X-Consul-Query-Backend: streaming``) is answered like the agent's streaming view of the
  service: the view's index starts at that index when the name is first watched and then moves
  only with changes of that name, so other services never wake it. KV: the key's ModifyIndex; a missing key
  reports the KV table index and keeps waiting until *that* key appears; ``recurse``/``keys`` the
  highest ModifyIndex (or tombstone) under the prefix. ``catalog/services``: the services table.
- ``GET /v1/catalog/services``: ``{"consul": [], "name": [tags...]}`` (a server agent sees the
  ``consul`` service), blocking, ``filter``, ACL-filtered.
- ``PUT /v1/agent/service/register`` (JSON keys case-insensitive, snake_case accepted): ``Name``,
  ``ID``, ``Tags``, ``Address``, ``TaggedAddresses``, ``Meta`` (validated like Consul), ``Port``,
  ``Kind``, ``EnableTagOverride``, ``Weights`` (Passing 1..65535, Warning 0..65535), ``Check`` /
  ``Checks``; ``?replace-existing-checks``. Checks: ``TTL``; ``HTTP`` + ``Interval`` (probed for real
  from a background thread: 2xx passing, 429 warning, else critical; ``Method``, ``Header``,
  ``Timeout``, ``TLSSkipVerify``); ``TCP`` + ``Interval`` (probed); ``GRPC``/``UDP``/``H2PING`` +
  ``Interval`` (accepted, never probed: they keep their initial status); script checks are refused
  (500) as on an agent without ``enable_script_checks``. ``Status`` (initial, default critical),
  ``CheckID``/``ID`` (default ``service:<id>``, or ``service:<id>:1``, ``:2``... for several), ``Name``
  (default ``Service '<name>' check``), ``Notes``, ``DeregisterCriticalServiceAfter`` (floored at
  ``min_deregister_after``). Re-registering keeps the status of existing checks, as Consul does.
- ``PUT /v1/agent/service/deregister/<id>`` (unknown: 404 ``Unknown service ID "<id>". Ensure
  that the service ID is passed, not the service name.``); ``PUT /v1/agent/check/pass|warn|fail/<id>``
  (``?note=``) and ``/update/<id>`` (``{"Status","Output"}``): unknown check 404, a check that is
  not a TTL check 500 ``CheckID "<id>" does not have associated TTL``. A TTL check that misses
  its TTL turns critical (``TTL expired``); a background reaper (every 50 ms) removes services
  critical for longer than their ``DeregisterCriticalServiceAfter``.
- ``GET /v1/agent/services``: the agent's own services as ``api.AgentService`` (no index headers,
  like Consul).
- ``GET|PUT|DELETE /v1/kv/<key>``: ``raw``, ``recurse``, ``keys`` + ``separator``, ``cas``, ``flags``;
  values up to 512 KiB (else 413). Missing key: 404, empty body, index headers.
- ACL: token from ``X-Consul-Token``, ``Authorization: Bearer``, or ``?token=``. Unknown token 403
  ``ACL not found``; missing permission 403 ``Permission denied: token with AccessorID '<uuid>'
  lacks permission 'key:write' on "<key>"`` (anonymous: ``...: anonymous token lacks permission
  ...``). Health, catalog, agent/services and KV lists drop what the token may not read and add
  ``X-Consul-Results-Filtered-By-Acls: true`` when a token was given.
- Unknown paths: 404 ``Invalid URL path: not a recognized HTTP API endpoint``; a wrong method on a
  known path: 405 with an ``Allow`` header.
- Like Consul's ``gziphandler`` wrapper, API responses carry ``Vary: Accept-Encoding`` and bodies of
  1400 bytes or more are gzipped when the client accepts it; like Go's ``net/http``, bodies over
  2 KiB are sent chunked instead of with a ``Content-Length``.

Not modelled: sessions and locks (``acquire``/``release`` answer 500 ``invalid session``), the
agent cache and streaming backends (no ``X-Cache``), ``near`` sorting, other datacenters (``?dc=``
another one answers 500 ``No path to datacenter``), namespaces/partitions, Connect.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import ipaddress
import json
import random
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlencode

from ._fake_base import FakeBase, FakeHandler, FakeServer, serve_until_interrupted, split_request
from ._fake_base import Killed as _Killed
from ._fake_base import Response as _Response

__all__ = ["FakeConsul", "RecordedRequest"]

_KV_MAX_VALUE_SIZE = 512 * 1024
_DEFAULT_WAIT = 300.0
_GZIP_MIN_SIZE = 1400  # gziphandler.DefaultMinSize, which Consul wraps every API endpoint in
_CHUNK_ABOVE = 2048  # Go's net/http sends a longer body chunked rather than with a Content-Length
_ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
_STATUSES = ("passing", "warning", "critical")
_META_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_DEFAULT_FAIL_BODIES = {500: "rpc error making call: EOF", 429: "rate limit exceeded", 503: "No cluster leader"}
_ACCESSOR_NS = uuid.UUID("5b1f3c1e-8f6e-4d0a-9a57-6f0c2a1b7e11")
_CONSUL_VERSION = "1.16.1"  # the agent version the fake reports (node Meta, the consul service)


# --------------------------------------------------------------------------------------------
# Small Go-compatibility helpers
# --------------------------------------------------------------------------------------------

_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration``, returning nanoseconds. Raises ``ValueError`` with Go's message."""
    orig, s = text, text
    neg = False
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{orig}"')
    total = 0.0
    while s:
        m = re.match(r"[0-9]*(\.[0-9]*)?", s)
        number = m.group(0) if m else ""
        if number in ("", "."):
            raise ValueError(f'time: invalid duration "{orig}"')
        s = s[len(number):]
        u = re.match(r"[^0-9.]+", s)
        if not u:
            raise ValueError(f'time: missing unit in duration "{orig}"')
        unit = u.group(0)
        if unit not in _DURATION_UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{orig}"')
        s = s[len(unit):]
        total += float(number) * _DURATION_UNITS[unit]
    ns = int(round(total))
    return -ns if neg else ns


def _frac(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def format_go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()`` (``10s``, ``1m0s``, ``1.5s``, ``100ms``)."""
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_frac(u, 1_000)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_frac(u, 1_000_000)}ms"
    hours, rem = divmod(u, 3_600_000_000_000)
    minutes, rem = divmod(rem, 60_000_000_000)
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{_frac(rem, 1_000_000_000)}s"


def _go_json(obj: Any, pretty: bool = False) -> bytes:
    """Like Go's json.Marshal: compact, UTF-8, HTML-escaped (<, >, &), U+2028/9 escaped."""
    if pretty:
        text = json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(a, b)
    return text.encode()


def _q(s: str) -> str:
    """Go's %q for the error texts."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(value)


def _parse_uint(value: str) -> int:
    if not value or not value.isdigit() or not value.isascii():
        raise ValueError(f'strconv.ParseUint: parsing {_q(value)}: invalid syntax')
    n = int(value)
    if n >= 2**64:
        raise ValueError(f'strconv.ParseUint: parsing {_q(value)}: value out of range')
    return n


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str  # as sent (percent-encoded), without the query string
    target: str  # the full request target (path + "?" + query)
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes


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
        return (self.id, self.name, self.node, self.tags, self.address, self.port, self.meta, self.weights, self.enable_tag_override, self.tagged_addresses, self.kind) == (
            other.id, other.name, other.node, other.tags, other.address, other.port, other.meta, other.weights, other.enable_tag_override, other.tagged_addresses, other.kind)


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

    def visible(self) -> tuple:
        return (self.name, self.status, self.output, self.notes, self.service_id, self.service_name, self.service_tags, self.type, self.interval_ns, self.timeout_ns)


@dataclasses.dataclass
class _KV:
    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int


@dataclasses.dataclass
class _Authz:
    level: str  # "all" (ACLs off), "write", "read", "none"
    accessor: str
    token_given: bool

    def can(self, permission: str) -> bool:
        if self.level in ("all", "write"):
            return True
        return self.level == "read" and permission.endswith(":read")

    def denied(self, permission: str, name: str) -> _HTTPError:
        if self.accessor == _ANONYMOUS_ACCESSOR:
            who = "anonymous token"
            tail = ". The anonymous token is used implicitly when a request does not specify a token."
        else:
            who, tail = f"token with AccessorID '{self.accessor}'", ""
        return _HTTPError(403, f"Permission denied: {who} lacks permission '{permission}' on {_q(name)}{tail}")


class _HTTPError(Exception):
    def __init__(self, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or []


@dataclasses.dataclass
class _Result:
    index: int
    obj: Any
    filtered: bool = False
    not_found: bool = False


@dataclasses.dataclass
class _Request:
    method: str
    raw_path: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    gen: int

    def has(self, name: str) -> bool:
        return name in self.query

    def get(self, name: str) -> str:
        values = self.query.get(name)
        return values[0] if values else ""


class _Txn:
    """One raft apply: every change in it shares one index, allocated on first use."""

    def __init__(self, fake: FakeConsul) -> None:
        self.fake = fake
        self.idx: int | None = None

    def bump(self) -> int:
        if self.idx is None:
            self.idx = self.fake._index + 1
        return self.idx


# --------------------------------------------------------------------------------------------
# A go-bexpr subset for ?filter
# --------------------------------------------------------------------------------------------


class _FilterError(Exception):
    pass


_HEALTH_SCHEMA: dict[str, Any] = {
    "Node": {"ID": "str", "Node": "str", "Address": "str", "Datacenter": "str", "TaggedAddresses": "map", "Meta": "map"},
    "Service": {"Kind": "str", "ID": "str", "Service": "str", "Tags": "list", "Address": "str", "TaggedAddresses": "any", "Meta": "map", "Port": "int",
                "EnableTagOverride": "bool", "Weights": {"Passing": "int", "Warning": "int"}, "PeerName": "str"},
}
_SERVICE_NODE_SCHEMA: dict[str, Any] = {
    "ID": "str", "Node": "str", "Address": "str", "Datacenter": "str", "TaggedAddresses": "map", "NodeMeta": "map", "ServiceKind": "str", "ServiceID": "str",
    "ServiceName": "str", "ServiceTags": "list", "ServiceAddress": "str", "ServiceMeta": "map", "ServicePort": "int", "ServiceEnableTagOverride": "bool",
    "ServiceWeights": {"Passing": "int", "Warning": "int"},
}
_AGENT_SERVICE_SCHEMA: dict[str, Any] = {
    "Kind": "str", "ID": "str", "Service": "str", "Tags": "list", "Meta": "map", "Port": "int", "Address": "str", "EnableTagOverride": "bool",
    "Weights": {"Passing": "int", "Warning": "int"}, "Datacenter": "str",
}

_TOKEN_RE = re.compile(r"""\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<op>==|!=)|(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?[0-9]+(?:\.[0-9]+)?(?![A-Za-z_]))|(?P<word>[A-Za-z_][A-Za-z0-9_\-]*)|(?P<dot>\.)|(?P<lb>\[)|(?P<rb>\]))""")


class _Filter:
    """``Service.Meta.lane == "gray" and "v2" in Service.Tags``: parsed once, evaluated per item."""

    def __init__(self, expression: str, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(expression):
            if expression[pos:].strip() == "":
                break
            m = _TOKEN_RE.match(expression, pos)
            if not m or m.end() == pos:
                raise _FilterError(self._syntax(pos))
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.expression = expression
        self.i = 0
        self.ast = self._or()
        if self.i != len(self.tokens):
            raise _FilterError(self._syntax(self.tokens[self.i][2]))

    def _syntax(self, offset: int) -> str:
        return f"1:{offset + 1} ({offset}): no match found, expected: \"!=\", \"==\", \"and\", \"contains\", \"in\", \"is\", \"matches\", \"not\", \"or\", [ \\t\\r\\n] or EOF"

    def _peek(self, k: int = 0) -> tuple[str, str, int] | None:
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else None

    def _word(self, word: str, k: int = 0) -> bool:
        t = self._peek(k)
        return t is not None and t[0] == "word" and t[1] == word

    def _expect_fail(self) -> _FilterError:
        t = self._peek()
        return _FilterError(self._syntax(t[2] if t else len(self.expression)))

    def _or(self) -> Any:
        node = self._and()
        while self._word("or"):
            self.i += 1
            node = ("or", node, self._and())
        return node

    def _and(self) -> Any:
        node = self._not()
        while self._word("and"):
            self.i += 1
            node = ("and", node, self._not())
        return node

    def _not(self) -> Any:
        if self._word("not"):
            self.i += 1
            return ("not", self._not())
        return self._primary()

    def _primary(self) -> Any:
        t = self._peek()
        if t is None:
            raise self._expect_fail()
        if t[0] == "lp":
            self.i += 1
            node = self._or()
            if not self._peek() or self._peek()[0] != "rp":
                raise self._expect_fail()
            self.i += 1
            return node
        # value (not) in selector
        if t[0] in ("str", "num") or (t[0] == "word" and (self._word("in", 1) or (self._word("not", 1) and self._word("in", 2)))):
            value = self._value()
            negate = False
            if self._word("not"):
                negate, self.i = True, self.i + 1
            if not self._word("in"):
                raise self._expect_fail()
            self.i += 1
            sel = self._selector()
            node: Any = ("in", sel, value)
            return ("not", node) if negate else node
        sel = self._selector()
        t = self._peek()
        if t is None:
            raise self._expect_fail()
        if t[0] == "op":
            self.i += 1
            value = self._value()
            self._check_scalar(sel, value)
            return ("eq", sel, value) if t[1] == "==" else ("not", ("eq", sel, value))
        negate = False
        if self._word("is"):
            self.i += 1
            if self._word("not"):
                negate, self.i = True, self.i + 1
            if not self._word("empty"):
                raise self._expect_fail()
            self.i += 1
            node = ("empty", sel)
            return ("not", node) if negate else node
        if self._word("not"):
            negate, self.i = True, self.i + 1
        if self._word("contains"):
            self.i += 1
            node = ("in", sel, self._value())
        elif self._word("matches"):
            self.i += 1
            pattern = self._value()
            try:
                node = ("matches", sel, re.compile(pattern))
            except re.error as exc:
                raise _FilterError(f"Failed to compile regular expression {_q(pattern)}: error parsing regexp: {exc}") from None
        else:
            raise self._expect_fail()
        return ("not", node) if negate else node

    def _value(self) -> str:
        t = self._peek()
        if t is None or t[0] not in ("str", "num", "word"):
            # go-bexpr's grammar expects a value here: its error lists a value's first characters
            offset = t[2] if t else len(self.expression)
            raise _FilterError(f"1:{offset + 1} ({offset}): no match found, expected: \"-\", \"0\", \"\\\"\", \"`\", [ \\t\\r\\n], [1-9] or [a-zA-Z]")
        self.i += 1
        if t[0] == "str":
            return t[1][1:-1] if t[1][0] == "`" else json.loads(t[1])
        return t[1]

    def _selector(self) -> tuple[tuple[str, ...], str]:
        t = self._peek()
        if t is None or t[0] != "word":
            raise self._expect_fail()
        parts = [t[1]]
        self.i += 1
        while True:
            t = self._peek()
            if t and t[0] == "dot" and self._peek(1) and self._peek(1)[0] == "word":
                parts.append(self._peek(1)[1])
                self.i += 2
            elif t and t[0] == "lb" and self._peek(1) and self._peek(1)[0] == "str" and self._peek(2) and self._peek(2)[0] == "rb":
                parts.append(json.loads(self._peek(1)[1]) if self._peek(1)[1][0] == '"' else self._peek(1)[1][1:-1])
                self.i += 3
            else:
                break
        path = tuple(parts)
        return path, self._type_of(path)

    def _type_of(self, path: tuple[str, ...]) -> str:
        node: Any = self.schema
        for j, part in enumerate(path):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif node == "map" and j == len(path) - 1:
                node = "str"
            else:
                raise _FilterError(f'Selector {_q(".".join(path))} is not valid')
        if isinstance(node, dict):
            raise _FilterError(f'Selector {_q(".".join(path))} is not valid')
        return node

    def _check_scalar(self, sel: tuple[tuple[str, ...], str], value: str) -> None:
        kind = sel[1]
        if kind in ("list", "map", "any"):
            raise _FilterError(f'Invalid match operator "Equal" for selector {_q(".".join(sel[0]))}')
        selector = _q(".".join(sel[0]))
        if kind == "int":
            try:
                int(value)
            except ValueError:
                raise _FilterError(f'Failed to coerce value {_q(value)} for selector {selector}: strconv.ParseInt: parsing {_q(value)}: invalid syntax') from None
        if kind == "bool":
            try:
                _parse_bool(value)
            except ValueError:
                raise _FilterError(f'Failed to coerce value {_q(value)} for selector {selector}: strconv.ParseBool: parsing {_q(value)}: invalid syntax') from None

    @staticmethod
    def _resolve(item: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
        node = item
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def _eval(self, node: Any, item: Any) -> bool:
        op = node[0]
        if op == "or":
            return self._eval(node[1], item) or self._eval(node[2], item)
        if op == "and":
            return self._eval(node[1], item) and self._eval(node[2], item)
        if op == "not":
            return not self._eval(node[1], item)
        (path, kind) = node[1]
        found, value = self._resolve(item, path)
        if op == "empty":
            return not found or value in (None, "", [], {})
        if not found or value is None:
            return False
        if op == "eq":
            if kind == "int":
                return int(value) == int(node[2])
            if kind == "bool":
                return bool(value) == _parse_bool(node[2])
            return str(value) == node[2]
        if op == "in":
            if isinstance(value, (list, dict)):
                return node[2] in value
            return node[2] in str(value)
        if op == "matches":
            return node[2].search(str(value)) is not None
        return False

    def __call__(self, item: Any) -> bool:
        return self._eval(self.ast, item)


def _make_filter(expression: str, schema: dict[str, Any]) -> _Filter | None:
    if not expression:
        return None
    try:
        return _Filter(expression, schema)
    except _FilterError as exc:
        # Consul 1.16 answers 500 for any bad ?filter (the evaluator's error comes back from the RPC)
        raise _HTTPError(500, f"Failed to create boolean expression evaluator: {exc}") from None


# --------------------------------------------------------------------------------------------
# HTTP plumbing (house style: see graylb.testing.http_server)
# --------------------------------------------------------------------------------------------


class _Handler(FakeHandler):
    chunk_above = _CHUNK_ABOVE
    error_content_type = "text/plain; charset=utf-8"


def _text(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> _Response:
    return _Response(status, text.encode(), [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])] if text else list(headers or []))


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


class FakeConsul(FakeBase[RecordedRequest]):
    """A Consul agent's HTTP API on a real socket. See the module docstring for the reference."""

    check_update_interval: float = 300.0
    _handler = _Handler
    _thread_name = "fake-consul"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, acl_tokens: Mapping[str, str] | None = None, datacenter: str = "dc1", node: str = "fake-node",
                 node_address: str = "127.0.0.1", min_deregister_after: float = 60.0, max_wait: float = 600.0, null_tags: bool = False,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        # HTTPS like an agent's port 8501: pass a server-side SSLContext (e.g. from trustme);
        # set its verify_mode to CERT_REQUIRED to demand client certificates (verify_incoming).
        self.ssl_context = ssl_context
        if acl_tokens is not None:
            for secret, level in acl_tokens.items():
                if level not in ("write", "read", "none"):
                    raise ValueError(f"acl_tokens[{secret!r}]: level must be 'write', 'read' or 'none', not {level!r}")
        self._init_base(host, port)
        self.datacenter, self.node, self.node_address = datacenter, node, node_address
        self.min_deregister_after, self.max_wait, self.null_tags = float(min_deregister_after), float(max_wait), null_tags
        self._acl_tokens = dict(acl_tokens) if acl_tokens is not None else None

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
            self._services[(node, "consul")] = _Service("consul", "consul", node, [], "", 8300, {"non_voter": "false", "raft_version": "3", "read_replica": "false", "serf_protocol_current": "2",
                                                                                                  "serf_protocol_max": "5", "serf_protocol_min": "1", "version": _CONSUL_VERSION},
                                                        (1, 1), local=False, create_index=idx, modify_index=idx)
            self._services_index = idx
            self._svc_index["consul"] = idx
        self._index = 10

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def _make_server(self) -> FakeServer:
        server = super()._make_server()
        if self.ssl_context is not None:
            # Handshake lazily in the connection's own thread, not in the accept loop.
            server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        return server

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

    def __repr__(self) -> str:
        return f"<FakeConsul {self.url} {'running' if self.running else 'stopped'} index={self.index}>"

    # ---- test controls ----------------------------------------------------------------------

    @property
    def index(self) -> int:
        with self._lock:
            return self._index

    @property
    def blocking_queries(self) -> int:
        return self._held_count()

    def wait_blocking(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` blocking queries are parked; False on timeout."""
        return self._wait_held(count, timeout)

    def accessor_id(self, secret: str) -> str:
        """The AccessorID the fake reports for a token secret."""
        return str(uuid.uuid5(_ACCESSOR_NS, secret))

    def register(self, name: str, *, id: str | None = None, address: str = "", port: int = 0, tags: list[str] | None = None, meta: Mapping[str, str] | None = None,
                 weights: Mapping[str, int] | int | None = None, check_status: str | None = "passing", node_address: str | None = None) -> str:
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
            svc = _Service(sid, name, node.name, list(tags) if tags is not None else None, address, int(port), dict(meta) if meta is not None else None, w,
                           tagged_addresses=_default_tagged_addresses(None, address, int(port)) if local else None, local=local)
            checks = [_Check(f"service:{sid}", f"Service '{name}' check", node.name, check_status)] if check_status else []
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

            for obj in [*self._nodes.values(), *self._services.values(), *self._checks.values(), *self._kv.values()]:
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
            self._checks[(name, "serfHealth")] = _Check("serfHealth", "Serf Health Status", name, "passing", "Agent alive and reachable", agent_output="Agent alive and reachable",
                                                        create_index=idx, modify_index=idx)
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

    def _apply_registration(self, t: _Txn, svc: _Service, checks: list[_Check], *, replace: bool, now: float, restore: bool = True) -> None:
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
            chk.service_id, chk.service_name, chk.service_tags = svc.id, svc.name, (list(svc.tags) if svc.tags is not None else None)
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
                    expired = "TTL expired" if not last or last.startswith("TTL expired") else f"TTL expired (last output before timeout follows): {last}"
                    self._agent_update(t, chk, "critical", expired, now)
                if chk.pending_since is not None and now - chk.pending_since >= self.check_update_interval:
                    chk.pending_since = None
                    self._write_check(t, chk, chk.status, chk.agent_output, now)
                if chk.next_probe is not None and not chk.probing and now >= chk.next_probe:
                    chk.probing = True
                    threading.Thread(target=self._probe, args=(chk,), name=f"fake-consul-probe-{chk.id}", daemon=True).start()
            reaped: set[tuple[str, str]] = set()
            for chk in list(self._checks.values()):
                key = (chk.node, chk.service_id)
                if chk.reap_after and chk.service_id and chk.status == "critical" and chk.critical_since is not None and now - chk.critical_since > chk.reap_after:
                    if key not in reaped and key in self._services:
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
                    with opener.open(urllib.request.Request(chk.http, method=method, headers=headers), timeout=timeout) as r:
                        code, reason, body = r.status, r.reason, r.read(4096)
                except urllib.error.HTTPError as e:
                    code, reason, body = e.code, e.reason, e.read(4096)
                status = "passing" if 200 <= code < 300 else "warning" if code == 429 else "critical"
                output = f"HTTP {method} {chk.http}: {code} {reason} Output: {body.decode(errors='replace')}"
            except Exception as e:  # noqa: BLE001
                status, output = "critical", f"{method[:1]}{method[1:].lower()} {_q(chk.http)}: {getattr(e, 'reason', e)}"
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

    # ---- request dispatch -------------------------------------------------------------------

    def _dispatch(self, method: str, target: str, headers: Any, body: bytes) -> _Response:
        raw_path, query, hdrs = split_request(target, headers)
        with self._lock:
            gen = self._gen
            self._requests.append(RecordedRequest(method, raw_path, target, query, hdrs, body))
        req = _Request(method, raw_path, unquote(raw_path), query, hdrs, body, gen)
        if not req.path.startswith("/v1/"):
            if req.path == "/":
                return _text(200, "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and restart.")
            return _text(404, "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n")
        self._apply_stall(gen)
        failure = self._next_failure()
        if failure is not None:
            status, text = failure
            return self._api_response(req, _text(status, text if text is not None else _DEFAULT_FAIL_BODIES.get(status, "")))
        route = self._route(req.path)
        if route is None:
            return _text(404, "Invalid URL path: not a recognized HTTP API endpoint\n")
        if isinstance(route, _Response):
            return route
        methods, handler = route
        common = [("X-Consul-Default-Acl-Policy", "allow" if self._acl_tokens is None else "deny")]
        if method == "OPTIONS":
            return self._api_response(req, _Response(200, b"", [*common, ("Allow", ",".join(["OPTIONS", *methods]))]))
        if method not in methods:
            return self._api_response(req, _text(405, f"method {method} not allowed", [*common, ("Allow", ",".join(["OPTIONS", *methods]))]))
        try:
            resp = handler(req)
        except _HTTPError as e:
            resp = _text(e.status, e.text, e.headers)
        resp.headers[:0] = common
        return self._api_response(req, resp)

    @staticmethod
    def _api_response(req: _Request, resp: _Response) -> _Response:
        """What Consul's gziphandler wrapper adds: Vary, and gzip from 1400 bytes when accepted."""
        resp.headers.append(("Vary", "Accept-Encoding"))
        accepted = False
        for part in req.headers.get("accept-encoding", "").split(","):
            coding, _, params = part.strip().partition(";")
            q = params.strip()[2:] if params.strip().startswith("q=") else "1"
            if coding.strip().lower() in ("gzip", "*"):
                try:
                    accepted = float(q) > 0
                except ValueError:
                    accepted = False
        if accepted and len(resp.body) >= _GZIP_MIN_SIZE and req.method != "HEAD":
            resp.body = gzip.compress(resp.body, mtime=0)
            resp.headers.append(("Content-Encoding", "gzip"))
        return resp

    def _apply_stall(self, gen: int) -> None:
        with self._cond:
            if self._stall <= 0:
                return
            end = time.monotonic() + self._stall
            while self._gen == gen and (remaining := end - time.monotonic()) > 0:
                self._cond.wait(remaining)
            if self._gen != gen:
                raise _Killed

    def _route(self, path: str) -> tuple[tuple[str, ...], Callable[[_Request], _Response]] | _Response | None:
        exact: dict[str, tuple[tuple[str, ...], Callable[[_Request], _Response]]] = {
            "/v1/catalog/services": (("GET",), self._h_catalog_services),
            "/v1/agent/services": (("GET",), self._h_agent_services),
            "/v1/agent/service/register": (("PUT",), self._h_register),
        }
        if path in exact:
            return exact[path]
        prefixes: list[tuple[str, tuple[str, ...], Callable[[_Request], _Response]]] = [
            ("/v1/health/service/", ("GET",), self._h_health_service),
            ("/v1/agent/service/deregister/", ("PUT",), self._h_deregister),
            ("/v1/agent/check/pass/", ("PUT",), lambda r: self._h_check_status(r, "passing", "/v1/agent/check/pass/")),
            ("/v1/agent/check/warn/", ("PUT",), lambda r: self._h_check_status(r, "warning", "/v1/agent/check/warn/")),
            ("/v1/agent/check/fail/", ("PUT",), lambda r: self._h_check_status(r, "critical", "/v1/agent/check/fail/")),
            ("/v1/agent/check/update/", ("PUT",), self._h_check_update),
            ("/v1/kv/", ("GET", "PUT", "DELETE"), self._h_kv),
        ]
        for prefix, methods, handler in prefixes:
            if path.startswith(prefix):
                return methods, handler
            if path == prefix.rstrip("/"):  # Go's ServeMux redirects a subtree root without its slash
                return _Response(301, b"", [("Location", prefix)])
        return None

    # ---- request helpers --------------------------------------------------------------------

    def _token(self, req: _Request) -> str:
        if t := req.get("token"):
            return t
        if t := req.headers.get("x-consul-token", ""):
            return t
        auth = req.headers.get("authorization", "")
        parts = auth.split(" ")
        if len(parts) > 1 and parts[0].lower() == "bearer":
            return " ".join(parts[1:]).strip()
        return ""

    def _authz(self, req: _Request) -> _Authz:
        if self._acl_tokens is None:
            return _Authz("all", "", False)
        secret = self._token(req)
        if not secret:
            return _Authz("none", _ANONYMOUS_ACCESSOR, False)
        level = self._acl_tokens.get(secret)
        if level is None:
            raise _HTTPError(403, "ACL not found")
        return _Authz(level, self.accessor_id(secret), True)

    def _parse_query_options(self, req: _Request) -> tuple[int, float | None]:
        """Consul's s.parse(): consistency flags, then ?wait and ?index."""
        if req.has("stale") and req.has("consistent"):
            raise _HTTPError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        wait: float | None = None
        if w := req.get("wait"):
            try:
                wait = parse_go_duration(w) / 1e9
            except ValueError:
                raise _HTTPError(400, "Invalid wait time") from None
        index = 0
        if i := req.get("index"):
            try:
                index = _parse_uint(i)
            except ValueError:
                raise _HTTPError(400, "Invalid index") from None
        return index, wait

    def _check_dc(self, req: _Request) -> None:
        dc = req.get("dc")
        if dc and dc != self.datacenter:
            raise _HTTPError(500, "No path to datacenter")

    def _blocking(self, req: _Request, min_index: int, wait: float | None, compute: Callable[[], _Result]) -> _Result:
        """Consul's blockingQuery: park until the result's index passes min_index or wait expires."""
        with self._cond:
            res = compute()
            if min_index == 0:
                return res
            timeout = max(min(wait or _DEFAULT_WAIT, self.max_wait), 0.0)
            timeout += random.uniform(0, timeout / 16)
            deadline = time.monotonic() + timeout
            abandon = self._abandon
            not_found = False
            while True:
                if res.not_found:
                    if not_found:  # still missing: only its appearance ends the wait
                        min_index = res.index
                    not_found = True
                if res.index > min_index:
                    return res
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return res
                with self._holding():
                    self._cond.wait(remaining)
                if self._gen != req.gen:
                    raise _Killed
                res = compute()
                if self._abandon != abandon:
                    return res

    def _read_response(self, req: _Request, res: _Result, authz: _Authz, *, consistency: bool, backend: str = "blocking-query") -> _Response:
        headers = [("Content-Type", "application/json"), *self._meta_headers(res.index, consistency=consistency, req=req, backend=backend)]
        if res.filtered and authz.token_given:
            headers.append(("X-Consul-Results-Filtered-By-Acls", "true"))
        return _Response(200, _go_json(res.obj, req.has("pretty")), headers)

    def _meta_headers(self, index: int, *, consistency: bool, req: _Request, backend: str = "blocking-query") -> list[tuple[str, str]]:
        headers = [("X-Consul-Index", str(max(index, 1))), ("X-Consul-Knownleader", "true"), ("X-Consul-Lastcontact", "0")]
        if consistency:
            headers.append(("X-Consul-Effective-Consistency", "stale" if req.has("stale") else "consistent" if req.has("consistent") else "leader"))
        headers.append(("X-Consul-Query-Backend", backend))
        return headers

    # ---- JSON shapes ------------------------------------------------------------------------

    def _node_json(self, node: _Node) -> dict[str, Any]:
        fam = "ipv6" if ":" in node.address else "ipv4"
        return {"ID": node.id, "Node": node.name, "Address": node.address, "Datacenter": self.datacenter,
                "TaggedAddresses": dict(sorted({"lan": node.address, f"lan_{fam}": node.address, "wan": node.address, f"wan_{fam}": node.address}.items())),
                "Meta": {"consul-network-segment": "", "consul-version": _CONSUL_VERSION}, "CreateIndex": node.create_index, "ModifyIndex": node.modify_index}

    def _tags_json(self, tags: list[str] | None) -> list[str] | None:
        if tags is None:
            return None if self.null_tags else []
        return list(tags)

    def _service_json(self, svc: _Service) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if svc.kind:
            out["Kind"] = svc.kind
        out.update({"ID": svc.id, "Service": svc.name, "Tags": self._tags_json(svc.tags), "Address": svc.address})
        if svc.tagged_addresses:
            out["TaggedAddresses"] = dict(sorted(svc.tagged_addresses.items()))
        out["Meta"] = dict(sorted(svc.meta.items())) if svc.meta is not None else None
        if svc.port:
            out["Port"] = svc.port
        out.update({"Weights": {"Passing": svc.weights[0], "Warning": svc.weights[1]}, "EnableTagOverride": svc.enable_tag_override,
                    "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {}, "PeerName": "",
                    "CreateIndex": svc.create_index, "ModifyIndex": svc.modify_index})
        return out

    def _check_json(self, chk: _Check) -> dict[str, Any]:
        return {"Node": chk.node, "CheckID": chk.id, "Name": chk.name, "Status": chk.status, "Notes": chk.notes, "Output": chk.output,
                "ServiceID": chk.service_id, "ServiceName": chk.service_name, "ServiceTags": self._tags_json(chk.service_tags), "Type": chk.type,
                "Interval": format_go_duration(chk.interval_ns) if chk.interval_ns else "", "Timeout": format_go_duration(chk.timeout_ns) if chk.timeout_ns else "",
                "ExposedPort": 0, "Definition": {}, "CreateIndex": chk.create_index, "ModifyIndex": chk.modify_index}

    def _agent_service_json(self, svc: _Service) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if svc.kind:
            out["Kind"] = svc.kind
        out.update({"ID": svc.id, "Service": svc.name, "Tags": list(svc.tags or []), "Meta": dict(sorted((svc.meta or {}).items())), "Port": svc.port, "Address": svc.address})
        if svc.tagged_addresses:
            out["TaggedAddresses"] = dict(sorted(svc.tagged_addresses.items()))
        out.update({"Weights": {"Passing": svc.weights[0], "Warning": svc.weights[1]}, "EnableTagOverride": svc.enable_tag_override, "Datacenter": self.datacenter})
        return out

    def _service_node_view(self, svc: _Service) -> dict[str, Any]:
        node = self._nodes[svc.node]
        nj = self._node_json(node)
        return {"ID": node.id, "Node": node.name, "Address": node.address, "Datacenter": self.datacenter, "TaggedAddresses": nj["TaggedAddresses"], "NodeMeta": nj["Meta"],
                "ServiceKind": svc.kind, "ServiceID": svc.id, "ServiceName": svc.name, "ServiceTags": list(svc.tags or []), "ServiceAddress": svc.address,
                "ServiceMeta": dict(svc.meta or {}), "ServicePort": svc.port, "ServiceEnableTagOverride": svc.enable_tag_override,
                "ServiceWeights": {"Passing": svc.weights[0], "Warning": svc.weights[1]}}

    # ---- endpoints --------------------------------------------------------------------------

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

    def _h_health_service(self, req: _Request) -> _Response:
        min_index, wait = self._parse_query_options(req)
        name = req.path[len("/v1/health/service/"):]
        if not name:
            raise _HTTPError(400, "Missing service name")
        self._check_dc(req)
        authz = self._authz(req)
        flt = _make_filter(req.get("filter"), _HEALTH_SCHEMA)
        tags = [t.lower() for t in req.query.get("tag", [])]
        node_meta = [m.partition(":") for m in req.query.get("node-meta", [])]
        lname = name.lower()

        def compute() -> _Result:
            entries = []
            filtered = False
            for key in sorted(self._services, key=lambda k: (k[0].lower(), k[1].lower())):
                svc = self._services[key]
                if svc.name.lower() != lname:
                    continue
                if tags and not all(t in [x.lower() for x in svc.tags or []] for t in tags):
                    continue
                if any(self._node_json(self._nodes[svc.node])["Meta"].get(k) != v for k, _, v in node_meta):
                    continue
                if not (authz.can("node:read") and authz.can("service:read")):
                    filtered = True
                    continue
                # node-level checks first, then the service's (Consul's parseCheckServiceNodes)
                checks = sorted((c for c in self._checks.values() if c.node == svc.node and (c.service_id in ("", svc.id))), key=lambda c: (c.service_id != "", c.id.lower()))
                entry = {"Node": self._node_json(self._nodes[svc.node]), "Service": self._service_json(svc), "Checks": [self._check_json(c) for c in checks]}
                if flt is not None and not flt(entry):
                    continue
                entries.append(entry)
            return _Result(self._view_index(lname) if min_index else self._health_index(lname), entries, filtered)

        res = self._blocking(req, min_index, wait, compute)
        backend = "streaming" if min_index else "blocking-query"
        if req.has("passing"):  # parsed after the query, as in Consul (so a 400 carries the index)
            value = req.get("passing")
            try:
                passing = True if value == "" else _parse_bool(value)
            except ValueError:
                return _text(400, "Invalid value for ?passing", self._meta_headers(res.index, consistency=True, req=req, backend=backend))
            if passing:  # Consul's filterNonPassing: swap-remove, which reorders
                nodes = list(res.obj)
                n, i = len(nodes), 0
                while i < n:
                    if any(c["Status"] != "passing" for c in nodes[i]["Checks"]):
                        nodes[i], nodes[n - 1] = nodes[n - 1], nodes[i]
                        n -= 1
                        continue
                    i += 1
                res.obj = nodes[:n]
        return self._read_response(req, res, authz, consistency=True, backend=backend)

    def _h_catalog_services(self, req: _Request) -> _Response:
        min_index, wait = self._parse_query_options(req)
        self._check_dc(req)
        authz = self._authz(req)
        flt = _make_filter(req.get("filter"), _SERVICE_NODE_SCHEMA)
        node_meta = [m.partition(":") for m in req.query.get("node-meta", [])]

        def compute() -> _Result:
            out: dict[str, set[str]] = {}
            filtered = False
            for svc in self._services.values():
                if any(self._node_json(self._nodes[svc.node])["Meta"].get(k) != v for k, _, v in node_meta):
                    continue
                if flt is not None and not flt(self._service_node_view(svc)):
                    continue
                if not authz.can("service:read"):
                    filtered = True
                    continue
                out.setdefault(svc.name, set()).update(svc.tags or [])
            # A real agent's tag order here is whatever its Go map gives (it varies between
            # calls); sorted is one of those orders, and a stable one.
            return _Result(self._services_index, {name: sorted(tags) for name, tags in sorted(out.items())}, filtered)

        res = self._blocking(req, min_index, wait, compute)
        return self._read_response(req, res, authz, consistency=True)

    def _h_agent_services(self, req: _Request) -> _Response:
        with self._lock:
            authz = self._authz(req)
            flt = _make_filter(req.get("filter"), _AGENT_SERVICE_SCHEMA)
            out: dict[str, Any] = {}
            total = 0
            for (node, sid), svc in sorted(self._services.items()):
                if node != self.node or not svc.local:
                    continue
                js = self._agent_service_json(svc)
                if flt is not None and not flt(js):
                    continue
                total += 1
                if authz.can("service:read"):
                    out[sid] = js
        headers = [("Content-Type", "application/json")]
        if authz.token_given and total != len(out):
            headers.append(("X-Consul-Results-Filtered-By-Acls", "true"))
        return _Response(200, _go_json(out, req.has("pretty")), headers)

    def _h_register(self, req: _Request) -> _Response:
        args = _decode_service_definition(req.body)
        name = args.get("name") or ""
        if not name:
            raise _HTTPError(400, "Missing service name")
        address = args.get("address") or ""
        if address in ("0.0.0.0", "::", "[::]"):
            raise _HTTPError(400, "Invalid service address")
        authz = self._authz(req)
        weights = args.get("weights")
        if weights is not None and (err := _weights_error(weights)):
            raise _HTTPError(400, f"Invalid Weights: {err}")
        meta = args.get("meta")
        if meta is not None and (err := _meta_error(meta)):
            raise _HTTPError(400, f"Invalid Service Meta: {err}")
        checks = [_check_from_definition(c) for c in args.get("checks", [])]
        for c in checks:
            if c.status and c.status not in _STATUSES:
                raise _HTTPError(400, "Status for checks must 'passing', 'warning', 'critical'")
        sid = args.get("id") or name
        with self._txn() as t:
            if not authz.can("service:write"):
                raise authz.denied("service:write", name)
            for c in checks:
                if c.type == "script" or c.type == "docker":
                    raise _HTTPError(500, "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true")
            node = self._nodes[self.node]
            svc = _Service(sid, name, node.name, args.get("tags"), address, args.get("port", 0), meta, weights or (1, 1), args.get("enabletagoverride", False),
                           _default_tagged_addresses(args.get("taggedaddresses"), address, args.get("port", 0)), args.get("kind", ""), local=True)
            chks = []
            for i, c in enumerate(checks):
                cid = c.id or (f"service:{sid}" + (f":{i + 1}" if len(checks) > 1 else ""))
                chk = _Check(cid, c.name or f"Service '{name}' check", node.name, c.status or "critical", notes=c.notes, type=c.type, interval_ns=c.interval_ns,
                             timeout_ns=c.timeout_ns, ttl_ns=c.ttl_ns, http=c.http, method=c.method, header=c.header, tls_skip_verify=c.tls_skip_verify, tcp=c.tcp)
                if c.deregister_ns > 0:
                    chk.reap_after = max(c.deregister_ns / 1e9, self.min_deregister_after)
                chks.append(chk)
            replace = req.has("replace-existing-checks") and req.get("replace-existing-checks") in ("", "true")
            self._apply_registration(t, svc, chks, replace=replace, now=time.monotonic())
        return _Response(200)

    def _h_deregister(self, req: _Request) -> _Response:
        sid = req.path[len("/v1/agent/service/deregister/"):]
        authz = self._authz(req)
        with self._txn() as t:
            svc = self._services.get((self.node, sid))
            if svc is None or not svc.local:
                raise _HTTPError(404, f"Unknown service ID {_q(sid)}. Ensure that the service ID is passed, not the service name.")
            if not authz.can("service:write"):
                raise authz.denied("service:write", svc.name)
            self._remove_service(t, (self.node, sid))
        return _Response(200)

    def _h_check_status(self, req: _Request, status: str, prefix: str) -> _Response:
        return self._update_ttl(req, req.path[len(prefix):], status, req.get("note"))

    def _h_check_update(self, req: _Request) -> _Response:
        if not req.body.strip():
            raise _HTTPError(400, "Request decode failed: EOF")
        try:
            doc = json.loads(req.body)
        except ValueError as e:
            raise _HTTPError(400, f"Request decode failed: {e}") from None
        fields = {_norm(k): v for k, v in (doc or {}).items()} if isinstance(doc, dict) else {}
        status, output = fields.get("status", ""), fields.get("output", "")
        if not isinstance(status, str) or status not in _STATUSES:
            raise _HTTPError(400, f"Invalid check status: '{status}'")
        return self._update_ttl(req, req.path[len("/v1/agent/check/update/"):], status, output if isinstance(output, str) else "")

    def _update_ttl(self, req: _Request, check_id: str, status: str, output: str) -> _Response:
        authz = self._authz(req)
        now = time.monotonic()
        with self._txn() as t:
            chk = self._checks.get((self.node, check_id))
            if chk is None:
                raise _HTTPError(404, f"Unknown check ID {_q(check_id)}. Ensure that the check ID is passed, not the check name.")
            if chk.service_id:
                if not authz.can("service:write"):
                    raise authz.denied("service:write", chk.service_name)
            elif not authz.can("node:write"):
                raise authz.denied("node:write", self.node)
            if not chk.ttl_ns:
                raise _HTTPError(500, f"CheckID {_q(check_id)} does not have associated TTL")
            chk.ttl_deadline = now + chk.ttl_ns / 1e9
            self._agent_update(t, chk, status, output, now)
        return _Response(200)

    # ---- KV -----------------------------------------------------------------------------------

    def _h_kv(self, req: _Request) -> _Response:
        min_index, wait = self._parse_query_options(req)
        key = req.path[len("/v1/kv/"):]
        if req.method == "GET":
            if req.has("keys"):
                return self._kv_keys(req, key, min_index, wait)
            return self._kv_get(req, key, min_index, wait)
        if req.method == "PUT":
            return self._kv_put(req, key)
        return self._kv_del(req, key)

    def _prefix_index(self, prefix: str) -> int:
        if not prefix:
            return self._kv_index
        lindex = max([e.modify_index for k, e in self._kv.items() if k.startswith(prefix)] + [i for k, i in self._tombstones.items() if k.startswith(prefix)], default=0)
        return lindex or self._kv_index

    def _kv_json(self, e: _KV) -> dict[str, Any]:
        return {"LockIndex": 0, "Key": e.key, "Flags": e.flags, "Value": base64.b64encode(e.value).decode() if e.value else None,
                "CreateIndex": e.create_index, "ModifyIndex": e.modify_index}

    def _kv_get(self, req: _Request, key: str, min_index: int, wait: float | None) -> _Response:
        recurse = req.has("recurse")
        if not recurse and not key:
            raise _HTTPError(400, "Missing key name")
        self._check_dc(req)
        authz = self._authz(req)
        if not recurse and not authz.can("key:read"):
            raise authz.denied("key:read", key)

        def compute() -> _Result:
            if recurse:
                entries = [self._kv[k] for k in sorted(self._kv) if k.startswith(key)]
                visible = [e for e in entries if authz.can("key:read")]
                return _Result(self._prefix_index(key), [self._kv_json(e) for e in visible], len(visible) != len(entries), not visible)
            ent = self._kv.get(key)
            if ent is None:
                return _Result(self._kv_index, None, False, True)
            return _Result(ent.modify_index, [self._kv_json(ent)])

        res = self._blocking(req, min_index, wait, compute)
        meta = self._meta_headers(res.index, consistency=False, req=req)
        if res.filtered and authz.token_given:
            meta.append(("X-Consul-Results-Filtered-By-Acls", "true"))
        if res.not_found:
            return _Response(404, b"", meta)
        if req.has("raw") and not recurse:
            value = self._kv_raw(key, res)
            return _Response(200, value, [*meta, ("Content-Type", "text/plain"), ("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", "sandbox")])
        return _Response(200, _go_json(res.obj, req.has("pretty")), [("Content-Type", "application/json"), *meta])

    @staticmethod
    def _kv_raw(key: str, res: _Result) -> bytes:
        value = res.obj[0]["Value"]
        return base64.b64decode(value) if value else b""

    def _kv_keys(self, req: _Request, prefix: str, min_index: int, wait: float | None) -> _Response:
        self._check_dc(req)
        authz = self._authz(req)
        sep = req.get("separator") if req.has("separator") else (req.get("seperator") if req.has("seperator") else "")

        def compute() -> _Result:
            keys: list[str] = []
            filtered = False
            for k in sorted(self._kv):
                if not k.startswith(prefix):
                    continue
                if not authz.can("key:read"):
                    filtered = True
                    continue
                if sep:
                    cut = k.find(sep, len(prefix))
                    if cut > -1:
                        k = k[: cut + len(sep)]
                        if keys and keys[-1] == k:
                            continue
                keys.append(k)
            return _Result(self._prefix_index(prefix), keys, filtered, not keys and bool(prefix))

        res = self._blocking(req, min_index, wait, compute)
        meta = self._meta_headers(res.index, consistency=False, req=req)
        if res.filtered and authz.token_given:
            meta.append(("X-Consul-Results-Filtered-By-Acls", "true"))
        if res.not_found:
            return _Response(404, b"", meta)
        return _Response(200, _go_json(res.obj, req.has("pretty")), [("Content-Type", "application/json"), *meta])

    def _kv_put(self, req: _Request, key: str) -> _Response:
        if not key:
            raise _HTTPError(400, "Missing key name")
        present = [f for f in ("cas", "acquire", "release") if req.has(f)]
        if len(present) > 1:
            raise _HTTPError(400, f"Conflicting flags: {urlencode(sorted(req.query.items()), doseq=True)}\n")
        flags = 0
        try:
            if req.has("flags"):
                flags = _parse_uint(req.get("flags"))
            cas = _parse_uint(req.get("cas")) if req.has("cas") else None
        except ValueError as e:
            raise _HTTPError(500, str(e)) from None
        if len(req.body) > _KV_MAX_VALUE_SIZE:
            raise _HTTPError(413, f"Request body({len(req.body)} bytes) too large, max size: {_KV_MAX_VALUE_SIZE} bytes. "
                                  "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.")
        self._check_dc(req)
        authz = self._authz(req)
        if not authz.can("key:write"):
            raise authz.denied("key:write", key)
        if req.has("acquire") or req.has("release"):
            session = req.get("acquire") or req.get("release")
            raise _HTTPError(500, f"rpc error making call: invalid session {_q(session)}")
        with self._txn() as t:
            if cas is not None:
                ent = self._kv.get(key)
                if (cas == 0 and ent is not None) or (cas != 0 and (ent is None or ent.modify_index != cas)):
                    return _json_response(False)
            self._kv_set(t, key, req.body, flags)
        return _json_response(True)

    def _kv_del(self, req: _Request, key: str) -> _Response:
        if req.has("recurse") and req.has("cas"):
            raise _HTTPError(400, f"Conflicting flags: {urlencode(sorted(req.query.items()), doseq=True)}\n")
        recurse = req.has("recurse")
        if not recurse and not key:
            raise _HTTPError(400, "Missing key name")
        try:
            cas = _parse_uint(req.get("cas")) if req.has("cas") else None
        except ValueError as e:
            raise _HTTPError(500, str(e)) from None
        self._check_dc(req)
        authz = self._authz(req)
        if not authz.can("key:write"):
            raise authz.denied("key:write", key)
        with self._txn() as t:
            if recurse:
                for k in [k for k in self._kv if k.startswith(key)]:
                    self._kv_delete(t, k)
                return _json_response(True)
            if cas is not None:
                ent = self._kv.get(key)
                if ent is None:
                    return _json_response(True)
                if ent.modify_index != cas:
                    return _json_response(False)
            self._kv_delete(t, key)
        return _json_response(True)


def _json_response(obj: Any) -> _Response:
    return _Response(200, _go_json(obj), [("Content-Type", "application/json")])


# --------------------------------------------------------------------------------------------
# Registration decoding (Go's case-insensitive JSON + Consul's snake_case aliases)
# --------------------------------------------------------------------------------------------


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _decode_error(value: Any, field: str, gotype: str) -> _HTTPError:
    return _HTTPError(400, f"Request decode failed: json: cannot unmarshal {_jtype(value)} into Go struct field {field} of type {gotype}")


def _as_str(v: Any, field: str) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _decode_error(v, field, "string")
    return v


def _as_int(v: Any, field: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise _decode_error(v, field, "int")
    return int(v)


def _as_bool(v: Any, field: str) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _decode_error(v, field, "bool")
    return v


def _as_duration(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, str):
        if v == "":
            return 0
        try:
            return parse_go_duration(v)
        except ValueError as e:
            raise _HTTPError(400, f"Request decode failed: {e}") from None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return int(v)
    raise _HTTPError(400, f"Request decode failed: invalid duration: {json.dumps(v)}")


def _decode_service_definition(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise _HTTPError(400, "Request decode failed: EOF")
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise _HTTPError(400, f"Request decode failed: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _HTTPError(400, f"Request decode failed: json: cannot unmarshal {_jtype(doc)} into Go value of type structs.ServiceDefinition")
    f = {_norm(k): v for k, v in doc.items()}
    out: dict[str, Any] = {"name": _as_str(f.get("name"), "ServiceDefinition.Name"), "id": _as_str(f.get("id"), "ServiceDefinition.ID"),
                           "address": _as_str(f.get("address"), "ServiceDefinition.Address"), "port": _as_int(f.get("port"), "ServiceDefinition.Port"),
                           "kind": _as_str(f.get("kind"), "ServiceDefinition.Kind"), "enabletagoverride": _as_bool(f.get("enabletagoverride"), "ServiceDefinition.EnableTagOverride")}
    tags = f.get("tags")
    if tags is not None:
        if not isinstance(tags, list):
            raise _decode_error(tags, "ServiceDefinition.Tags", "[]string")
        out["tags"] = [_as_str(t, "ServiceDefinition.Tags") for t in tags]
    meta = f.get("meta")
    if meta is not None:
        if not isinstance(meta, dict):
            raise _decode_error(meta, "ServiceDefinition.Meta", "map[string]string")
        out["meta"] = {k: _as_str(v, "ServiceDefinition.Meta") for k, v in meta.items()}
    weights = f.get("weights")
    if weights is not None:
        if not isinstance(weights, dict):
            raise _decode_error(weights, "ServiceDefinition.Weights", "structs.Weights")
        w = {_norm(k): v for k, v in weights.items()}
        out["weights"] = (_as_int(w.get("passing"), "Weights.Passing"), _as_int(w.get("warning"), "Weights.Warning"))
    tagged = f.get("taggedaddresses")
    if tagged is not None:
        if not isinstance(tagged, dict):
            raise _decode_error(tagged, "ServiceDefinition.TaggedAddresses", "map[string]structs.ServiceAddress")
        ta = {}
        for k, v in tagged.items():
            vv = {_norm(a): b for a, b in (v or {}).items()} if isinstance(v, dict) else {}
            ta[k] = {"Address": _as_str(vv.get("address"), "ServiceAddress.Address"), "Port": _as_int(vv.get("port"), "ServiceAddress.Port")}
        out["taggedaddresses"] = ta
    checks: list[dict[str, Any]] = []
    single = f.get("check")
    if single is not None:
        if not isinstance(single, dict):
            raise _decode_error(single, "ServiceDefinition.Check", "structs.CheckType")
        if single:
            checks.append(single)
    many = f.get("checks")
    if many is not None:
        if not isinstance(many, list):
            raise _decode_error(many, "ServiceDefinition.Checks", "structs.CheckTypes")
        for c in many:
            if not isinstance(c, dict):
                raise _decode_error(c, "ServiceDefinition.Checks", "structs.CheckType")
            checks.append(c)
    out["checks"] = checks
    return out


@dataclasses.dataclass
class _CheckDef:
    id: str
    name: str
    status: str
    notes: str
    type: str
    interval_ns: int
    timeout_ns: int
    ttl_ns: int
    deregister_ns: int
    http: str
    method: str
    header: dict[str, list[str]] | None
    tls_skip_verify: bool
    tcp: str


def _check_from_definition(raw: dict[str, Any]) -> _CheckDef:
    c = {_norm(k): v for k, v in raw.items()}
    interval, ttl = _as_duration(c.get("interval")), _as_duration(c.get("ttl"))
    timeout, dereg = _as_duration(c.get("timeout")), _as_duration(c.get("deregistercriticalserviceafter"))
    kinds = [k for k in ("http", "tcp", "udp", "grpc", "h2ping", "osservice") if c.get(k)]
    script = bool(c.get("args") or c.get("scriptargs") or c.get("script"))
    docker = bool(c.get("dockercontainerid"))
    alias = bool(c.get("aliasnode") or c.get("aliasservice"))
    interval_check = bool(kinds) or script or docker
    if interval > 0 and ttl > 0:
        raise _HTTPError(400, "Invalid check: Interval and TTL cannot both be specified")
    if interval_check and interval <= 0:
        raise _HTTPError(400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks")
    if not interval_check and not alias and ttl <= 0:
        raise _HTTPError(400, "Invalid check: TTL must be > 0 for TTL checks")
    kind = "ttl" if ttl > 0 else ("docker" if docker else "script" if script else kinds[0] if kinds else "alias")
    kind = {"osservice": "os_service"}.get(kind, kind)
    header = c.get("header")
    if header is not None and not isinstance(header, dict):
        raise _decode_error(header, "CheckType.Header", "map[string][]string")
    return _CheckDef(id=_as_str(c.get("checkid") or c.get("id"), "CheckType.CheckID"), name=_as_str(c.get("name"), "CheckType.Name"),
                     status=_as_str(c.get("status"), "CheckType.Status"), notes=_as_str(c.get("notes"), "CheckType.Notes"), type=kind,
                     interval_ns=interval, timeout_ns=timeout, ttl_ns=ttl, deregister_ns=dereg, http=_as_str(c.get("http"), "CheckType.HTTP"),
                     method=_as_str(c.get("method"), "CheckType.Method"), header={k: list(v) if isinstance(v, list) else [str(v)] for k, v in (header or {}).items()} or None,
                     tls_skip_verify=_as_bool(c.get("tlsskipverify"), "CheckType.TLSSkipVerify"), tcp=_as_str(c.get("tcp"), "CheckType.TCP"))


def _default_tagged_addresses(tagged: dict[str, dict[str, Any]] | None, address: str, port: int) -> dict[str, dict[str, Any]] | None:
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


def main(argv: list[str] | None = None) -> int:
    """``python -m graylb.testing.fake_consul [--port 8500]``: serve until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m graylb.testing.fake_consul", description="Run FakeConsul on 127.0.0.1 until interrupted.")
    parser.add_argument("--port", type=int, default=8500)
    args = parser.parse_args(argv)
    fake = FakeConsul(port=args.port).start()
    return serve_until_interrupted(fake, f"FakeConsul listening on {fake.url}")


if __name__ == "__main__":
    raise SystemExit(main())
