"""Checks shared by the report tests: the page is one self-contained file."""

from __future__ import annotations

import re

DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]*")
SCHEMES = re.compile(r"\b(?:https?|ftp|wss?):", re.IGNORECASE)
ATTRIBUTES = r"""\b(?:src|href|srcset|poster|action|xlink:href)\s*=\s*["']?([^"'\s>]*)"""
REFERENCES = re.compile(ATTRIBUTES + r"""|url\(\s*["']?([^"')]*)""", re.IGNORECASE)
SECTIONS = ("summary", "config", "curves", "classes", "attention", "scorecard", "leaderboard", "files")


def assert_self_contained(page: str) -> None:
    """No address of anything outside the file, anywhere; no script, no external resource."""
    assert not SCHEMES.search(page), SCHEMES.search(page)
    for match in REFERENCES.finditer(page):
        ref = match.group(1) or match.group(2) or ""
        assert ref.startswith(("data:", "#")) or (ref and ":" not in ref and not ref.startswith("/")), ref
    rest = DATA_URI.sub("data:", page)  # base64 may hold "//"; nothing else may
    assert "//" not in rest, rest[max(0, rest.index("//") - 80) : rest.index("//") + 80]
    lowered = rest.lower()
    for tag in ("<script", "<link", "<iframe", "<object", "<embed", "@import", "javascript:"):
        assert tag not in lowered, tag
    assert not re.search(r"<[^>]+\son\w+\s*=", rest, re.IGNORECASE), "an event handler attribute"


def section_text(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]
