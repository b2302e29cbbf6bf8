"""The cost of change at scale: rebuilds of a 2,000-instance service, a 200-service rules
document, memory per 1,000 instances -- and whether a call ever waits on a rebuild.

    python benchmarks/scale_of_change.py [--quick] [--profile]

1. **Snapshot change, 2,000 instances** (target: rebuild <= 5 ms median). One service,
   ``orders``, with the rules below (four subsets, three of them version ranges; a header route;
   a sticky weighted split), on a ``StaticDiscovery``. Each change publishes a new snapshot in
   which one instance's weight differs, made of fresh ``Instance`` objects as a registry client
   builds them from every answer. Timed on this thread with no caller running:
   ``StaticDiscovery.set_instances`` (publish -> state swapped: sort, compare, then the
   balancer's listener rebuilds), ``Balancer._rebuild`` alone (what the listener runs), and
   ``graylb.routing.router.build_state`` alone. The last rows rebuild the same 2,000 instances
   under subsets written as partial versions (``v1.4`` / ``v2``) and under no rules, to show
   where the time goes (``--profile`` prints cProfile's top entries of ``_rebuild``).
2. **Calls during rebuilds.** A caller thread routes and picks
   (``balancer.start("orders", info).next_instance()``) in a loop and records every call's
   latency, in four phases: no writer; a *control* writer that rebuilds a second, independent
   balancer as fast as it can (same CPU and GIL pressure, nothing shared with the caller's
   balancer); a writer publishing to the called service every second; and (full run) one
   publishing as fast as it can. ``Balancer._build`` of the measured balancer is wrapped (an
   instance attribute, graylb itself untouched) to count rebuilds run *on the caller's thread*:
   a call that finds its state older than the watch's revision rebuilds it itself -- unless the
   listener is rebuilding it at that moment: then the call routes on the state in force and does
   not wait (the wrapper of ``_catch_up`` counts those). A call max in the range of the
   control's means calls do not wait on rebuilds (the control shows what the GIL alone costs: up
   to one switch interval); a max near one or two rebuild times means they do. On a shared
   machine a preempted process also makes slow calls (see the no-writer row's max and "> 10
   ms"), so the verdict rests on the rebuilds counted on the caller's thread and on those calls'
   latencies. "met": no call rebuilt, and the max is within twice the no-rebuild phases'.
3. **Rules document, 200 services** (2-3 subsets each, a header route, a sticky weighted
   split), as YAML text: load, validate (pydantic + cross references), compile, and the whole
   ``parse_rules``. Then a balancer watching all 200 services (10 instances each) gets a new
   document in which one service's weights changed: the time to install the compiled document
   (the rule source's listeners: the balancer rebuilds its services) and how many services were
   rebuilt for that one change; ``RuleSource.apply`` of the text times parse + install. Last, a
   caller on the service the balancer rebuilds last while the rules change every 0.2 s (on a
   writer thread): how many of its calls rebuilt their state themselves.
4. **Memory**: tracemalloc of ``Instance`` objects for N instances (1,000 / 2,000 / 10,000;
   ``--quick``: the first two), then of a ``StaticDiscovery`` + ``Balancer`` holding them with
   the state built; KiB per 1,000 instances.

``--quick``: 10 changes, phases of 0.3 / 0.3 / 1.3 s (no "as fast as it can" phase), 2 rounds
of the rules document; ~10 s. The full run takes about a minute and a half.

Figures are medians with their 95 % interval (``_util.spread``) where there are rounds. Nothing
is asserted; the "met" column compares with the targets.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import pstats
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml
from _util import machine, median, percentile, spread, table

import graylb
from graylb.instance import Instance
from graylb.routing.router import build_state
from graylb.rules.compile import compile_rules
from graylb.rules.load import load_document, parse_rules, validate_rules

SERVICE = "orders"
N_INSTANCES = 2000
REBUILD_TARGET_MS = 5.0
# Calls slower than two GIL switch intervals: the GIL alone (a writer thread busy in Python)
# delays a call by up to one interval; a preempted process or a wait on a rebuild by more.
SLOW_US = 10_000

RULES = {
    "services": {
        SERVICE: {
            "subsets": {
                "stable": {"version": "^1.4"},
                "canary": {"version": "^2.0"},
                "zone-a": {"version": "^1.4", "labels": {"zone": "a"}},
                "beta": {"lane": "beta"},
            },
            "default": "stable",
            "routes": [
                {
                    "name": "testers",
                    "match": [{"headers": {"user-group": {"exact": "beta"}}}],
                    "to": [{"subset": "canary"}],
                },
                {
                    "name": "five-percent",
                    "to": [{"subset": "canary", "weight": 5}, {"subset": "stable", "weight": 95}],
                    "sticky": {"header": "x-user-id"},
                },
            ],
        }
    }
}
# The same subsets as partial versions: the selector kind decides most of a rebuild's cost.
PARTIAL_RULES = {
    "services": {
        SERVICE: {
            **RULES["services"][SERVICE],
            "subsets": {
                "stable": {"version": "v1.4"},
                "canary": {"version": "v2"},
                "zone-a": {"version": "v1.4", "labels": {"zone": "a"}},
                "beta": {"lane": "beta"},
            },
        }
    }
}


def make_instances(n: int, changed: int = -1, service: str = SERVICE) -> list[Instance]:
    """``n`` fresh instances: 10 % on 2.0.0, the rest 1.4.2, two zones, one in 500 in lane beta;
    instance ``changed`` (if any) has weight 50 instead of 100."""
    out = []
    for i in range(n):
        out.append(
            Instance(
                service=service,
                host=f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}",
                port=8080,
                version="2.0.0" if i % 10 == 0 else "1.4.2",
                weight=50 if i == changed else 100,
                lane="beta" if i % 500 == 499 else None,
                labels={"zone": "ab"[i % 2]},
            )
        )
    return out


def variants(n: int, count: int, service: str = SERVICE) -> list[list[Instance]]:
    """``count`` snapshots that each differ from the previous one (a different instance has
    weight 50), each of fresh objects; cycled through, every publish is a real change."""
    return [make_instances(n, changed=k, service=service) for k in range(count)]


def stats_ms(xs: list[float]) -> list[str]:
    return [spread(xs), f"{percentile(xs, 0.9):.2f}", f"{max(xs):.2f}"]


def met(value: float, target: float) -> str:
    return "yes" if value <= target else "NO"


# -- 1. rebuild per snapshot change ---------------------------------------------------------


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def rebuild_rows(rounds: int, pool: list[list[Instance]]) -> tuple[list[list[str]], float]:
    disco = graylb.StaticDiscovery({SERVICE: pool[0]})
    balancer = graylb.Balancer(disco, RULES)
    balancer.state(SERVICE)
    entry = balancer._services[SERVICE]
    counter = iter(range(1, 10**9))

    def publish() -> None:
        disco.set_instances(SERVICE, pool[next(counter) % len(pool)])

    publish()  # warm
    rows = []
    t_publish = timed(publish, rounds)
    assert entry.watch.revision == entry.revision  # every publish was a change, and rebuilt
    rows.append(["publish -> state swapped (set_instances)", *stats_ms(t_publish)])
    t_rebuild = timed(lambda: balancer._rebuild(entry), rounds)
    rows.append(["Balancer._rebuild (the listener's work)", *stats_ms(t_rebuild)])
    rules = balancer.rules.service(SERVICE)
    snap = entry.watch.snapshot
    rows.append(["router.build_state alone", *stats_ms(timed(lambda: build_state(SERVICE, snap, rules), rounds))])
    for label, doc in (("subsets as partial versions (v1.4, v2)", PARTIAL_RULES), ("no rules", None)):
        other = graylb.Balancer(graylb.StaticDiscovery({SERVICE: pool[0]}), doc)
        other.state(SERVICE)
        e = other._services[SERVICE]
        rows.append([f"Balancer._rebuild, {label}", *stats_ms(timed(lambda e=e, o=other: o._rebuild(e), rounds))])
    for row in rows:
        row.append(f"<= {REBUILD_TARGET_MS:g} ms")
        row.append(met(float(row[1].split()[0]), REBUILD_TARGET_MS))
    return rows, median(t_rebuild)


def profile_rebuild(rounds: int) -> str:
    balancer = graylb.Balancer(graylb.StaticDiscovery({SERVICE: make_instances(N_INSTANCES)}), RULES)
    balancer.state(SERVICE)
    entry = balancer._services[SERVICE]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(rounds):
        balancer._rebuild(entry)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    return (
        f"\ncProfile of {rounds} x Balancer._rebuild, {N_INSTANCES} instances (sorted by own time):\n" + out.getvalue()
    )


# -- 2. calls during rebuilds ------------------------------------------------------------------


class RebuildCounter:
    """Wraps a balancer's ``_build`` (every rebuild runs it: the watch listener, the rules
    listener, and a call that finds its state behind) and ``_catch_up`` (what a call runs then),
    as instance attributes -- graylb itself is untouched -- to count every rebuild, those run on
    the caller's thread (``on_caller[0]``), and the calls that found another thread's rebuild
    under way (``lock_held``: they route on the state in force instead of waiting)."""

    def __init__(self, balancer: graylb.Balancer) -> None:
        self.total = 0
        self.on_caller = [0]
        self.lock_held = 0
        self.caller_ident: int | None = None
        build, catch_up = balancer._build, balancer._catch_up

        def counting(entry):
            self.total += 1
            if threading.get_ident() == self.caller_ident:
                self.on_caller[0] += 1
            return build(entry)

        def catching_up(entry, state):
            if threading.get_ident() == self.caller_ident:
                self.lock_held += entry.lock.locked()
            return catch_up(entry, state)

        balancer._build = counting  # type: ignore[method-assign]
        balancer._catch_up = catching_up  # type: ignore[method-assign]


class Caller(threading.Thread):
    """Routes + picks ``service`` on ``balancer`` until stopped; records each call's latency (us)
    and, apart, those of the calls that ran a rebuild on this thread."""

    def __init__(self, balancer: graylb.Balancer, counter: RebuildCounter, service: str = SERVICE) -> None:
        super().__init__(name="caller", daemon=True)
        self.balancer = balancer
        self.counter = counter
        self.service = service
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.rebuilding: list[float] = []  # latencies of the calls that rebuilt the state
        self.ready = threading.Event()

    def run(self) -> None:
        self.counter.caller_ident = threading.get_ident()
        start, rebuilds, stop, service = self.balancer.start, self.counter.on_caller, self.stop, self.service
        lat, rebuilding = self.latencies, self.rebuilding
        headers = {"x-user-id": "user-12345"}
        clock = time.perf_counter_ns
        for _ in range(2000):  # warm this thread's path
            start(service, graylb.RequestInfo("GET", "/api/v1/orders/42", headers.get)).next_instance()
        self.ready.set()
        while not stop.is_set():
            before = rebuilds[0]
            t0 = clock()
            start(service, graylb.RequestInfo("GET", "/api/v1/orders/42", headers.get)).next_instance()
            us = (clock() - t0) / 1000
            lat.append(us)
            if rebuilds[0] != before:
                rebuilding.append(us)

    def begin(self) -> None:
        self.start()
        self.ready.wait()

    def finish(self) -> None:
        self.stop.set()
        self.join()


def call_phase(seconds: float, writer: str, pool: list[list[Instance]]) -> dict:
    """One phase: a caller for ``seconds``, and ``writer`` = none / control / every-1s / asap."""
    disco = graylb.StaticDiscovery({SERVICE: pool[0]})
    balancer = graylb.Balancer(disco, RULES)
    balancer.state(SERVICE)
    counter = RebuildCounter(balancer)
    target, control = disco, None
    if writer == "control":  # the same work on a balancer the caller never reads
        target = graylb.StaticDiscovery({SERVICE: pool[0]})
        control = graylb.Balancer(target, RULES)
        control.state(SERVICE)
    caller = Caller(balancer, counter)
    done = threading.Event()
    changes = [0]

    def write() -> None:
        k = 1
        period = 1.0 if writer == "every-1s" else 0.0
        next_at = time.perf_counter() + (0.25 if period else 0.0)
        while not done.is_set():
            if period:
                delay = next_at - time.perf_counter()
                if delay > 0 and done.wait(delay):
                    return
                next_at += period
            target.set_instances(SERVICE, pool[k % len(pool)])
            k += 1
            changes[0] += 1

    gc.collect()
    caller.begin()
    w = threading.Thread(target=write, name="writer", daemon=True) if writer != "none" else None
    if w is not None:
        w.start()
    time.sleep(seconds)
    done.set()
    if w is not None:
        w.join()
    caller.finish()
    if control is not None:  # the control writer rebuilt a live balancer's state each time
        assert control._services[SERVICE].revision == target.snapshot(SERVICE).revision
    return {
        "lat": caller.latencies,
        "rebuilding": caller.rebuilding,
        "caller_rebuilds": counter.on_caller[0],
        "lock_held": counter.lock_held,
        "changes": changes[0],
    }


PHASES = {
    "none": "no rebuilds",
    "control": "control: writer rebuilds ANOTHER balancer, as fast as it can",
    "every-1s": "writer publishes to the called service every 1 s",
    "asap": "writer publishes to the called service as fast as it can",
}


CALL_HEADER = ["phase", "calls", "changes", "p50 us", "p99 us", "max ms", "> 10 ms", "calls that rebuilt"]
CALL_HEADER += ["target", "met"]


def call_rows(phases: list[tuple[str, float]], pool: list[list[Instance]]) -> tuple[list[list[str]], dict]:
    rows, results = [], {}
    for writer, seconds in phases:
        r = call_phase(seconds, writer, pool)
        results[writer] = r
        lat = r["lat"]
        rb = r["rebuilding"]
        rows.append(
            [
                PHASES[writer],
                f"{len(lat):,}",
                str(r["changes"]),
                f"{percentile(lat, 0.5):.1f}",
                f"{percentile(lat, 0.99):.1f}",
                f"{max(lat) / 1000:.2f}",
                str(sum(x > SLOW_US for x in lat)),
                f"{len(rb)} (median {median(rb) / 1000:.1f} ms, max {max(rb) / 1000:.1f})" if rb else "0",
            ]
        )
    return rows, results


# -- 3. rules document of 200 services -----------------------------------------------------------


def rules_document(services: int, bumped: int = -1) -> dict:
    """``services`` services, each 2-3 subsets, a header route and a sticky split; service
    ``bumped`` has its split at 10/90 instead of 5/95."""
    out = {}
    for i in range(services):
        subsets = {"stable": {"version": "^1"}, "canary": {"version": "^2"}}
        if i % 2:
            subsets["zone-a"] = {"version": "^1", "labels": {"zone": "a"}}
        w = 10 if i == bumped else 5
        out[f"svc-{i:03d}"] = {
            "subsets": subsets,
            "default": "stable",
            "routes": [
                {
                    "name": "testers",
                    "match": [{"headers": {"user-group": {"exact": "beta"}}}],
                    "to": [{"subset": "canary"}],
                },
                {
                    "name": "split",
                    "to": [{"subset": "canary", "weight": w}, {"subset": "stable", "weight": 100 - w}],
                    "sticky": {"header": "x-user-id"},
                },
            ],
        }
    return {"version": 1, "services": out}


def rules_rows(rounds: int, flips: int, services: int = 200, per_service: int = 10) -> list[list[str]]:
    doc_a, doc_b = rules_document(services), rules_document(services, bumped=services // 2)
    text_a, text_b = yaml.safe_dump(doc_a, sort_keys=False), yaml.safe_dump(doc_b, sort_keys=False)
    json_a = json.dumps(doc_a)
    data = load_document(text_a)
    model = validate_rules(data)
    rows = []
    kib = f"{len(text_a) / 1024:.0f} KiB of YAML"
    rows.append([f"load YAML ({kib})", spread(timed(lambda: load_document(text_a), rounds))])
    rows.append(["validate (pydantic model + references)", spread(timed(lambda: validate_rules(data), rounds))])
    rows.append(["compile (validated model -> CompiledRules)", spread(timed(lambda: compile_rules(model), rounds))])
    rows.append(["parse_rules(YAML text): all three", spread(timed(lambda: parse_rules(text_a), rounds))])
    rows.append(["parse_rules(the same document as JSON)", spread(timed(lambda: parse_rules(json_a), rounds))])

    names = [f"svc-{i:03d}" for i in range(services)]
    disco = graylb.StaticDiscovery({name: make_instances(per_service, service=name) for name in names})
    source = graylb.StaticRules(doc_a)
    balancer = graylb.Balancer(disco, source)
    for name in names:
        balancer.state(name)
    counter = RebuildCounter(balancer)
    compiled = [parse_rules(doc_a, source="a"), parse_rules(doc_b, source="b")]
    texts = [text_a, text_b]
    flip = iter(range(1, 10**9))
    # The listeners alone, the document compiled already: what a rule change costs the balancer
    # (``_install`` is what ``apply`` runs once parse_rules succeeded).
    install = timed(lambda: source._install(compiled[next(flip) % 2]), rounds)
    per_change = counter.total / rounds
    rows.append([f"rules change (1 service's weights): install, {services} services watched", spread(install)])
    rows.append(["  services rebuilt per one-service change", f"{per_change:.0f} of {services}"])
    rows.append(["  per service rebuilt (10 instances)", f"{median(install) / max(per_change, 1) * 1000:.0f} us"])
    applied = timed(lambda: source.apply(texts[next(flip) % 2]), rounds)
    rows.append(["RuleSource.apply(YAML text): parse + install", spread(applied)])

    # A caller on the service the listener rebuilds last, while the rules change every
    # 0.2 s (installed on a writer thread, as a rule source's watcher does).
    last = names[-1]
    caller = Caller(balancer, counter, last)

    def write() -> None:
        for _ in range(flips):
            time.sleep(0.2)
            source._install(compiled[next(flip) % 2])
        time.sleep(0.1)

    caller.begin()
    w = threading.Thread(target=write, name="rules-writer", daemon=True)
    w.start()
    w.join()
    caller.finish()
    lat, rb = caller.latencies, caller.rebuilding
    rows.append(
        [
            f"calls to '{last}' during {flips} rule changes: p50 / p99 us, max ms",
            f"{percentile(lat, 0.5):.1f} / {percentile(lat, 0.99):.1f}, {max(lat) / 1000:.2f}",
        ]
    )
    rows.append(
        [
            "  of which rebuilt the state on the caller's thread",
            f"{len(rb)} of {len(lat):,}"
            + (f" (median {median(rb) / 1000:.2f} ms, max {max(rb) / 1000:.2f})" if rb else ""),
        ]
    )
    return [[*r, "-", "-"] for r in rows]


# -- 4. memory ---------------------------------------------------------------------------------


def memory_row(n: int) -> list[str]:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        instances = make_instances(n)
        gc.collect()
        after_instances = tracemalloc.get_traced_memory()[0]
        balancer = graylb.Balancer(graylb.StaticDiscovery({SERVICE: instances}), RULES)
        balancer.state(SERVICE)
        del instances
        gc.collect()
        total = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del balancer
    per_k = 1000 / n / 1024
    return [
        f"{n:,}",
        f"{(after_instances - base) * per_k:.0f}",
        f"{(total - after_instances) * per_k:.0f}",
        f"{(total - base) * per_k:.0f}",
        f"{(total - base) / 1024 / 1024:.1f} MiB",
        "-",
        "-",
    ]


def main() -> None:
    quick = "--quick" in sys.argv
    rounds = 10 if quick else 60
    pool = variants(N_INSTANCES, 8)
    rows, rebuild_ms = rebuild_rows(rounds, pool)
    print(
        table(
            f"rebuild per snapshot change, {N_INSTANCES:,} instances, ms: median [95 % CI], p90, max "
            f"({rounds} changes; {machine()})",
            ["what is timed", "median ms", "p90", "max", "target", "met"],
            rows,
        )
    )
    if "--profile" in sys.argv:
        print(profile_rebuild(20))

    phases = [("none", 0.3), ("control", 0.3), ("every-1s", 1.3)]
    if not quick:
        phases = [("none", 8.0), ("control", 8.0), ("every-1s", 15.0), ("asap", 8.0)]
    crow, res = call_rows(phases, pool)
    base_max = max(res["none"]["lat"]) / 1000
    control_max = max(res["control"]["lat"]) / 1000
    verdicts = []
    for writer in ("every-1s", "asap"):
        if writer not in res:
            continue
        r = res[writer]
        worst = max(r["lat"]) / 1000
        waits = r["caller_rebuilds"] > 0 or worst > max(2 * control_max, rebuild_ms / 2)
        verdicts.append(
            f"{writer}: call max {worst:.2f} ms vs {control_max:.2f} ms (GIL control) and {base_max:.2f} ms "
            f"(no writer); a rebuild takes {rebuild_ms:.1f} ms; {r['caller_rebuilds']} rebuild(s) ran on the "
            f"caller's thread over {r['changes']} change(s); {r['lock_held']} call(s) found the writer's rebuild "
            "under way and routed on the state in force -> "
            + ("calls DO wait on rebuilds" if waits else "calls do not wait on rebuilds")
        )
    for row, (writer, _) in zip(crow, phases):
        if writer in ("every-1s", "asap"):
            r = res[writer]
            calm = max(r["lat"]) / 1000 <= 2 * max(control_max, base_max, 1.0)  # max in the range of no rebuilds
            row += ["no call waits", "yes" if r["caller_rebuilds"] == 0 and calm else "NO"]
        else:
            row += ["-", "-"]
    print(
        table(
            f"calls during rebuilds: route + pick per call, us ({N_INSTANCES:,} instances; switch interval "
            f"{sys.getswitchinterval() * 1000:g} ms)",
            CALL_HEADER,
            crow,
        )
    )
    print("\n".join(["", *verdicts]))

    print(
        table(
            f"rules document: 200 services, ms: median [95 % CI] ({2 if quick else 20} rounds)",
            ["what is timed", "value", "target", "met"],
            rules_rows(2 if quick else 20, 4 if quick else 20),
        )
    )

    sizes = (1000, 2000) if quick else (1000, 2000, 10000)
    print(
        table(
            "memory per 1,000 instances (tracemalloc), KiB",
            ["instances", "Instance objects", "discovery + balancer state", "total", "all, absolute", "target", "met"],
            [memory_row(n) for n in sizes],
        )
    )


if __name__ == "__main__":
    main()
