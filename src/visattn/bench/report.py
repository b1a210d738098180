"""Benchmark rows out: CSV, log-log plots and Markdown tables.

Rows are dataclass instances (``suite.Row``, ``throughput.ModelRow``); NaN means "not
measured" and is written as an empty CSV cell and a dash in Markdown.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .suite import Row
from .throughput import ModelRow

__all__ = ["markdown", "model_markdown", "plot", "write_csv"]

#: Axis labels of the columns that ``plot`` draws.
LABELS = {
    "fwd_ms": "forward (ms)",
    "fwdbwd_ms": "forward + backward (ms)",
    "peak_mib": "peak memory, forward (MiB)",
    "peak_fwdbwd_mib": "peak memory, forward + backward (MiB)",
    "gflops_per_s": "GFLOP/s",
}


STYLES, STYLE_NAMES = ("-", "--", ":"), ("solid", "dashed", "dotted")


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def write_csv(rows: Sequence[Any], path: str | Path) -> Path:
    """Write dataclass rows to ``path`` (parents created), one column per field.

    Example:
        >>> write_csv([Row("se", "visattn", 8, 64, 16, 16, 256, fwd_ms=0.05)], "/tmp/bench.csv")
        PosixPath('/tmp/bench.csv')
    """
    if not rows:
        raise ValueError("write_csv needs at least one row, got none")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([field.name for field in fields(rows[0])])
        writer.writerows([_cell(v) for v in asdict(row).values()] for row in rows)
    return path


def plot(rows: Sequence[Row], path: str | Path, *, metrics: Sequence[str] = ("fwd_ms",)) -> Path:
    """One log-log panel per mechanism: ``metrics`` against N, one line per variant (a
    solid line for the first metric, dashed for the second, dotted for the third).

    Args:
        rows: from ``run_attention_suite``.
        path: the PNG to write (parents created).
        metrics: up to three columns of ``LABELS``; they share the panel's axis.
    """
    unknown = [m for m in metrics if m not in LABELS]
    if not metrics or len(metrics) > 3 or unknown:
        raise ValueError(f"metrics must be one to three of {', '.join(LABELS)}, got {list(metrics)!r}")
    names = list(dict.fromkeys(r.name for r in rows))
    if not names:
        raise ValueError("plot needs at least one row, got none")
    cols = min(6, len(names))
    nrows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.0 * cols, 2.5 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    variants = list(dict.fromkeys(r.variant for r in rows))
    colors = {v: f"C{i}" for i, v in enumerate(variants)}
    for ax, name in zip(axes, names, strict=False):  # more panels than names
        for variant in variants:
            for metric, style in zip(metrics, STYLES, strict=False):
                points = [(r.N, getattr(r, metric)) for r in rows if r.name == name and r.variant == variant]
                points = sorted((n, v) for n, v in points if v > 0)  # NaN and 0 cannot go on a log axis
                if points:
                    label = variant if metric == metrics[0] else None  # line styles: see the title
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, style, marker="o", ms=3, color=colors[variant], label=label)
        ax.set(xscale="log", yscale="log", title=name, xlabel="N = H x W")
        if ax.lines:
            ax.legend(fontsize="x-small")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(" / ".join(f"{LABELS[m]} ({s})" for m, s in zip(metrics, STYLE_NAMES, strict=False)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}g}"


def markdown(rows: Sequence[Row]) -> str:
    """A Markdown table, one line per row in the given order, so that each baseline's line
    follows our module's; ``× visattn`` is the baseline's time over ours (median of paired
    ratios; above 1, visattn is faster)."""
    lines = [
        "| mechanism | variant | H×W | N | fwd ms | fwd+bwd ms | peak MiB fwd | peak MiB fwd+bwd "
        "| GFLOP | GFLOP/s | of matmul | fwd × visattn | fwd+bwd × visattn | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        share = "–" if math.isnan(r.fraction_of_matmul) else f"{100 * r.fraction_of_matmul:.1f} %"
        lines.append(
            f"| {r.name} | {r.variant} | {r.H}×{r.W} | {r.N} | {_fmt(r.fwd_ms)} | {_fmt(r.fwdbwd_ms)} "
            f"| {_fmt(r.peak_mib)} | {_fmt(r.peak_fwdbwd_mib)} | {_fmt(r.gflop)} | {_fmt(r.gflops_per_s)} "
            f"| {share} | {_fmt(r.fwd_ratio, 2)} | {_fmt(r.fwdbwd_ratio, 2)} | {r.note} |"
        )
    return "\n".join(lines)


def model_markdown(rows: Sequence[ModelRow]) -> str:
    """A Markdown table of ``run_model_suite`` rows (timm's line after visattn's)."""
    lines = [
        "| model | attention | variant | image | batch | inference img/s | training img/s "
        "| inference time × visattn | training time × visattn | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.attention} | {r.variant} | {r.image_size} | {r.batch} "
            f"| {_fmt(r.infer_img_s, 4)} | {_fmt(r.train_img_s, 4)} "
            f"| {_fmt(r.infer_ratio, 2)} | {_fmt(r.train_ratio, 2)} | {r.note} |"
        )
    return "\n".join(lines)
