"""The leaderboard of a comparison: one row per attention, the mean and spread over seeds of
each member's results, and whether its accuracy differs from the network without attention
by more than the seed noise.

The difference from ``none`` is paired by seed (members with the same seed share the data
order and the initialisation of every layer the two networks have in common): for the seeds
both have, ``d_s = accuracy(attention, s) - accuracy(none, s)``, and its 95 % Student t
interval ``mean(d) +- t(0.975, n - 1) sd(d) / sqrt(n)`` (``explain.stats.paired_margin``).
The difference is *beyond the seed noise* when that interval excludes 0; with fewer than two
shared seeds there is no interval and no verdict.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write, atomic_write_text
from ..explain.stats import paired_margin

#: Each member's results that the leaderboard averages over seeds (``None`` where absent).
AVERAGED = ("test_accuracy", "pointing_game", "faithfulness", "train_images_per_s", "infer_images_per_s",
            "wall_seconds")  # fmt: skip
#: The same for every seed of one attention.
FIXED = ("parameters", "flops")
REFERENCE = "none"


def _spread(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``None`` for one value) of the known values."""
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    mean = sum(known) / len(known)
    if len(known) < 2:
        return round(mean, 6), None
    var = sum((v - mean) ** 2 for v in known) / (len(known) - 1)
    return round(mean, 6), round(math.sqrt(var), 6)


def versus_reference(mine: dict[int, float], reference: dict[int, float]) -> dict[str, Any] | None:
    """Paired interval of the accuracy difference over the seeds both have (``None`` below two)."""
    seeds = sorted(set(mine) & set(reference))
    if len(seeds) < 2:
        return None
    a = torch.tensor([mine[s] for s in seeds], dtype=torch.float64)
    b = torch.tensor([reference[s] for s in seeds], dtype=torch.float64)
    interval = paired_margin(a, b, higher_is_better=True).as_dict()
    beyond = interval["low"] > 0 or interval["high"] < 0
    return {**interval, "seeds": len(seeds), "beyond_noise": beyond}


def leaderboard(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows, best mean accuracy first, from member records (``attention``, ``seed`` and the
    ``AVERAGED`` and ``FIXED`` results of each trained member)."""
    by_attention: dict[str, list[dict[str, Any]]] = {}
    for m in members:
        by_attention.setdefault(m["attention"], []).append(m)
    accuracy = {a: {m["seed"]: m["test_accuracy"] for m in ms} for a, ms in by_attention.items()}
    rows = []
    for attention, ms in by_attention.items():
        row: dict[str, Any] = {"attention": attention, "seeds": sorted(m["seed"] for m in ms)}
        for key in AVERAGED:
            row[key], row[key + "_std"] = _spread([m.get(key) for m in ms])
        for key in FIXED:
            row[key] = ms[0].get(key)
        row["vs_none"] = (
            None
            if attention == REFERENCE or REFERENCE not in accuracy
            else versus_reference(accuracy[attention], accuracy[REFERENCE])
        )
        rows.append(row)
    return sorted(rows, key=lambda r: (-(r["test_accuracy"] or 0.0), r["attention"]))


COLUMNS = ("attention", "seeds", *(f"{k}{s}" for k in AVERAGED for s in ("", "_std")), *FIXED,
           "vs_none_mean", "vs_none_low", "vs_none_high", "vs_none_beyond_noise")  # fmt: skip


def leaderboard_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {k: r.get(k) for k in COLUMNS if not k.startswith("vs_none")}
        flat["seeds"] = " ".join(str(s) for s in r["seeds"])
        v = r["vs_none"] or {}
        for key in ("mean", "low", "high", "beyond_noise"):
            flat[f"vs_none_{key}"] = v.get(key)
        writer.writerow({k: "" if val is None else val for k, val in flat.items()})
    return buffer.getvalue()


def save_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy (mean +- std over seeds) against FLOPs per image, one point per attention."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["flops"] is None or r["test_accuracy"] is None:
            continue
        x, y = r["flops"] / 1e6, r["test_accuracy"] * 100
        err = 0 if r["test_accuracy_std"] is None else r["test_accuracy_std"] * 100
        beyond = (r["vs_none"] or {}).get("beyond_noise")
        color = "black" if r["attention"] == REFERENCE else ("tab:green" if beyond else "tab:blue")
        ax.errorbar(x, y, yerr=err, fmt="o", color=color, capsize=3)
        ax.annotate(r["attention"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("MFLOPs per image (forward)")
    ax.set_ylabel("test accuracy, % (mean +- std over seeds)")
    ax.set_title("accuracy against cost (green: beyond the seed noise of none)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def write_leaderboard(rows: list[dict[str, Any]], folder: Path, protocol: dict[str, Any]) -> list[Path]:
    """``leaderboard.csv``, ``leaderboard.json`` (``{"protocol", "rows"}``) and ``leaderboard.png``."""
    paths = [folder / "leaderboard.csv", folder / "leaderboard.json", folder / "leaderboard.png"]
    atomic_write_text(paths[0], leaderboard_csv(rows))
    atomic_write_text(paths[1], json.dumps({"protocol": protocol, "rows": rows}, indent=2) + "\n")
    atomic_write(paths[2], lambda tmp: save_plot(rows, tmp))
    return paths
