"""The report page: sections in order, the style sheet, and the page around them.

Plain HTML and inline CSS only: no script, no font, no stylesheet or image from anywhere but
the page itself (a content security policy says so too), so the file opens the same offline,
with JavaScript off, and years later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .files import optional, read_json, read_yaml
from .markup import NOT_RECORDED, Absent, esc, note, section
from .more_sections import files_section, leaderboard_section, scorecard_section
from .run_sections import attention_section, classes_section, config_section, curves_section, summary_section

log = logging.getLogger(__name__)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;
background:#f6f7f9}
header,main,footer{max-width:1180px;margin:0 auto;padding:0 20px}
header{padding-top:18px}h1{font-size:1.5em;margin:.3em 0}h2{margin:0 0 .5em;font-size:1.2em}
h3{font-size:1em;margin:1.2em 0 .4em}
nav{margin:.4em 0 1em}nav a{margin-right:1em;color:#1f5f9e}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:14px 18px;margin:0 0 16px}
.facts{color:#4a5563;margin:.2em 0}.note{color:#6b7480;font-style:italic}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.3em 0;font-size:.92em}
th,td{border-bottom:1px solid #e3e6ea;padding:3px 9px;text-align:left;vertical-align:top}
thead th{background:#eef1f4;position:sticky;top:0}caption{text-align:left;color:#4a5563;padding:2px 0 6px}
table.num td{text-align:right;font-variant-numeric:tabular-nums}table.num td:first-child{text-align:left}
table.kv th{font-weight:600;white-space:nowrap;color:#38414b}
dl.cols{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:0 22px;margin:.3em 0}
dl.cols div{display:flex;justify-content:space-between;gap:1em;border-bottom:1px solid #e3e6ea;padding:3px 0}
dl.cols dt{font-weight:600;color:#38414b}dl.cols dd{margin:0;text-align:right;overflow-wrap:anywhere}
table.confusion td{padding:0;min-width:2.6em}
table.confusion td:first-child,table.confusion td:nth-last-child(-n+2){padding:3px 9px}
.cell{display:block;padding:3px 6px;background:rgba(31,95,158,var(--r))}
.cell.diag{outline:1px solid #1f5f9e;outline-offset:-1px;font-weight:600}
figure{margin:.5em 0}figure.wide img{max-width:100%;height:auto}figcaption{color:#4a5563;font-size:.88em}
.charts{display:flex;flex-wrap:wrap;gap:10px}.chart{background:#fff;border:1px solid #e3e6ea}
.chart .t{font-weight:600;font-size:12px}.chart .g{stroke:#e6e9ed}.chart .a{stroke:#8c959f}
.chart text{font-size:10px;fill:#38414b}.chart .yl{text-anchor:end}.chart .xl{text-anchor:middle}
.chart.empty{width:380px;height:230px;display:flex;align-items:center;justify-content:center;color:#6b7480}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{margin:0;width:132px;font-size:.85em}
.grid img{border:4px solid;display:block;image-rendering:pixelated}.hit img{border-color:#2c9a45}
.miss img{border-color:#d2452e}.miss b{color:#b3261e}.hit b{color:#1e7a35}
details{margin:.6em 0}summary{cursor:pointer;color:#1f5f9e}pre{white-space:pre-wrap}
footer{color:#6b7480;font-size:.85em;padding-bottom:24px}
"""


def build_page(run_dir: Path, *, test: Any = None) -> str:
    """The whole report of ``run_dir`` as one HTML string (``test``: see ``write_report``)."""
    started = time.perf_counter()
    config = optional(read_yaml, run_dir / "config.yaml")
    summary = optional(read_json, run_dir / "summary.json")
    comparison = any((run_dir / n).is_file() for n in ("leaderboard.json", "leaderboard.csv"))
    plan: list[tuple[str, str, Callable[[], str]]] = [
        ("summary", "Summary", lambda: summary_section(run_dir, summary)),
        ("config", "Configuration", lambda: config_section(run_dir)),
        ("curves", "Learning curves", lambda: curves_section(run_dir)),
        ("classes", "Per-class accuracy and confusion matrix", lambda: classes_section(run_dir, summary)),
        (
            "attention",
            "Attention maps and the pointing game",
            lambda: attention_section(run_dir, config, summary, test),
        ),
        ("scorecard", "Explanation scorecard", lambda: scorecard_section(run_dir)),
        ("leaderboard", "Leaderboard", lambda: leaderboard_section(run_dir)),
        ("files", "Files of the folder", lambda: files_section(run_dir)),
    ]
    if comparison:  # a comparison folder leads with its leaderboard
        plan.insert(0, plan.pop(6))
    sections = [section(anchor, title, _body(anchor, build)) for anchor, title, build in plan]
    nav = "".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title, _ in plan)
    title = f"visattn {'comparison' if comparison else 'run'} report: {run_dir.resolve().name}"
    facts = _facts(summary)
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    seconds = time.perf_counter() - started
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{facts}<nav>{nav}</nav></header><main>"
        + "".join(sections)
        + f"</main><footer>Written by visattn on {esc(stamp)} in {seconds:.2f} s from the files of the "
        f"folder; rebuild it with <code>visattn report {esc(run_dir.name)}</code>.</footer></body></html>\n"
    )


def _body(anchor: str, build: Callable[[], str]) -> str:
    """A section's HTML, or a note saying why it cannot be shown; never an exception."""
    try:
        return build()
    except Absent as why:
        return note(str(why) or NOT_RECORDED)
    except Exception as err:  # a damaged file spoils its section only
        log.debug("report section %s failed", anchor, exc_info=True)
        return note(f"could not be shown: {type(err).__name__}: {err}")


def _facts(summary: object) -> str:
    if not isinstance(summary, dict):
        return ""
    bits = [f"{summary[k]}" for k in ("model", "dataset") if summary.get(k)]
    if summary.get("attention"):
        bits.insert(1, f"attention {summary['attention']}")
    if isinstance(summary.get("test_accuracy"), int | float):
        bits.append(f"test accuracy {summary['test_accuracy']:.2%}")
    if isinstance(summary.get("pointing_game"), int | float):
        bits.append(f"pointing game {summary['pointing_game']:.1%}")
    if isinstance(summary.get("wall_seconds"), int | float):
        bits.append(f"{summary['wall_seconds']:.0f} s of training")
    return f'<p class="facts">{esc(" · ".join(bits))}</p>' if bits else ""
