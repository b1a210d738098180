"""Training throughput of the visattn engine against a bare PyTorch loop over the same model
and data; writes the table to docs/benchmarks.md (section "Training engine overhead").

Usage (repository root, .venv installed):

    .venv/bin/python benchmarks/engine_overhead.py [--pairs 3] [--dataset cluttered-mnist]

Both sides train AttentionCNN (default options) for one epoch of the same training split with
AdamW, batch 64, fp32, one process. The engine's figure is the training time of its epoch as
written to timing.csv (evaluation and checkpoints excluded, but its per-step work included:
metrics, the finite-loss check, signal polling, the scheduler). The runs are interleaved
(engine, bare, engine, bare ...) after one unrecorded warm-up pair, because separate runs on
small machines drift by up to 40 %, and the median of the paired ratios is reported.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from _report import machine, write_section
from visattn import create_model
from visattn.data import load_dataset
from visattn.train.config import resolve_config
from visattn.train.loop import train
from visattn.train.setup import as_batch


def bare_epoch(dataset: str, seed: int) -> float:
    """Images per second of a plain loop: DataLoader, forward, cross-entropy, backward, step."""
    torch.manual_seed(seed)
    bundle = load_dataset(dataset)
    model = create_model("attention_cnn", num_classes=len(bundle.classes), in_channels=bundle.in_channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    loader = DataLoader(bundle.train, batch_size=64, shuffle=True, collate_fn=as_batch, drop_last=True)
    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def engine_epoch(dataset: str, seed: int, out: Path) -> float:
    """Images per second of the engine's training epoch (timing.csv)."""
    summary = train(resolve_config(None, dataset=dataset, epochs=1, seed=seed, output=out, keep=0))
    with (Path(summary["run_dir"]) / "timing.csv").open() as f:
        return float(next(csv.DictReader(f))["train_images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--dataset", default="cluttered-mnist")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # One unrecorded pair first: the first epoch in a process pays for one-off set-up
        # (kernel selection, caches) that would otherwise land on whichever side runs first.
        engine_epoch(args.dataset, 99, Path(tmp))
        bare_epoch(args.dataset, 99)
        for i in range(args.pairs):
            engine = engine_epoch(args.dataset, i, Path(tmp))
            bare = bare_epoch(args.dataset, i)
            rows.append((engine, bare))
            print(
                f"pair {i}: engine {engine:.0f} img/s, bare {bare:.0f} img/s, ratio {engine / bare:.3f}",
                flush=True,
            )
    ratios = [e / b for e, b in rows]
    median = statistics.median(ratios)
    lines = [
        f"- machine: {machine()}",
        f"- command: `python benchmarks/engine_overhead.py --pairs {args.pairs} --dataset {args.dataset}`",
        "- what: one training epoch of AttentionCNN (default options) on the training split, AdamW,",
        "  batch 64, fp32, one process; runs interleaved; engine time from its timing.csv.",
        "",
        "| pair | engine img/s | bare loop img/s | engine / bare |",
        "|---:|---:|---:|---:|",
        *[f"| {i} | {e:.0f} | {b:.0f} | {e / b:.3f} |" for i, (e, b) in enumerate(rows)],
        "",
        f"Median engine/bare ratio: **{median:.3f}** (goal: within 5 %, i.e. >= 0.95) -- "
        f"{'met' if median >= 0.95 else 'NOT met'}.",
    ]
    write_section("Training engine overhead", "\n".join(lines))


if __name__ == "__main__":
    main()
