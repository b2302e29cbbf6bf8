"""Text -> validated model -> compiled rules, with every problem turned into one :class:`RuleError`.

Contract:

- :func:`load_document` parses YAML (a ``yaml.SafeLoader`` with YAML 1.2 booleans and duplicate
  keys rejected, see :class:`_Loader`) or JSON (tried first when the text starts with ``{`` or
  ``[``; flow-style YAML that is not JSON still loads); a syntax error becomes
  ``RuleError([("", "line L column C: ...")], source)``.
- :func:`validate_rules` returns the validated :class:`RulesDocument`, or raises one
  :class:`RuleError` listing *every* problem: model errors and cross-reference errors
  together, each as ``(location, message)`` with locations like
  ``services.orders.routes[1].to[0].subset``.
- :func:`parse_rules` is ``validate_rules`` + :func:`graylb.rules.compile.compile_rules`.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import RuleError
from .compile import compile_rules
from .compiled import CompiledRules
from .model import RulesDocument, check_references, format_loc

__all__ = ["load_document", "validate_rules", "parse_rules", "MAX_DEPTH"]

# No real rules document nests more than ~10 levels; a limit far above that keeps a hostile or
# broken one (``services: [[[[...]]]]``) from reaching Python's recursion limit in the YAML
# parser, pydantic or the compiler.
MAX_DEPTH = 64
_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with two fixes for config files:

    - only ``true``/``false`` are booleans (YAML 1.2): YAML 1.1 also reads ``on``, ``off``,
      ``yes``, ``no`` as booleans, which turns ``retries: {on: [...]}`` into ``{True: [...]}``
      and ``zone: no`` into ``False``;
    - a key repeated in one mapping is an error instead of the last one silently winning
      (two ``orders:`` blocks would otherwise drop the first).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: SafeConstructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _yaml_error(exc: yaml.YAMLError) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"invalid YAML: {exc}"
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    message = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        cm = exc.context_mark
        started = f" at line {cm.line + 1} column {cm.column + 1}" if cm is not None and cm is not mark else ""
        message = f"{exc.problem} ({exc.context}{started})"
    return where + message


def load_document(text: str | bytes, source: str = "") -> Any:
    """Parse YAML or JSON text (safe loading only); raise RuleError on a syntax error."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RuleError([("", f"not UTF-8 text: {exc}")], source) from None
    try:
        data = _parse(text, source)
    except RecursionError:  # the parsers recurse per level: far too deep to be a rules document
        raise RuleError([("", _TOO_DEEP)], source) from None
    _check_depth(data, source)
    return data


def _parse(text: str, source: str) -> Any:
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            # Flow-style YAML also starts with "{": only report JSON's error if YAML fails too.
            json_error = f"line {exc.lineno} column {exc.colno}: {exc.msg}"
            try:
                return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
            except yaml.YAMLError:
                raise RuleError([("", json_error)], source) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RuleError([("", _yaml_error(exc))], source) from None


def _check_depth(data: Any, source: str) -> None:
    """Reject a document nested deeper than :data:`MAX_DEPTH`, naming where (iterative: a deep
    document must not be able to overflow the check meant to stop it)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        value, loc = stack.pop()
        children: Iterable[tuple[Any, Any]]
        if isinstance(value, Mapping):
            children = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            continue
        if len(loc) >= MAX_DEPTH:
            raise RuleError([(format_loc(loc[:8]) + "...", _TOO_DEEP)], source)
        stack.extend((child, (*loc, key)) for key, child in children)


def validate_rules(doc: str | bytes | Mapping[str, Any], source: str = "") -> RulesDocument:
    """Load (if text) and validate; raise RuleError listing every problem found."""
    if isinstance(doc, (str, bytes)):
        data = load_document(doc, source)
    else:
        data = doc
        _check_depth(data, source)
    if data is None:
        # An empty file is far more often a half-written one than an intent to drop every rule.
        raise RuleError([("", "document is empty (write `services: {}` to have no rules)")], source)
    if not isinstance(data, Mapping):
        raise RuleError([("", f"expected a mapping at the top level, got {_type_name(data)}")], source)
    errors: list[tuple[str, str]] = []
    model: RulesDocument | None = None
    try:
        model = RulesDocument.model_validate(data)
    except ValidationError as exc:
        errors.extend(_convert(err) for err in exc.errors(include_url=False))
    errors.extend(check_references(data))
    if errors or model is None:
        raise RuleError(_dedupe(errors), source)
    return model


def parse_rules(doc: str | bytes | Mapping[str, Any], source: str = "", *, revision: str = "") -> CompiledRules:
    """Load, validate, cross-check and compile; raise RuleError on any problem."""
    return compile_rules(validate_rules(doc, source), revision=revision, source=source)


# --------------------------------------------------------------------------- pydantic errors

# Location elements pydantic adds that are not part of the document path.
_INTERNAL = re.compile(
    r"^(\[key\]|(function-(after|before|wrap|plain)|literal|tagged-union|union|chain|nullable|lax-or-strict|json-or-python)\[.*)$"
)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _convert(err: Mapping[str, Any]) -> tuple[str, str]:
    raw_loc = tuple(err.get("loc", ()))
    is_key = bool(raw_loc) and raw_loc[-1] == "[key]"
    loc = tuple(p for p in raw_loc if not (isinstance(p, str) and _INTERNAL.match(p)))
    return format_loc(loc), _message(err, loc, is_key)


def _message(err: Mapping[str, Any], loc: tuple[Any, ...], is_key: bool) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if is_key:
        return f"key must be a string, got {_type_name(loc[-1] if loc else value)}"
    if kind == "graylb":
        return str(err.get("msg", ""))
    if kind == "extra_forbidden":
        field = str(loc[-1]) if loc else "?"
        hint = _did_you_mean(field, loc[:-1])
        return f"unknown field {field!r}{hint}"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', '?')}, got {value!r}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {_type_name(value)}"
    if kind == "list_type":
        return f"expected a list, got {_type_name(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {_type_name(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_type_name(value)}"
    if kind in ("string_type",):
        return f"expected a string, got {_type_name(value)}"
    limits = {
        "greater_than_equal": ">= {ge}",
        "less_than_equal": "<= {le}",
        "greater_than": "> {gt}",
        "less_than": "< {lt}",
    }
    if kind in limits:
        return f"must be {limits[kind].format(**ctx)}, got {value!r}"
    msg = str(err.get("msg", kind))
    msg = re.sub(r"^(Value|Assertion) error, ", "", msg)
    return msg[:1].lower() + msg[1:]


def _did_you_mean(field: str, parent_loc: tuple[Any, ...]) -> str:
    known = _fields_at(parent_loc)
    close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else (f" (known: {', '.join(known)})" if known else "")


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found by following ``loc`` from RulesDocument (best effort)."""
    tp: Any = RulesDocument
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = _document_fields(tp).get(str(part))
            if field is None:
                return []
            tp = field.annotation
            continue
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is dict and len(args) == 2:
            tp = args[1]
        elif origin is list and args:
            tp = args[0]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(_document_fields(tp))
    return []


def _document_fields(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields by the names a document uses: the alias where there is one (``in``,
    ``from``), not the Python attribute name (``one_of``, ``source``)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _unwrap(tp: Any) -> Any:
    # Optional[X] -> X; Annotated[X, ...] -> X.
    while True:
        args = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Annotated:
            tp = args[0]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType) and args:
            non_none = [a for a in args if a is not type(None)]
            if len(non_none) != 1:
                return tp
            tp = non_none[0]
        else:
            return tp


def _dedupe(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for e in errors:
        if e not in seen:
            seen.add(e)
            out.append(e)
    return out
