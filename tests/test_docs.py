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


DESIGN = ROOT / "docs" / "design.md"
SOURCES = [p for d in ("matryoshka", "tests", "benchmarks", "scripts")
           for p in sorted((ROOT / d).rglob("*.py")) if p != Path(__file__).resolve()]
# docs/design.md, "A heading" [and "Another"]: the quoted names after a citation, across the
# line breaks and indentation of a docstring
CITATION = re.compile(r'docs/design\.md,?\s*((?:"[^"\n]+"(?:,|\s+and|\s+or)?\s*)+)')


def design_headings(doc: Path = DESIGN) -> set[str]:
    """Each heading of the design, as written and without a trailing parenthesis."""
    names = set()
    for h in re.findall(r"^#+ (.+)$", doc.read_text(encoding="utf-8"), flags=re.M):
        names |= {h.strip(), re.sub(r"\s*\([^)]*\)$", "", h.strip())}
    return names


def citations(text: str) -> list[str]:
    return [name for group in CITATION.findall(text) for name in re.findall(r'"([^"]+)"', group)]


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_code_cites_the_design_in_the_repository_by_headings_that_exist(src):
    text = src.read_text(encoding="utf-8")
    assert "DESIGN.md" not in text, f"{src.name}: cites DESIGN.md, which users do not have"
    missing = set(citations(text)) - design_headings()
    assert not missing, f"{src.name}: docs/design.md has no heading {sorted(missing)}"


def test_the_citation_check_catches_a_heading_that_does_not_exist(tmp_path):
    (tmp_path / "d.md").write_text("# D\n\n## The model\n\n## The cascade as one graph (`x`)\n")
    text = 'docs/design.md, "The model" and\n    "The cascade as one graph". And DESIGN.md.'
    assert citations(text) == ["The model", "The cascade as one graph"]
    assert set(citations(text)) <= design_headings(tmp_path / "d.md")
    assert citations('docs/design.md, "Who uses it and how"') == ["Who uses it and how"]
    assert "Who uses it and how" not in design_headings(tmp_path / "d.md")


def limit_titles(text: str) -> set[str]:
    """The bold titles that open a page's bullets, without their closing punctuation."""
    return {t.strip().rstrip(".:") for t in re.findall(r"^- \*\*(.+?)\*\*", text, flags=re.M)}


def test_every_limit_the_readme_names_is_in_the_full_list():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Known limits", 1)[1].split("\n## ", 1)[0]
    titles = limit_titles(section)
    assert len(titles) >= 3
    missing = titles - limit_titles((ROOT / "docs" / "known-limits.md").read_text("utf-8"))
    assert not missing, f"README limits missing from docs/known-limits.md: {sorted(missing)}"


def test_the_limit_check_tells_titles_apart():
    assert limit_titles("- **One shared threshold.** more\n- **CUDA has not run**\n") == {
        "One shared threshold", "CUDA has not run"}


@pytest.mark.parametrize("doc", DOCS[1:], ids=lambda p: p.name)
def test_a_pages_date_banner_ends_at_its_newest_section(doc):
    text = doc.read_text(encoding="utf-8")
    banner = re.search(r"between (\d{4}-\d\d-\d\d) and (\d{4}-\d\d-\d\d)", text)
    dates = re.findall(r"as of (\d{4}-\d\d-\d\d)", text)
    if banner and dates:
        assert banner.group(2) == max(dates), f"{doc.name}: banner ends {banner.group(2)}, " \
            f"its newest section is of {max(dates)}"
