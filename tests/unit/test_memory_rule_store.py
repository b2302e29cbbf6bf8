"""MemoryRuleStore: the operator actions (push, undo, rollback) on an in-process store, applied
to the rule sources that follow the key — the same code path the CLI runs against Consul."""

from __future__ import annotations

import pytest

import graylb
from graylb.admin import push, rollback, undo
from graylb.testing import MemoryRuleStore

DOC = """
services:
  orders:
    subsets: {stable: {version: "^1"}, canary: {version: "^2"}}
    default: stable
    routes: [{name: canary, to: [{subset: canary, weight: 5}, {subset: stable, weight: 95}]}]
"""


def route_names(source: graylb.RuleSource) -> list[str]:
    return [r.name for r in source.current.service("orders").routes]


def test_push_rollback_undo_reach_every_source_following_the_key() -> None:
    store = MemoryRuleStore()
    early = store.rule_source("graylb/rules")  # before the key exists
    push(store, "graylb/rules", DOC)
    late = store.rule_source("graylb/rules")  # starts from what is there
    assert route_names(early) == route_names(late) == ["canary"]
    print(rollback(store, "graylb/rules", "orders"))
    assert route_names(early) == route_names(late) == []
    undo(store, "graylb/rules")
    assert route_names(early) == ["canary"]
    assert store.get("graylb/rules.previous")[0] is not None


def test_a_bad_document_is_refused_before_it_is_written() -> None:
    store = MemoryRuleStore()
    source = store.rule_source("graylb/rules")
    push(store, "graylb/rules", DOC)
    with pytest.raises(graylb.RuleError, match="unknown subset 'canery'"):
        push(store, "graylb/rules", DOC.replace("subset: canary, weight: 5", "subset: canery, weight: 5"))
    assert route_names(source) == ["canary"] and store.get("graylb/rules")[1] == 1


def test_cas_put_refuses_a_stale_version() -> None:
    store = MemoryRuleStore()
    assert store.cas_put("k", "a", 0) and not store.cas_put("k", "b", 0)
    assert store.get("k") == ("a", 1)
