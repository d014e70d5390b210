#!/usr/bin/env python3
"""Every relative link in the project's Markdown files (README.md, docs/, tests/, ...) resolves.

A link to a file must name one in the tree; a link with a `#fragment` into a Markdown file must name one of
its headings (GitHub's anchors: lower case, punctuation dropped, spaces to `-`, `-1`, `-2` for repeats). Links
with a scheme (https:, mailto:) are not fetched. Standard library only; exits 1 listing every broken link.

    python3 tests/docs/check_links.py [FILE.md ...]
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Not the project's own text: installed packages, build output, caches.
SKIP_DIRS = {".git", ".venv", "node_modules", "target", "build", "dist", "__pycache__"}

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()  # a link in a heading keeps its text
    kept = (c for c in text if c in " -" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc")
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path, cache: dict[Path, set[str]]) -> list[str]:
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if ROOT not in dest.parents and dest != ROOT:
                problems.append(f"{where}: leaves the repository")
            elif not dest.exists():
                problems.append(f"{where}: no such file")
            elif fragment and dest.suffix == ".md":
                if dest not in cache:
                    cache[dest] = anchors(dest)
                if fragment not in cache[dest]:
                    problems.append(f"{where}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    return problems


def markdown_files() -> list[Path]:
    found = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        found += [Path(folder) / n for n in names if n.endswith(".md")]
    return sorted(found)


def main(argv: list[str]) -> int:
    files = [Path(a).resolve() for a in argv] or markdown_files()
    cache: dict[Path, set[str]] = {}
    problems = [p for f in files for p in broken_links(f, cache)]
    for p in problems:
        print(p)
    print(f"links: {len(files)} files, {len(problems)} broken")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
