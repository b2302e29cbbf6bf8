"""Rule sources: good documents apply, bad ones are rejected and the last good rules stay."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from graylb.errors import RuleError
from graylb.rules.compiled import NO_RULES, CompiledRules
from graylb.rules.sources import FileRuleSource, RuleSource, StaticRules

GOOD = """
services:
  orders:
    subsets: {stable: {version: "^1.4"}, canary: {version: "2.0.0"}}
    default: stable
"""
GOOD_2 = GOOD + "    routes: [{name: all-canary, to: [{subset: canary}]}]\n"
BAD = GOOD + "    routes: [{to: [{subset: canery}]}]\n"


def wait_for(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` until true or ``timeout``; a bounded loop, the test asserts on the result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


# --------------------------------------------------------------------------- RuleSource / StaticRules


def test_starts_with_no_rules_and_listener_gets_current_immediately():
    src = RuleSource()
    seen: list[CompiledRules] = []
    src.add_listener(seen.append)
    assert src.current is NO_RULES and seen == [NO_RULES]
    assert src.last_error is None and src.rejected_count == 0


def test_apply_good_swaps_and_notifies():
    src = RuleSource()
    seen: list[CompiledRules] = []
    src.add_listener(seen.append)
    assert src.apply(GOOD, revision="7", origin="kv://rules") is True
    assert src.current.revision == "7" and src.current.source == "kv://rules"
    assert "orders" in src.current.services
    assert seen[-1] is src.current and len(seen) == 2


def test_apply_bad_keeps_last_good_records_error_and_logs_one_warning(caplog):
    src = StaticRules(GOOD)
    good = src.current
    seen: list[CompiledRules] = []
    src.add_listener(seen.append)
    with caplog.at_level(logging.WARNING, logger="graylb.rules"):
        assert src.apply(BAD, origin="consul:graylb/rules") is False
    assert src.current is good
    assert seen == [good]  # no notification for a rejected document
    assert isinstance(src.last_error, RuleError)
    assert src.last_error.errors == [
        ("services.orders.routes[0].to[0].subset", "unknown subset 'canery' (known: canary, stable)")
    ]
    assert src.rejected_count == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "consul:graylb/rules" in warnings[0].getMessage()
    assert "services.orders.routes[0].to[0].subset: unknown subset 'canery'" in warnings[0].getMessage()
    # A later good document clears the error.
    assert src.apply(GOOD_2) is True
    assert src.last_error is None and src.rejected_count == 1
    assert seen[-1].services["orders"].routes[0].name == "all-canary"


def test_apply_never_raises_for_unparseable_text():
    src = RuleSource()
    assert src.apply("services: [unclosed") is False
    assert src.last_error is not None and src.last_error.errors[0][1].startswith("line ")
    assert src.current is NO_RULES


@pytest.mark.parametrize(
    "document",
    [
        pytest.param("services: " + "[" * 500 + "]" * 500, id="yaml-500-deep"),
        pytest.param('{"services": ' + "[" * 5000 + "]" * 5000 + "}", id="json-5000-deep"),
        pytest.param("services: " + "[" * 70 + "]" * 70, id="yaml-70-deep"),
    ],
)
def test_a_document_nested_too_deep_is_a_counted_rejection_not_a_crash(document):
    src = RuleSource()
    assert src.apply(document) is False
    assert src.rejected_count == 1 and "nested more than 64 levels deep" in str(src.last_error)
    assert src.current is NO_RULES


def test_a_deep_mapping_given_as_data_is_rejected_naming_where():
    deep: list = []
    inner = deep
    for _ in range(3000):
        inner.append([])
        inner = inner[0]
    src = RuleSource()
    assert src.apply({"services": deep}) is False
    ((location, message),) = src.last_error.errors
    assert location.startswith("services[0][0]") and message == "nested more than 64 levels deep"


def test_an_unforeseen_validation_error_is_still_only_a_rejected_document(monkeypatch):
    import graylb.rules.sources as sources

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(sources, "parse_rules", broken)
    src = RuleSource()
    assert src.apply("services: {}") is False
    assert src.rejected_count == 1 and "cannot validate (KeyError" in str(src.last_error)


def test_a_failing_listener_does_not_stop_the_others(caplog):
    src = RuleSource()
    seen: list[CompiledRules] = []

    def broken(rules: CompiledRules) -> None:
        if rules is not NO_RULES:
            raise RuntimeError("boom")

    src.add_listener(broken)
    src.add_listener(seen.append)
    with caplog.at_level(logging.ERROR, logger="graylb.rules"):
        assert src.apply(GOOD) is True
    assert seen[-1] is src.current
    assert any("listener" in r.getMessage() for r in caplog.records)


def test_static_rules_raise_for_a_bad_initial_document():
    with pytest.raises(RuleError) as info:
        StaticRules(BAD)
    assert "canery" in str(info.value)
    assert StaticRules(None).current is NO_RULES
    assert StaticRules({"services": {}}).current.services == {}


# --------------------------------------------------------------------------- FileRuleSource


def write(path: Path, text: str) -> None:
    # Different content always differs in size or bytes; bump the mtime explicitly so a coarse
    # filesystem clock cannot hide the change from the stat check.
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(old + 1_000_000_000, old + 1_000_000_000))


def test_file_source_loads_at_start_and_raises_for_a_bad_start(tmp_path):
    good = tmp_path / "rules.yaml"
    write(good, GOOD)
    with FileRuleSource(good, reload_interval=None) as src:
        assert src.current.source == str(good)
        assert set(src.current.services) == {"orders"}
    bad = tmp_path / "bad.yaml"
    write(bad, BAD)
    with pytest.raises(RuleError) as info:
        FileRuleSource(bad, reload_interval=None)
    assert info.value.source == str(bad)


def test_file_poll_bad_edit_keeps_last_good_then_good_edit_applies(tmp_path):
    path = tmp_path / "rules.yaml"
    write(path, GOOD)
    src = FileRuleSource(path, reload_interval=None)
    first = src.current
    assert src.poll() is False  # unchanged

    write(path, BAD)
    assert src.poll() is False
    assert src.current is first
    assert src.last_error is not None and src.rejected_count == 1
    assert src.poll() is False and src.rejected_count == 1  # the same bad file is not re-rejected

    write(path, GOOD_2)
    assert src.poll() is True
    assert src.last_error is None
    assert src.current.services["orders"].routes[0].name == "all-canary"


def test_file_touched_without_change_does_not_notify(tmp_path):
    path = tmp_path / "rules.yaml"
    write(path, GOOD)
    src = FileRuleSource(path, reload_interval=None)
    calls: list[CompiledRules] = []
    src.add_listener(calls.append)
    write(path, GOOD)
    assert src.poll() is False and len(calls) == 1


def test_file_missing_during_replace_keeps_rules(tmp_path, caplog):
    path = tmp_path / "rules.yaml"
    write(path, GOOD)
    src = FileRuleSource(path, reload_interval=None)
    first = src.current
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="graylb.rules"):
        assert src.poll() is False
        assert src.poll() is False
    assert src.current is first
    assert len([r for r in caplog.records if "cannot read" in r.getMessage()]) == 1  # warned once
    write(path, GOOD_2)
    assert src.poll() is True


def test_file_watcher_thread_applies_good_edits_and_rejects_bad_ones(tmp_path):
    path = tmp_path / "rules.yaml"
    write(path, GOOD)
    src = FileRuleSource(path, reload_interval=0.01)
    try:
        first = src.current
        changed = threading.Event()
        applied: list[CompiledRules] = []

        def listener(rules: CompiledRules) -> None:
            applied.append(rules)
            if rules is not first:
                changed.set()

        src.add_listener(listener)

        write(path, BAD)
        assert wait_for(lambda: src.rejected_count == 1), "bad edit was never noticed"
        assert src.current is first and src.last_error is not None
        assert not changed.is_set()

        write(path, GOOD_2)
        assert changed.wait(10), "good edit was never applied"
        assert src.current is applied[-1]
        assert src.current.services["orders"].routes[0].name == "all-canary"
        assert src.last_error is None
    finally:
        src.close()


def test_close_stops_the_watcher_at_once_even_with_a_long_interval(tmp_path):
    path = tmp_path / "rules.yaml"
    write(path, GOOD)
    src = FileRuleSource(path, reload_interval=3600)
    thread = src._thread
    assert thread is not None and thread.is_alive()
    src.close()
    # close() joins with a 5 s bound; a sleep-based loop would still be alive here.
    assert not thread.is_alive()
