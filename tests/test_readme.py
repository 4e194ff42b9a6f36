"""The front page stays a front page: at most 300 lines, and every relative link in it (and in the docs pages it
links) resolves to a file or folder of the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 300
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(markdown: str) -> list[str]:
    """Link targets that point into the repository (no scheme, no pure #anchor), without their #anchor."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)  # links in code blocks are not links
    return [t.split("#", 1)[0] for t in LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def broken_links(page: Path) -> list[str]:
    return [t for t in relative_links(page.read_text(encoding="utf-8")) if not (page.parent / t).exists()]


def test_the_readme_is_at_most_300_lines():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; move measurements and long how-tos to docs/"


@pytest.mark.parametrize("page", ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
def test_every_relative_link_resolves(page):
    assert not broken_links(ROOT / page), f"{page}: broken links {broken_links(ROOT / page)}"


def test_the_link_checker_sees_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("x")
    page = tmp_path / "p.md"
    page.write_text("[ok](there.md) [anchor](there.md#a) [web](https://x.org/y) [top](#top) [bad](missing.md)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["missing.md"]
