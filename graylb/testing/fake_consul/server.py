"""FakeConsul's HTTP API: request dispatch and routing, Consul's query options and blocking
queries, ACL checks, the JSON shapes of its answers and the endpoints, on the state of
:mod:`.state`; plus ``main()`` for ``python -m graylb.testing.fake_consul``. The reference is
the package docstring (:mod:`graylb.testing.fake_consul`).
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import random
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlencode

from .._fake_base import FakeBase, FakeHandler, FakeServer, serve_until_interrupted, split_request
from .._fake_base import Killed as _Killed
from .._fake_base import Response as _Response
from .decoding import (
    _check_from_definition,
    _decode_service_definition,
    _HTTPError,
    _norm,
    _parse_bool,
    _q,
    format_go_duration,
    parse_go_duration,
)
from .filter import _AGENT_SERVICE_SCHEMA, _HEALTH_SCHEMA, _SERVICE_NODE_SCHEMA, _Filter, _FilterError
from .state import (
    _ACCESSOR_NS,
    _CONSUL_VERSION,
    _KV,
    _STATUSES,
    _Check,
    _ConsulState,
    _default_tagged_addresses,
    _meta_error,
    _Node,
    _Service,
    _weights_error,
)

_KV_MAX_VALUE_SIZE = 512 * 1024
_DEFAULT_WAIT = 300.0
_GZIP_MIN_SIZE = 1400  # gziphandler.DefaultMinSize, which Consul wraps every API endpoint in
_CHUNK_ABOVE = 2048  # Go's net/http sends a longer body chunked rather than with a Content-Length
_ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
_DEFAULT_FAIL_BODIES = {500: "rpc error making call: EOF", 429: "rate limit exceeded", 503: "No cluster leader"}


# --------------------------------------------------------------------------------------------
# Go's encoding of answers and parsing of query values
# --------------------------------------------------------------------------------------------


def _go_json(obj: Any, pretty: bool = False) -> bytes:
    """Like Go's json.Marshal: compact, UTF-8, HTML-escaped (<, >, &), U+2028/9 escaped."""
    if pretty:
        text = json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(a, b)
    return text.encode()


def _parse_uint(value: str) -> int:
    if not value or not value.isdigit() or not value.isascii():
        raise ValueError(f"strconv.ParseUint: parsing {_q(value)}: invalid syntax")
    n = int(value)
    if n >= 2**64:
        raise ValueError(f"strconv.ParseUint: parsing {_q(value)}: value out of range")
    return n


# --------------------------------------------------------------------------------------------
# Requests, results, ACL decisions
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


# --------------------------------------------------------------------------------------------
# ?filter: go-bexpr errors as Consul answers them
# --------------------------------------------------------------------------------------------


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
    return _Response(
        status,
        text.encode(),
        [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])] if text else list(headers or []),
    )


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


class FakeConsul(_ConsulState, FakeBase[RecordedRequest]):
    """A Consul agent's HTTP API on a real socket. See the package docstring
    (:mod:`graylb.testing.fake_consul`) for the reference."""

    check_update_interval: float = 300.0
    _handler = _Handler
    _thread_name = "fake-consul"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        acl_tokens: Mapping[str, str] | None = None,
        datacenter: str = "dc1",
        node: str = "fake-node",
        node_address: str = "127.0.0.1",
        min_deregister_after: float = 60.0,
        max_wait: float = 600.0,
        null_tags: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # HTTPS like an agent's port 8501: pass a server-side SSLContext (e.g. from trustme);
        # set its verify_mode to CERT_REQUIRED to demand client certificates (verify_incoming).
        self.ssl_context = ssl_context
        if acl_tokens is not None:
            for secret, level in acl_tokens.items():
                if level not in ("write", "read", "none"):
                    raise ValueError(f"acl_tokens[{secret!r}]: level must be 'write', 'read' or 'none', not {level!r}")
        self._init_base(host, port)
        self.datacenter, self.node, self.node_address = datacenter, node, node_address
        self.min_deregister_after, self.max_wait, self.null_tags = (
            float(min_deregister_after),
            float(max_wait),
            null_tags,
        )
        self._acl_tokens = dict(acl_tokens) if acl_tokens is not None else None
        self._init_state()

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

    def __repr__(self) -> str:
        return f"<FakeConsul {self.url} {'running' if self.running else 'stopped'} index={self.index}>"

    # ---- test controls ----------------------------------------------------------------------

    @property
    def blocking_queries(self) -> int:
        return self._held_count()

    def wait_blocking(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` blocking queries are parked; False on timeout."""
        return self._wait_held(count, timeout)

    def accessor_id(self, secret: str) -> str:
        """The AccessorID the fake reports for a token secret."""
        return str(uuid.uuid5(_ACCESSOR_NS, secret))

    # ---- request dispatch -------------------------------------------------------------------

    def _dispatch(self, method: str, target: str, headers: Any, body: bytes) -> _Response:
        raw_path, query, hdrs = split_request(target, headers)
        with self._lock:
            gen = self._gen
            self._requests.append(RecordedRequest(method, raw_path, target, query, hdrs, body))
        req = _Request(method, raw_path, unquote(raw_path), query, hdrs, body, gen)
        if not req.path.startswith("/v1/"):
            if req.path == "/":
                return _text(
                    200,
                    "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and "
                    "restart.",
                )
            return _text(
                404, "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
            )
        self._apply_stall(gen)
        failure = self._next_failure()
        if failure is not None:
            status, text = failure
            return self._api_response(
                req, _text(status, text if text is not None else _DEFAULT_FAIL_BODIES.get(status, ""))
            )
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
            return self._api_response(
                req, _text(405, f"method {method} not allowed", [*common, ("Allow", ",".join(["OPTIONS", *methods]))])
            )
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

    def _read_response(
        self, req: _Request, res: _Result, authz: _Authz, *, consistency: bool, backend: str = "blocking-query"
    ) -> _Response:
        headers = [
            ("Content-Type", "application/json"),
            *self._meta_headers(res.index, consistency=consistency, req=req, backend=backend),
        ]
        if res.filtered and authz.token_given:
            headers.append(("X-Consul-Results-Filtered-By-Acls", "true"))
        return _Response(200, _go_json(res.obj, req.has("pretty")), headers)

    def _meta_headers(
        self, index: int, *, consistency: bool, req: _Request, backend: str = "blocking-query"
    ) -> list[tuple[str, str]]:
        headers = [
            ("X-Consul-Index", str(max(index, 1))),
            ("X-Consul-Knownleader", "true"),
            ("X-Consul-Lastcontact", "0"),
        ]
        if consistency:
            headers.append(
                (
                    "X-Consul-Effective-Consistency",
                    "stale" if req.has("stale") else "consistent" if req.has("consistent") else "leader",
                )
            )
        headers.append(("X-Consul-Query-Backend", backend))
        return headers

    # ---- JSON shapes ------------------------------------------------------------------------

    def _node_json(self, node: _Node) -> dict[str, Any]:
        fam = "ipv6" if ":" in node.address else "ipv4"
        return {
            "ID": node.id,
            "Node": node.name,
            "Address": node.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": dict(
                sorted(
                    {
                        "lan": node.address,
                        f"lan_{fam}": node.address,
                        "wan": node.address,
                        f"wan_{fam}": node.address,
                    }.items()
                )
            ),
            "Meta": {"consul-network-segment": "", "consul-version": _CONSUL_VERSION},
            "CreateIndex": node.create_index,
            "ModifyIndex": node.modify_index,
        }

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
        out.update(
            {
                "Weights": {"Passing": svc.weights[0], "Warning": svc.weights[1]},
                "EnableTagOverride": svc.enable_tag_override,
                "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
                "Connect": {},
                "PeerName": "",
                "CreateIndex": svc.create_index,
                "ModifyIndex": svc.modify_index,
            }
        )
        return out

    def _check_json(self, chk: _Check) -> dict[str, Any]:
        return {
            "Node": chk.node,
            "CheckID": chk.id,
            "Name": chk.name,
            "Status": chk.status,
            "Notes": chk.notes,
            "Output": chk.output,
            "ServiceID": chk.service_id,
            "ServiceName": chk.service_name,
            "ServiceTags": self._tags_json(chk.service_tags),
            "Type": chk.type,
            "Interval": format_go_duration(chk.interval_ns) if chk.interval_ns else "",
            "Timeout": format_go_duration(chk.timeout_ns) if chk.timeout_ns else "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": chk.create_index,
            "ModifyIndex": chk.modify_index,
        }

    def _agent_service_json(self, svc: _Service) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if svc.kind:
            out["Kind"] = svc.kind
        out.update(
            {
                "ID": svc.id,
                "Service": svc.name,
                "Tags": list(svc.tags or []),
                "Meta": dict(sorted((svc.meta or {}).items())),
                "Port": svc.port,
                "Address": svc.address,
            }
        )
        if svc.tagged_addresses:
            out["TaggedAddresses"] = dict(sorted(svc.tagged_addresses.items()))
        out.update(
            {
                "Weights": {"Passing": svc.weights[0], "Warning": svc.weights[1]},
                "EnableTagOverride": svc.enable_tag_override,
                "Datacenter": self.datacenter,
            }
        )
        return out

    def _service_node_view(self, svc: _Service) -> dict[str, Any]:
        node = self._nodes[svc.node]
        nj = self._node_json(node)
        return {
            "ID": node.id,
            "Node": node.name,
            "Address": node.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": nj["TaggedAddresses"],
            "NodeMeta": nj["Meta"],
            "ServiceKind": svc.kind,
            "ServiceID": svc.id,
            "ServiceName": svc.name,
            "ServiceTags": list(svc.tags or []),
            "ServiceAddress": svc.address,
            "ServiceMeta": dict(svc.meta or {}),
            "ServicePort": svc.port,
            "ServiceEnableTagOverride": svc.enable_tag_override,
            "ServiceWeights": {"Passing": svc.weights[0], "Warning": svc.weights[1]},
        }

    # ---- endpoints --------------------------------------------------------------------------

    def _h_health_service(self, req: _Request) -> _Response:
        min_index, wait = self._parse_query_options(req)
        name = req.path[len("/v1/health/service/") :]
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
                checks = sorted(
                    (c for c in self._checks.values() if c.node == svc.node and (c.service_id in ("", svc.id))),
                    key=lambda c: (c.service_id != "", c.id.lower()),
                )
                entry = {
                    "Node": self._node_json(self._nodes[svc.node]),
                    "Service": self._service_json(svc),
                    "Checks": [self._check_json(c) for c in checks],
                }
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
                return _text(
                    400,
                    "Invalid value for ?passing",
                    self._meta_headers(res.index, consistency=True, req=req, backend=backend),
                )
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
                    raise _HTTPError(
                        500,
                        "Scripts are disabled on this agent from remote calls; to enable, configure "
                        "'enable_script_checks' to true",
                    )
            node = self._nodes[self.node]
            svc = _Service(
                sid,
                name,
                node.name,
                args.get("tags"),
                address,
                args.get("port", 0),
                meta,
                weights or (1, 1),
                args.get("enabletagoverride", False),
                _default_tagged_addresses(args.get("taggedaddresses"), address, args.get("port", 0)),
                args.get("kind", ""),
                local=True,
            )
            chks = []
            for i, c in enumerate(checks):
                cid = c.id or (f"service:{sid}" + (f":{i + 1}" if len(checks) > 1 else ""))
                chk = _Check(
                    cid,
                    c.name or f"Service '{name}' check",
                    node.name,
                    c.status or "critical",
                    notes=c.notes,
                    type=c.type,
                    interval_ns=c.interval_ns,
                    timeout_ns=c.timeout_ns,
                    ttl_ns=c.ttl_ns,
                    http=c.http,
                    method=c.method,
                    header=c.header,
                    tls_skip_verify=c.tls_skip_verify,
                    tcp=c.tcp,
                )
                if c.deregister_ns > 0:
                    chk.reap_after = max(c.deregister_ns / 1e9, self.min_deregister_after)
                chks.append(chk)
            replace = req.has("replace-existing-checks") and req.get("replace-existing-checks") in ("", "true")
            self._apply_registration(t, svc, chks, replace=replace, now=time.monotonic())
        return _Response(200)

    def _h_deregister(self, req: _Request) -> _Response:
        sid = req.path[len("/v1/agent/service/deregister/") :]
        authz = self._authz(req)
        with self._txn() as t:
            svc = self._services.get((self.node, sid))
            if svc is None or not svc.local:
                raise _HTTPError(
                    404, f"Unknown service ID {_q(sid)}. Ensure that the service ID is passed, not the service name."
                )
            if not authz.can("service:write"):
                raise authz.denied("service:write", svc.name)
            self._remove_service(t, (self.node, sid))
        return _Response(200)

    def _h_check_status(self, req: _Request, status: str, prefix: str) -> _Response:
        return self._update_ttl(req, req.path[len(prefix) :], status, req.get("note"))

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
        return self._update_ttl(
            req, req.path[len("/v1/agent/check/update/") :], status, output if isinstance(output, str) else ""
        )

    def _update_ttl(self, req: _Request, check_id: str, status: str, output: str) -> _Response:
        authz = self._authz(req)
        now = time.monotonic()
        with self._txn() as t:
            chk = self._checks.get((self.node, check_id))
            if chk is None:
                raise _HTTPError(
                    404, f"Unknown check ID {_q(check_id)}. Ensure that the check ID is passed, not the check name."
                )
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
        key = req.path[len("/v1/kv/") :]
        if req.method == "GET":
            if req.has("keys"):
                return self._kv_keys(req, key, min_index, wait)
            return self._kv_get(req, key, min_index, wait)
        if req.method == "PUT":
            return self._kv_put(req, key)
        return self._kv_del(req, key)

    def _kv_json(self, e: _KV) -> dict[str, Any]:
        return {
            "LockIndex": 0,
            "Key": e.key,
            "Flags": e.flags,
            "Value": base64.b64encode(e.value).decode() if e.value else None,
            "CreateIndex": e.create_index,
            "ModifyIndex": e.modify_index,
        }

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
                return _Result(
                    self._prefix_index(key),
                    [self._kv_json(e) for e in visible],
                    len(visible) != len(entries),
                    not visible,
                )
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
            return _Response(
                200,
                value,
                [
                    *meta,
                    ("Content-Type", "text/plain"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Content-Security-Policy", "sandbox"),
                ],
            )
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
            raise _HTTPError(
                413,
                f"Request body({len(req.body)} bytes) too large, max size: {_KV_MAX_VALUE_SIZE} bytes. "
                "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
            )
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


def main(argv: list[str] | None = None) -> int:
    """``python -m graylb.testing.fake_consul [--port 8500]``: serve until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m graylb.testing.fake_consul", description="Run FakeConsul on 127.0.0.1 until interrupted."
    )
    parser.add_argument("--port", type=int, default=8500)
    args = parser.parse_args(argv)
    fake = FakeConsul(port=args.port).start()
    return serve_until_interrupted(fake, f"FakeConsul listening on {fake.url}")
