"""What the ``visattn`` commands print and write for a detection checkpoint: the training
summary's rows, ``evaluate`` (COCO mAP, by size and by class), ``predict`` (boxes as JSON and
drawn on each image) and ``explain`` (a map per detected box). ``cli.py`` calls these when the
checkpoint's task is detection; the console belongs to the caller."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from rich.table import Table
from torch import nn

from ._io import atomic_write_text
from .data.datasets import DataBundle
from .data.detection_metrics import detection_map
from .data.images import load_image
from .tasks.detection import Detection
from .tasks.detection_figures import save_detections


def is_detection(meta: dict[str, Any]) -> bool:
    return meta.get("task") == "detection"


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The training summary's rows of a detection run."""
    rows = [
        (
            "test mAP@[.5:.95]",
            f"{s['test_map']:.3f} (mAP@0.5 {s['test_map_50']:.3f}, mAP@0.75 "
            f"{s['test_map_75']:.3f}; best {s['best_test_map']:.3f} at epoch {s['best_epoch']})",
        )
    ]
    if s.get("collapse_warnings"):
        rows.append(
            (
                "warnings",
                f"{len(s['collapse_warnings'])} collapse warning(s); first: {s['collapse_warnings'][0]}",
            )
        )
    return rows


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def evaluate_table(model: nn.Module, bundle: DataBundle, *, device: torch.device, title: str) -> Table:
    """COCO mAP of ``model`` on the test split (the task's own evaluation, with AP per class):
    the summary rows, AP by object size and by class."""
    found = Detection(bundle).evaluate(model, device=device, rank=0, world=1, channels_last=False)
    m = detection_map(found.predictions, found.truth, class_names=bundle.classes)
    table = Table(title=f"{title} ({m['images']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, name in (
        ("map", "mAP@[.5:.95]"),
        ("map_50", "mAP@0.5"),
        ("map_75", "mAP@0.75"),
        ("map_small", "AP small"),
        ("map_medium", "AP medium"),
        ("map_large", "AP large"),
        ("mar_100", "AR@100"),
    ):
        table.add_row(name, _fmt(m[key]))
    table.add_section()
    for name, ap in m["per_class"].items():
        table.add_row(f"AP {escape(str(name))}", _fmt(ap))
    return table


def read_images(paths: list[Path], meta: dict[str, Any], *, convert: bool) -> list[torch.Tensor]:
    """Image files as the detector's ``(C, H, W)`` inputs in [0, 1] (it resizes and
    normalises them itself)."""
    return [load_image(p, channels=meta["in_channels"], convert=convert).float() / 255.0 for p in paths]


def predict(
    model: nn.Module,
    paths: list[Path],
    meta: dict[str, Any],
    *,
    device: torch.device,
    convert: bool,
    min_score: float,
    draw: Path | None,
    force: bool,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """The detections of each image scoring at least ``min_score`` as JSON records and, with
    ``draw``, one ``<name>.boxes.png`` per image there (an existing file is kept unless ``force``)."""
    drawn = [] if draw is None else [draw / f"{p.stem}.boxes.png" for p in paths]
    if draw is not None:
        if not draw.is_dir():
            raise FileNotFoundError(f"folder {draw} does not exist")
        clash = [str(p) for p in drawn if p.exists()]
        if clash and not force:
            raise ValueError(f"{clash[0]} exists; choose another --draw folder or pass --force")
    images = read_images(paths, meta, convert=convert)
    with torch.no_grad():
        found = [{k: v.cpu() for k, v in model([x.to(device)])[0].items()} for x in images]
    records = []
    for path, d in zip(paths, found, strict=True):
        keep = d["scores"] >= min_score
        records.append(
            {
                "image": str(path),
                "detections": [
                    {
                        "box": [round(v, 2) for v in box],
                        "label": meta["classes"][label],
                        "score": round(score, 4),
                    }
                    for box, label, score in zip(
                        d["boxes"][keep].tolist(),
                        d["labels"][keep].tolist(),
                        d["scores"][keep].tolist(),
                        strict=True,
                    )
                ],
            }
        )
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    for out, image, d in zip(drawn, images, found, strict=True):
        save_detections(
            out,
            [image],
            [empty],
            [d],
            meta["classes"],
            min_score=min_score,
            title=f"detections scoring >= {min_score:g}",
        )
    return records, drawn


def write_json(path: Path, records: list[dict[str, Any]], *, force: bool) -> None:
    if path.exists() and not force:
        raise ValueError(f"{path} exists; choose another --output or pass --force")
    atomic_write_text(path, json.dumps(records, indent=2) + "\n")


def explain_boxes(
    model: nn.Module, test: Any, indices: list[int], classes: list[str], *, folder: Path | None,
    min_score: float, device: torch.device, output: Path | None = None,
) -> tuple[list[Path], dict[str, Any]]:  # fmt: skip
    """Grad-CAM and attention per detected box of the test images ``indices``: one figure per
    image (``boxes-<index>.png`` in ``folder``, or ``output`` for a single image) and the
    per-box pointing game against the matched true box; returns the files and the records."""
    from .explain.detection import explain_detections, save_box_explanations

    records, written = [], []
    for index in indices:
        image, truth = test[index]
        explained = explain_detections(model, image.to(device), min_score=min_score, truth=truth)
        path = output if output is not None else folder / f"boxes-{index}.png"
        save_box_explanations(path, image, explained, classes)
        written.append(path)
        for item in explained:
            records.append({
                "image": index, "box": [round(float(v), 2) for v in item["box"]],
                "label": classes[item["label"]], "score": round(item["score"], 4),
                "matched": item["truth"] is not None, "pointing_gradcam": item["pointing_gradcam"],
                "pointing_attention": item["pointing_attention"],
            })  # fmt: skip
    rates = {}
    for key in ("pointing_gradcam", "pointing_attention"):
        hits = [r[key] for r in records if r[key] is not None]
        rates[key] = {"hits": sum(hits), "boxes": len(hits), "rate": sum(hits) / len(hits) if hits else None}
    result = {"min_score": min_score, "images": indices, "boxes": records, "pointing": rates}
    if folder is not None:
        atomic_write_text(folder / "box_explanations.json", json.dumps(result, indent=1) + "\n")
        written.append(folder / "box_explanations.json")
    return written, result


def pointing_line(result: dict[str, Any]) -> str:
    parts = []
    for key, name in (("pointing_gradcam", "Grad-CAM"), ("pointing_attention", "attention")):
        p = result["pointing"][key]
        if p["boxes"]:
            parts.append(f"{name} {p['rate']:.0%} of {p['boxes']} matched boxes")
    found = len(result["boxes"])
    return f"{found} boxes scoring >= {result['min_score']:g}; pointing game per box: " + (
        ", ".join(parts) or "no box matched a true box"
    )
