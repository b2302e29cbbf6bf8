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

# The package's modules: ``decoding`` (Go values and Consul's decoding of request bodies),
# ``filter`` (go-bexpr for ?filter), ``state`` (the registry state, TTLs, probes, reaping),
# ``server`` (the HTTP API, FakeConsul, main); ``python -m`` runs ``__main__``. Re-exported: the
# public names of the former single module fake_consul.py, with its ``__all__`` unchanged.
from .decoding import format_go_duration as format_go_duration
from .decoding import parse_go_duration as parse_go_duration
from .server import FakeConsul, RecordedRequest
from .server import main as main

__all__ = ["FakeConsul", "RecordedRequest"]
