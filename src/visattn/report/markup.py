"""Small HTML pieces for the report: escaping, tables, sections and the "absent" note.

All text read from a run's files goes through ``esc``, which also breaks up anything that
reads like a web address (``http:``, ``https:``, ``//``), so the page never holds one, not
even as plain text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

NOT_RECORDED = "not recorded for this run"
_SCHEME = re.compile(r"(?i)\b(https?|ftp|wss?):")


class Absent(Exception):
    """Raised by a section builder whose files are not in the run folder; the message is shown."""


def esc(value: Any) -> str:
    """``value`` as HTML text: escaped, with addresses made inert.

    Example:
        >>> esc('<b> & "https://x.org//y"')
        '&lt;b&gt; &amp; &quot;https&#58;/&#47;x.org/&#47;y&quot;'
    """
    text = html.escape(str(value), quote=True)
    return _SCHEME.sub(r"\1&#58;", text).replace("//", "/&#47;")


def fmt(value: Any, kind: str = "") -> str:
    """A value for a table cell: percentages, fixed decimals, thousands, or plain text."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if kind == "%":
            return f"{value:.1%}"
        if kind == "int" or (isinstance(value, int) and not kind):
            return f"{int(value):,}"
        if kind.startswith("."):
            return f"{value:{kind}f}"
        return f"{value:.4g}"
    return esc(value)


def table(head: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "", caption: str = "") -> str:
    """An HTML table; ``head`` and ``rows`` are HTML already (escape text with ``esc``)."""
    parts = [f'<div class="scroll"><table class="{cls}">' if cls else '<div class="scroll"><table>']
    if caption:
        parts.append(f"<caption>{caption}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def key_values(items: Iterable[tuple[str, str]], *, columns: bool = False) -> str:
    """Names (escaped here) and values (HTML): a two-column table, or with ``columns`` a list
    that flows into as many columns as the page is wide."""
    if columns:
        pairs = "".join(f"<div><dt>{esc(k)}</dt><dd>{v}</dd></div>" for k, v in items)
        return f'<dl class="cols">{pairs}</dl>'
    rows = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{v}</td></tr>' for k, v in items)
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def figure(uri: str, alt: str, caption: str = "", *, cls: str = "") -> str:
    """An inlined image with its caption (``caption`` is HTML)."""
    attr = f' class="{cls}"' if cls else ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure{attr}><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


def note(text: str) -> str:
    """A grey line standing in for something the run folder does not hold."""
    return f'<p class="note">{esc(text)}</p>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'
