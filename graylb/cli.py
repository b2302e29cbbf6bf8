"""The ``graylb`` command: ``demo``, ``rules validate``, ``rules explain``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import GraylbError, RuleError

__all__ = ["main"]


def _pairs(values: Sequence[str], sep: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, found, value = item.partition(sep)
        if not found or not name.strip():
            raise SystemExit(f"graylb: {what} {item!r} must look like name{sep}value")
        out[name.strip().lower() if what == "header" else name.strip()] = value.strip()
    return out


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(requests=args.requests)


def _load_rules(path: str):
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
        print(f"{name}: subsets [{subsets}], default {svc.default or '*'}, routes [{routes}], fallback {svc.fallback}, lb {svc.load_balancer}")
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
    snapshot = None
    if args.registry:
        snapshot = StaticDiscovery.from_file(args.registry).watch(args.service).snapshot
    else:
        print("note: no --registry given, so subsets have no instances; explaining by rules alone", file=sys.stderr)
    path, _, query = args.path.partition("?")
    request = RequestInfo(args.method.upper(), path, _pairs(args.header, ":", "header"), query)
    ctx = GrayContext(lane=args.lane, lane_forced=args.force_lane, pins=_pairs(args.pin, "=", "pin"), values=_pairs(args.context, "=", "context value"))
    if snapshot is None:
        print(explain_rules(args.service, svc, request, ctx))
    else:
        print(explain_state(build_state(args.service, snapshot, svc), request, ctx))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graylb", description="Gray-release load balancing for httpx and grpcio.")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the embedded gray-release demo on 127.0.0.1")
    demo.add_argument("--requests", type=int, default=3000, help="requests in the canary phase (default 3000)")
    demo.set_defaults(func=_cmd_demo)

    rules = sub.add_parser("rules", help="validate and explain rules documents")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    v = rsub.add_parser("validate", help="check a rules file; exits 1 with the precise errors when it is invalid")
    v.add_argument("file")
    v.set_defaults(func=_cmd_validate)
    e = rsub.add_parser("explain", help="show where a request would go, and why")
    e.add_argument("file")
    e.add_argument("--service", "-s", required=True)
    e.add_argument("--header", "-H", action="append", default=[], metavar="NAME:VALUE")
    e.add_argument("--path", default="/")
    e.add_argument("--method", default="GET")
    e.add_argument("--lane")
    e.add_argument("--force-lane", action="store_true")
    e.add_argument("--pin", action="append", default=[], metavar="SERVICE=VERSION")
    e.add_argument("--context", "-c", action="append", default=[], metavar="KEY=VALUE", help="a gray-context value")
    e.add_argument("--registry", help="a static registry file (YAML/JSON: service -> instances) to pick candidates from")
    e.set_defaults(func=_cmd_explain)
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
