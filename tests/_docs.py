"""The pages the docs tests read (README.md, docs/*.md) and how they find code in them."""

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
"""A fenced block: its language, its text."""


def spans(text: str) -> Iterator[tuple[int, str]]:
    """(line, code) of each `inline code` span of a page."""
    for m in re.finditer(r"`([^`\n]+)`", text):
        yield text.count("\n", 0, m.start()) + 1, m[1]
