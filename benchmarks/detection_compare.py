"""Detection with and without attention on the embedded Cluttered MNIST detection set: the
training step time of each variant (interleaved, paired ratios against no attention), then
the default detection job (FCOS, conv backbone, 12 epochs) per variant and seed, the
no-attention network trained for the slowest variant's time, and docs/detection.md's
measured sections (tables, learning curves in docs/detection/curves.png).

Usage:

    .venv/bin/python benchmarks/detection_compare.py throughput
    .venv/bin/python benchmarks/detection_compare.py runs --seeds 5 --equal-seeds 3
    .venv/bin/python benchmarks/detection_compare.py doc

``runs`` keeps every finished run in docs/detection/results.json and skips it when started
again, so an interrupted measurement goes on where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _report import machine, write_section
from visattn.bench import matmul_rate
from visattn.bench.measures import interleave, paired_ratio
from visattn.data.detection_sets import load_detection_dataset
from visattn.tasks import Detection
from visattn.train.config import resolve_config
from visattn.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
DOC, OUT = ROOT / "docs" / "detection.md", ROOT / "docs" / "detection"
RESULTS = OUT / "results.json"
#: the comparison: attention after the conv backbone's last stage, or on the pyramid level
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"attention": "none"},
    "gc": {"attention": "gc"},
    "nonlocal": {"attention": "nonlocal"},
    "cbam": {"attention": "cbam"},
    "mhsa": {"attention": "mhsa"},
    "neck mhsa": {"attention": "none", "model_options": {"neck_attention": "mhsa"}},
}
THROUGHPUT = {**VARIANTS, "se": {"attention": "se"}, "eca": {"attention": "eca"}}
#: the control for FCOS's regression start: torchvision's own head (bias 0), self-attention
CONTROLS = {"mhsa, zero start": {"attention": "mhsa", "model_options": {"regression_start": 0.0}}}
EPOCHS = 12
#: the other detectors and a ResNet backbone with a pyramid, one seed each, no attention
DETECTORS = {
    "retinanet": {"model": "retinanet", "attention": "none"},
    "faster_rcnn": {"model": "faster_rcnn", "attention": "none"},
    "fcos, resnet18, levels 1-2": {
        "attention": "none",
        "model_options": {"backbone": "resnet18", "levels": [1, 2]},
    },
}


def _detector(variant: dict[str, Any]) -> tuple[torch.nn.Module, Detection]:
    cfg = resolve_config(task="detection", **variant)
    task = Detection(load_detection_dataset(cfg.dataset))
    model = task.build_model(cfg.model, task.model_options(cfg.model, cfg.model_kwargs()))
    return model, task


def step_times(repeats: int) -> dict[str, Any]:
    """ms per training step (batch 32) of every variant, interleaved; ratios paired by round."""
    torch.manual_seed(0)
    calls = {}
    for name, variant in THROUGHPUT.items():
        model, task = _detector(variant)
        images, targets = task.collate([task.bundle.train[i] for i in range(32)])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()

        def step(model=model, opt=opt, images=images, targets=targets) -> None:
            opt.zero_grad(set_to_none=True)
            sum(model(images, targets).values()).backward()
            opt.step()

        calls[name] = step
    stats = interleave(calls, warmup=3, repeats=repeats)
    return {
        name: {"ms": statistics.median(s.times) * 1e3, "ratio": paired_ratio(stats["none"], s)}
        for name, s in stats.items()
    }


def profile(names: tuple[str, ...] = ("none", "mhsa"), steps: int = 8) -> dict[str, Any]:
    """Where a training step's time goes (torch.profiler, CPU self time by operator family)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    families = {"convolution": ("conv",), "attention": ("scaled_dot_product", "softmax", "bmm", "baddbmm"),
                "normalisation": ("norm",), "matmul / linear": ("addmm", "mm", "linear")}  # fmt: skip
    out = {}
    for name in names:
        model, task = _detector(THROUGHPUT[name])
        images, targets = task.collate([task.bundle.train[i] for i in range(32)])
        model.train()
        for _ in range(2):
            sum(model(images, targets).values()).backward()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                sum(model(images, targets).values()).backward()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        shares = dict.fromkeys([*families, "other"], 0.0)
        for e in events:
            key = e.key.lower()
            family = next((f for f, words in families.items() if any(w in key for w in words)), "other")
            shares[family] += e.self_cpu_time_total / total
        out[name] = {
            "ms_per_step": total / steps / 1e3,
            "shares": {k: round(v, 3) for k, v in shares.items()},
        }
    return out


def load() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": {}}


def save(results: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def one_run(variant: dict[str, Any], seed: int, epochs: int, folder: Path) -> dict[str, Any]:
    cfg = resolve_config(task="detection", seed=seed, epochs=epochs, output=folder, **variant)
    start = time.perf_counter()
    summary = train(cfg)
    run = Path(summary["run_dir"])
    with (run / "metrics.csv").open() as f:
        curve = [float(r["test_map"]) for r in csv.DictReader(f)]
    with (run / "timing.csv").open() as f:
        train_seconds = sum(float(r["epoch_seconds"]) for r in csv.DictReader(f))
    return {
        "map": summary["test_map"], "map_50": summary["test_map_50"], "map_75": summary["test_map_75"],
        "best_map": summary["best_test_map"], "curve": curve, "epochs": epochs, "seed": seed,
        "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - start, 1),
        "warnings": summary["collapse_warnings"], "parameters": summary["parameters"],
    }  # fmt: skip


def other_detectors() -> None:
    results = load()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for name, variant in DETECTORS.items():
            if name not in results.setdefault("detectors", {}):
                results["detectors"][name] = one_run(variant, 0, EPOCHS, Path(tmp))
                save(results)
                r = results["detectors"][name]
                print(f"{name}: mAP {r['map']:.3f} in {r['wall_seconds']:.0f} s", flush=True)


def runs(seeds: int, equal_seeds: int) -> None:
    results = load()
    if "steps" not in results:
        raise SystemExit("run the throughput part first: the equal-time budget comes from its step times")
    slowest = max(VARIANTS, key=lambda n: results["steps"][n]["ms"])
    factor = results["steps"][slowest]["ms"] / results["steps"]["none"]["ms"]
    equal = {"none, equal time": (VARIANTS["none"], round(EPOCHS * factor), equal_seeds)}
    plan = {**{n: (v, EPOCHS, seeds) for n, v in {**VARIANTS, **CONTROLS}.items()}, **equal}
    results["equal_time"] = {"slowest": slowest, "factor": round(factor, 3), "epochs": round(EPOCHS * factor)}
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for name, (variant, epochs, n) in plan.items():
                key = f"{name}/{seed}"
                if seed >= n or key in results["runs"]:
                    continue
                results["runs"][key] = {"variant": name, **one_run(variant, seed, epochs, Path(tmp))}
                save(results)
                r = results["runs"][key]
                print(
                    f"{key}: mAP {r['map']:.3f} in {r['wall_seconds']:.0f} s, {len(r['warnings'])} warnings"
                )


def _step_key(name: str) -> str:
    """The step-probe entry of a run's variant ("none, equal time" -> "none")."""
    return name.split(",")[0]


def _stats(values: list[float]) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean * 100:.1f} ± {spread * 100:.1f}"


def doc() -> None:
    results = load()
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results["runs"].values():
        by.setdefault(r["variant"], []).append(r)
    steps, eq = results["steps"], results["equal_time"]
    none3 = sorted(r["map"] for r in by["none, equal time"])
    lines = [
        f"- machine: {results['machine']}; sgemm {results['sgemm']:.0f} GFLOP/s",
        "- command: `.venv/bin/python benchmarks/detection_compare.py runs --seeds 5 --equal-seeds 3`, "
        "then `... doc`",
        "- default job per variant: FCOS, conv backbone 32-64-128, one level at stride 8, "
        f"{EPOCHS} epochs of fresh canvases, batch 32, AdamW 3e-3; the equal-time network has "
        f"{eq['epochs']} epochs, {eq['factor']:.2f}x the step time of {eq['slowest']}, the slowest",
        "",
        "| variant | seeds | mAP@[.5:.95], % (mean ± sd) | median | mAP@0.5, % | mAP@0.75, % | vs equal-time "
        "none, points (medians of seeds 0-2) | step, ms | step vs none | collapse warnings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [*VARIANTS, "none, equal time", *CONTROLS]:
        rs = by.get(name, [])
        if not rs:
            continue
        maps = [r["map"] for r in rs]
        first3 = sorted(r["map"] for r in rs if r["seed"] < len(none3))
        delta = (statistics.median(first3) - statistics.median(none3)) * 100
        step = steps.get(_step_key(name), {})
        lines.append(
            f"| {name} | {len(rs)} | {_stats(maps)} | {statistics.median(maps) * 100:.1f} "
            f"| {_stats([r['map_50'] for r in rs])} | {_stats([r['map_75'] for r in rs])} | {delta:+.1f} "
            f"| {step.get('ms', 0):.0f} | {step.get('ratio', 1):.2f}x "
            f"| {sum(len(r['warnings']) for r in rs)} |"
        )
    if "profile" in results:
        fams = list(next(iter(results["profile"].values()))["shares"])
        lines += ["", "Where a training step's time goes (torch.profiler, CPU self time, batch 32):", "",
                  "| variant | ms per step (profiled) | " + " | ".join(fams) + " |",
                  "|---|---|" + "---|" * len(fams)]  # fmt: skip
        for name, p in results["profile"].items():
            shares = " | ".join(f"{p['shares'][f] * 100:.0f} %" for f in fams)
            lines.append(f"| {name} | {p['ms_per_step']:.0f} | {shares} |")
    if "detectors" in results:
        lines += ["", f"The other detectors, without attention, seed 0, {EPOCHS} epochs (wall time of the "
                  "run in this process, with its evaluations):", "",
                  "| detector | mAP@[.5:.95], % | mAP@0.5, % | mAP@0.75, % | parameters | wall, s |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in {"fcos (the default)": by["none"][0], **results["detectors"]}.items():
            maps = " | ".join(f"{r[k] * 100:.1f}" for k in ("map", "map_50", "map_75"))
            lines.append(f"| {name} | {maps} | {r['parameters']:,} | {r['wall_seconds']:.0f} |")
    lines += ["", "![mAP against training time, mean over seeds](detection/curves.png)"]
    write_section("Attention in the detector: measured", "\n".join(lines), doc=DOC)
    _curves(by, steps)


def _curves(by: dict[str, list[dict[str, Any]]], steps: dict[str, Any]) -> None:
    """mAP per epoch against training time, the time from the interleaved step probe (62 steps
    an epoch) so that other work on the machine during the runs does not bend the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, rs in by.items():
        longest = max(len(r["curve"]) for r in rs)
        mean = [statistics.mean(r["curve"][e] for r in rs if len(r["curve"]) > e) for e in range(longest)]
        seconds = 62 * steps[_step_key(name)]["ms"] / 1e3
        ax.plot([seconds * (e + 1) for e in range(longest)], mean, marker=".", label=name)
    ax.set_xlabel("training seconds (62 steps an epoch x the measured step time)")
    ax.set_ylabel("test mAP@[.5:.95], mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "curves.png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("throughput", "profile", "runs", "detectors", "doc"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--equal-seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.part == "throughput":
        results = load()
        results.update(machine=machine(), sgemm=matmul_rate(), steps=step_times(args.repeats))
        results["sgemm_after"] = matmul_rate()
        save(results)
        for name, s in results["steps"].items():
            print(f"{name}: {s['ms']:.1f} ms per step, {s['ratio']:.3f}x none")
    elif args.part == "profile":
        results = load()
        results["profile"] = profile()
        save(results)
        print(json.dumps(results["profile"], indent=1))
    elif args.part == "detectors":
        other_detectors()
    elif args.part == "runs":
        runs(args.seeds, args.equal_seeds)
    else:
        doc()


if __name__ == "__main__":
    main()
