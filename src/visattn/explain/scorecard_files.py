"""The scorecard as records, and its files: ``scorecard.csv``, ``scorecard.json``,
``scorecard_curves.png`` (mean deletion and insertion curves) and ``scorecard_maps.png`` (the
maps of each method on the first images). All are written atomically (``visattn._io``).

A record per method: ``method``, ``pointing``, ``deletion_auc``, ``insertion_auc``, ``road``,
``sanity_rank_corr``, ``head_rank_corr``, ``seconds``, the flags ``fails_randomisation`` and
``class_agnostic`` (``None`` without the randomisation check), and ``margins``: for each
baseline and score, the paired 95 % interval ``{mean, low, high}`` of how much the method beats
the baseline (positive = better; for deletion that is baseline minus method).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from .._io import atomic_write, atomic_write_text
from .scorecard import MethodScores, Scorecard
from .stats import paired_margin

SCORES = (("pointing", True), ("deletion_auc", False), ("insertion_auc", True), ("road", True))
FAILS_RANDOMISATION = 0.5  # whole-model rank correlation above this: the map ignores the weights
CLASS_AGNOSTIC = 0.99  # head re-initialisation correlation at least this: the map ignores the class
COLUMNS = ("method", "pointing", "deletion_auc", "insertion_auc", "road", "sanity_rank_corr",
           "head_rank_corr", "seconds", "fails_randomisation", "class_agnostic")  # fmt: skip
FILES = ("scorecard.csv", "scorecard.json", "scorecard_curves.png", "scorecard_maps.png")


def _mean(values: Tensor | None) -> float | None:
    return None if values is None else round(float(values.double().mean()), 6)


def flags(sanity_rank_corr: float | None, head_rank_corr: float | None) -> dict[str, bool | None]:
    """``fails_randomisation`` (whole-model correlation > 0.5) and ``class_agnostic`` (head
    correlation >= 0.99); ``None`` where the correlation was not measured."""
    return {
        "fails_randomisation": None if sanity_rank_corr is None else sanity_rank_corr > FAILS_RANDOMISATION,
        "class_agnostic": None if head_rank_corr is None else head_rank_corr >= CLASS_AGNOSTIC,
    }


def margins(scores: MethodScores, baselines: list[MethodScores]) -> dict[str, dict[str, dict[str, float]]]:
    """Paired intervals of ``scores``' margin over each other baseline, per measured score."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for base in baselines:
        if base.method == scores.method:
            continue
        out[base.method] = {
            name: paired_margin(getattr(scores, name), getattr(base, name), higher_is_better=higher).as_dict()
            for name, higher in SCORES
            if getattr(scores, name) is not None and getattr(base, name) is not None
        }
    return out


def records(card: Scorecard, *, seconds: bool = True) -> list[dict[str, Any]]:
    """One record per method (see the module docstring); ``seconds=False`` leaves the timing
    out, so that two runs with the same seed give equal records."""
    baselines = [s for s in card.scores if s.method in card.protocol["baselines"]]
    out = []
    for s in card.scores:
        sanity, head = _mean(s.sanity_rank_corr), _mean(s.head_rank_corr)
        record: dict[str, Any] = {
            "method": s.method, "pointing": _mean(s.pointing), "deletion_auc": _mean(s.deletion_auc),
            "insertion_auc": _mean(s.insertion_auc), "road": _mean(s.road), "sanity_rank_corr": sanity,
            "head_rank_corr": head,
        }  # fmt: skip
        if seconds:
            record["seconds"] = round(s.seconds, 3)
        record.update(flags(sanity, head))
        record["margins"] = margins(s, baselines)
        out.append(record)
    return out


def scorecard_json(card: Scorecard, *, seconds: bool = True) -> str:
    """``{"protocol": ..., "methods": [records]}`` as indented JSON text, keys in a fixed order."""
    return json.dumps({"protocol": card.protocol, "methods": records(card, seconds=seconds)}, indent=2) + "\n"


def scorecard_csv(card: Scorecard) -> str:
    """The records as CSV: the ``COLUMNS``, then ``<score>_over_<baseline>`` with ``_low`` and
    ``_high`` for every margin. Missing values are empty cells."""
    rows = records(card)
    extra = list(dict.fromkeys(
        f"{name}_over_{base}{end}" for r in rows for base, scores in r["margins"].items()
        for name in scores for end in ("", "_low", "_high")
    ))  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {k: ("" if r[k] is None else r[k]) for k in COLUMNS}
        for base, scores in r["margins"].items():
            for name, interval in scores.items():
                key = f"{name}_over_{base}"
                flat.update(
                    {key: interval["mean"], key + "_low": interval["low"], key + "_high": interval["high"]}
                )
        writer.writerow(flat)
    return buffer.getvalue()


def write_scorecard(
    card: Scorecard, folder: Path, *, stats: tuple[tuple[float, ...], tuple[float, ...]]
) -> list[Path]:
    """Write the four ``FILES`` into ``folder`` (which must exist) and return their paths.

    Args:
        stats: the data set's ``(mean, std)`` per channel, to show the images as they are.
    """
    from .scorecard_figures import save_curves, save_maps

    folder = Path(folder)
    paths = [folder / name for name in FILES]
    atomic_write_text(paths[0], scorecard_csv(card))
    atomic_write_text(paths[1], scorecard_json(card))
    atomic_write(paths[2], lambda tmp: save_curves(card, tmp))
    atomic_write(paths[3], lambda tmp: save_maps(card, tmp, stats=stats))
    return paths
