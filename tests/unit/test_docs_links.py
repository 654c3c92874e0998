"""Every relative link in the operator docs resolves to a file (and heading) inside the repository.

The docs once pointed at a design file outside the repository, so a reader of a release had dead links. This test
reads README.md, docs/*.md and systemd/README.md as GitHub renders them: links and images outside code, anchors
as GitHub slugs its headings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ID = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files(root: Path = ROOT) -> list[Path]:
    files = [root / "README.md", root / "systemd" / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [f for f in files if f.exists()]


def _prose_lines(text: str, *, blank_code: bool = True) -> Iterable[tuple[int, str]]:
    """(line number, line) outside fenced code; inline code spans blanked out unless `blank_code` is False."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, _CODE_SPAN.sub("", line) if blank_code else line


def links(text: str) -> list[tuple[int, str]]:
    out = []
    for n, line in _prose_lines(text):
        out += [(n, m.group(1)) for m in _INLINE_LINK.finditer(line)]
        ref = _REF_DEF.match(line)
        if ref:
            out.append((n, ref.group(1)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(text, blank_code=False):  # code in a heading is part of its anchor
        m = _HEADING.match(line)
        if m:
            base = slug(m.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    found.update(_HTML_ID.findall(text))
    return found


def check(root: Path, files: Iterable[Path]) -> list[str]:
    """Every problem as `file:line: link: why`."""
    problems = []
    for doc in files:
        rel_doc = doc.relative_to(root).as_posix()
        text = doc.read_text()
        for n, target in links(text):
            where = f"{rel_doc}:{n}: {target}"
            if not target or _SCHEME.match(target) or target.startswith("//"):
                continue  # web links (and mailto:) are not ours to check here
            path_part, _, anchor = target.partition("#")
            if path_part.startswith("/"):
                problems.append(f"{where}: absolute path; use a path relative to {rel_doc}")
                continue
            dest = (doc.parent / unquote(path_part)).resolve() if path_part else doc.resolve()
            try:
                rel = dest.relative_to(root.resolve()).as_posix()
            except ValueError:
                problems.append(f"{where}: leaves the repository")
                continue
            if not dest.exists():
                problems.append(f"{where}: {rel} does not exist")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                problems.append(f"{where}: {rel} has no heading with anchor #{anchor}")
    return problems


def test_every_relative_link_resolves_inside_the_repository() -> None:
    files = doc_files()
    assert len(files) >= 7, [f.name for f in files]  # README, systemd/README and the docs pages
    assert check(ROOT, files) == []


def test_nothing_points_outside_the_repository() -> None:
    for doc in doc_files():
        assert "../shared" not in doc.read_text(), f"{doc} still refers to ../shared"


def test_index_lists_every_docs_page() -> None:
    index = ROOT / "docs" / "index.md"
    listed = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(index.read_text())}
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if p != index and p.resolve() not in listed]
    assert missing == []


def test_readme_links_are_found_and_point_at_the_docs() -> None:
    """Guards the link parser itself: if it found nothing, the resolution test above would pass vacuously."""
    targets = {t for _, t in links((ROOT / "README.md").read_text())}
    assert {"docs/index.md", "docs/onboarding.md", "docs/architecture.md", "systemd/README.md"} <= targets


def test_checker_reports_each_kind_of_broken_link(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ok.md").write_text("# Title\n\n## Step 3. Do **it** `now`\n\n## Step 3. Do it now\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[fine](docs/ok.md#step-3-do-it-now) [dup](docs/ok.md#step-3-do-it-now-1) [self](#readme)\n"
        "# README\n"
        "[gone](docs/missing.md) [escape](../outside.md) [anchor](docs/ok.md#nope) [abs](/docs/ok.md)\n"
        "![img](docs/nothing.png) [web](https://example.com/x.md)\n"
        "`[in code](docs/nowhere.md)`\n"
        "```\n[fenced](docs/nowhere.md)\n```\n"
        "[ref]: docs/also-missing.md\n"
    )
    problems = check(tmp_path, [page])
    assert problems == [
        "README.md:3: docs/missing.md: docs/missing.md does not exist",
        "README.md:3: ../outside.md: leaves the repository",
        "README.md:3: docs/ok.md#nope: docs/ok.md has no heading with anchor #nope",
        "README.md:3: /docs/ok.md: absolute path; use a path relative to README.md",
        "README.md:4: docs/nothing.png: docs/nothing.png does not exist",
        "README.md:9: docs/also-missing.md: docs/also-missing.md does not exist",
    ]
