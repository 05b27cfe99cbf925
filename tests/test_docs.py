"""README.md and docs/*.md: every relative link resolves, and the README stays a front page.

Checks markdown links and image links (``[text](path)``, ``![alt](path)``, with an optional
``#anchor``): the path must name an existing file or folder, relative to the page that
links it, and an anchor into a markdown page must name one of its headings (GitHub's
slugs). Links with a scheme (``https:``, ``mailto:``) are not followed. Fast: no JAX.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 300

# [text](target) and ![alt](target), target up to the first space or ")"; an optional
# "title" after a space is allowed. Nested brackets in the text (a link inside an image
# link) are covered by matching the innermost "](".
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("**/*.md"))]


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (code is not rendered as links)."""
    lines, fence = [], ""
    for line in text.splitlines():
        match = _FENCE.match(line)
        if match:
            marker = match.group(2)
            if not fence:
                fence = marker[0] * 3
            elif marker.startswith(fence):
                fence = ""
            continue
        if not fence:
            lines.append(line)
    return lines


def _strip_inline_code(line: str) -> str:
    return re.sub(r"(`+)(?:(?!\1).)+\1", "", line)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "").replace("~", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and "_"
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    targets = []
    for line in _prose_lines(text):
        line = _strip_inline_code(line)
        targets += _LINK.findall(line) + _HTML_SRC.findall(line)
    targets += _REFERENCE_DEF.findall("\n".join(_prose_lines(text)))
    return targets


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def _broken(page: Path, root: Path = ROOT) -> list[str]:
    """One line per link of ``page`` that does not resolve (paths shown relative to ``root``)."""
    problems = []
    for target in _links(page):
        if _is_external(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        rel = page.relative_to(root)
        if not dest.exists():
            problems.append(f"{rel}: {target}: no file {path_part}")
            continue
        if anchor and dest.suffix == ".md" and dest.is_file() and unquote(anchor).lower() not in _anchors(dest):
            problems.append(f"{rel}: {target}: no heading #{anchor} in {dest.relative_to(root)}")
    return problems


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    problems = _broken(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README) if not _is_external(t)}
    unlinked = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages missing from the README's map: {unlinked}"


def test_the_checker_sees_broken_links(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# Some `code` heading: yes!\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#some-code-heading-yes) [dup](b.md#twice-1) ![img](missing.png)\n"
        "[bad anchor](b.md#nope) [web](https://example.com/x) `[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    assert _broken(page, root=tmp_path) == [
        "a.md: missing.png: no file missing.png",
        "a.md: b.md#nope: no heading #nope in b.md",
    ]
