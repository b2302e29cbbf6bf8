"""Compile a route's ``match`` clauses into plain closures ``matcher(request, gray_context) -> bool``.

Contract:

- ``match`` is a list of clauses: the route matches when *any* clause matches (OR); inside one
  clause every condition must hold (AND). No clauses, or an empty clause, matches every call and
  compiles to ``None`` (the router skips the call entirely).
- Header names are lower-cased here, once, because :meth:`RequestInfo.header` takes lower-case
  names. Query parameter and gray-context names are case-sensitive.
- ``regex`` is a *full* match, compiled once. ``method`` compares case-insensitively.
- ``api_version`` extracts the version a request asks for (:mod:`.api_version`: preferred
  ``Accept`` media type, or a ``v2`` path segment) and compares it, ``v`` included (``v2``), with
  a :class:`~graylb.versioning.VersionSelector` compiled once. No version found, or a preferred
  media type of another vendor, never matches. Each such matcher also has an ``observe(request)``
  attribute saying what it found, for ``graylb rules explain`` (:func:`observations`).
- A missing value (header/query parameter/gray value not present) never matches ``exact``,
  ``prefix`` or ``regex``; with ``invert: true`` it therefore matches. ``present: true`` matches
  any value, even an empty one.

Everything that can be decided at compile time is: each closure does one lookup and one
comparison, with the comparison operands bound as closure cells. A single condition compiles to
that condition's closure itself, with no loop around it. Each matcher carries a ``description``
attribute (``header user-group == 'beta'``) for logs and ``graylb rules explain``; AND / OR
combinations carry their ``parts``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..propagation.context import GrayContext
from ..versioning import VersionSelector
from . import header_names
from .api_version import accept_preference, normalise_prefix, path_version
from .request import RequestInfo

if TYPE_CHECKING:  # only attribute access at run time: keeps routing importable without rules
    from ..rules.model import ApiVersionMatch, MatchClause, StringMatch

__all__ = [
    "Matcher",
    "compile_match",
    "compile_clause",
    "compile_condition",
    "compile_api_version",
    "describe",
    "observations",
]

#: Same alias as :data:`graylb.rules.compiled.Matcher` (not imported, to avoid an import cycle).
Matcher = Callable[[RequestInfo, GrayContext], bool]
Getter = Callable[[RequestInfo, GrayContext], "str | None"]


def describe(matcher: Matcher | None) -> str:
    """A human-readable form of a compiled matcher (``"*"`` for None: matches everything)."""
    if matcher is None:
        return "*"
    return getattr(matcher, "description", repr(matcher))


def observations(matcher: Matcher | None, request: RequestInfo) -> list[tuple[str, str]]:
    """``(description, what the request offers)`` for each condition of ``matcher`` that can say
    (the ``api_version`` ones): what ``graylb rules explain`` shows besides match / no match."""
    out: list[tuple[str, str]] = []
    stack = [matcher] if matcher is not None else []
    while stack:
        m = stack.pop()
        observe = getattr(m, "observe", None)
        if observe is not None:
            seen = (describe(m), observe(request))
            if seen not in out:
                out.append(seen)
        stack.extend(reversed(getattr(m, "parts", ())))
    return out


# Matchers are plain functions (one call per request, no method lookup); what explain() and
# observations() read is set on them as function attributes, which Callable does not declare.
def _named(fn: Matcher, description: str, parts: Sequence[Matcher] = ()) -> Matcher:
    fn.description = description  # type: ignore[attr-defined]
    fn.__qualname__ = f"matcher<{description}>"
    if parts:
        fn.parts = tuple(parts)  # type: ignore[attr-defined]
    return fn


# --------------------------------------------------------------------------- value getters


def _header(name: str) -> Getter:
    header_names.declare(name)

    def get(request: RequestInfo, ctx: GrayContext) -> str | None:
        return request._get_header(name)  # RequestInfo.header without its own call: per condition, per call

    return get


def _query(name: str) -> Getter:
    def get(request: RequestInfo, ctx: GrayContext) -> str | None:
        return request.query(name)

    return get


def _context(name: str) -> Getter:
    def get(request: RequestInfo, ctx: GrayContext) -> str | None:
        return ctx.value(name)

    return get


def _path(request: RequestInfo, ctx: GrayContext) -> str | None:
    return request.path


def _method(request: RequestInfo, ctx: GrayContext) -> str | None:
    return request.method


# --------------------------------------------------------------------------- one condition


def compile_condition(get: Getter, spec: StringMatch, subject: str, *, ignore_case: bool = False) -> Matcher:
    """A matcher testing ``get(request, ctx)`` against ``spec``; ``subject`` names the value
    in the description. ``ignore_case`` expects upper-case values (used for the method)."""
    invert = bool(spec.invert)
    neg = "not " if invert else ""
    kind = spec.kind

    if kind == "present":
        want_present = bool(spec.present) is not invert

        def present(request: RequestInfo, ctx: GrayContext) -> bool:
            return (get(request, ctx) is not None) is want_present

        return _named(present, f"{subject} {'present' if want_present else 'absent'}")

    if kind == "regex":
        pattern = re.compile(spec.regex or "", re.IGNORECASE if ignore_case else 0)
        fullmatch = pattern.fullmatch

        def regex(request: RequestInfo, ctx: GrayContext) -> bool:
            value = get(request, ctx)
            return (value is not None and fullmatch(value) is not None) is not invert

        return _named(regex, f"{subject} {neg}~ /{pattern.pattern}/")

    if kind == "prefix":
        prefix = spec.prefix or ""
        if ignore_case:
            prefix = prefix.upper()

            def prefix_ci(request: RequestInfo, ctx: GrayContext) -> bool:
                value = get(request, ctx)
                return (value is not None and value.upper().startswith(prefix)) is not invert

            return _named(prefix_ci, f"{subject} {neg}starts with {prefix!r}")

        def prefix_cs(request: RequestInfo, ctx: GrayContext) -> bool:
            value = get(request, ctx)
            return (value is not None and value.startswith(prefix)) is not invert

        return _named(prefix_cs, f"{subject} {neg}starts with {prefix!r}")

    if kind == "in":
        values = frozenset(v.upper() for v in spec.one_of or ()) if ignore_case else frozenset(spec.one_of or ())
        shown = sorted(values)
        label = f"{subject} {neg}in {shown[:5]!r}{f' (+{len(shown) - 5} more)' if len(shown) > 5 else ''}"
        if ignore_case:

            def one_of_ci(request: RequestInfo, ctx: GrayContext) -> bool:
                value = get(request, ctx)
                return (value is not None and value.upper() in values) is not invert

            return _named(one_of_ci, label)

        def one_of(request: RequestInfo, ctx: GrayContext) -> bool:
            return (get(request, ctx) in values) is not invert  # a set lookup, however long the list

        return _named(one_of, label)

    want = spec.exact if spec.exact is not None else ""
    if ignore_case:
        want = want.upper()

        def exact_ci(request: RequestInfo, ctx: GrayContext) -> bool:
            value = get(request, ctx)
            # Transports already send upper-case methods: upper() only runs on a mismatch.
            return (value == want or (value is not None and value.upper() == want)) is not invert

        return _named(exact_ci, f"{subject} {'!=' if invert else '=='} {want!r}")

    def exact(request: RequestInfo, ctx: GrayContext) -> bool:
        return (get(request, ctx) == want) is not invert

    return _named(exact, f"{subject} {'!=' if invert else '=='} {want!r}")


# --------------------------------------------------------------------------- api version

# Distinct versions a clause remembers its selector's answer for: requests ask for a handful
# (v1, v2, ...); a client inventing new ones only makes the memo start over.
_VERSION_MEMO = 64


def _selector_test(text: str) -> Callable[[str], bool]:
    """``VersionSelector(text).matches`` with its answers remembered per extracted version (the
    same few strings every call; a plain dict is safe to share between threads under the GIL)."""
    matches = VersionSelector(text).matches
    memo: dict[str, bool] = {}

    def test(version: str) -> bool:
        hit = memo.get(version)
        if hit is None:
            hit = matches(version)
            if len(memo) >= _VERSION_MEMO:
                memo.clear()
            memo[version] = hit
        return hit

    return test


def compile_api_version(spec: ApiVersionMatch) -> Matcher:
    """A matcher for one ``api_version`` condition (see the module docstring)."""
    test = _selector_test(spec.version)
    if spec.source == "accept":
        vendor = spec.vendor.lower() if spec.vendor is not None else None
        shown = f"vnd.{vendor}" if vendor is not None else "any vendor"

        def accept(request: RequestInfo, ctx: GrayContext) -> bool:
            pref = accept_preference(request.header_values("accept"))
            if pref is None or pref[2] is None:
                return False
            return (vendor is None or pref[1] == vendor) and test(pref[2])

        fn = _named(accept, f"api version from Accept ({shown}) matches {spec.version!r}")
        fn.observe = lambda request: _observe_accept(request, vendor)  # type: ignore[attr-defined]
        return fn

    prefix = normalise_prefix(spec.prefix) if spec.prefix is not None else None

    def path(request: RequestInfo, ctx: GrayContext) -> bool:
        version = path_version(request.path, prefix)
        return version is not None and test(version)

    where = f" after {prefix!r}" if prefix is not None else ""
    fn = _named(path, f"api version from path{where} matches {spec.version!r}")
    fn.observe = lambda request: _observe_path(request, prefix)  # type: ignore[attr-defined]
    return fn


def _observe_accept(request: RequestInfo, vendor: str | None) -> str:
    lines = request.header_values("accept")
    if not lines:
        return "no Accept header"
    pref = accept_preference(lines)
    if pref is None:
        return "Accept has no acceptable media type graylb can read (malformed, all q=0, or too long)"
    media_type, got_vendor, version = pref
    if got_vendor is None:
        return f"Accept prefers {media_type!r}: not a vendor media type"
    if vendor is not None and got_vendor != vendor:
        return f"Accept prefers {media_type!r}: vendor {got_vendor!r}, not {vendor!r}"
    if version is None:
        return f"Accept prefers {media_type!r}: no version in it"
    return f"Accept prefers {media_type!r}: version {version!r}"


def _observe_path(request: RequestInfo, prefix: str | None) -> str:
    version = path_version(request.path, prefix)
    if version is None:
        where = f" right after {prefix!r}" if prefix is not None else ""
        return f"path {request.path!r} has no v<N> segment{where}"
    return f"path {request.path!r}: version {version!r}"


# --------------------------------------------------------------------------- combinations


def _all_of(matchers: Sequence[Matcher]) -> Matcher:
    if len(matchers) == 1:
        return matchers[0]
    description = " and ".join(describe(m) for m in matchers)
    if len(matchers) == 2:
        a, b = matchers

        def both(request: RequestInfo, ctx: GrayContext) -> bool:
            return a(request, ctx) and b(request, ctx)

        return _named(both, description, matchers)
    ms = tuple(matchers)

    def every(request: RequestInfo, ctx: GrayContext) -> bool:
        for m in ms:
            if not m(request, ctx):
                return False
        return True

    return _named(every, description, ms)


def _any_of(matchers: Sequence[Matcher]) -> Matcher:
    if len(matchers) == 1:
        return matchers[0]
    description = " or ".join(f"({describe(m)})" for m in matchers)
    ms = tuple(matchers)

    def some(request: RequestInfo, ctx: GrayContext) -> bool:
        for m in ms:
            if m(request, ctx):
                return True
        return False

    return _named(some, description, ms)


def compile_clause(clause: MatchClause) -> Matcher | None:
    """AND of every condition in one clause; None when the clause is empty (matches all)."""
    conditions: list[Matcher] = []
    for name, spec in clause.headers.items():
        lower = name.lower()
        conditions.append(compile_condition(_header(lower), spec, f"header {lower}"))
    for name, spec in clause.query.items():
        conditions.append(compile_condition(_query(name), spec, f"query {name}"))
    for name, spec in clause.context.items():
        conditions.append(compile_condition(_context(name), spec, f"context {name}"))
    if clause.path is not None:
        conditions.append(compile_condition(_path, clause.path, "path"))
    if clause.method is not None:
        conditions.append(compile_condition(_method, clause.method, "method", ignore_case=True))
    if clause.api_version is not None:
        conditions.append(compile_api_version(clause.api_version))
    return _all_of(conditions) if conditions else None


def compile_match(clauses: Sequence[MatchClause] | None) -> Matcher | None:
    """OR of the clauses; None (matches every call) when there are none or one is empty."""
    if not clauses:
        return None
    compiled: list[Matcher] = []
    for clause in clauses:
        matcher = compile_clause(clause)
        if matcher is None:
            return None  # an empty clause matches everything, so the OR does too
        compiled.append(matcher)
    return _any_of(compiled)
