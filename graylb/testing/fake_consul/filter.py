"""A go-bexpr subset for FakeConsul's ``?filter=``: :class:`_Filter` parses an expression once
against a schema (the selectors an endpoint's items have, and their types) and is then called
per item; a bad expression raises :class:`_FilterError` with go-bexpr's message. The schemas of
the endpoints that take ``?filter`` are here too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .decoding import _parse_bool, _q


class _FilterError(Exception):
    pass


_HEALTH_SCHEMA: dict[str, Any] = {
    "Node": {
        "ID": "str",
        "Node": "str",
        "Address": "str",
        "Datacenter": "str",
        "TaggedAddresses": "map",
        "Meta": "map",
    },
    "Service": {
        "Kind": "str",
        "ID": "str",
        "Service": "str",
        "Tags": "list",
        "Address": "str",
        "TaggedAddresses": "any",
        "Meta": "map",
        "Port": "int",
        "EnableTagOverride": "bool",
        "Weights": {"Passing": "int", "Warning": "int"},
        "PeerName": "str",
    },
}
_SERVICE_NODE_SCHEMA: dict[str, Any] = {
    "ID": "str",
    "Node": "str",
    "Address": "str",
    "Datacenter": "str",
    "TaggedAddresses": "map",
    "NodeMeta": "map",
    "ServiceKind": "str",
    "ServiceID": "str",
    "ServiceName": "str",
    "ServiceTags": "list",
    "ServiceAddress": "str",
    "ServiceMeta": "map",
    "ServicePort": "int",
    "ServiceEnableTagOverride": "bool",
    "ServiceWeights": {"Passing": "int", "Warning": "int"},
}
_AGENT_SERVICE_SCHEMA: dict[str, Any] = {
    "Kind": "str",
    "ID": "str",
    "Service": "str",
    "Tags": "list",
    "Meta": "map",
    "Port": "int",
    "Address": "str",
    "EnableTagOverride": "bool",
    "Weights": {"Passing": "int", "Warning": "int"},
    "Datacenter": "str",
}

_TOKEN_RE = re.compile(
    r"""\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<op>==|!=)|(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?[0-9]+(?:\.[0-9]+)?(?![A-Za-z_]))|(?P<word>[A-Za-z_][A-Za-z0-9_\-]*)|(?P<dot>\.)|(?P<lb>\[)|(?P<rb>\]))"""
)


class _Filter:
    """``Service.Meta.lane == "gray" and "v2" in Service.Tags``: parsed once, evaluated per item."""

    def __init__(self, expression: str, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(expression):
            if expression[pos:].strip() == "":
                break
            m = _TOKEN_RE.match(expression, pos)
            if not m or m.end() == pos:
                raise _FilterError(self._syntax(pos))
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.expression = expression
        self.i = 0
        self.ast = self._or()
        if self.i != len(self.tokens):
            raise _FilterError(self._syntax(self.tokens[self.i][2]))

    def _syntax(self, offset: int) -> str:
        return (
            f'1:{offset + 1} ({offset}): no match found, expected: "!=", "==", "and", "contains", "in", "is", '
            '"matches", "not", "or", [ \\t\\r\\n] or EOF'
        )

    def _peek(self, k: int = 0) -> tuple[str, str, int] | None:
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else None

    def _word(self, word: str, k: int = 0) -> bool:
        t = self._peek(k)
        return t is not None and t[0] == "word" and t[1] == word

    def _expect_fail(self) -> _FilterError:
        t = self._peek()
        return _FilterError(self._syntax(t[2] if t else len(self.expression)))

    def _or(self) -> Any:
        node = self._and()
        while self._word("or"):
            self.i += 1
            node = ("or", node, self._and())
        return node

    def _and(self) -> Any:
        node = self._not()
        while self._word("and"):
            self.i += 1
            node = ("and", node, self._not())
        return node

    def _not(self) -> Any:
        if self._word("not"):
            self.i += 1
            return ("not", self._not())
        return self._primary()

    def _primary(self) -> Any:
        t = self._peek()
        if t is None:
            raise self._expect_fail()
        if t[0] == "lp":
            self.i += 1
            node = self._or()
            closing = self._peek()
            if not closing or closing[0] != "rp":
                raise self._expect_fail()
            self.i += 1
            return node
        # value (not) in selector
        if t[0] in ("str", "num") or (
            t[0] == "word" and (self._word("in", 1) or (self._word("not", 1) and self._word("in", 2)))
        ):
            value = self._value()
            negate = False
            if self._word("not"):
                negate, self.i = True, self.i + 1
            if not self._word("in"):
                raise self._expect_fail()
            self.i += 1
            sel = self._selector()
            node = ("in", sel, value)
            return ("not", node) if negate else node
        sel = self._selector()
        t = self._peek()
        if t is None:
            raise self._expect_fail()
        if t[0] == "op":
            self.i += 1
            value = self._value()
            self._check_scalar(sel, value)
            return ("eq", sel, value) if t[1] == "==" else ("not", ("eq", sel, value))
        negate = False
        if self._word("is"):
            self.i += 1
            if self._word("not"):
                negate, self.i = True, self.i + 1
            if not self._word("empty"):
                raise self._expect_fail()
            self.i += 1
            node = ("empty", sel)
            return ("not", node) if negate else node
        if self._word("not"):
            negate, self.i = True, self.i + 1
        if self._word("contains"):
            self.i += 1
            node = ("in", sel, self._value())
        elif self._word("matches"):
            self.i += 1
            pattern = self._value()
            try:
                node = ("matches", sel, re.compile(pattern))
            except re.error as exc:
                raise _FilterError(
                    f"Failed to compile regular expression {_q(pattern)}: error parsing regexp: {exc}"
                ) from None
        else:
            raise self._expect_fail()
        return ("not", node) if negate else node

    def _value(self) -> str:
        t = self._peek()
        if t is None or t[0] not in ("str", "num", "word"):
            # go-bexpr's grammar expects a value here: its error lists a value's first characters
            offset = t[2] if t else len(self.expression)
            raise _FilterError(
                f"1:{offset + 1} ({offset}): no match found, "
                'expected: "-", "0", "\\"", "`", [ \\t\\r\\n], [1-9] or [a-zA-Z]'
            )
        self.i += 1
        if t[0] == "str":
            return t[1][1:-1] if t[1][0] == "`" else json.loads(t[1])
        return t[1]

    def _selector(self) -> tuple[tuple[str, ...], str]:
        t = self._peek()
        if t is None or t[0] != "word":
            raise self._expect_fail()
        parts = [t[1]]
        self.i += 1
        while True:
            t, t1, t2 = self._peek(), self._peek(1), self._peek(2)
            if t and t[0] == "dot" and t1 and t1[0] == "word":
                parts.append(t1[1])
                self.i += 2
            elif t and t[0] == "lb" and t1 and t1[0] == "str" and t2 and t2[0] == "rb":
                parts.append(json.loads(t1[1]) if t1[1][0] == '"' else t1[1][1:-1])
                self.i += 3
            else:
                break
        path = tuple(parts)
        return path, self._type_of(path)

    def _type_of(self, path: tuple[str, ...]) -> str:
        node: Any = self.schema
        for j, part in enumerate(path):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif node == "map" and j == len(path) - 1:
                node = "str"
            else:
                raise _FilterError(f"Selector {_q('.'.join(path))} is not valid")
        if isinstance(node, dict):
            raise _FilterError(f"Selector {_q('.'.join(path))} is not valid")
        kind: str = node  # a leaf of the schema: the selector's type name
        return kind

    def _check_scalar(self, sel: tuple[tuple[str, ...], str], value: str) -> None:
        kind = sel[1]
        if kind in ("list", "map", "any"):
            raise _FilterError(f'Invalid match operator "Equal" for selector {_q(".".join(sel[0]))}')
        selector = _q(".".join(sel[0]))
        if kind == "int":
            try:
                int(value)
            except ValueError:
                raise _FilterError(
                    f"Failed to coerce value {_q(value)} for selector {selector}: strconv.ParseInt: parsing "
                    f"{_q(value)}: invalid syntax"
                ) from None
        if kind == "bool":
            try:
                _parse_bool(value)
            except ValueError:
                raise _FilterError(
                    f"Failed to coerce value {_q(value)} for selector {selector}: strconv.ParseBool: parsing "
                    f"{_q(value)}: invalid syntax"
                ) from None

    @staticmethod
    def _resolve(item: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
        node = item
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def _eval(self, node: Any, item: Any) -> bool:
        op = node[0]
        if op == "or":
            return self._eval(node[1], item) or self._eval(node[2], item)
        if op == "and":
            return self._eval(node[1], item) and self._eval(node[2], item)
        if op == "not":
            return not self._eval(node[1], item)
        (path, kind) = node[1]
        found, value = self._resolve(item, path)
        if op == "empty":
            return not found or value in (None, "", [], {})
        if not found or value is None:
            return False
        if op == "eq":
            if kind == "int":
                return int(value) == int(node[2])
            if kind == "bool":
                return bool(value) == _parse_bool(node[2])
            want: str = node[2]
            return str(value) == want
        if op == "in":
            if isinstance(value, (list, dict)):
                return node[2] in value
            return node[2] in str(value)
        if op == "matches":
            return node[2].search(str(value)) is not None
        return False

    def __call__(self, item: Any) -> bool:
        return self._eval(self.ast, item)
