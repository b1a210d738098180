"""The report's sections about one training run: summary, configuration, learning curves,
classes and the confusion matrix, attention maps with pointing hits and misses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import number, read_csv, read_json, read_yaml
from .images import file_uri
from .markup import Absent, esc, figure, fmt, key_values, note, table
from .pointing import pointing_grid
from .svg import line_chart

# summary.json keys shown first, with their format; other plain values follow as they are
SUMMARY = {
    "task": "", "model": "", "attention": "", "dataset": "", "parameters": "int", "epochs": "int",
    "steps": "int", "test_accuracy": "%", "test_top5": "%", "test_loss": ".4", "pointing_game": "%",
    "best_epoch": "int", "best_test_accuracy": "%", "train_images_per_s": ".0", "wall_seconds": ".1",
    "device": "", "processes": "int", "skipped_steps": "int", "bad_files": "int",
}  # fmt: skip
HIDDEN = {"rank", "run_dir", "per_class_accuracy", "confusion", "bad_file_list", "attention_figure"}


def summary_section(run_dir: Path, summary: Any) -> str:
    if summary is None:
        read_json(run_dir / "summary.json")  # raises Absent, or the reason it does not parse
    if not isinstance(summary, dict):
        raise ValueError("summary.json does not hold a mapping")
    keys = [k for k in SUMMARY if k in summary]
    keys += [k for k, v in summary.items()
             if k not in SUMMARY and k not in HIDDEN and not isinstance(v, dict | list)]  # fmt: skip
    items = [(k.replace("_", " "), fmt(summary[k], SUMMARY.get(k, ""))) for k in keys]
    if summary.get("bad_file_list"):
        listed = "<br>".join(f"{esc(p)}: {esc(why)}" for p, why in summary["bad_file_list"].items())
        items.append(("unusable files", listed))
    return key_values(items, columns=True)


def config_section(run_dir: Path) -> str:
    config = read_yaml(run_dir / "config.yaml")
    if not isinstance(config, dict):
        return f"<pre>{esc((run_dir / 'config.yaml').read_text(encoding='utf-8'))}</pre>"
    return key_values(((k, "–" if v is None else esc(v)) for k, v in config.items()), columns=True)


CHARTS = (  # title, metrics.csv columns, percent
    ("loss", ("train_loss", "test_loss"), False),
    ("accuracy", ("train_accuracy", "test_accuracy", "test_top5"), True),
    ("pointing game", ("pointing_game",), True),
    ("mAP", ("test_map", "test_map_50", "test_map_75"), True),
    ("learning rate (end of epoch)", ("lr",), False),
)
TASK_CHARTS = {"mAP"}  # a detection run's: other runs show no empty box for it
NOT_CHARTED = {"epoch", "step", "skipped_steps"}


def curves_section(run_dir: Path) -> str:
    rows = read_csv(run_dir / "metrics.csv")
    if not rows:
        raise Absent("not recorded for this run (metrics.csv has no finished epoch)")
    epochs = [number(r.get("epoch")) for r in rows]

    def points(column: str) -> list[tuple[float, float]]:
        return [(e, v) for e, r in zip(epochs, rows, strict=True)
                if e is not None and (v := number(r.get(column))) is not None]  # fmt: skip

    charts, charted = [], set(NOT_CHARTED)
    for title, columns, percent in CHARTS:
        series = {c.replace("_", " "): points(c) for c in columns if c in rows[0]}
        charted.update(columns)
        if title in TASK_CHARTS and not series:
            continue
        svg = line_chart(title, series, percent=percent)
        charts.append(svg or f'<div class="chart empty">{esc(title)}: not recorded for this run</div>')
    for column in rows[0]:  # a task's own metrics (a detector's losses, mAP)
        if column not in charted and (svg := line_chart(column.replace("_", " "), {column: points(column)})):
            charts.append(svg)
    timing = {r.get("epoch"): r for r in _optional_rows(run_dir / "timing.csv")}
    extra = [c for c in ("epoch_seconds", "train_images_per_s", "eval_seconds") if timing]
    head = [esc(c.replace("_", " ")) for c in [*rows[0], *extra]]
    body = [[esc(r[c]) for c in rows[0]] + [esc(timing.get(r.get("epoch"), {}).get(c, "")) for c in extra]
            for r in rows]  # fmt: skip
    return (
        '<div class="charts">' + "".join(charts) + "</div>"
        + "<details><summary>every epoch's row (metrics.csv"
        + (", timing.csv" if timing else "") + ")</summary>" + table(head, body, cls="num") + "</details>"
    )  # fmt: skip


def _optional_rows(path: Path) -> list[dict[str, str]]:
    try:
        return read_csv(path)
    except Absent:
        return []


def classes_section(run_dir: Path, summary: Any) -> str:
    if summary is None:
        read_json(run_dir / "summary.json")
    if isinstance(summary, dict) and "per_class_ap" in summary:
        return _detection_classes(run_dir, summary)
    per_class = summary.get("per_class_accuracy") if isinstance(summary, dict) else None
    confusion = summary.get("confusion") if isinstance(summary, dict) else None
    if not per_class and not confusion:
        if (run_dir / "confusion.png").is_file():
            return figure(file_uri(run_dir / "confusion.png")[0], "confusion matrix")
        raise Absent("not recorded for this run (summary.json has no per-class accuracy or confusion matrix)")
    classes = list(per_class) if per_class else [str(i) for i in range(len(confusion))]
    if not confusion:
        return table(["class", "accuracy"], [[esc(c), fmt(a, "%")] for c, a in per_class.items()], cls="num")
    head = ['<span title="rows: true class, columns: predicted class">true \\ predicted</span>',
            *[esc(c) for c in classes], "images", "accuracy"]  # fmt: skip
    body = []
    for i, row in enumerate(confusion):
        total = sum(row) or 1
        cells = [
            f'<span class="cell{" diag" if i == j else ""}" style="--r:{n / total:.3f}">{n}</span>'
            if n else ""
            for j, n in enumerate(row)
        ]  # fmt: skip
        accuracy = per_class.get(classes[i]) if per_class else row[i] / total
        body.append([f"<b>{esc(classes[i])}</b>", *cells, f"{sum(row):,}", fmt(accuracy, "%")])
    images = sum(map(sum, confusion))
    right = sum(confusion[i][i] for i in range(len(confusion)))
    caption = (f"{images:,} test images, {right:,} right ({right / max(images, 1):.1%}); "
               "shade: share of the true class's images")  # fmt: skip
    return table(head, body, cls="confusion num", caption=esc(caption))


def _detection_classes(run_dir: Path, summary: dict[str, Any]) -> str:
    """A detector's AP per class and by object size, and its detections.png."""
    rows = [[esc(c), fmt(ap, ".3")] for c, ap in summary["per_class_ap"].items()]
    rows += [[f"<i>{esc(k.replace('map_', 'all '))} objects</i>", fmt(v, ".3")]
             for k, v in (summary.get("map_by_size") or {}).items()]  # fmt: skip
    parts = [table(["class", "AP@[.5:.95]"], rows, cls="num", caption="COCO AP per class and by object size")]
    if (run_dir / "detections.png").is_file():
        uri = file_uri(run_dir / "detections.png")[0]
        parts.append(figure(uri, "test detections", "true boxes dashed green, detections scoring >= 0.3 red"))
    return "".join(parts)


def attention_section(run_dir: Path, config: dict[str, Any] | None, summary: Any, test: Any = None) -> str:
    if isinstance(config, dict) and config.get("task") == "detection":
        raise Absent(
            "a detector's maps are per detected box: `visattn explain --checkpoint RUN_DIR` draws Grad-CAM "
            "on each box's score and the attention the box's positions pay, with a pointing game per box"
        )
    parts = []
    if (run_dir / "attention.png").is_file():
        uri = file_uri(run_dir / "attention.png")[0]
        parts.append(figure(uri, "attention overlays",
                            "the run's attention.png: test images, the attention map over each (+ its peak), "
                            "the object's box (green) and the top predictions", cls="wide"))  # fmt: skip
    else:
        parts.append(note("attention.png: not recorded for this run"))
    parts.append("<h3>pointing game: hits and misses</h3>")
    try:
        grid = pointing_grid(run_dir, config if isinstance(config, dict) else None, test)
    except Absent as why:
        parts.append(note(str(why)))
        return "".join(parts)
    recorded = summary.get("pointing_game") if isinstance(summary, dict) else None
    whole = "" if recorded is None else f"; over the whole test split the run recorded {recorded:.1%}"
    share = grid.hits / grid.scored
    parts.append(
        f"<p>{grid.hits} of {grid.scored} test images spread over the split are hits ({share:.0%}): the "
        f"peak of the attention map ({esc(grid.layer)}, weights of {esc(grid.checkpoint)}) lies inside "
        f"the object's box{esc(whole)}. Shown: hits, then misses, with the box (green) and the peak (+); "
        f"scored and drawn in {grid.seconds:.2f} s.</p>"
    )

    def name(c: int) -> str:
        return esc(grid.classes[c]) if 0 <= c < len(grid.classes) else str(c)

    cells = []
    for e in grid.examples:
        verdict = "✓ hit" if e.hit else "✗ miss"
        caption = f"<b>{verdict}</b> #{e.index}<br>true {name(e.label)}, predicted {name(e.predicted)}"
        cells.append(figure(e.uri, f"test image {e.index}: {verdict[2:]}", caption, cls=verdict[2:]))
    parts.append('<div class="grid">' + "".join(cells) + "</div>")
    return "".join(parts)
