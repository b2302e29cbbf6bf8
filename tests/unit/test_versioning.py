"""VersionSelector and parse_version: exact, partial, ranges and non-semver strings."""

from __future__ import annotations

import pytest
import semantic_version

from graylb.errors import InvalidVersion
from graylb.versioning import VersionSelector, parse_version


def matching(selector: str, *versions: str | None) -> list[str | None]:
    """The versions (raw registry strings) ``selector`` selects, in the order given."""
    sel = VersionSelector(selector)
    return [v for v in versions if sel.matches(v)]


# --------------------------------------------------------------------------- parse_version


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.2.3", "1.2.3"),
        ("v1.2.3", "1.2.3"),
        ("V1.2.3", "1.2.3"),
        (" 1.2.3 ", "1.2.3"),
        ("2.0.0-rc.1", "2.0.0-rc.1"),
        ("v2.0.0-rc.1+build.7", "2.0.0-rc.1+build.7"),
    ],
)
def test_parse_version_semver(raw: str, expected: str) -> None:
    assert parse_version(raw) == semantic_version.Version(expected)


@pytest.mark.parametrize("raw", [None, "", "1.2", "1", "commit-abc123", "latest", "nginx-1.25", "v", "1.2.3.4"])
def test_parse_version_not_semver_is_none(raw: str | None) -> None:
    assert parse_version(raw) is None


# --------------------------------------------------------------------------- exact


@pytest.mark.parametrize("selector", ["1.2.3", "v1.2.3", "V1.2.3", " 1.2.3 "])
def test_exact_semver_matches_every_spelling_of_that_version(selector: str) -> None:
    sel = VersionSelector(selector)
    assert not sel.is_range
    assert matching(selector, "1.2.3", "v1.2.3", "1.2.4", "1.2.3-rc.1", "1.2.30", "11.2.3", None) == ["1.2.3", "v1.2.3"]


def test_exact_prerelease_matches_only_that_prerelease() -> None:
    assert matching("1.2.3-rc.1", "1.2.3-rc.1", "v1.2.3-rc.1", "1.2.3", "1.2.3-rc.2", "1.2.3-rc.10") == [
        "1.2.3-rc.1",
        "v1.2.3-rc.1",
    ]


def test_release_does_not_match_a_prerelease_selector_and_vice_versa() -> None:
    assert matching("2.0.0", "2.0.0-rc.1") == []
    assert matching("2.0.0-rc.1", "2.0.0") == []


def test_matches_uses_the_parsed_form_when_given() -> None:
    # Snapshots hand in the already parsed semver; it is what counts.
    sel = VersionSelector("^1.4")
    assert sel.matches("whatever", semantic_version.Version("1.5.0"))
    assert not sel.matches("1.5.0", semantic_version.Version("2.0.0"))


# --------------------------------------------------------------------------- partial


@pytest.mark.parametrize("selector", ["1.4", "v1.4", "V1.4", "1.4.x", "1.4.X", "1.4.*"])
def test_partial_version_selects_the_versions_it_prefixes(selector: str) -> None:
    sel = VersionSelector(selector)
    assert sel.is_range
    assert matching(
        selector, "1.4.0", "v1.4.2", "1.4.17", "1.5.0", "1.3.9", "1.40.0", "2.4.0", "1.4", "v1.4", "1.4.3-rc.1"
    ) == [
        "1.4.0",
        "v1.4.2",
        "1.4.17",
        "1.4",  # a short label is its own prefix
        "v1.4",
        "1.4.3-rc.1",  # a partial selector is a prefix: prereleases of 1.4.x are 1.4 too
    ]


@pytest.mark.parametrize("selector", ["1", "v1", "1.x"])
def test_major_only_selects_the_whole_major(selector: str) -> None:
    assert matching(selector, "1.0.0", "1.9.9", "0.9.0", "2.0.0", "10.0.0", "11.0.0") == ["1.0.0", "1.9.9"]


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("selector", "yes", "no"),
    [
        ("^1.4", ["1.4.0", "1.4.9", "1.9.0", "v1.5.3"], ["1.3.9", "2.0.0", "2.0.0-rc.1", "0.1.4"]),
        ("^v1.4", ["1.4.0", "1.9.0"], ["1.3.9", "2.0.0"]),
        ("~1.4", ["1.4.0", "1.4.9"], ["1.5.0", "1.3.9", "2.4.0"]),
        ("~v1.4", ["1.4.2"], ["1.5.0"]),
        (">=1.2,<2", ["1.2.0", "1.9.9", "v1.5.0"], ["1.1.9", "2.0.0", "2.1.0", "0.9.0"]),
        (">=1.2, <2", ["1.2.0", "1.9.9"], ["1.1.9", "2.0.0"]),
        (">=v1.2,<v2", ["1.5.0"], ["2.0.0", "1.0.0"]),
        (">2.0.0", ["2.0.1", "3.0.0"], ["2.0.0", "1.9.9"]),
        ("*", ["0.0.1", "1.4.2", "99.0.0"], []),
        ("* ", ["0.0.1", "1.4.2"], []),
    ],
)
def test_range(selector: str, yes: list[str], no: list[str]) -> None:
    sel = VersionSelector(selector)
    assert sel.is_range
    assert [v for v in yes if not sel.matches(v)] == []
    assert [v for v in no if sel.matches(v)] == []


@pytest.mark.parametrize("selector", ["^1.4", "~1.4", ">=1.2,<2", "*", "1.4", "1"])
@pytest.mark.parametrize("raw", ["commit-abc123", "latest", "1.4-hotfix", "v1.4-beta", "my-service:v1.4.0", ""])
def test_non_semver_never_matches_a_range(selector: str, raw: str) -> None:
    assert not VersionSelector(selector).matches(raw)


def test_missing_version_never_matches() -> None:
    for selector in ("*", "^1.4", "1.4.2", "commit-abc123"):
        assert not VersionSelector(selector).matches(None)


# --------------------------------------------------------------------------- non-semver exact strings


@pytest.mark.parametrize(
    "selector",
    ["commit-abc123", "latest", "release-2024.06.01", "nginx-1.25", "sha-xyz", "linux-amd64", "build-42-x86"],
)
def test_non_semver_string_matches_exactly(selector: str) -> None:
    sel = VersionSelector(selector)
    assert not sel.is_range
    # An image tag or commit id: only the identical string, case and all.
    assert matching(selector, selector, selector.upper(), selector + "1", "v" + selector, "1.0.0") == [selector]


def test_non_semver_exact_does_not_match_semver_lookalikes() -> None:
    assert matching("1.4-hotfix", "1.4-hotfix", "1.4.0", "1.4.0-hotfix") == ["1.4-hotfix"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text", [">=banana", "^1.4.x.y", ">=1.2,<", "~~1", "1.2||2.0", "^"])
def test_invalid_range_raises_naming_the_text(text: str) -> None:
    with pytest.raises(InvalidVersion) as err:
        VersionSelector(text)
    assert repr(text) in str(err.value)
    assert isinstance(err.value, ValueError)  # callers catching ValueError still catch it


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_selector_raises(text: str) -> None:
    with pytest.raises(InvalidVersion, match="empty"):
        VersionSelector(text)


def test_selectors_compare_by_text() -> None:
    assert VersionSelector("^1.4") == VersionSelector(" ^1.4 ")
    assert VersionSelector("^1.4") != VersionSelector("~1.4")
    assert len({VersionSelector("1.4.2"), VersionSelector("1.4.2")}) == 1
    assert "^1.4" in repr(VersionSelector("^1.4"))
