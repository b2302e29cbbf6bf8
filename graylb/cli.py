"""The ``graylb`` command: ``demo``, ``rules validate / explain / push / undo``, ``rollback``,
``status``.

The registry commands work through the registry-neutral actions in :mod:`graylb.admin`;
the registry-specific part is one :class:`~graylb.admin.RuleStore` built by
:func:`_open_store` from the connection options: Consul (the default; ``--consul URL`` or
``CONSUL_HTTP_ADDR``) or Nacos (``--nacos URL``, with ``--namespace`` / ``--group``). Secrets
never come from a flag (they would land in shell history and ``ps``): the Consul ACL token from
``CONSUL_HTTP_TOKEN`` or ``--token-file``, the Nacos password from ``NACOS_PASSWORD`` or
``--password-file`` (the user from ``NACOS_USERNAME`` or ``--username``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GraylbError, RuleError

if TYPE_CHECKING:  # the commands import what they use late: `graylb --help` stays quick
    from .consul.client import ConsulConfig
    from .discovery.base import Discovery, Snapshot
    from .nacos.client import NacosConfig
    from .rules.compiled import CompiledRules

__all__ = ["main"]


def _pairs(values: Sequence[str], sep: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, found, value = item.partition(sep)
        if not found or not name.strip():
            raise SystemExit(f"graylb: {what} {item!r} must look like name{sep}value")
        out[name.strip().lower() if what == "header" else name.strip()] = value.strip()
    return out


def _header_lines(values: Sequence[str]) -> dict[str, list[str]]:
    """``-H name:value`` options -> lower-cased name -> every value given, in order: a header
    repeated on several lines (``-H accept:a -H accept:b``) reaches rules as several lines."""
    out: dict[str, list[str]] = {}
    for item in values:
        name, value = next(iter(_pairs([item], ":", "header").items()))
        out.setdefault(name, []).append(value)
    return out


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run, watch

    if args.metrics_port is None and args.otlp_endpoint is None:
        return run(requests=args.requests)
    from . import monitoring

    if args.otlp_endpoint is not None:
        provider = monitoring.export_traces(args.otlp_endpoint, service_name="graylb-demo")
        print(f"graylb demo: sending traces to {args.otlp_endpoint} (OTLP/HTTP)", flush=True)
    endpoint = None
    if args.metrics_port is not None:
        endpoint = monitoring.serve_prometheus(args.metrics_port, host=args.metrics_host)
        print(f"graylb demo: metrics at {endpoint.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if not args.no_checks:
            code = run(requests=args.requests)
            if code:
                return code
        return watch(rate=args.rate, canary_errors=args.canary_errors, warmup=args.warmup, stop=stop)
    finally:
        if args.otlp_endpoint is not None:
            provider.force_flush()
        if endpoint is not None:
            endpoint.close()


def _load_rules(path: str) -> CompiledRules:
    from .rules.load import parse_rules

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"graylb: cannot read {path}: {exc.strerror}") from None
    return parse_rules(text, source=path)


def _cmd_validate(args: argparse.Namespace) -> int:
    rules = _load_rules(args.file)
    for name, svc in rules.services.items():
        subsets = ", ".join(f"{n}" for n in svc.subsets) or "-"
        routes = ", ".join(r.name for r in svc.routes) or "-"
        print(
            f"{name}: subsets [{subsets}], default {svc.default or '*'}, routes [{routes}], fallback {svc.fallback}, "
            f"lb {svc.load_balancer}"
        )
    print(f"{args.file}: OK ({len(rules.services)} service(s), revision {rules.revision})")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .discovery.static import StaticDiscovery
    from .propagation.context import GrayContext
    from .routing.explain import explain_rules, explain_state
    from .routing.request import RequestInfo
    from .routing.router import build_state

    rules = _load_rules(args.file)
    svc = rules.service(args.service)
    if svc is None:
        print(f"note: {args.file} has no rules for service '{args.service}'", file=sys.stderr)
    live = args.consul is not None or args.nacos is not None
    if live and args.registry:
        raise SystemExit("graylb: give --registry FILE or a live registry (--consul / --nacos), not both")
    snapshot = None
    if live:
        snapshot = _live_snapshot(args, args.service)
    elif args.registry:
        snapshot = StaticDiscovery.from_file(args.registry).watch(args.service).snapshot
    else:
        print(
            "note: no --registry / --consul / --nacos given, so subsets have no instances; explaining by rules alone",
            file=sys.stderr,
        )
    path, _, query = args.path.partition("?")
    request = RequestInfo(args.method.upper(), path, _header_lines(args.header), query)
    ctx = GrayContext(
        lane=args.lane,
        lane_forced=args.force_lane,
        pins=_pairs(args.pin, "=", "pin"),
        values=_pairs(args.context, "=", "context value"),
    )
    if snapshot is None:
        print(explain_rules(args.service, svc, request, ctx))
        return 0
    explanation = explain_state(build_state(args.service, snapshot, svc), request, ctx)
    print(explanation)
    return 1 if explanation.error else 0  # scripts and CI can gate on "this call would fail"


def _live_snapshot(args: argparse.Namespace, service: str) -> Snapshot:
    """The service's instances as the registry lists them now (what a caller would route on)."""
    from .errors import NoSnapshot

    discovery: Discovery
    if args.nacos is not None:
        from .nacos.discovery import NacosDiscovery

        discovery = NacosDiscovery(_nacos_config(args))
    else:
        from .consul.discovery import ConsulDiscovery

        discovery = ConsulDiscovery(_consul_config(args))
    started = time.monotonic()
    with discovery:
        watch = discovery.watch(service)
        # wait_ready also ends on a failed fetch: a CLI reports the registry's error at once.
        watch.wait_ready(args.timeout)
        if watch.snapshot is None:
            raise NoSnapshot(service, discovery.describe(), time.monotonic() - started, watch.last_error)
        print(
            f"note: {len(watch.snapshot.instances)} instance(s) of '{service}' from {discovery.describe()}",
            file=sys.stderr,
        )
        return watch.snapshot


# ------------------------------------------------------------------------- registry commands


def _registry_options() -> argparse.ArgumentParser:
    """Connection options shared by every registry command (argparse parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    r = p.add_argument_group("registry (Consul unless --nacos is given)")
    which = r.add_mutually_exclusive_group()
    which.add_argument(
        "--consul", metavar="URL", help="Consul HTTP address (default: $CONSUL_HTTP_ADDR or http://127.0.0.1:8500)"
    )
    which.add_argument(
        "--nacos",
        metavar="URL",
        help="use Nacos at this address, e.g. http://127.0.0.1:8848 (context path /nacos is added)",
    )
    which.add_argument(
        "--rules-file",
        action="store_true",
        help="no registry: --key is the path of a rules file (written atomically, compare-and-set under a lock)",
    )
    r.add_argument(
        "--ca-file",
        metavar="PATH",
        help="CA bundle to verify the registry's TLS certificate (Consul default: $CONSUL_CACERT)",
    )
    r.add_argument(
        "--insecure", action="store_true", help="do not verify the registry's TLS certificate (testing only)"
    )
    g = p.add_argument_group("Consul connection")
    g.add_argument(
        "--token-file", metavar="PATH", help="read the ACL token from this file (default: $CONSUL_HTTP_TOKEN)"
    )
    # Declared only to refuse it without echoing the value (and so argparse never reads
    # "--token X" as an abbreviation of --token-file).
    g.add_argument("--token", dest="token_flag", metavar="VALUE", help=argparse.SUPPRESS)
    n = p.add_argument_group("Nacos connection (with --nacos)")
    n.add_argument(
        "--namespace",
        metavar="ID",
        help="namespace ID (default: $NACOS_NAMESPACE, else Nacos's default namespace; 'public' means the default too)",
    )
    n.add_argument(
        "--group",
        metavar="GROUP",
        help="group of the config item and the service (default: $NACOS_GROUP or DEFAULT_GROUP)",
    )
    n.add_argument(
        "--username", metavar="USER", help="log in as this user (default: $NACOS_USERNAME; no user = no login)"
    )
    n.add_argument(
        "--password-file", metavar="PATH", help="read the password from this file (default: $NACOS_PASSWORD)"
    )
    # Same as --token: refused without echoing, and never taken for --password-file.
    n.add_argument("--password", dest="password_flag", metavar="VALUE", help=argparse.SUPPRESS)
    return p


_NACOS_ONLY = (
    ("namespace", "--namespace"),
    ("group", "--group"),
    ("username", "--username"),
    ("password_file", "--password-file"),
)


def _consul_config(args: argparse.Namespace) -> ConsulConfig:
    from .consul.client import ConsulConfig

    if args.token_flag is not None:
        raise SystemExit(
            "graylb: there is no --token flag (it would be kept in shell history and visible in ps): set "
            "CONSUL_HTTP_TOKEN or use --token-file PATH"
        )
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"graylb: cannot read token file {args.token_file}: {exc.strerror}") from None
        if not token:
            raise SystemExit(f"graylb: token file {args.token_file} is empty")
    for dest, flag in _NACOS_ONLY:
        if getattr(args, dest, None) is not None:
            raise SystemExit(f"graylb: {flag} is a Nacos option: add --nacos URL (without it the registry is Consul)")
    try:
        return ConsulConfig.from_env(address=args.consul, token=token, **_tls_options(args, "Consul"))
    except ValueError as exc:
        raise SystemExit(f"graylb: {exc}") from None


def _tls_options(args: argparse.Namespace, registry: str) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.insecure:
        print(f"graylb: warning: --insecure: {registry}'s TLS certificate is NOT verified", file=sys.stderr)
        kw["verify"] = False
    elif args.ca_file:
        if not Path(args.ca_file).is_file():
            raise SystemExit(f"graylb: CA file {args.ca_file} does not exist")
        kw["verify"] = args.ca_file
    return kw


def _nacos_config(args: argparse.Namespace) -> NacosConfig:
    from .nacos.client import NacosConfig, namespace_pair

    if args.password_flag is not None:
        raise SystemExit(
            "graylb: there is no --password flag (it would be kept in shell history and visible in ps): set "
            "NACOS_PASSWORD or use --password-file PATH"
        )
    if args.token_file is not None or args.token_flag is not None:
        raise SystemExit(
            "graylb: --token-file is a Consul option; "
            "Nacos logs in with NACOS_USERNAME / NACOS_PASSWORD (or --username / --password-file)"
        )
    username = args.username if args.username is not None else os.environ.get("NACOS_USERNAME") or None
    password = os.environ.get("NACOS_PASSWORD") or None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SystemExit(f"graylb: cannot read password file {args.password_file}: {exc.strerror}") from None
        if not password:
            raise SystemExit(f"graylb: password file {args.password_file} is empty")
    if password and not username:
        raise SystemExit("graylb: a Nacos password was given but no user: set NACOS_USERNAME or use --username")
    if username and not password:
        raise SystemExit(
            f"graylb: Nacos user '{username}' has no password: set NACOS_PASSWORD or use --password-file PATH"
        )
    kw: dict[str, Any] = {"username": username, "password": password, **_tls_options(args, "Nacos")}
    if args.namespace is not None:
        kw["namespace"], kw["config_tenant"] = namespace_pair(args.namespace)
    if args.group:
        kw["group"] = args.group
    try:
        return NacosConfig.from_env(address=args.nacos, **kw)
    except ValueError as exc:
        raise SystemExit(f"graylb: {exc}") from None


def _open_store(args: argparse.Namespace) -> Any:
    """The RuleStore the registry commands work on: a rules file with ``--rules-file``, Nacos with
    ``--nacos``, else Consul."""
    if getattr(args, "rules_file", False):
        from .rules.file_store import FileRuleStore

        return FileRuleStore()
    if args.nacos:
        from .nacos.store import NacosConfigStore

        return NacosConfigStore(_nacos_config(args))
    from .consul.store import ConsulKVStore

    return ConsulKVStore(_consul_config(args))


def _cmd_push(args: argparse.Namespace) -> int:
    from .admin import push_change

    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"graylb: cannot read {args.file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SystemExit(f"graylb: {args.file} is not UTF-8 text: {exc.reason}") from None
    with _open_store(args) as store:
        print(push_change(store, args.key, text, source=args.file))
    return 0


def _cmd_undo(args: argparse.Namespace) -> int:
    from .admin import undo

    with _open_store(args) as store:
        print(undo(store, args.key))
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from .admin import rollback

    with _open_store(args) as store:
        print(rollback(store, args.key, args.service))
    return 0


def _cmd_rollout(args: argparse.Namespace) -> int:
    from . import rollout

    with _open_store(args) as store:
        action = args.rollout_command
        if action == "start":
            steps = [int(w) for w in args.steps.split(",") if w.strip()]
            gates: list[dict[str, Any]] = []
            if args.gate_query:
                if not args.prometheus:
                    raise GraylbError("--gate-query needs --prometheus URL")
                gate: dict[str, Any] = {"url": args.prometheus, "query": args.gate_query, "max": args.gate_max}
                if args.gate_volume_query:
                    gate.update(volume_query=args.gate_volume_query, min_volume=args.gate_min_volume)
                gates.append({"name": "prometheus", "prometheus": gate})
            if args.guard_gate:
                gates.append({"name": "guard", "guard": True})
            change = rollout.start(
                store,
                args.key,
                args.service,
                args.canary,
                steps,
                pause=_duration(args.pause),
                baseline=args.baseline,
                gates=gates,
                sticky_header=args.sticky_header,
            )
        elif action == "status":
            print(rollout.describe(store, args.key, args.service))
            return 0
        elif action == "promote":
            change = rollout.promote(store, args.key, args.service, full=args.full, why=args.why)
        elif action == "run":
            phase = rollout.run(store, args.key, args.service, poll=args.poll, on_tick=lambda r: _tick_line(args, r))
            print(f"rollout of service '{args.service}': {phase}")
            return 0 if phase == "completed" else 1
        else:
            act = {"pause": rollout.pause, "resume": rollout.resume, "abort": rollout.abort, "retry": rollout.retry}
            change = act[action](store, args.key, args.service, why=args.why)
    print(change)
    return 0


def _tick_line(args: argparse.Namespace, result: str) -> None:
    if result != "waiting":
        print(f"{time.strftime('%H:%M:%S')} {args.service}: {result}", flush=True)


def _duration(text: str | None) -> float | None:
    from .rules.model import parse_duration

    return None if text in (None, "", "manual") else parse_duration(text)


def _cmd_history(args: argparse.Namespace) -> int:
    from .rollout import history

    with _open_store(args) as store:
        print(history(store, args.key, args.service))
    return 0


def _cmd_guard_reset(args: argparse.Namespace) -> int:
    from .admin import guard_reset

    with _open_store(args) as store:
        print(guard_reset(store, args.key, args.service))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .admin import status

    with _open_store(args) as store:
        print(status(store, args.service, args.key))
    return 0


def _cmd_drain(args: argparse.Namespace) -> int:
    """POST the drain hook of a local instance and wait for its answer: an orchestrator's
    pre-stop (``graylb drain http://127.0.0.1:8080``)."""
    import httpx

    from .drain_middleware import HOOK_PATH

    url = args.url.rstrip("/") + (args.path or HOOK_PATH)
    try:
        answer = httpx.post(url, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"graylb: could not drain at {url}: {exc}", file=sys.stderr)
        return 2
    if answer.status_code != 200:
        print(f"graylb: {url} answered {answer.status_code}: {answer.text.strip()}", file=sys.stderr)
        return 2
    try:
        result = answer.json()
        drained = result["drained"]
    except (ValueError, KeyError, TypeError):
        print(f"graylb: {url} is not a graylb drain hook (answered {answer.text[:80]!r})", file=sys.stderr)
        return 2
    print(
        f"drained: {result['drained']} in {result['seconds']}s (grace {result['grace']}s; "
        f"{result['refused']} refused for callers to resend; {result['in_flight_left']} still in flight; "
        f"deregistered: {result['deregistered']})"
    )
    return 0 if drained else 1


def _key_option(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--key",
        required=required,
        help="the KV key (Consul) or config dataId (Nacos) holding the rules document (with --rules-file: its path)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graylb", description="Gray-release load balancing for httpx and grpcio.")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the embedded gray-release demo on 127.0.0.1")
    demo.add_argument("--requests", type=int, default=3000, help="requests in the canary phase (default 3000)")
    watching = demo.add_argument_group(
        "keep watching (with --metrics-port or --otlp-endpoint: after the checks, a bad canary keeps running "
        "until Ctrl-C / SIGTERM, for monitoring/ and `make monitoring`)"
    )
    watching.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: a free one)")
    watching.add_argument("--metrics-host", default="127.0.0.1", help="address to serve metrics on (127.0.0.1)")
    watching.add_argument("--otlp-endpoint", help="send traces over OTLP/HTTP, e.g. http://127.0.0.1:4318")
    watching.add_argument("--no-checks", action="store_true", help="skip the checks, start watching at once")
    watching.add_argument("--rate", type=float, default=50.0, help="calls a second while watching (50)")
    watching.add_argument(
        "--canary-errors", type=float, default=0.05, help="share of the canary's answers that are 503s (0.05)"
    )
    watching.add_argument(
        "--warmup", type=float, default=1.5, help="seconds the canary answers only 503s at first (1.5; 0: none)"
    )
    demo.set_defaults(func=_cmd_demo)

    rules = sub.add_parser("rules", help="validate, explain, push and undo rules documents")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    v = rsub.add_parser("validate", help="check a rules file; exits 1 with the precise errors when it is invalid")
    v.add_argument("file")
    v.set_defaults(func=_cmd_validate)
    registry = _registry_options()
    e = rsub.add_parser(
        "explain",
        parents=[registry],
        help="show where a request would go, and why; exits 1 when that call would fail "
        "(with a registry to check against)",
    )
    e.add_argument("file")
    e.add_argument("--service", "-s", required=True)
    e.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a request header, e.g. -H 'accept:application/vnd.myapp.v2+json'; "
        "repeat a name for several lines of one header",
    )
    e.add_argument("--path", default="/")
    e.add_argument("--method", default="GET")
    e.add_argument("--lane")
    e.add_argument("--force-lane", action="store_true")
    e.add_argument("--pin", action="append", default=[], metavar="SERVICE=VERSION")
    e.add_argument("--context", "-c", action="append", default=[], metavar="KEY=VALUE", help="a gray-context value")
    e.add_argument(
        "--registry", help="a static registry file (YAML/JSON: service -> instances) to pick candidates from"
    )
    e.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the live registry's answer (with --consul / --nacos)",
    )
    e.set_defaults(func=_cmd_explain)

    push = rsub.add_parser(
        "push",
        parents=[registry],
        help="validate a rules file and write it to a Consul KV key or Nacos config item "
        "(previous revision kept at KEY.previous)",
    )
    push.add_argument("file")
    push.add_argument(
        "--key",
        required=True,
        help="where the rules document lives: a Consul KV key (e.g. graylb/rules) "
        "or, with --nacos, a config dataId (e.g. graylb-rules)",
    )
    push.set_defaults(func=_cmd_push)
    undo = rsub.add_parser("undo", parents=[registry], help="swap KEY and KEY.previous (undo twice = redo)")
    _key_option(undo)
    undo.set_defaults(func=_cmd_undo)
    hist = rsub.add_parser("history", parents=[registry], help="a service's rollout history: who did what, when, why")
    hist.add_argument("service")
    _key_option(hist)
    hist.set_defaults(func=_cmd_history)

    rb = sub.add_parser(
        "rollback",
        parents=[registry],
        help="send all of a service's traffic to its default subset (removes its routes)",
    )
    rb.add_argument("service")
    _key_option(rb)
    rb.set_defaults(func=_cmd_rollback)

    st = sub.add_parser(
        "status", parents=[registry], help="a service's instances and, with --key, its live traffic split"
    )
    st.add_argument("service")
    _key_option(st, required=False)
    st.set_defaults(func=_cmd_status)

    dr = sub.add_parser(
        "drain",
        help="drain a local instance through its drain hook (deregister, grace, refuse, finish in flight); "
        "exits 0 once drained, 1 if requests were still in flight at its timeout",
    )
    dr.add_argument("url", help="the instance's base URL, e.g. http://127.0.0.1:8080 (the hook serves loopback only)")
    dr.add_argument("--path", default=None, help="the hook's path, if mounted elsewhere (default /graylb/drain)")
    dr.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer (default 120)")
    dr.set_defaults(func=_cmd_drain)

    ro = sub.add_parser(
        "rollout", help="a progressive rollout: start, status, promote, pause, resume, abort, retry, run"
    )
    rosub = ro.add_subparsers(dest="rollout_command", required=True)
    for name, text in (
        ("start", "start rolling a canary subset out, step by step"),
        ("status", "step, weight, time left, gates, who did what"),
        ("promote", "the next step (--full: to the end; past the last, the canary becomes the default)"),
        ("pause", "hold the current step"),
        ("resume", "go on from a pause"),
        ("abort", "100%% back to the baseline at once; the plan stays for retry"),
        ("retry", "start an aborted rollout again from its first step"),
        ("run", "drive the rollout: wait the pauses, evaluate the gates, advance or abort"),
    ):
        c = rosub.add_parser(name, parents=[registry], help=text)
        c.add_argument("service")
        _key_option(c)
        if name in ("promote", "pause", "resume", "abort", "retry"):
            c.add_argument("--why", default="", help="recorded in the history")
        if name == "promote":
            c.add_argument("--full", action="store_true", help="straight to the end")
        if name == "run":
            c.add_argument("--poll", type=float, default=5.0, help="seconds between two looks at the store (5)")
        if name == "start":
            c.add_argument("--canary", required=True, help="the subset to roll out")
            c.add_argument("--baseline", help="the subset it replaces (default: the service's default subset)")
            c.add_argument("--steps", default="5,25,50,100", help="canary weights in %%, in order (5,25,50,100)")
            c.add_argument(
                "--pause", default="manual", help="how long each step holds, e.g. 5m (manual: until promoted)"
            )
            c.add_argument("--sticky-header", help="keep each user on one side, by this header (e.g. x-user-id)")
            c.add_argument("--prometheus", help="Prometheus URL for the analysis gate")
            c.add_argument("--gate-query", help="PromQL whose value must stay <= --gate-max ({service} = the service)")
            c.add_argument("--gate-max", type=float, default=0.02, help="the gate's upper bound (0.02)")
            c.add_argument("--gate-volume-query", help="PromQL of the traffic the gate needs before judging")
            c.add_argument("--gate-min-volume", type=float, default=0.0, help="the volume it needs (0)")
            c.add_argument("--guard-gate", action="store_true", help="abort when a canary guard's rollback is written")
        c.set_defaults(func=_cmd_rollout)

    guard = sub.add_parser("guard", help="the canary guard: reset a trip in every process")
    gsub = guard.add_subparsers(dest="guard_command", required=True)
    gr = gsub.add_parser(
        "reset",
        parents=[registry],
        help="clear a tripped guard everywhere (writes guard.reset: the service's rules change, so every process "
        "judges the canary afresh)",
    )
    gr.add_argument("service")
    _key_option(gr)
    gr.set_defaults(func=_cmd_guard_reset)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RuleError as exc:
        print(f"graylb: {exc}", file=sys.stderr)
        return 1
    except GraylbError as exc:
        print(f"graylb: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
