"""Links into docs/ resolve, from code, configs and the docs themselves, and nothing cites
a document that is not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    [*ROOT.glob("vqtok/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/*.py"),
     *ROOT.glob("experiments/**/*.yaml"), *ROOT.glob("docs/*.md"), ROOT / "README.md",
     ROOT / "Makefile", ROOT / "pyproject.toml"])
LINK = re.compile(r"docs/([\w-]+\.md)((?:#[\w-]+)?)")
RELATIVE = re.compile(r"\]\(([\w-]+\.md)((?:#[\w-]+)?)\)")


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to hyphens) and
    explicit ``<a id="...">`` anchors."""
    text = doc.read_text()
    found = set(re.findall(r'<a id="([\w-]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def test_the_anchor_rule_on_known_headings() -> None:
    doc = ROOT / "docs" / "algorithms.md"
    assert {"rope-tie-v2", "1-d-and-nope", "mha-gqa-and-mqa", "vq-vae-losses"} <= anchors(doc)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_into_docs_resolve(source: Path) -> None:
    text = source.read_text()
    links = LINK.findall(text)
    if source.parent.name == "docs":
        links += RELATIVE.findall(text)
    for name, anchor in links:
        doc = ROOT / "docs" / name
        assert doc.is_file(), f"{source.name} links to missing docs/{name}"
        if anchor:
            assert anchor[1:] in anchors(doc), f"{source.name}: no {anchor} in docs/{name}"


def test_nothing_cites_documents_outside_the_repository() -> None:
    for source in SOURCES:
        if source == Path(__file__).resolve():
            continue
        text = source.read_text()
        for outside in ("DESIGN.md", "STYLE.md"):
            assert outside not in text, f"{source.relative_to(ROOT)} cites {outside}"
