"""Validated model -> the frozen structures the router reads per call (:mod:`graylb.rules.compiled`).

Contract: :func:`compile_rules` takes a :class:`RulesDocument` (normally from
:func:`graylb.rules.load.validate_rules`) and returns :class:`CompiledRules`; it raises
:class:`RuleError` only when cross-references are broken (a model built in code skips
``validate_rules``). All the expensive work — version selectors, regexes, lower-cased names,
matcher closures — happens here, once per rules change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from typing import Any

from ..errors import RuleError
from ..routing.matchers import compile_match
from ..versioning import VersionSelector
from .compiled import (
    DEFAULT_RETRY,
    GUARD_GRPC_CODES,
    CompiledRoute,
    CompiledRules,
    CompiledService,
    GuardErrors,
    GuardLatency,
    GuardPolicy,
    GuardWebhook,
    HashKey,
    OutlierPolicy,
    RetryPolicy,
    SubsetSpec,
    WarmUpPolicy,
    WeightedTarget,
)
from .model import Guard, HashOn, Retries, RulesDocument, Service, check_references

__all__ = ["compile_rules", "compile_service", "to_document", "document_revision"]

# When `retries` is given without `on`: the failures where retrying is always safe to consider.
_DEFAULT_ON = ("connect-failure", "reset")


def to_document(model: RulesDocument) -> dict[str, Any]:
    """The document as plain JSON-able data, keeping only what was written (shorthands stay
    shorthands, defaults stay implicit), so it can be edited and written back as YAML/JSON."""
    return model.model_dump(mode="json", exclude_unset=True, by_alias=True)


def document_revision(model: RulesDocument) -> str:
    """A short content hash: the same rules give the same revision whatever the formatting."""
    return _digest(to_document(model))


def _digest(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _hash_key(spec: HashOn | None) -> HashKey | None:
    if spec is None:
        return None
    return HashKey(
        header=spec.header.lower() if spec.header is not None else None,
        query=spec.query,
        context=spec.context,
    )


def _retry_policy(spec: Retries | None) -> RetryPolicy:
    if spec is None:
        return DEFAULT_RETRY
    on = _DEFAULT_ON if spec.on is None else spec.on
    return RetryPolicy(
        attempts=spec.attempts,
        on_connect_failure="connect-failure" in on,
        on_reset="reset" in on,
        on_timeout="timeout" in on,
        statuses=frozenset(c for c in on if isinstance(c, int)),
        idempotent_only=spec.idempotent_only,
    )


_GUARD_DEFAULT_ON = ("connect-failure", "reset", "timeout", "5xx", *sorted(GUARD_GRPC_CODES))


def _guard_policy(spec: Guard | None, default: str | None) -> GuardPolicy | None:
    if spec is None:
        return None
    errors = None
    if spec.errors is not None:
        on = _GUARD_DEFAULT_ON if spec.errors.on is None else spec.errors.on
        statuses = {c for c in on if isinstance(c, int)}
        for word, codes in (("4xx", range(400, 500)), ("5xx", range(500, 600))):
            if word in on:
                statuses.update(codes)
        errors = GuardErrors(
            confidence=spec.errors.confidence,
            margin=spec.errors.margin,
            connect_failure="connect-failure" in on,
            reset="reset" in on,
            timeout="timeout" in on,
            statuses=frozenset(statuses),
            grpc_codes=frozenset(c for c in on if isinstance(c, str) and c.isupper()),
        )
    lat = spec.latency
    return GuardPolicy(
        canary=spec.canary,
        baseline=spec.baseline or default or "",
        window=spec.window,
        min_requests=spec.min_requests,
        errors=errors,
        latency=None
        if lat is None
        else GuardLatency(
            p99_ratio=lat.p99_ratio,
            p50_ratio=lat.p50_ratio,
            min_delta=lat.min_delta,
            min_requests=lat.min_requests,
            confidence=lat.confidence,
        ),
        testers=spec.testers,
        action=spec.action,
        webhook=None
        if spec.webhook is None
        else GuardWebhook(spec.webhook.url, spec.webhook.timeout, spec.webhook.retries),
        reset=spec.reset or "",
    )


def compile_service(name: str, svc: Service) -> CompiledService:
    """One service's rules; assumes references were checked."""
    subsets: dict[str, SubsetSpec] = {}
    for subset_name, subset in svc.subsets.items():
        labels = dict(subset.labels)
        if subset.lane is not None:
            labels["lane"] = subset.lane
        # labels: {version: v2} is the version selector by another name (Istio / Spring Cloud
        # habits): it matches v2, 2 and 2.x.y like `version: v2`, never as a plain string compare.
        version = subset.version if subset.version is not None else labels.pop("version", None)
        labels.pop("version", None)
        subsets[subset_name] = SubsetSpec(
            name=subset_name,
            version=VersionSelector(version) if version is not None else None,
            labels=types.MappingProxyType(labels),
        )
    routes = tuple(
        CompiledRoute(
            name=route.name or f"routes[{i}]",
            match=compile_match(route.match),
            to=tuple(WeightedTarget(t.subset, t.weight) for t in route.to),
            sticky=_hash_key(route.sticky),
        )
        for i, route in enumerate(svc.routes)
    )
    od = svc.outlier_detection
    return CompiledService(
        name=name,
        subsets=types.MappingProxyType(subsets),
        default=svc.default,
        routes=routes,
        fallback=svc.fallback,
        load_balancer=svc.load_balancer.policy,
        hash_key=_hash_key(svc.load_balancer.hash_on),
        retries=_retry_policy(svc.retries),
        outlier=None
        if od is None
        else OutlierPolicy(
            consecutive_errors=od.consecutive_errors,
            base_ejection_time=od.base_ejection_time,
            max_ejection_percent=od.max_ejection_percent,
        ),
        guard=_guard_policy(svc.guard, svc.default),
        warmup=None if svc.warmup is None else WarmUpPolicy(svc.warmup.window, svc.warmup.min_share),
    )


def compile_rules(model: RulesDocument, revision: str = "", source: str = "") -> CompiledRules:
    """Compile every service. ``revision`` defaults to :func:`document_revision`."""
    problems = check_references(to_document(model))
    if problems:
        raise RuleError(problems, source)
    parts = to_document(model).get("services") or {}
    services = {
        name: dataclasses.replace(compile_service(name, svc), digest=_digest(parts.get(name)))
        for name, svc in model.services.items()
    }
    return CompiledRules(
        services=types.MappingProxyType(services),
        revision=revision or document_revision(model),
        source=source,
    )
