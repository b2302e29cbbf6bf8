"""Operator actions on the rules document, whichever registry keeps it — what ``graylb rules
push / undo``, ``graylb rollback`` and ``graylb status`` run, for scripts and examples::

    from graylb.admin import push_change, rollback
    push_change(graylb.ConsulConfig("http://127.0.0.1:8500"), "graylb/rules", text)
    rollback(graylb.NacosConfig("http://127.0.0.1:8848"), "graylb-rules", "orders")

Registry-neutral: a registry contributes only its :class:`RuleStore` — reading and writing keys
(with compare-and-set) and listing a service's instances: :class:`graylb.consul.ConsulKVStore`,
:class:`graylb.nacos.NacosConfigStore`, :class:`graylb.testing.MemoryRuleStore` in process.
Every function takes a store, or a registry config whose store registered itself here with
:func:`register_store` (opened and closed around the call).

Revisions: every write first copies the key's current value to ``<key>.previous``, then
writes the key with compare-and-set on the version read, so a concurrent change is never
overwritten (the command fails and can be retried). :func:`undo` swaps the two, so undoing
twice redoes. A Consul ACL policy for these commands needs ``key:write`` on both the key and
``<key>.previous`` (a ``key_prefix`` rule on the key covers both) and ``service:read`` for
``status``.

The CLI opens a store with ``with``: a store is also a context manager (``close()``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import yaml

from .discovery.base import Snapshot
from .errors import GraylbError, RuleError
from .instance import Health, Instance
from .routing.explain import describe_guard
from .routing.router import ALL_SUBSET, build_state
from .rules.compile import compile_rules
from .rules.load import load_document, parse_rules, validate_rules
from .rules.model import MatchClause, RulesDocument, StringMatch

__all__ = [
    "RuleStore",
    "register_store",
    "Change",
    "RuleConflict",
    "push",
    "push_change",
    "undo",
    "rollback",
    "status",
    "previous_key",
]


def previous_key(key: str) -> str:
    return f"{key}.previous"


class RuleStore(Protocol):
    """What the admin functions need from a registry. ``version`` is opaque to callers: what
    :meth:`get` returned, handed back to :meth:`cas_put` (Consul: ModifyIndex, 0 = absent)."""

    def describe(self, key: str) -> str:
        """Names a key for messages, e.g. ``Consul KV key 'graylb/rules'``."""

    def get(self, key: str) -> tuple[str | None, Any]:
        """(text, version); text is None when the key does not exist."""

    def put(self, key: str, value: str) -> None:
        """Unconditional write."""

    def cas_put(self, key: str, value: str, version: Any) -> bool:
        """Write only if the key is still at ``version`` (absent-version: create only)."""

    def instances(self, service: str) -> tuple[list[tuple[str, Instance]], list[str]]:
        """Every registered instance of ``service``, healthy or not, as (registry's own
        instance id, Instance) pairs, read the way the registry's discovery reads them; plus
        one line per registration that discovery would skip or correct."""

    # Optional: ``describe_version(version) -> str`` names a version in messages (Nacos:
    # ``md5 ...``); without it a version reads ``index N`` (Consul). ``cli_flags``: what the
    # ``graylb`` command needs to reach the store (`` --nacos URL``), for hints in messages.


class RuleConflict(GraylbError):
    """The key changed between our read and our compare-and-set write."""


#: config type -> the store class it opens; each registry's store module registers itself.
_STORES: dict[type, Callable[[Any], Any]] = {}


def register_store(config_type: type, store: Callable[[Any], Any]) -> None:
    """Let the actions here take a ``config_type`` instance and open ``store(config)`` around the
    call (a context manager). Each registry contributes its store; this module knows none."""
    _STORES[config_type] = store


@contextmanager
def _opened(target: RuleStore | Any) -> Iterator[RuleStore]:
    """A store as it is, or the store registered for a registry config, closed after the call."""
    opener = _STORES.get(type(target))
    if opener is None:
        yield target
        return
    with opener(target) as store:
        yield store


def _version(store: Any, version: Any) -> str:
    """A key's version as the store names it: ``index 42`` (Consul), ``md5 ...`` (Nacos)."""
    describe = getattr(store, "describe_version", None)
    return describe(version) if callable(describe) else f"index {version}"


# ------------------------------------------------------------------------------------- writes


@dataclasses.dataclass(frozen=True)
class Change:
    """What a write did. ``index`` is the key's version after the write (Consul ModifyIndex);
    ``lines`` is a human summary, one line each."""

    key: str
    index: Any
    lines: tuple[str, ...] = ()
    previous_saved: bool = True
    changed: bool = True

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _conflict(store: RuleStore, key: str) -> RuleConflict:
    return RuleConflict(
        f"{store.describe(key)} was changed by someone else while this command ran; nothing was overwritten — "
        "check the new content and retry the command"
    )


def _write_with_previous(store: RuleStore, key: str, new_text: str, current: str | None, version: Any) -> Any:
    """Save ``current`` under ``<key>.previous`` (when there is one), then CAS ``key``."""
    if current is not None:
        store.put(previous_key(key), current)
    if not store.cas_put(key, new_text, version):
        raise _conflict(store, key)
    return store.get(key)[1]


def push_change(target: RuleStore | Any, key: str, text: str, source: str = "") -> Change:
    """:func:`push`, returning a :class:`Change` with a summary."""
    validate_rules(text, source or key)  # RuleError propagates; nothing is written
    with _opened(target) as store:
        current, version = store.get(key)
        index = _write_with_previous(store, key, text, current, version)
        prev = previous_key(key)
        if current is not None:
            note = f"previous revision kept at {prev}"
        elif store.get(prev)[0] is not None:
            note = f"{key} did not exist before ({prev} still holds an older revision)"
        else:
            note = f"{key} did not exist before, so there is no previous revision"
        return Change(
            key,
            index,
            (f"pushed {source or 'rules'} to {key} ({_version(store, index)}); {note}",),
            previous_saved=current is not None,
        )


def push(config: RuleStore | Any, key: str, text: str, source: str = "") -> Any:
    """Validate ``text`` (a :class:`RuleError` propagates and nothing is written), keep the
    key's current value under ``<key>.previous``, and write the new document with
    compare-and-set on the index just read. Returns the key's new version (Consul: its
    ModifyIndex, an int; Nacos: the content's md5, a str). Raises
    :class:`RuleConflict` when someone else changed the key in between."""
    return push_change(config, key, text, source).index


def undo(config: RuleStore | Any, key: str) -> Change:
    """Swap ``key`` and ``<key>.previous``: the previous revision becomes current (with
    compare-and-set on the current index), the replaced one becomes previous, so a second
    undo redoes. The restored revision is validated first."""
    prev = previous_key(key)
    with _opened(config) as store:
        current, version = store.get(key)
        previous, _ = store.get(prev)
        if previous is None:
            raise GraylbError(f"no previous revision at {store.describe(prev)}: nothing to undo")
        validate_rules(previous, prev)
        # Current first (the compare-and-set guards it): if it fails, nothing has changed at all.
        if not store.cas_put(key, previous, version):
            raise _conflict(store, key)
        if current is not None:
            store.put(prev, current)
        index = store.get(key)[1]
        tail = (
            f"the replaced revision is now at {prev} (undo again to redo)"
            if current is not None
            else f"{key} did not exist before"
        )
        return Change(key, index, (f"restored {key} from {prev} ({_version(store, index)}); {tail}",))


def rollback(
    config: RuleStore | Any,
    key: str,
    service: str,
    *,
    expect_digest: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Change:
    """Send all of ``service``'s traffic to its default subset: its routes become ``[]``,
    everything else in the document stays. One compare-and-set write; the previous revision is
    kept (``graylb rules undo`` brings the routes back). The document is re-serialised (YAML
    comments are not kept; the previous revision keeps the original text).

    ``expect_digest``: write only if the service's rules are still the ones judged (their
    ``CompiledService.digest``) -- a canary guard's rollback, so that many processes tripping at
    once write once and nobody overwrites a newer change. ``annotations`` are merged into the
    service's ``annotations`` (who, when, why)."""
    with _opened(config) as store:
        where = store.describe(key)
        current, version, data, model = _read_document(store, key, "there are no rules to roll back")
        if expect_digest is not None:
            compiled = compile_rules(model, source=key).services.get(service)
            if compiled is None or compiled.digest != expect_digest:
                return Change(
                    key,
                    version,
                    (f"service '{service}' in {key} changed since it was judged; nothing written",),
                    previous_saved=False,
                    changed=False,
                )
        services = data.get("services") or {}
        if service not in services:
            known = ", ".join(sorted(map(str, services))) or "none"
            raise GraylbError(f"service '{service}' has no rules in {where} (services there: {known})")
        svc = dict(services[service] or {})
        routes = svc.get("routes") or []
        names = [
            str(r.get("name") or f"routes[{i}]") if isinstance(r, Mapping) else f"routes[{i}]"
            for i, r in enumerate(routes)
        ]
        back, moved = _where_back_is(svc, service, where)
        default = svc.get("default")
        target = f"its default subset '{default}'"
        if not names and not moved:
            return Change(
                key,
                version,
                (
                    f"service '{service}' in {key} has no routes: "
                    f"all its traffic already goes to {target}; nothing written",
                ),
                previous_saved=False,
                changed=False,
            )
        svc["routes"] = []
        if moved:
            svc["default"] = back
            target = f"the baseline '{back}' of its rollout (the default subset again)"
            svc["rollout"] = _rollout_rolled_back(svc["rollout"])
        if annotations:
            svc["annotations"] = {**(svc.get("annotations") or {}), **annotations}
        new_data = {**data, "services": {**services, service: svc}}
        validate_rules(new_data, key)
        new_text = _dump_like(current, new_data)
        index = _write_with_previous(store, key, new_text, current, version)
        return Change(
            key,
            index,
            (
                f"rolled back service '{service}' in {key} ({_version(store, index)})",
                f"  removed route(s): {', '.join(names) or 'none'}",
                f"  all its traffic now goes to {target}; lanes and version pins still apply",
                f"  previous revision kept at {previous_key(key)} (graylb rules "
                f"undo{getattr(store, 'cli_flags', '')} --key {key} restores it)",
            ),
        )


def _where_back_is(svc: Mapping[str, Any], service: str, where: str) -> tuple[str, bool]:
    """Where a rollback sends ``service``'s traffic -- ``(subset, whether the default moves)`` --
    or GraylbError with guidance when that cannot be told. A rollout that completed made its
    canary the default: back is its baseline, named in the rollout. One still running: back is
    its baseline too (the default already). Without either, back is the default subset, and a
    service without one has no "back"."""
    rollout = svc.get("rollout")
    default = svc.get("default")
    if isinstance(rollout, Mapping) and isinstance(rollout.get("state"), Mapping):
        baseline = str(rollout["baseline"])
        return baseline, rollout["state"].get("phase") != "aborted" and (
            default != baseline or rollout["state"].get("phase") in ("progressing", "paused")
        )
    if not default:
        raise GraylbError(
            f"service '{service}' in {where} has no default subset, so there is no 'back' to roll back to: "
            "removing its routes would send traffic to every instance, the new version included. Set "
            "`default:` to the stable subset (graylb rules push), or release with `graylb rollout`, which "
            "keeps the baseline named"
        )
    return str(default), False


def _rollout_rolled_back(rollout: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(rollout)
    state = dict(out.get("state") or {})
    out["state"] = {**state, "phase": "aborted"}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    step = int(state.get("step", 0))
    out["history"] = [
        *(out.get("history") or []),
        {"at": stamp, "by": "graylb rollback", "action": "rollback", "step": step, "weight": 0},
    ]
    return out


def guard_reset(config: RuleStore | Any, key: str, service: str) -> Change:
    """Clear a tripped canary guard of ``service`` in every process: writes ``guard.reset`` (the
    time, a change of the service's rules) with one compare-and-set write; each process's guard
    then judges the canary afresh and it takes its share again."""
    with _opened(config) as store:
        where = store.describe(key)
        current, version, data, _ = _read_document(store, key, "there is no guard to reset")
        services = data.get("services") or {}
        svc = dict(services.get(service) or {})
        if not isinstance(svc.get("guard"), Mapping):
            raise GraylbError(f"service '{service}' has no guard in {where}")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        svc["guard"] = {**svc["guard"], "reset": stamp}
        new_data = {**data, "services": {**services, service: svc}}
        validate_rules(new_data, key)
        index = _write_with_previous(store, key, _dump_like(current, new_data), current, version)
        return Change(
            key,
            index,
            (
                f"reset the canary guard of service '{service}' in {key} ({_version(store, index)}): guard.reset = "
                f"{stamp}",
                f"  every process judges subset '{svc['guard'].get('canary')}' afresh; it takes its share again",
            ),
        )


def _read_document(store: RuleStore, key: str, absent: str) -> tuple[str, Any, Any, RulesDocument]:
    """(text, version, plain document, validated model) of ``key``, for an edit; GraylbError
    ending in ``absent`` when the key does not exist, RuleError when its rules are invalid."""
    current, version = store.get(key)
    if current is None:
        raise GraylbError(f"{store.describe(key)} does not exist: {absent}")
    data = load_document(current, key)
    return current, version, data, validate_rules(data, key)


def _dump_like(original: str, data: Any) -> str:
    """Serialise ``data`` in the original document's syntax (JSON stays JSON)."""
    if original.lstrip().startswith(("{", "[")):
        try:
            json.loads(original)
        except ValueError:
            pass
        else:
            return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


# ------------------------------------------------------------------------------------- status


def status(config: RuleStore | Any, service: str, key: str | None = None, balancer: Any = None) -> str:
    """A human report: every instance of ``service`` (version / image / commit / lane / weight /
    health / address) and, with ``key``, the service's rules -- its canary guard and the notes of
    the last trip among them -- and the live traffic split exactly as graylb's router computes it
    from these instances. With ``balancer`` (run inside a process that routes the service), also
    that process's live view of the guard: counts and ratios per side, the verdict, the trip."""
    view = balancer.guard_view(service) if balancer is not None else None
    with _opened(config) as store:
        listed, problems = store.instances(service)
        instances = [inst for _, inst in listed]
        lines = _instance_table(service, listed)
        lines += [f"  ! {p}" for p in problems]
        if key is not None:
            text, version = store.get(key)
            lines.append("")
            if text is None:
                lines.append(
                    f"rules: {store.describe(key)} does not exist: every instance outside a lane receives traffic "
                    "(by weight)"
                )
            else:
                lines.extend(_split_report(service, instances, text, key, _version(store, version)))
    if view is not None:
        lines += ["", "in this process:", *(f"  {line}" for line in view.lines())]
    return "\n".join(lines)


_FULL_HASH = re.compile(r"^[0-9a-fA-F]{40}$|^[0-9a-fA-F]{64}$")
_SHORT_HASH = 12  # like `git rev-parse --short=12`: unique in any real repository


def _cell(value: str | None) -> str:
    """A table cell from registry metadata: "-" when absent; characters that would break the
    row (newline, tab, other controls) shown as "?" — the registry accepts anything."""
    if not value:
        return "-"
    return "".join(ch if ch.isprintable() else "?" for ch in value)


def _commit_cell(commit: str | None) -> str:
    """A full Git (SHA-1 or SHA-256) hash shortened to 12 characters: 40 or 64 columns of hex
    would push the rest of the row off the screen. Anything else is shown as it is."""
    if commit and _FULL_HASH.match(commit):
        return commit[:_SHORT_HASH]
    return _cell(commit)


def _instance_table(service: str, listed: list[tuple[str, Instance]]) -> list[str]:
    counts = {h: sum(1 for _, i in listed if i.health is h) for h in Health}
    head = f"service '{service}': {len(listed)} instance(s): " + ", ".join(f"{counts[h]} {h.value}" for h in Health)
    if not listed:
        return [head]
    # Build identity first (what is running), then how it is routed, then where it is.
    rows = [("VERSION", "IMAGE", "COMMIT", "LANE", "WEIGHT", "HEALTH", "ADDRESS", "ID")]
    for rid, i in sorted(listed, key=lambda p: (p[1].version or "", p[1].lane or "", p[1].address, p[0])):
        weight = str(i.weight) + (" (no traffic)" if i.weight == 0 else "")
        labels = i.labels
        rows.append(
            (
                _cell(i.version),
                _cell(labels.get("image")),
                _commit_cell(labels.get("commit")),
                _cell(i.lane),
                weight,
                i.health.value,
                i.address,
                _cell(rid),
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return [head] + ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def _pct(x: float) -> str:
    text = f"{x * 100:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _describe_string_match(m: StringMatch) -> str:
    kind = m.kind
    if kind == "present":
        text = "present" if m.present else "absent"
    elif kind == "exact":
        text = f"== {m.exact!r}"
    elif kind == "prefix":
        text = f"starts with {m.prefix!r}"
    elif kind == "in":
        values = m.one_of or []
        text = f"in {values[:5]!r}" + (f" (+{len(values) - 5} more)" if len(values) > 5 else "")
    else:
        text = f"matches /{m.regex}/"
    return f"not {text}" if m.invert else text


def _describe_match(match: list[MatchClause] | None) -> str:
    if not match:
        return "always"
    clauses = []
    for clause in match:
        parts = []
        for label, items in (("header", clause.headers), ("query", clause.query), ("context", clause.context)):
            parts += [f"{label} {name} {_describe_string_match(m)}" for name, m in items.items()]
        if clause.path is not None:
            parts.append(f"path {_describe_string_match(clause.path)}")
        if clause.method is not None:
            parts.append(f"method {_describe_string_match(clause.method)}")
        if clause.api_version is not None:
            av = clause.api_version
            where = (
                f"Accept (vnd.{av.vendor})"
                if av.source == "accept" and av.vendor
                else ("Accept" if av.source == "accept" else "path")
            )
            parts.append(f"api version from {where} matches {av.version!r}")
        clauses.append(" and ".join(parts) or "always")
    return " or ".join(f"({c})" if len(match) > 1 and " and " in c else c for c in clauses)


def _split_report(service: str, instances: list[Instance], text: str, key: str, version: str) -> list[str]:
    try:
        model = validate_rules(text, key)
        compiled = parse_rules(text, key)
    except RuleError as exc:
        return [
            f"rules: {key} ({version}) is INVALID, so rule sources keep their last good rules:",
            *str(exc).splitlines()[1:],
        ]
    svc_model = model.services.get(service)
    rules = compiled.service(service)
    head = f"rules: {key} ({version}, revision {compiled.revision})"
    if rules is None or svc_model is None:
        known = ", ".join(sorted(model.services)) or "none"
        return [
            head,
            f"  no rules for service '{service}' (services there: {known}): every instance outside a lane receives "
            "traffic (by weight)",
        ]
    state = build_state(service, Snapshot(service, tuple(instances), source="status"), rules)

    def size(name: str) -> int:
        return len(state.subsets[name])

    lines = [head, "  subsets (routable instances = not critical, weight > 0):"]
    unmatched = {subset: (selector, offered) for subset, selector, offered in state.unmatched}
    for name in rules.subsets:
        if name in unmatched:  # a selector that matches nothing here: say why, loudly
            selector, offered = unmatched[name]
            lines.append(f"    {name}: 0 routable — SELECTS NOTHING: {selector} matches none of: {offered}")
        else:
            lines.append(f"    {name}: {size(name)} routable")
    default_desc = (
        f"default subset '{rules.default}'" if rules.default else "no default subset (every instance outside a lane)"
    )
    lines.append(f"  {default_desc}: {size(state.default_name)} routable; fallback {state.fallback}")
    if state.lanes:
        lines.append(
            "  lanes (lane traffic only): "
            + ", ".join(f"{lane} {len(p)} routable" for lane, p in sorted(state.lanes.items()))
        )
    lines.append("  live split:")
    for rs, route_model in zip(state.routes, svc_model.routes):
        when = _describe_match(route_model.match)
        sticky = f", sticky on {rs.route.sticky.describe()}" if rs.route.sticky else ""
        if rs.names:
            shares, prev = [], 0.0
            for name, cum in zip(rs.names, rs.cumulative):
                shares.append(f"{name} {_pct((cum - prev) / rs.total)}")
                prev = cum
            split = ", ".join(shares)
        else:
            split = _fallback_outcome(state, rs.route.to[0].subset if rs.route.to else None)
        dropped = [t.subset for t in rs.route.to if t.weight > 0 and t.subset not in rs.names]
        note = f"  [dropped, no routable instance: {', '.join(dropped)}]" if dropped else ""
        lines.append(f"    route '{rs.name}' when {when}{sticky}: {split}{note}")
    otherwise = "no routes: all traffic" if not state.routes else "no route matches"
    default_name = (
        "every instance outside a lane"
        if state.default_name == ALL_SUBSET
        else f"default subset '{state.default_name}'"
    )
    if size(state.default_name):
        lines.append(f"    {otherwise} -> {default_name} 100%")
    else:
        lines.append(
            f"    {otherwise} -> {default_name}, which is empty: {_fallback_outcome(state, state.default_name)}"
        )
    if rules.guard is not None:
        lines.append(f"  {describe_guard(rules.guard)}")
        lines.append(
            "    (each process judges on its own: its live view is Balancer.guard_view(), and the graylb_guard_* "
            "metrics)"
        )
    ro = svc_model.rollout
    if ro is not None and ro.state is not None:
        step = ro.steps[ro.state.step]
        lines.append(
            f"  rollout of '{ro.canary}' against '{ro.baseline}': {ro.state.phase}, step {ro.state.step + 1} of "
            f"{len(ro.steps)} ({step.weight}% to the canary) since {ro.state.step_started}; "
            f"graylb rollout status {service} shows the plan and who did what"
        )
    for name, note in sorted(svc_model.annotations.items()):
        lines.append(f"  annotation {name}: {note}")
    return lines


def _fallback_outcome(state: Any, empty: str | None) -> str:
    """What the router's fallback policy does when ``empty`` has no routable instance."""
    policy = state.fallback
    if policy == "default" and empty != state.default_name and len(state.subsets[state.default_name]):
        name = "every instance outside a lane" if state.default_name == ALL_SUBSET else state.default_name
        return f"no routable target -> fallback default: {name} 100%"
    if policy == "any" and len(state.any_picker):
        return "no routable target -> fallback any: any instance 100%"
    return f"no routable target and fallback '{policy}' finds none: calls FAIL (NoInstanceAvailable)"
