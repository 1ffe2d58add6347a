"""The documentation that ships: links into ``docs/design.md`` resolve, and nothing cites a document that does not.

Anchors follow GitHub's heading slugs: the heading text lowercased, spaces
turned into ``-``, every other punctuation mark except ``-`` and ``_``
dropped; a repeated slug gets ``-1``, ``-2``, ... in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
LINKING_TREES = ("gating", "kernels", "benchmarks", "tests")
CITE_FREE_TREES = ("gating", "kernels", "benchmarks", "docs")
FORBIDDEN_CITATIONS = ("DESIGN §", "../shared")
LINK = re.compile(r"docs/design\.md#([\w\-]+)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")

REQUIRED_HEADINGS = [
    "# Design of the gating engine",
    "## Gate semantics",
    "### Partial-sum gate",
    "### Decisions layout",
    "### Folding for inference",
    "## Training recipe",
    "## Accounting",
    "## Static pruning",
    "## Saved models",
    "## Layers of the code",
    "## Kernels",
    "### Registered ops",
    "## Exception policy",
]


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (without the leading ``#``s)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """Headings of ``markdown`` as written (``"## Kernels"``), outside fenced code blocks."""
    found, in_fence = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := HEADING.match(line)):
            found.append(f"{match.group(1)} {match.group(2)}")
    return found


def anchors(markdown: str) -> set[str]:
    """Every anchor GitHub generates for ``markdown``'s headings, duplicates numbered."""
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(markdown):
        slug = github_slug(heading.lstrip("#"))
        count = seen.get(slug, 0)
        result.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return result


def _files(trees: tuple[str, ...], suffixes: tuple[str, ...] | None) -> Iterator[Path]:
    for tree in trees:
        for path in sorted((ROOT / tree).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and (suffixes is None or path.suffix in suffixes):
                yield path


def _linking_files() -> list[Path]:
    return [*_files(LINKING_TREES, (".py",)), ROOT / "README.md"]


def test_slug_rule() -> None:
    assert github_slug("Partial-sum gate") == "partial-sum-gate"
    assert github_slug("Design of the gating engine") == "design-of-the-gating-engine"
    assert github_slug("What `d` means: (N, G) & more!") == "what-d-means-n-g--more"
    assert github_slug("snake_case stays") == "snake_case-stays"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_design_has_the_headings_others_link_to() -> None:
    found = headings(DESIGN.read_text(encoding="utf-8"))
    assert [h for h in found if h in REQUIRED_HEADINGS] == REQUIRED_HEADINGS


def test_every_link_into_the_design_resolves() -> None:
    known = anchors(DESIGN.read_text(encoding="utf-8"))
    broken = []
    for path in _linking_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            broken += [f"{path.relative_to(ROOT)}:{number}: #{a}" for a in LINK.findall(line) if a not in known]
    assert not broken, "links to missing headings of docs/design.md:\n" + "\n".join(broken)


@pytest.mark.parametrize("citation", FORBIDDEN_CITATIONS)
def test_nothing_cites_a_document_that_does_not_ship(citation: str) -> None:
    offenders = []
    for path in [*_files(CITE_FREE_TREES, None), ROOT / "README.md"]:
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if citation in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, f"cites {citation!r} (cite docs/design.md instead):\n" + "\n".join(offenders)
