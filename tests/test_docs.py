"""The README and docs/ link only to files in the repository (a user's clone has no
../shared), and every anchor, in the page or in another, names a heading that exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|\!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [a or b for a, b in LINK.findall(text)]


def headings_of(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_stays_in_the_repository_and_exists(doc):
    headings = headings_of(doc)
    checked = 0
    for target in links(doc):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            assert anchor in headings, f"{doc.name}: no heading for #{anchor}"
            continue
        resolved = (doc.parent / path).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
        if anchor:
            assert resolved.suffix == ".md", f"{doc.name}: {target}: an anchor in a non-page"
            assert anchor in headings_of(resolved), f"{doc.name}: no heading for {target}"
        checked += 1
    assert checked or doc.name != "README.md"


def test_the_check_catches_a_link_outside(tmp_path):
    assert links(Path(__file__).parent.parent / "README.md")
    doc = tmp_path / "x.md"
    doc.write_text("see [the design](../shared/DESIGN.md) and ![pic](docs/a.png)\n")
    assert links(doc) == ["../shared/DESIGN.md", "docs/a.png"]


def test_the_check_catches_an_anchor_into_another_page(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\n## Real heading\n")
    assert "real-heading" in headings_of(tmp_path / "a.md")
    assert "gone" not in headings_of(tmp_path / "a.md")
