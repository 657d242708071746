"""Every relative link in the operator documents points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    links = [m.group(1) for m in LINK.finditer(text)]
    return [
        link.split("#", 1)[0]
        for link in links
        if not link.startswith(("http://", "https://", "mailto:", "#"))
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document: Path):
    broken = [
        link
        for link in relative_links(document.read_text())
        if not (document.parent / link).exists()
    ]
    assert broken == []


def test_the_link_pattern_finds_relative_links_only():
    text = "[a](docs/x.md#part) [b](https://example.com) [c](#anchor) [d](../y.md)"
    assert relative_links(text) == ["docs/x.md", "../y.md"]
