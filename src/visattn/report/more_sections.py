"""The report's sections beyond the training run itself: the explanation scorecard, the
leaderboard of a comparison folder with its member runs, and the folder's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import RUN_FILES, number, read_csv, read_json
from .images import file_uri
from .markup import Absent, esc, figure, fmt, key_values, note, table

SCORES = (  # column, heading, format, what it means
    ("pointing", "pointing", "%", "share of peaks inside the object's box (higher is better)"),
    ("deletion_auc", "deletion", ".3", "area under the deletion curve (lower is better)"),
    ("insertion_auc", "insertion", ".3", "area under the insertion curve (higher is better)"),
    ("road", "ROAD", ".3", "ROAD score"),
    ("sanity_rank_corr", "r all", ".2", "rank correlation with the map of a re-initialised model"),
    ("head_rank_corr", "r head", ".2", "rank correlation with the map after re-initialising the head"),
    ("seconds", "seconds", ".1", "time to compute and score the maps"),
)
FLAGS = (("fails_randomisation", "fails randomisation"), ("class_agnostic", "class agnostic"))


def scorecard_section(run_dir: Path) -> str:
    card = read_json(run_dir / "scorecard.json")
    methods = card.get("methods", []) if isinstance(card, dict) else []
    if not methods:
        raise Absent("not recorded for this run (scorecard.json lists no method)")
    parts = []
    protocol = card.get("protocol")
    if isinstance(protocol, dict):
        parts.append("<details><summary>protocol</summary>"
                     + key_values((k, esc(v)) for k, v in protocol.items()) + "</details>")  # fmt: skip
    shown = [s for s in SCORES if any(m.get(s[0]) is not None for m in methods)]
    head = ["method", *[f'<span title="{esc(why)}">{esc(h)}</span>' for _, h, _, why in shown], "flags"]
    rows = []
    for m in methods:
        flags = ", ".join(label for key, label in FLAGS if m.get(key))
        rows.append([f"<b>{esc(m.get('method', '?'))}</b>", *[fmt(m.get(k), f) for k, _, f, _ in shown],
                     esc(flags) if flags else ""])  # fmt: skip
    parts.append(table(head, rows, cls="num"))
    parts.append(_margins(methods))
    for name, alt, what in (
        ("scorecard_curves.png", "deletion and insertion curves", "deletion and insertion curves"),
        ("scorecard_maps.png", "maps of each method", "the maps of each method on test images"),
    ):
        if (run_dir / name).is_file():
            parts.append(figure(file_uri(run_dir / name)[0], alt, esc(f"{name}: {what}"), cls="wide"))
        else:
            parts.append(note(f"{name}: not recorded for this run"))
    return "".join(parts)


def _margins(methods: list[dict[str, Any]]) -> str:
    """Each method's margin over each baseline: mean and 95 % interval."""
    baselines = list(dict.fromkeys(b for m in methods for b in (m.get("margins") or {})))
    scores = [s for s in SCORES if any(s[0] in (m.get("margins") or {}).get(b, {}) for m in methods
                                       for b in baselines)]  # fmt: skip
    if not baselines or not scores:
        return ""
    head = ["method", *[f"{esc(h)} vs {esc(b)}" for b in baselines for _, h, _, _ in scores]]
    rows = []
    for m in methods:
        cells = []
        for b in baselines:
            for key, _, f, _ in scores:
                d = (m.get("margins") or {}).get(b, {}).get(key)
                if not d or d.get("mean") is None:
                    cells.append("")
                    continue
                pct = f == "%"
                mean = f"{d['mean'] * (100 if pct else 1):+.{1 if pct else 3}f}"
                bounds = "" if d.get("low") is None else (
                    f" <small>[{d['low'] * (100 if pct else 1):+.{1 if pct else 3}f}, "
                    f"{d['high'] * (100 if pct else 1):+.{1 if pct else 3}f}]</small>"
                )  # fmt: skip
                cells.append(mean + bounds)
        rows.append([f"<b>{esc(m.get('method', '?'))}</b>", *cells])
    caption = "margins over the baselines: mean [95 % interval]; pointing in percentage points"
    return table(head, rows, cls="num", caption=caption)


def leaderboard_section(run_dir: Path) -> str:
    rows, scalars, details = _leaderboard_rows(run_dir)
    parts = []
    if scalars:
        parts.append(key_values((k, esc(v)) for k, v in scalars.items()))
    for name, value in details.items():  # the protocol and the like
        parts.append(f"<details><summary>{esc(name)}</summary>"
                     + key_values((k, esc(v)) for k, v in _flat(value).items()) + "</details>")  # fmt: skip
    if rows:
        flat = [_flat(r) for r in rows]
        columns = list(dict.fromkeys(k for r in flat for k in r))
        body = [[_cell(r.get(c)) for c in columns] for r in flat]
        parts.append(table([esc(c.replace("_", " ")) for c in columns], body, cls="num"))
    if (run_dir / "leaderboard.png").is_file():
        uri = file_uri(run_dir / "leaderboard.png")[0]
        parts.append(figure(uri, "leaderboard", "leaderboard.png", cls="wide"))
    else:
        parts.append(note("leaderboard.png: not recorded for this comparison"))
    members = member_runs(run_dir, rows)
    if members:
        links = []
        for member in members:
            rel = member.relative_to(run_dir).as_posix()
            target = f"{rel}/report.html" if (member / "report.html").is_file() else f"{rel}/"
            links.append(f'<li><a href="{esc(target)}">{esc(rel)}</a></li>')
        parts.append(f"<h3>member runs ({len(members)})</h3><ul>" + "".join(links) + "</ul>")
    return "".join(parts)


def _leaderboard_rows(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The leaderboard's rows, its plain top-level values and its mappings (the protocol), from
    the JSON file (``{"protocol": ..., "rows": [...]}`` or a bare list of rows), else the CSV."""
    if not any((run_dir / n).is_file() for n in ("leaderboard.json", "leaderboard.csv")):
        raise Absent("not a comparison folder (no leaderboard.json or leaderboard.csv)")
    if (run_dir / "leaderboard.json").is_file():
        data = read_json(run_dir / "leaderboard.json")
        if isinstance(data, list):
            return [r for r in data if isinstance(r, dict)], {}, {}
        if isinstance(data, dict):
            lists = [v for v in data.values()
                     if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]  # fmt: skip
            scalars = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
            details = {k: v for k, v in data.items() if isinstance(v, dict)}
            return (lists[0] if lists else []), scalars, details
        raise ValueError("leaderboard.json holds neither a list of rows nor a mapping")
    return read_csv(run_dir / "leaderboard.csv"), {}, {}


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row with nested mappings spread into ``outer_inner`` keys and lists joined."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for inner, v in _flat(value).items():
                out[f"{key}_{inner}"] = v
        elif isinstance(value, list):
            out[key] = ", ".join(map(str, value))
        else:
            out[key] = value
    return out


def _cell(value: Any) -> str:
    n = number(value) if isinstance(value, str) else None
    return fmt(n if n is not None and not str(value).strip().isdigit() else value)


def member_runs(folder: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """Run folders inside a comparison folder, down to three levels (``members/<name>/<run>/``
    as ``visattn compare`` lays them out), and any folder inside it that a leaderboard row
    names (``run_dir``, ``run``, ``folder``)."""
    found = {
        p.parent for depth in ("*", "*/*", "*/*/*") for f in RUN_FILES for p in folder.glob(f"{depth}/{f}")
    }
    root = folder.resolve()
    for row in rows:
        for key in ("run_dir", "run", "folder"):
            value = row.get(key)
            if isinstance(value, str) and value:
                path = (folder / value).resolve()
                if path.is_dir() and path != root and path.is_relative_to(root):
                    found.add(folder / path.relative_to(root))
    return sorted(p for p in found if p.is_dir() and p.resolve() != root)


def files_section(run_dir: Path) -> str:
    files = sorted(p for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise Absent("the folder holds no files")
    return table(["file", "bytes"], [[esc(p.name), f"{p.stat().st_size:,}"] for p in files], cls="num")
