"""What routing rules may look at in a request, independent of the transport."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from urllib.parse import parse_qsl

__all__ = ["RequestInfo"]

HeaderGetter = Callable[[str], "str | None"]
HeaderValuesGetter = Callable[[str], "list[str]"]


class RequestInfo:
    """A transport-neutral view of one outbound call.

    ``header(name)`` takes a lower-case name and returns its value or None (httpx headers
    and gRPC metadata both provide that cheaply); ``header_values(name)`` returns every line of
    that header, in order (``[]`` when absent), for the few rules that must see repeated lines
    (``Accept``); ``query(name)`` parses the query string once, on first use; ``path`` is the
    URL path (HTTP) or the full method name (gRPC).

    ``headers`` is a getter, or a mapping whose values are strings or, for a header sent on
    several lines, lists of strings (``header`` then gives the first line). ``header_values`` is
    an optional getter for every line; without it, ``header_values`` is the one value ``header``
    gives (or every line, for a mapping of lists).
    """

    __slots__ = ("method", "path", "_get_header", "_get_header_values", "_query_string", "_query")

    def __init__(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Mapping[str, str | Sequence[str]] | HeaderGetter | None = None,
        query_string: str = "",
        header_values: HeaderValuesGetter | None = None,
    ) -> None:
        self.method = method
        self.path = path
        # Transports pass a getter for the second one too; it is only called when a rule needs
        # every line, so the common call builds no list.
        self._get_header_values = header_values
        if headers is None:
            self._get_header: HeaderGetter = _no_header
        elif callable(headers):
            self._get_header = headers
        else:
            first, lines = _lowered(headers)
            self._get_header = first.get
            if header_values is None and lines:
                self._get_header_values = _lines_getter(first, lines)
        self._query_string = query_string
        self._query: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        return self._get_header(name)

    def header_values(self, name: str) -> list[str]:
        """Every line of header ``name`` (lower-case), in the order sent; ``[]`` when absent."""
        get = self._get_header_values
        if get is not None:
            return get(name)
        value = self._get_header(name)
        return [] if value is None else [value]

    def query(self, name: str) -> str | None:
        if not self._query_string:  # most calls: no query at all, nothing to parse
            return None
        if self._query is None:
            q: dict[str, str] = {}
            for k, v in parse_qsl(self._query_string, keep_blank_values=True):
                q.setdefault(k, v)
            self._query = q
        return self._query.get(name)


def _no_header(name: str) -> None:
    return None


def _lowered(headers: Mapping[str, str | Sequence[str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Lower-cased names -> first value, and -> every line for the headers given as lists."""
    first: dict[str, str] = {}
    lines: dict[str, list[str]] = {}
    for key, value in headers.items():
        name = key.lower()
        if isinstance(value, (list, tuple)):  # several lines; a str (or anything else) is one value
            if value:
                first[name] = value[0]
                lines[name] = list(value)
        else:
            first[name] = value  # type: ignore[assignment]  # a str, or anything else a caller passed: one value
    return first, lines


def _lines_getter(first: dict[str, str], lines: dict[str, list[str]]) -> HeaderValuesGetter:
    def get(name: str) -> list[str]:
        many = lines.get(name)
        if many is not None:
            return list(many)
        value = first.get(name)
        return [] if value is None else [value]

    return get
