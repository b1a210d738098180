"""A comparison's members: who they are, where their run folders are, and what each one
measured once it finished (``member.json``: its results from ``summary.json`` and its cost)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text
from ..flops import count_flops
from ..train.checkpoint import load_model


@dataclass(frozen=True)
class Member:
    attention: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.attention}-seed{self.seed}"


def member_runs(member_dir: Path) -> list[Path]:
    return (
        sorted(p for p in member_dir.glob("*") if (p / "config.yaml").is_file())
        if member_dir.is_dir()
        else []
    )


def finished_member(member_dir: Path) -> Path | None:
    """The run folder of a finished member (one with ``member.json``), if any."""
    done = [p for p in member_runs(member_dir) if (p / "member.json").is_file()]
    return done[-1] if done else None


def _inference_rate(model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Test images per second in evaluation mode, best of ``repeats`` after a warm-up pass."""
    from ..bench.measures import measure

    model.eval()
    with torch.inference_mode():
        best = measure(lambda: model(x), warmup=1, repeats=repeats).minimum
    return round(x.shape[0] / best, 1)


def measure_member(run_dir: Path, member: Member, test: Any) -> dict[str, Any]:
    """The member's record: its summary's results and its cost, measured once, kept in ``member.json``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    model, _ = load_model(run_dir / "best.safetensors")
    x = test.__getitems__(list(range(min(250, len(test)))))[0]
    quick = (summary.get("scorecard") or {}).get("methods", {})
    faithful = None
    if "attention" in quick and "input" in quick:  # the attention map's insertion over the input's
        faithful = round(quick["attention"]["insertion_auc"] - quick["input"]["insertion_auc"], 6)
    record = {
        "attention": member.attention, "seed": member.seed, "run_dir": run_dir.name,
        "test_accuracy": summary["test_accuracy"], "pointing_game": summary.get("pointing_game"),
        "faithfulness": faithful, "train_images_per_s": summary.get("train_images_per_s"),
        "infer_images_per_s": _inference_rate(model, x), "wall_seconds": summary.get("wall_seconds"),
        "parameters": summary["parameters"], "flops": count_flops(model.eval(), x[:1]),
        "epochs": summary["epochs"],
    }  # fmt: skip
    atomic_write_text(run_dir / "member.json", json.dumps(record, indent=2) + "\n")
    return record
