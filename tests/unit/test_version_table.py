"""Every cell of the README's "Version selectors" table, checked against the code, and the table
in the README checked against this one (so the documentation cannot drift from the behaviour).

✓ = the selector (row) matches an instance labelled with the column's version; · = it does not.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graylb.versioning import VersionSelector

LABELS = [
    "v2",
    "2",
    "2.1.0",
    "v2.1.0",
    "2.0.0-rc.1",
    "v1",
    "1.4.2",
    "v1.4",
    "my-service:v1.2.0",
    "commit-abc123",
    "2026.11.27-rc1",
]
EXPECTED = {
    "v2": "✓ ✓ ✓ ✓ ✓ · · · · · ·",
    "2": "✓ ✓ ✓ ✓ ✓ · · · · · ·",
    "v1.4": "· · · · · · ✓ ✓ · · ·",
    "2.1.0": "· · ✓ ✓ · · · · · · ·",
    "^2": "✓ ✓ ✓ ✓ · · · · · · ·",
    "~1.4": "· · · · · · ✓ ✓ · · ·",
    ">=1.2,<2": "· · · · · · ✓ ✓ · · ·",
    "*": "✓ ✓ ✓ ✓ ✓ ✓ ✓ ✓ · · ✓",
    "my-service:v1.2.0": "· · · · · · · · ✓ · ·",
    "commit-abc123": "· · · · · · · · · ✓ ·",
    "2026.11.27-rc1": "· · · · · · · · · · ✓",
}
CELLS = [
    (selector, label, mark == "✓")
    for selector, marks in EXPECTED.items()
    for label, mark in zip(LABELS, marks.split(), strict=True)
]


@pytest.mark.parametrize(("selector", "label", "matches"), CELLS, ids=[f"{s}~{lab}" for s, lab, _ in CELLS])
def test_every_cell(selector: str, label: str, matches: bool) -> None:
    assert VersionSelector(selector).matches(label) is matches


def test_the_readme_table_is_this_table() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Version selectors") :]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header, *rows = lines[: 1 + len(EXPECTED)]
    assert re.findall(r"`([^`]+)`", header) == LABELS
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0].strip("`")] = " ".join(cells[1:])
    assert table == EXPECTED
