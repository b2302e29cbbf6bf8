"""The rules document as pydantic v2 models (see the "Rule document" section of the design).

Contract:

- Every model forbids unknown keys, so a typo (``waight``) is an error naming the field.
- Checks that need one value or one object (regex compiles, version range parses, exactly one
  of ``exact``/``prefix``/``regex``/``present``, weights not all 0, ``ring_hash`` has
  ``hash_on``) live here, so pydantic reports them with their exact location.
- Checks that look across a service (subset names used by ``to`` and ``default``, route names
  unique) live in :func:`check_references`, which works on the *plain* document so it can run
  even when model validation failed and every problem is reported at once.
- Shorthands (a plain string for ``{exact: ...}``, a policy name for ``load_balancer``) are
  remembered and dumped back in the form the user wrote, so :func:`graylb.rules.compile.to_document`
  round-trips a document without rewriting it.

Nothing here runs per call: :mod:`graylb.rules.compile` turns these models into the frozen
structures of :mod:`graylb.rules.compiled`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..errors import InvalidVersion
from ..versioning import VersionSelector

if TYPE_CHECKING:
    from pydantic.functional_validators import ModelWrapValidatorHandler

__all__ = [
    "StringMatch",
    "ApiVersionMatch",
    "MatchClause",
    "Target",
    "HashOn",
    "Route",
    "Subset",
    "LoadBalancer",
    "Retries",
    "OutlierDetection",
    "Guard",
    "GuardErrors",
    "GuardLatency",
    "GuardWebhook",
    "GRPC_CODES",
    "Rollout",
    "RolloutEvent",
    "RolloutGate",
    "RolloutState",
    "RolloutStep",
    "PrometheusGate",
    "Service",
    "RulesDocument",
    "LB_POLICIES",
    "RETRY_WORDS",
    "parse_duration",
    "format_duration",
    "format_loc",
    "check_references",
]

LB_POLICIES = ("weighted_random", "round_robin", "least_request", "ring_hash")
RETRY_WORDS = ("connect-failure", "reset", "timeout")
MAX_TARGET_WEIGHT = 10000


def _error(message: str, **ctx: Any) -> PydanticCustomError:
    # A custom error type keeps pydantic from prefixing "Value error, " to our messages.
    return PydanticCustomError("graylb", message, ctx or None)


def _text(value: Any) -> str:
    """A string field that also takes YAML integers (``zone: 1``) but not floats or booleans:
    YAML reads ``1.10`` as the float 1.1, so silently converting would change the value."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _error("expected a string, got {got} (quote it in YAML)", got=repr(value))


def _name(value: Any) -> str:
    text = _text(value)
    if not text:
        raise _error("must not be empty")
    return text


Text = Annotated[str, PlainValidator(_text)]
Name = Annotated[str, PlainValidator(_name)]  # a non-empty Text


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- matchers


class StringMatch(_Model):
    """Exactly one of ``exact``, ``prefix``, ``regex`` (full match), ``in`` (one of a list, e.g.
    user ids), ``present``; plus ``invert``.

    A plain string is shorthand for ``{exact: ...}`` and is written back as a plain string.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    exact: Text | None = None
    prefix: Text | None = None
    regex: Text | None = None
    one_of: list[Text] | None = Field(default=None, alias="in", max_length=100_000)
    present: bool | None = None
    invert: bool = False

    _shorthand: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _accept_plain_string(cls, data: Any, handler: ModelWrapValidatorHandler[StringMatch]) -> StringMatch:
        if isinstance(data, (str, int)) and not isinstance(data, bool):
            model = handler({"exact": data})
            model._shorthand = True
            return model
        return handler(data)

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise _error("invalid regex {pattern}: {reason}", pattern=repr(value), reason=str(exc)) from None
        return value

    @field_validator("one_of")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise _error("'in' needs at least one value (an empty list matches nothing)")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> StringMatch:
        given = [_KIND_NAMES.get(k, k) for k in _KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            got = f"got {', '.join(given)}" if given else "got none"
            raise _error("needs exactly one of exact, prefix, regex, in, present ({got})", got=got)
        return self

    @property
    def kind(self) -> str:
        """``exact`` | ``prefix`` | ``regex`` | ``in`` | ``present``."""
        for k in _KINDS:
            if getattr(self, k) is not None:
                return _KIND_NAMES.get(k, k)
        raise AssertionError("validated StringMatch without a kind")

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        if self._shorthand and not self.invert:
            return self.exact
        data = handler(self)
        if isinstance(data, dict) and "one_of" in data:  # written back under its YAML name
            data["in"] = data.pop("one_of")
        return data


_KINDS = ("exact", "prefix", "regex", "one_of", "present")
_KIND_NAMES = {"one_of": "in"}


_VENDOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*)*")
_VERSION_PART = re.compile(r"[vV][0-9]+")


class ApiVersionMatch(_Model):
    """The API version a request asks for, compared with a version selector.

    ``from: accept`` reads the preferred media type of ``Accept``
    (``application/vnd.<vendor>.v2+json`` or ``application/vnd.<vendor>+json; version=2``),
    optionally only for ``vendor``; ``from: path`` reads the first ``v<N>[.<M>]`` path segment,
    optionally only right after ``prefix``. ``version`` is a selector as in subsets
    (``"2"``, ``"v2"``, ``"^2"``, ``"v1.4"``); the extracted version is passed to it with its
    ``v`` (``v2``). See :mod:`graylb.routing.api_version` for the parsing rules.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # Declared first: the vendor / prefix checks below read it from the validated data.
    source: Literal["accept", "path"] = Field(alias="from")
    version: Name
    vendor: Name | None = None
    prefix: Name | None = None

    @field_validator("version")
    @classmethod
    def _version_parses(cls, value: str) -> str:
        try:
            VersionSelector(value)
        except InvalidVersion as exc:
            raise _error("{reason}", reason=str(exc)) from None
        return value

    @field_validator("vendor")
    @classmethod
    def _vendor_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("source") == "path":
            raise _error("vendor only applies to from: accept")
        if value.lower().startswith("vnd."):
            raise _error(
                "write the vendor without 'vnd.' ({fixed} for {given})", fixed=repr(value[4:]), given=repr(value)
            )
        if not _VENDOR.fullmatch(value):
            raise _error("invalid vendor {got}: letters, digits, '-', '_', parts joined by '.'", got=repr(value))
        if any(_VERSION_PART.fullmatch(part) for part in value.split(".")):
            # "myapp.v2" would never match: the ".v2" of a media type is read as its version.
            raise _error("vendor {got} contains a version: put it in version", got=repr(value))
        return value

    @field_validator("prefix")
    @classmethod
    def _path_prefix(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("source") == "accept":
            raise _error("prefix only applies to from: path")
        if not value.startswith("/"):
            raise _error("prefix must start with '/', got {got}", got=repr(value))
        return value


class MatchClause(_Model):
    """One item of a route's ``match`` list: every key given must match (AND)."""

    headers: dict[str, StringMatch] = Field(default_factory=dict)
    query: dict[str, StringMatch] = Field(default_factory=dict)
    context: dict[str, StringMatch] = Field(default_factory=dict)
    path: StringMatch | None = None
    method: StringMatch | None = None
    api_version: ApiVersionMatch | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.headers or self.query or self.context or self.path or self.method or self.api_version)


# --------------------------------------------------------------------------- routes


class Target(_Model):
    subset: Name
    weight: int = Field(100, ge=0, le=MAX_TARGET_WEIGHT)


class HashOn(_Model):
    """Where a sticky or ring-hash key comes from: exactly one of header / query / context."""

    header: Name | None = None
    query: Name | None = None
    context: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> HashOn:
        given = [k for k in ("header", "query", "context") if getattr(self, k) is not None]
        if len(given) != 1:
            got = f"got {', '.join(given)}" if given else "got none"
            raise _error("needs exactly one of header, query, context ({got})", got=got)
        return self


class Route(_Model):
    name: Name | None = None
    match: list[MatchClause] | None = None
    to: list[Target]
    sticky: HashOn | None = None

    @field_validator("to")
    @classmethod
    def _targets(cls, value: list[Target]) -> list[Target]:
        if not value:
            raise _error("needs at least one target")
        if not any(t.weight for t in value):
            raise _error("weights are all 0")
        return value


# --------------------------------------------------------------------------- service


class Subset(_Model):
    """Instances whose version matches ``version`` and whose metadata equals every label;
    ``lane: X`` is shorthand for the label ``lane: X``."""

    version: Name | None = None
    labels: dict[str, Text] = Field(default_factory=dict)
    lane: Name | None = None

    @field_validator("version")
    @classmethod
    def _version_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                VersionSelector(value)
            except InvalidVersion as exc:
                raise _error("{reason}", reason=str(exc)) from None
        return value

    @field_validator("labels")
    @classmethod
    def _label_version_parses(cls, value: dict[str, str]) -> dict[str, str]:
        if "version" in value:  # a version selector too, read by the same rules as `version`
            try:
                VersionSelector(value["version"])
            except InvalidVersion as exc:
                raise _error("version: {reason}", reason=str(exc)) from None
        return value

    @model_validator(mode="after")
    def _selects_something(self) -> Subset:
        if self.version is None and not self.labels and self.lane is None:
            raise _error("needs at least one of version, labels, lane")
        if self.version is not None and self.labels.get("version", self.version) != self.version:
            raise _error(
                "version {a} conflicts with labels.version {b}", a=repr(self.version), b=repr(self.labels["version"])
            )
        if self.lane is not None and self.labels.get("lane", self.lane) != self.lane:
            raise _error("lane {a} conflicts with labels.lane {b}", a=repr(self.lane), b=repr(self.labels["lane"]))
        return self


class LoadBalancer(_Model):
    """``load_balancer: round_robin`` or ``{policy: ring_hash, hash_on: {header: x-user-id}}``."""

    policy: Literal["weighted_random", "round_robin", "least_request", "ring_hash"] = "weighted_random"
    hash_on: HashOn | None = None

    _shorthand: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _accept_policy_name(cls, data: Any, handler: ModelWrapValidatorHandler[LoadBalancer]) -> LoadBalancer:
        if isinstance(data, str):
            model = handler({"policy": data})
            model._shorthand = True
            return model
        return handler(data)

    @model_validator(mode="after")
    def _hash_on_iff_ring_hash(self) -> LoadBalancer:
        if self.policy == "ring_hash" and self.hash_on is None:
            raise _error(
                "ring_hash needs hash_on, e.g. {example}", example="{policy: ring_hash, hash_on: {header: x-user-id}}"
            )
        if self.policy != "ring_hash" and self.hash_on is not None:
            raise _error("hash_on only applies to policy ring_hash (policy is {p})", p=repr(self.policy))
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        if self._shorthand:
            return self.policy
        return handler(self)


def _retry_condition(value: Any) -> str | int:
    """``connect-failure`` / ``reset`` / ``timeout`` or an HTTP status (int, or its digits)."""
    if isinstance(value, str) and value.strip().lower() in RETRY_WORDS:
        return value.strip().lower()
    status: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        status = value
    elif isinstance(value, str) and value.strip().isdigit():
        status = int(value.strip())
    if status is None:
        raise _error(
            "unknown retry condition {got} (known: connect-failure, reset, timeout, or an HTTP status 100..599)",
            got=repr(value),
        )
    if not 100 <= status <= 599:
        raise _error("HTTP status {got} outside 100..599", got=status)
    return status


RetryOn = Annotated[Any, PlainValidator(_retry_condition)]


class Retries(_Model):
    attempts: int = Field(2, ge=0, le=10)
    on: list[RetryOn] | None = None  # None: connect-failure + reset
    idempotent_only: bool = True

    @model_validator(mode="before")
    @classmethod
    def _yaml11_on_key(cls, data: Any) -> Any:
        return _yaml11_on(data)


def _yaml11_on(data: Any) -> Any:
    # YAML 1.1 loaders (plain yaml.safe_load) read the key `on` as the boolean True. Our own
    # loader does not, but documents parsed elsewhere (a dict handed to parse_rules) may.
    if isinstance(data, Mapping) and any(k is True for k in data) and "on" not in data:
        return {("on" if k is True else k): v for k, v in data.items()}
    return data


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``"500ms"``, ``"30s"``, ``"1m"``, ``"1h"``, ``"1m30s"`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for part in _DURATION_PART.finditer(text):
            if part.start() != pos:
                break
            seconds += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
            pos = part.end()
        if pos != len(text) or pos == 0:
            try:
                seconds = float(text)  # "30" written as a string
            except ValueError:
                raise _error(
                    "invalid duration {got} (use e.g. 500ms, 30s, 1m, 1h, or a number of seconds)", got=repr(value)
                ) from None
    else:
        raise _error("invalid duration {got} (use e.g. 500ms, 30s, 1m, 1h, or a number of seconds)", got=repr(value))
    if not seconds > 0:  # also rejects NaN
        raise _error("duration must be positive, got {got}", got=repr(value))
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest spelling :func:`parse_duration` reads back as ``seconds``."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    ms = seconds * 1000
    return f"{int(ms)}ms" if float(ms).is_integer() else f"{seconds:g}s"


Duration = Annotated[float, PlainValidator(parse_duration)]


class OutlierDetection(_Model):
    consecutive_errors: int = Field(5, ge=1)
    base_ejection_time: Duration = 30.0
    max_ejection_percent: int = Field(50, ge=0, le=100)

    @field_serializer("base_ejection_time")
    def _dump_duration(self, value: float) -> str:
        return format_duration(value)


class WarmUp(_Model):
    """Slow start: an instance new to a caller gets ``min_share`` of its weight at first, rising
    in a straight line to its full weight over ``window``."""

    window: Duration = 30.0
    min_share: float = Field(0.1, gt=0, le=1)

    @field_validator("window")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise _error("warm-up window must be positive, got {got}", got=format_duration(value))
        return value

    @field_serializer("window")
    def _dump_window(self, value: float) -> str:
        return format_duration(value)


# --------------------------------------------------------------------------- canary guard

#: gRPC status code names (grpc.StatusCode), as a guard's `errors.on` may list them.
GRPC_CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
_CLASSES = {"4xx": range(400, 500), "5xx": range(500, 600)}


def _guard_error(value: Any) -> str | int:
    """``connect-failure`` / ``reset`` / ``timeout``, ``4xx`` / ``5xx``, an HTTP status 400..599,
    or a gRPC status code name (``UNAVAILABLE``)."""
    if isinstance(value, str):
        word = value.strip()
        if word.lower() in RETRY_WORDS or word.lower() in _CLASSES:
            return word.lower()
        if word.upper() in GRPC_CODES and word.upper() != "OK":
            return word.upper()
    status: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        status = value
    elif isinstance(value, str) and value.strip().isdigit():
        status = int(value.strip())
    if status is None or not 400 <= status <= 599:
        raise _error(
            "unknown error condition {got} (known: connect-failure, reset, timeout, 4xx, 5xx, an HTTP status "
            "400..599, or a gRPC code name such as UNAVAILABLE)",
            got=repr(value),
        )
    return status


GuardErrorOn = Annotated[Any, PlainValidator(_guard_error)]


class GuardErrors(_Model):
    """The error criterion. ``on`` replaces the default list: connect-failure, reset, timeout,
    5xx and the gRPC codes UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED, DATA_LOSS."""

    confidence: float = Field(0.999, gt=0.5, lt=1)
    margin: float = Field(0.0, ge=0, lt=1)
    on: list[GuardErrorOn] | None = None

    @model_validator(mode="before")
    @classmethod
    def _yaml11_on_key(cls, data: Any) -> Any:
        return _yaml11_on(data)


class GuardLatency(_Model):
    p99_ratio: float | None = Field(2.0, gt=1)
    p50_ratio: float | None = Field(None, gt=1)
    min_delta: Duration = 0.025
    min_requests: int = Field(200, ge=10)
    confidence: float = Field(0.999, gt=0.5, lt=1)

    @model_validator(mode="after")
    def _something_judged(self) -> GuardLatency:
        if self.p99_ratio is None and self.p50_ratio is None:
            raise _error("set p99_ratio and/or p50_ratio (or remove latency to judge errors only)")
        return self

    @field_serializer("min_delta")
    def _dump_duration(self, value: float) -> str:
        return format_duration(value)


class GuardWebhook(_Model):
    url: Name
    timeout: Duration = 2.0
    retries: int = Field(3, ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"https?://[^/\s]+", value):
            # Never echo the URL: webhook URLs carry secrets in their path (Slack's do).
            scheme = value.split(":", 1)[0] if ":" in value else "none"
            raise _error("webhook url must be http:// or https:// (got scheme {got})", got=repr(scheme[:10]))
        return value

    @field_serializer("timeout")
    def _dump_duration(self, value: float) -> str:
        return format_duration(value)


class Guard(_Model):
    """A canary guard: which subset is judged against which, how, and what a trip does."""

    canary: Name
    baseline: Name | None = None  # None: the service's `default`
    window: Duration = 30.0
    min_requests: int = Field(50, ge=1)
    errors: GuardErrors | None = Field(default_factory=lambda: GuardErrors.model_validate({}))  # null: not judged
    latency: GuardLatency | None = None  # absent: latency not judged
    testers: Literal["keep", "shed"] = "keep"
    action: Literal["shed", "rollback"] = "shed"
    webhook: GuardWebhook | None = None
    reset: Text | None = None

    @model_validator(mode="after")
    def _something_judged(self) -> Guard:
        if self.errors is None and self.latency is None:
            raise _error("a guard with errors: null needs latency: {...}; it would judge nothing")
        return self

    @field_serializer("window")
    def _dump_duration(self, value: float) -> str:
        return format_duration(value)


# --------------------------------------------------------------------------- progressive rollout


class RolloutStep(_Model):
    weight: int = Field(ge=0, le=100)  # percent of the managed route's calls to the canary
    pause: Duration | None = None  # None: until promoted by hand

    @field_serializer("pause")
    def _dump_duration(self, value: float | None) -> str | None:
        return format_duration(value) if value is not None else None


class PrometheusGate(_Model):
    """A PromQL query whose single value must stay within ``max`` / ``min``, once
    ``volume_query`` (if any) reaches ``min_volume``. ``{service}`` in a query is the service."""

    url: Name
    query: Name
    max: float | None = None
    min: float | None = None
    volume_query: Text | None = None
    min_volume: float = 0.0
    timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"https?://[^/\s]+", value):
            raise _error("prometheus url must be http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _bounded(self) -> PrometheusGate:
        if self.max is None and self.min is None:
            raise _error("set max and/or min: a gate with no bound passes everything")
        return self

    @field_serializer("timeout")
    def _dump_timeout(self, value: float) -> str:
        return format_duration(value)


class RolloutGate(_Model):
    name: Name
    prometheus: PrometheusGate | None = None
    guard: bool = False  # a canary-guard rollback written to the store aborts the rollout

    @model_validator(mode="after")
    def _one_kind(self) -> RolloutGate:
        if (self.prometheus is None) == (not self.guard):
            raise _error("a gate is either prometheus: {...} or guard: true")
        return self


class RolloutEvent(_Model):
    at: Text
    by: Text
    action: Text
    step: int
    weight: int
    why: Text = ""
    verdicts: dict[str, Text] = Field(default_factory=dict)


class RolloutState(_Model):
    phase: Literal["progressing", "paused", "aborted", "completed"]
    step: int = Field(ge=0)
    step_started: Text  # RFC 3339 UTC: pauses count from here, whoever runs the rollout


class Rollout(_Model):
    """A progressive rollout of ``canary`` against ``baseline``: ``steps`` of canary weight on the
    managed route ``rollout``, each held for its ``pause`` (or until promoted) and let through by
    the ``gates``; ``state`` and ``history`` are written by ``graylb rollout``."""

    canary: Name
    baseline: Name
    steps: list[RolloutStep] = Field(min_length=1)
    gates: list[RolloutGate] = Field(default_factory=list)
    state: RolloutState | None = None
    history: list[RolloutEvent] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rising(self) -> Rollout:
        weights = [s.weight for s in self.steps]
        if weights != sorted(weights):
            raise _error("step weights must not go down: {got}", got=weights)
        if self.state is not None and self.state.step >= len(self.steps):
            raise _error("state.step {got} is past the last step", got=self.state.step)
        return self


class Service(_Model):
    subsets: dict[str, Subset] = Field(default_factory=dict)
    default: Text | None = None
    routes: list[Route] = Field(default_factory=list)
    fallback: Literal["default", "any", "fail"] = "default"
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer)
    retries: Retries | None = None
    outlier_detection: OutlierDetection | None = None
    warmup: WarmUp | None = None  # slow start of new instances in the caller; None: off
    guard: Guard | None = None
    # Free-form notes for people (who rolled back, when, why); routing ignores them.
    annotations: dict[str, Text] = Field(default_factory=dict)
    rollout: Rollout | None = None  # a progressive rollout's plan and state; routing reads only its route


class RulesDocument(_Model):
    version: int = 1
    services: dict[str, Service] = Field(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _supported(cls, value: Any) -> int:
        if value in (1, "1") and not isinstance(value, bool):
            return 1
        raise _error("unsupported rules version {got} (this graylb reads version 1)", got=repr(value))


# --------------------------------------------------------------------------- locations & references

_PLAIN_KEY = re.compile(r"[^.\[\]\s\"]+")


def format_loc(parts: tuple[Any, ...] | list[Any]) -> str:
    """``("services", "orders", "routes", 1, "to", 0)`` -> ``services.orders.routes[1].to[0]``.

    Keys that would make the path ambiguous (dots, brackets, spaces, empty) are quoted:
    ``headers["x.trace"]``.
    """
    out: list[str] = []
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out.append(f"[{part}]")
            continue
        key = str(part)
        if _PLAIN_KEY.fullmatch(key):
            out.append(f".{key}" if out else key)
        else:
            out.append(f'["{key}"]')
    return "".join(out)


def _known(names: list[str]) -> str:
    return f"known: {', '.join(sorted(names))}" if names else "no subsets defined"


def _guard_references(guard: Any, base: tuple[str, str], known: list[str], default: Any) -> list[tuple[str, str]]:
    if not isinstance(guard, Mapping):
        return []
    errors = []
    canary, baseline = guard.get("canary"), guard.get("baseline")
    for field, name in (("canary", canary), ("baseline", baseline)):
        if isinstance(name, str) and name and name not in known:
            errors.append((format_loc((*base, "guard", field)), f"unknown subset {name!r} ({_known(known)})"))
    if baseline is None:
        if not isinstance(default, str):
            errors.append(
                (
                    format_loc((*base, "guard", "baseline")),
                    "the guard needs a baseline: set guard.baseline or the service's default subset",
                )
            )
        baseline = default
    if isinstance(canary, str) and canary == baseline:
        errors.append((format_loc((*base, "guard", "canary")), f"canary and baseline are the same subset {canary!r}"))
    return errors


def check_references(doc: Any) -> list[tuple[str, str]]:
    """Cross-checks on a plain document: subset names in ``to`` and ``default`` exist, route
    names are unique within a service. Tolerates malformed shapes (model validation reports
    those), so it can run alongside model validation and every problem is reported together.
    """
    errors: list[tuple[str, str]] = []
    services = doc.get("services") if isinstance(doc, Mapping) else None
    if not isinstance(services, Mapping):
        return errors
    for svc_name, svc in services.items():
        if not isinstance(svc, Mapping):
            continue
        base = ("services", str(svc_name))
        subsets = svc.get("subsets")
        known = [str(k) for k in subsets] if isinstance(subsets, Mapping) else []
        default = svc.get("default")
        if isinstance(default, str) and default not in known:
            errors.append((format_loc((*base, "default")), f"unknown subset {default!r} ({_known(known)})"))
        errors.extend(_guard_references(svc.get("guard"), base, known, default))
        rollout = svc.get("rollout")
        if isinstance(rollout, Mapping):
            for field in ("canary", "baseline"):
                name = rollout.get(field)
                if isinstance(name, str) and name and name not in known:
                    loc = format_loc((*base, "rollout", field))
                    errors.append((loc, f"unknown subset {name!r} ({_known(known)})"))
            if rollout.get("canary") is not None and rollout.get("canary") == rollout.get("baseline"):
                loc = format_loc((*base, "rollout", "canary"))
                errors.append((loc, "canary and baseline are the same subset"))
        routes = svc.get("routes")
        if not isinstance(routes, list):
            continue
        seen: dict[str, int] = {}
        for i, route in enumerate(routes):
            if not isinstance(route, Mapping):
                continue
            name = route.get("name")
            name = name if isinstance(name, str) and name else f"routes[{i}]"
            if name in seen:
                errors.append(
                    (
                        format_loc((*base, "routes", i, "name")),
                        f"duplicate route name {name!r} (also routes[{seen[name]}])",
                    )
                )
            else:
                seen[name] = i
            targets = route.get("to")
            if not isinstance(targets, list):
                continue
            for j, target in enumerate(targets):
                subset = target.get("subset") if isinstance(target, Mapping) else None
                if isinstance(subset, str) and subset and subset not in known:
                    loc = format_loc((*base, "routes", i, "to", j, "subset"))
                    errors.append((loc, f"unknown subset {subset!r} ({_known(known)})"))
    return errors
