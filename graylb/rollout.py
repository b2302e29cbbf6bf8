"""Progressive rollouts: 5 % to the canary, watch, raise step by step, finish -- or abort at once.

The plan and its state live in the rules document, in the service's ``rollout`` section, in the
same store as the rules (Consul KV, Nacos config, a file), so every operator and every runner
sees one truth. The traffic itself goes through a plain weighted route named ``rollout`` that
these functions write: the router needs nothing new, and ``graylb rules explain`` shows it.

Every change is one compare-and-set write of the whole document against the revision it was
computed from (:func:`graylb.admin` machinery), keeping the replaced revision at
``<key>.previous`` -- so two runners never double-step, a runner killed mid-pause resumes where
the store says (pauses count from the recorded ``step_started``), and ``graylb rules undo`` takes
back one step. Each change appends to ``history`` (who, when, what, why, gate verdicts).

``start`` / ``promote`` / ``pause`` / ``resume`` / ``abort`` / ``retry`` change the rollout;
``tick`` is one runner pass (advance a due step whose gates pass, abort on a failed gate, hold on
one that cannot be evaluated); ``run`` ticks until the rollout ends. ``graylb rollout ...`` is
the same from the shell.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from . import admin
from .errors import GraylbError
from .rules.load import validate_rules
from .rules.model import format_duration, parse_duration

__all__ = [
    "ROUTE",
    "GateVerdict",
    "StepMoved",
    "abort",
    "describe",
    "evaluate_gates",
    "history",
    "pause",
    "promote",
    "resume",
    "retry",
    "run",
    "start",
    "tick",
]

log = logging.getLogger("graylb")

#: The name of the weighted route a rollout manages.
ROUTE = "rollout"
ACTIVE = ("progressing", "paused")


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user database entry (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


class StepMoved(GraylbError):
    """The rollout is no longer at the step a runner judged: another runner or an operator moved
    it first. Nothing was written; read again."""


def _expect(state: Mapping[str, Any], step: int | None, service: str) -> None:
    if step is not None and (state.get("phase") not in ACTIVE or int(state.get("step", -1)) != step):
        raise StepMoved(f"the rollout of service '{service}' moved on from step {step + 1} meanwhile")


@dataclasses.dataclass(frozen=True)
class GateVerdict:
    """One gate's answer: ``result`` is ``pass``, ``fail`` or ``unknown`` (could not evaluate)."""

    gate: str
    result: str
    detail: str

    def __str__(self) -> str:
        return f"{self.gate}: {self.result} ({self.detail})"


# -- editing the document ----------------------------------------------------------------------


def _edit(
    target: Any,
    key: str,
    service: str,
    change: Callable[[dict[str, Any], dict[str, Any]], list[str]],
    action: str,
    by: str | None,
    why: str = "",
    verdicts: Sequence[GateVerdict] = (),
    now: float | None = None,
) -> admin.Change:
    """Read the document, let ``change(service_dict, rollout_dict)`` edit copies of both (it
    returns the summary lines, or raises GraylbError to refuse), append the history event, and
    write it back by compare-and-set (``admin.RuleConflict`` when someone wrote in between)."""
    stamp = time.time() if now is None else now
    with admin._opened(target) as store:
        where = store.describe(key)
        current, version, data, _ = admin._read_document(store, key, "there are no rules to roll out")
        services = dict(data.get("services") or {})
        if service not in services:
            raise GraylbError(f"service '{service}' has no rules in {where}")
        svc = dict(services[service] or {})
        rollout = dict(svc.get("rollout") or {})
        lines = change(svc, rollout)
        action = rollout.pop("_action", action)  # a promotion past the last step is a completion
        state = rollout.get("state") or {}
        step = int(state.get("step", 0))
        event: dict[str, Any] = {
            "at": _iso(stamp),
            "by": by or _who(),
            "action": action,
            "step": step,
            "weight": _weight(rollout, step),
        }
        if why:
            event["why"] = why
        if verdicts:
            event["verdicts"] = {v.gate: f"{v.result}: {v.detail}" for v in verdicts}
        rollout["history"] = [*(rollout.get("history") or []), event]
        svc["rollout"] = rollout
        new_data = {**data, "services": {**services, service: svc}}
        validate_rules(new_data, key)
        index = admin._write_with_previous(store, key, admin._dump_like(current, new_data), current, version)
        return admin.Change(key, index, tuple(lines))


def _weight(rollout: Mapping[str, Any], step: int) -> int:
    steps = rollout.get("steps") or []
    return int(steps[step]["weight"]) if 0 <= step < len(steps) else 0


def _set_route(svc: dict[str, Any], rollout: Mapping[str, Any], weight: int | None) -> None:
    """Write the managed route at ``weight`` % canary (None: remove it). It goes before the first
    route without a match -- matched routes (testers) keep their precedence."""
    routes = [dict(r) for r in (svc.get("routes") or [])]
    old = next((r for r in routes if r.get("name") == ROUTE), None)
    routes = [r for r in routes if r.get("name") != ROUTE]
    if weight is None:
        svc["routes"] = routes
        return
    canary, baseline = rollout["canary"], rollout["baseline"]
    to = [{"subset": canary, "weight": weight}, {"subset": baseline, "weight": 100 - weight}]
    route: dict[str, Any] = {"name": ROUTE, "to": [t for t in to if t["weight"] > 0]}
    if old is not None and old.get("sticky"):
        route["sticky"] = old["sticky"]
    where = next((i for i, r in enumerate(routes) if not r.get("match")), len(routes))
    routes.insert(where, route)
    svc["routes"] = routes


def _state(rollout: Mapping[str, Any], where: str) -> dict[str, Any]:
    state = rollout.get("state")
    if not isinstance(state, Mapping):
        raise GraylbError(f"no rollout in {where}: start one with `graylb rollout start`")
    return dict(state)


def _enter_step(rollout: dict[str, Any], svc: dict[str, Any], step: int, phase: str, now: float) -> None:
    rollout["state"] = {"phase": phase, "step": step, "step_started": _iso(now)}
    _set_route(svc, rollout, _weight(rollout, step))


def _complete(rollout: dict[str, Any], svc: dict[str, Any], now: float) -> list[str]:
    last = len(rollout["steps"]) - 1
    rollout["state"] = {"phase": "completed", "step": last, "step_started": _iso(now)}
    rollout["_action"] = "complete"
    _set_route(svc, rollout, None)
    svc["default"] = rollout["canary"]
    return [
        f"completed: subset '{rollout['canary']}' is the default now; the baseline '{rollout['baseline']}' stays "
        "named (graylb rollback goes back to it)"
    ]


# -- operator actions --------------------------------------------------------------------------


def start(
    target: Any,
    key: str,
    service: str,
    canary: str,
    steps: Sequence[int | tuple[int, float | None]],
    *,
    pause: float | None = None,
    baseline: str | None = None,
    gates: Sequence[Mapping[str, Any]] = (),
    sticky_header: str | None = None,
    by: str | None = None,
    now: float | None = None,
) -> admin.Change:
    """Start rolling ``canary`` out: ``steps`` are canary weights (or ``(weight, pause)``), each
    held ``pause`` seconds (None: until promoted); the last step is promoted into completion.
    ``baseline`` defaults to the service's default subset. Refuses while a rollout is active."""
    stamp = time.time() if now is None else now

    def change(svc: dict[str, Any], rollout: dict[str, Any]) -> list[str]:
        state = rollout.get("state") or {}
        if state.get("phase") in ACTIVE:
            raise GraylbError(
                f"service '{service}' already has a rollout {state['phase']} at step {state.get('step', 0) + 1}: "
                "promote, abort or let it finish first"
            )
        base = baseline or svc.get("default")
        if not base:
            raise GraylbError(f"service '{service}' has no default subset: give the baseline (--baseline)")
        plan = []
        for step in steps:
            weight, hold = step if isinstance(step, tuple) else (step, pause)
            plan.append({"weight": int(weight), **({"pause": format_duration(hold)} if hold else {})})
        # The rollout owns the calls no matched route takes: routes without a match would be
        # shadowed by it now and come back after it (sending traffic back to the baseline).
        routes = svc.get("routes") or []
        replaced = [r.get("name", "?") for r in routes if not r.get("match") and r.get("name") != ROUTE]
        svc["routes"] = [r for r in routes if r.get("match")]
        rollout.clear()
        rollout.update({"canary": canary, "baseline": base, "steps": plan})
        if gates:
            rollout["gates"] = [dict(g) for g in gates]
        if sticky_header:
            _set_route(svc, rollout, 0)
            next(r for r in svc["routes"] if r["name"] == ROUTE)["sticky"] = {"header": sticky_header}
        svc["default"] = base
        _enter_step(rollout, svc, 0, "progressing", stamp)
        lines = [f"rollout of '{canary}' started: step 1 of {len(plan)}, {plan[0]['weight']}% to the canary"]
        if replaced:
            lines.append(
                f"  replaced route(s) without a match: {', '.join(replaced)} (the rollout route takes their calls)"
            )
        return lines

    return _edit(target, key, service, change, "start", by, now=stamp)


def promote(
    target: Any,
    key: str,
    service: str,
    *,
    full: bool = False,
    by: str | None = None,
    why: str = "",
    verdicts: Sequence[GateVerdict] = (),
    now: float | None = None,
    expect_step: int | None = None,
) -> admin.Change:
    """The next step (``full``: straight to the end); past the last step, complete: the canary
    becomes the default subset, the managed route goes, the baseline stays named."""
    stamp = time.time() if now is None else now

    def change(svc: dict[str, Any], rollout: dict[str, Any]) -> list[str]:
        state = _state(rollout, key)
        _expect(state, expect_step, service)
        if state["phase"] not in ACTIVE:
            raise GraylbError(f"the rollout of service '{service}' is {state['phase']}: nothing to promote")
        nxt = len(rollout["steps"]) if full else int(state["step"]) + 1
        if nxt >= len(rollout["steps"]):
            return _complete(rollout, svc, stamp)
        _enter_step(rollout, svc, nxt, "progressing", stamp)
        return [f"step {nxt + 1} of {len(rollout['steps'])}: {_weight(rollout, nxt)}% to the canary"]

    return _edit(target, key, service, change, "promote-full" if full else "promote", by, why, verdicts, stamp)


def _phase_change(frm: tuple[str, ...], to: str, action: str) -> Callable[..., admin.Change]:
    def act(
        target: Any,
        key: str,
        service: str,
        *,
        by: str | None = None,
        why: str = "",
        now: float | None = None,
        verdicts: Sequence[GateVerdict] = (),
        expect_step: int | None = None,
    ) -> admin.Change:
        stamp = time.time() if now is None else now

        def change(svc: dict[str, Any], rollout: dict[str, Any]) -> list[str]:
            state = _state(rollout, key)
            _expect(state, expect_step, service)
            if state["phase"] not in frm:
                raise GraylbError(f"the rollout of service '{service}' is {state['phase']}: cannot {action}")
            step = 0 if action == "retry" else int(state["step"])
            if to == "aborted":
                rollout["state"] = {**state, "phase": "aborted"}
                _set_route(svc, rollout, None)
                svc["default"] = rollout["baseline"]
                return [f"aborted: 100% of '{service}' back to the baseline '{rollout['baseline']}' (retry restarts)"]
            if action == "pause":
                rollout["state"] = {**state, "phase": "paused"}
                return [f"paused at step {step + 1} ({_weight(rollout, step)}% to the canary)"]
            _enter_step(rollout, svc, step, to, stamp)  # resume / retry: the pause counts from now
            done = {"resume": "resumed", "retry": "restarted"}[action]
            return [f"{done} at step {step + 1}: {_weight(rollout, step)}% to the canary"]

        return _edit(target, key, service, change, action, by, why, verdicts, stamp)

    act.__name__ = action
    return act


pause = _phase_change(("progressing",), "paused", "pause")
resume = _phase_change(("paused",), "progressing", "resume")
abort = _phase_change(ACTIVE, "aborted", "abort")
retry = _phase_change(("aborted",), "progressing", "retry")
pause.__doc__ = "Hold the current step: ``run`` does not advance it until ``resume``."
resume.__doc__ = "Go on from a pause; the step's pause counts again from now."
abort.__doc__ = "Send 100 % back to the baseline at once; the plan stays for ``retry``."
retry.__doc__ = "Start an aborted rollout again from its first step."


# -- reading -----------------------------------------------------------------------------------


def _read(target: Any, key: str, service: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with admin._opened(target) as store:
        _, _, data, _ = admin._read_document(store, key, "there are no rules")
    svc = dict((data.get("services") or {}).get(service) or {})
    return svc, dict(svc.get("rollout") or {})


def describe(target: Any, key: str, service: str, now: float | None = None) -> str:
    """``graylb rollout status``: phase, step, weight, time left, the last verdicts, who did what."""
    stamp = time.time() if now is None else now
    _, rollout = _read(target, key, service)
    if not rollout.get("state"):
        return f"service '{service}': no rollout"
    state = rollout["state"]
    steps = rollout["steps"]
    step = int(state["step"])
    lines = [
        f"rollout of '{rollout['canary']}' against '{rollout['baseline']}' for service '{service}': {state['phase']}",
        "  steps: "
        + ", ".join(
            ("[" if i == step else "")
            + f"{s['weight']}%"
            + (f"/{s['pause']}" if s.get("pause") else "/manual")
            + ("]" if i == step else "")
            for i, s in enumerate(steps)
        ),
    ]
    pause_text = steps[step].get("pause")
    if state["phase"] == "progressing" and pause_text:
        left = parse_duration(pause_text) - (stamp - _parse_iso(state["step_started"]))
        lines.append(
            f"  step {step + 1}: {steps[step]['weight']}% to the canary, "
            + (f"{left:.0f}s of its pause left" if left > 0 else "pause over: the gates decide at the next run")
        )
    elif state["phase"] == "progressing":
        lines.append(f"  step {step + 1}: {steps[step]['weight']}% to the canary, until promoted")
    for gate in rollout.get("gates") or []:
        lines.append(f"  gate {gate['name']}: " + ("guard trips" if gate.get("guard") else gate["prometheus"]["query"]))
    for event in (rollout.get("history") or [])[-5:]:
        lines.append("  " + _event_line(event))
    return "\n".join(lines)


def _event_line(event: Mapping[str, Any]) -> str:
    why = f" -- {event['why']}" if event.get("why") else ""
    verdicts = "; ".join(f"{g} {v}" for g, v in (event.get("verdicts") or {}).items())
    return f"{event['at']} {event['by']}: {event['action']} (step {event['step'] + 1}, {event['weight']}%){why}" + (
        f" [{verdicts}]" if verdicts else ""
    )


def history(target: Any, key: str, service: str) -> str:
    """``graylb rules history SERVICE``: every recorded change of the rollout, oldest first."""
    _, rollout = _read(target, key, service)
    events = rollout.get("history") or []
    if not events:
        return f"service '{service}': no rollout history"
    return "\n".join(_event_line(e) for e in events)


# -- gates and the runner ----------------------------------------------------------------------


def evaluate_gates(
    service: str,
    svc: Mapping[str, Any],
    rollout: Mapping[str, Any],
    client: httpx.Client | None = None,
    prometheus: bool = True,
) -> list[GateVerdict]:
    """Each gate's verdict for the current step. Prometheus: the query's one value within the
    bounds (``unknown`` when Prometheus does not answer, or the volume is below its minimum --
    never ``pass`` on missing data); not judged on a 100 % step, where no baseline traffic is
    left to compare with, and not at all with ``prometheus=False``. Guard: ``fail`` once a
    canary guard's rollback was written after the step started."""
    out = []
    state = rollout["state"]
    started = _parse_iso(state["step_started"])
    full = _weight(rollout, int(state.get("step", 0))) >= 100
    for gate in rollout.get("gates") or []:
        name = gate["name"]
        if gate.get("guard"):
            note = (svc.get("annotations") or {}).get("graylb.guard/rolled-back")
            tripped = note is not None and _note_time(note) >= started - 1
            out.append(GateVerdict(name, "fail" if tripped else "pass", str(note) if tripped else "no guard trip"))
        elif full:
            out.append(GateVerdict(name, "pass", "not judged at 100 %: no baseline traffic to compare with"))
        elif prometheus:
            out.append(_prometheus_verdict(name, service, gate["prometheus"], client))
    return out


def _note_time(note: str) -> float:
    try:
        return (
            dt.datetime.strptime(note.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=dt.timezone.utc)
            .timestamp()
        )
    except ValueError:
        return float("inf")  # a note we cannot date: take it as current


def _prometheus_verdict(name: str, service: str, gate: Mapping[str, Any], client: httpx.Client | None) -> GateVerdict:
    timeout = parse_duration(gate.get("timeout", 5.0))
    own = client is None
    http = client or httpx.Client(timeout=timeout)
    try:
        if gate.get("volume_query"):
            volume = _query(http, gate["url"], gate["volume_query"].replace("{service}", service))
            if volume is None or volume < float(gate.get("min_volume", 0.0)):
                return GateVerdict(name, "unknown", f"volume {volume} below {gate.get('min_volume', 0.0)}: holding")
        value = _query(http, gate["url"], gate["query"].replace("{service}", service))
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return GateVerdict(name, "unknown", f"Prometheus did not answer ({type(exc).__name__}): holding")
    finally:
        if own:
            http.close()
    if value is None:
        return GateVerdict(name, "unknown", "the query returned no series: holding")
    high, low = gate.get("max"), gate.get("min")
    if high is not None and value > float(high):
        return GateVerdict(name, "fail", f"{value:.4g} > max {high}")
    if low is not None and value < float(low):
        return GateVerdict(name, "fail", f"{value:.4g} < min {low}")
    return GateVerdict(name, "pass", f"{value:.4g} within bounds")


def _query(http: httpx.Client, url: str, expr: str) -> float | None:
    """The largest value of an instant query (None: no series)."""
    answer = http.get(f"{url}/api/v1/query", params={"query": expr})
    answer.raise_for_status()
    data = answer.json()["data"]
    if data["resultType"] == "scalar":
        return float(data["result"][1])
    values = [float(s["value"][1]) for s in data["result"]]
    values = [v for v in values if v == v]  # NaN: no data in the window
    return max(values) if values else None


def tick(
    target: Any,
    key: str,
    service: str,
    *,
    by: str | None = None,
    now: float | None = None,
    client: httpx.Client | None = None,
) -> str:
    """One runner pass: ``waiting`` (pause not over, paused, or manual step), ``held`` (a gate
    could not be evaluated), ``promoted``, ``aborted`` or ``done`` (nothing active). A failed
    guard gate aborts even mid-pause; others are judged when the pause is over. The write is
    conditional on the step judged: :class:`StepMoved` (or ``admin.RuleConflict``) when another
    runner moved first -- nothing written, read again."""
    stamp = time.time() if now is None else now
    svc, rollout = _read(target, key, service)
    state = rollout.get("state") or {}
    if state.get("phase") not in ACTIVE:
        return "done"
    if state["phase"] == "paused":
        return "waiting"
    step = rollout["steps"][int(state["step"])]
    due = step.get("pause") is not None and stamp - _parse_iso(state["step_started"]) >= parse_duration(step["pause"])
    # Guard gates are read every pass (a trip aborts mid-pause); Prometheus only once the pause is over.
    verdicts = evaluate_gates(service, svc, {**rollout, "state": state}, client, prometheus=due)
    failed = [v for v in verdicts if v.result == "fail"]
    guard_failed = [
        v for v in failed if any(g.get("guard") and g["name"] == v.gate for g in rollout.get("gates") or [])
    ]
    if guard_failed or (due and failed):
        why = "; ".join(str(v) for v in failed)
        abort(target, key, service, by=by, why=why, now=stamp, verdicts=verdicts, expect_step=int(state["step"]))
        log.warning("graylb: rollout of service '%s' ABORTED: %s", service, why)
        return "aborted"
    if not due:
        return "waiting"
    unknown = [v for v in verdicts if v.result == "unknown"]
    if unknown:
        log.warning(
            "graylb: rollout of service '%s' held at step %d: %s",
            service,
            int(state["step"]) + 1,
            "; ".join(str(v) for v in unknown),
        )
        return "held"
    promote(
        target,
        key,
        service,
        by=by,
        why="pause over, gates passed",
        verdicts=verdicts,
        now=stamp,
        expect_step=int(state["step"]),
    )
    return "promoted"


def run(
    target: Any,
    key: str,
    service: str,
    *,
    by: str | None = None,
    poll: float = 1.0,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    on_tick: Callable[[str], None] | None = None,
    client: httpx.Client | None = None,
) -> str:
    """Drive the rollout until it completes or aborts (or ``stop`` is set): tick every ``poll``
    seconds. Safe to run twice at once and to kill and restart: every step is a
    compare-and-set, and the pause is counted from the step time in the store."""
    stop = stop or threading.Event()
    me = by or _who()
    while not stop.is_set():
        try:
            result = tick(target, key, service, by=me, now=clock(), client=client)
        except (admin.RuleConflict, StepMoved):
            result = "conflict"  # another runner (or an operator) wrote first: read again
        if on_tick is not None:
            on_tick(result)
        if result in ("done", "aborted"):
            _, rollout = _read(target, key, service)
            return str((rollout.get("state") or {}).get("phase", "none"))
        if result != "promoted":
            stop.wait(poll)
    return "stopped"
