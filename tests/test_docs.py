"""The docs stay true: option pages match the code, every relative link resolves, the README stays a front door."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT
from hfssl.option_docs import COMMAND, render_option_pages

OPTION_PAGES = ROOT / "docs" / "options"
MARKDOWN = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
README_MAX_LINES = 280


def test_option_pages_match_the_code():
    pages = render_option_pages()
    on_disk = {p.name: p.read_text() for p in OPTION_PAGES.glob("*.md")}
    stale = sorted(name for name in pages.keys() | on_disk.keys() if pages.get(name) != on_disk.get(name))
    assert not stale, f"docs/options/ is out of date ({', '.join(stale)}): regenerate it with `{COMMAND}`"


@pytest.mark.parametrize("name", sorted(n.removesuffix(".md") for n in render_option_pages() if n != "README.md"))
def test_option_page_is_what_the_cli_prints(name, capsys):
    from hfssl.cli import main

    main(["options", name])
    printed = capsys.readouterr().out.strip()
    assert printed and printed in render_option_pages()[f"{name}.md"]


def _relative_links(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold commands, not links
    for target in LINK.findall(text):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#"):
            yield target.split("#", 1)[0]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    broken = [t for t in _relative_links(path) if not (path.parent / t).exists()]
    assert not broken, f"{path.relative_to(ROOT)} links to files that do not exist: {broken}"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move depth into docs/ (at most {README_MAX_LINES})"
