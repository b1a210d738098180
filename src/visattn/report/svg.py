"""Line charts as inline SVG: axes, a few round ticks, one polyline and its points per series,
and a legend. No script: each point's value is in its ``<title>`` (the browser's tooltip)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .markup import esc

COLOURS = ("#1f6fb4", "#d2452e", "#2c9a45", "#8a55b8", "#b8860b")
W, H = 380, 230
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 42, 34


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values covering ``[low, high]``.

    Example:
        >>> nice_ticks(0.12, 0.97)
        [0.2, 0.4, 0.6, 0.8]
    """
    if high <= low:
        return [low]
    raw = (high - low) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    v = first
    while v <= high + 1e-9 * step:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _label(value: float, percent: bool) -> str:
    if percent:
        return f"{value:.0%}" if abs(value * 100 - round(value * 100)) < 1e-6 else f"{value:.1%}"
    return f"{value:.3g}"


def line_chart(title: str, series: dict[str, Sequence[tuple[float, float]]], *, percent: bool = False) -> str:
    """An SVG chart of ``series`` (name -> ``(x, y)`` points, x the epoch); ``""`` without points.

    Args:
        percent: label the y axis in percent (values are fractions).

    Example:
        >>> line_chart("loss", {"train": [(1, 0.9), (2, 0.5)]}).startswith("<svg")
        True
    """
    series = {k: list(pts) for k, pts in series.items() if pts}
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    if not xs:
        return ""
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or (abs(y0) * 0.1 or 0.5)
    y0, y1 = y0 - pad, y1 + pad
    if percent:
        y0, y1 = max(y0, 0.0 if min(ys) >= 0 else y0), min(y1, 1.0 if max(ys) <= 1 else y1)

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM)

    out = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{esc(title)}"><text x="{LEFT}" y="15" class="t">{esc(title)}</text>'
    ]
    for v in nice_ticks(y0, y1):
        y = py(v)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="g"/>')
        out.append(f'<text x="{LEFT - 4}" y="{y + 3:.1f}" class="yl">{_label(v, percent)}</text>')
    for v in nice_ticks(math.ceil(x0), math.floor(x1), 6) if x1 - x0 >= 1 else [(x0 + x1) / 2]:
        if float(v).is_integer():
            x = px(v)
            out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 14}" class="xl">{int(v)}</text>')
    out.append(
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" class="a"/>'
        f'<text x="{(LEFT + W - RIGHT) / 2:.0f}" y="{H - 4}" class="xl">epoch</text>'
    )
    lx = LEFT
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        if len(pts) > 1:
            out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            value = f"{y:.1%}" if percent else f"{y:.4g}"
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" fill="{colour}">'
                f"<title>{esc(name)}, epoch {x:g}: {value}</title></circle>"
            )
        out.append(
            f'<rect x="{lx}" y="{TOP - 18}" width="10" height="3" fill="{colour}"/>'
            f'<text x="{lx + 13}" y="{TOP - 14}" class="lg">{esc(name)}</text>'
        )
        lx += 18 + 6.5 * len(name)
    out.append("</svg>")
    return "".join(out)
