"""The faithfulness scorecard of the main job, its cost, and one figure per method, written
into docs/explain.md (between the ``scorecard:begin`` and ``scorecard:end`` markers) and
docs/explain/.

Usage (from the repository root, after ``make demo`` or ``make test`` installed .venv):

    .venv/bin/python benchmarks/explain_scorecard.py [--checkpoint RUN] [--images 1000] [--sanity-images 200]

Without ``--checkpoint`` the main job (``visattn train`` with its defaults, seed 0) is trained
first into a temporary folder. Then, in one process:

1. the speed goal: pointing, deletion and insertion of six maps (``attention``,
   ``grad-attention``, ``gradcam``, ``gradcam++`` and the ``random`` and ``input`` baselines)
   on ``--images`` test images, timed from the first map to the last score;
2. the scorecard of every method (those six, ``rollout``, ``hirescam`` and the ``centre``
   baseline) on the same images, with the randomisation check on ``--sanity-images`` test images
   (its extra cost timed against the same methods without it);
3. the goals of the main job's scorecard, checked on the best method of each score;
4. one strip of maps per method on eight test images (docs/explain/<method>.png) and the
   scorecard's curves (docs/explain/curves.png).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _report import machine
from visattn.bench import matmul_rate
from visattn.data import load_dataset
from visattn.explain.scorecard import scorecard, scorecard_images
from visattn.explain.scorecard_figures import save_curves, save_method_maps
from visattn.explain.scorecard_files import records
from visattn.explain.scorecard_methods import method_maps
from visattn.train.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "explain.md"
FIGURES = ROOT / "docs" / "explain"
SPEED_METHODS = ["attention", "grad-attention", "gradcam", "gradcam++"]  # + random and input
ALL_METHODS = ["attention", "rollout", "grad-attention", "gradcam", "gradcam++", "hirescam"]
BASELINES = ("random", "centre", "input")
SPEED_LIMIT_S = 240.0  # the budget on the slower (AVX2) kind of machine


def main_job_checkpoint(folder: Path) -> Path:
    script = Path(sys.executable).parent / "visattn"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "visattn"]
    subprocess.run([*command, "train", "--output", str(folder)], check=True, stdout=subprocess.DEVNULL)
    (run,) = folder.iterdir()
    return run


def fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def table(rows: list[dict]) -> str:
    lines = [
        "| method | pointing | deletion AUC | insertion AUC | insertion over input (95 %) "
        "| deletion margin over random (95 %) | whole-model rank corr. | head rank corr. | flags |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ins = r["margins"].get("input", {}).get("insertion_auc")
        dele = r["margins"].get("random", {}).get("deletion_auc")
        interval = lambda m: "-" if m is None else f"{m['mean']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]"  # noqa: E731
        found = [n.replace("_", " ") for n in ("fails_randomisation", "class_agnostic") if r.get(n)]
        lines.append(
            f"| {r['method']} | {fmt(r['pointing'], '{:.1%}')} | {fmt(r['deletion_auc'])} "
            f"| {fmt(r['insertion_auc'])} | {interval(ins)} | {interval(dele)} "
            f"| {fmt(r['sanity_rank_corr'], '{:.2f}')} | {fmt(r['head_rank_corr'], '{:.2f}')} "
            f"| {', '.join(found) or '-'} |"
        )
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[str]:
    by = {r["method"]: r for r in rows}
    methods = [r for r in rows if r["method"] not in BASELINES]
    best_point = max(methods, key=lambda r: r["pointing"])
    best_ins = max(methods, key=lambda r: r["insertion_auc"])
    best_del = min(methods, key=lambda r: r["deletion_auc"])
    rnd, inp = by["random"], by["input"]
    checks = [
        (f"best pointing >= 90 %: {best_point['method']} {best_point['pointing']:.1%}",
         best_point["pointing"] >= 0.90),
        (f"best insertion >= random + 0.30: {best_ins['method']} {best_ins['insertion_auc']:.3f} "
         f"against {rnd['insertion_auc']:.3f} + 0.30",
         best_ins["insertion_auc"] >= rnd["insertion_auc"] + 0.30),
        (f"best insertion >= input + 0.10: {best_ins['insertion_auc']:.3f} against "
         f"{inp['insertion_auc']:.3f} + 0.10", best_ins["insertion_auc"] >= inp["insertion_auc"] + 0.10),
        (f"best deletion <= random - 0.20: {best_del['method']} {best_del['deletion_auc']:.3f} against "
         f"{rnd['deletion_auc']:.3f} - 0.20", best_del["deletion_auc"] <= rnd["deletion_auc"] - 0.20),
    ]  # fmt: skip
    return [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]


def figures(model: torch.nn.Module, test, stats, count: int = 8) -> list[str]:
    FIGURES.mkdir(parents=True, exist_ok=True)
    x, boxes = scorecard_images(test, count)
    maps = method_maps(model, x, [*ALL_METHODS, *BASELINES])
    written = []
    for name, heat in maps.items():
        path = FIGURES / f"{name.replace('+', 'plus')}.png"
        save_method_maps(path, x, {name: heat}, boxes=boxes, stats=stats, by_method=True, title=name)
        written.append(path.relative_to(ROOT / "docs").as_posix())
    return written


def replace_section(body: str) -> None:
    text = DOC.read_text()
    begin, end = "<!-- scorecard:begin -->", "<!-- scorecard:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkpoint", type=Path, help="a run folder or checkpoint (default: train the main job)"
    )
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--sanity-images", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rate = matmul_rate()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.checkpoint or main_job_checkpoint(Path(tmp))
        model, meta = load_model(run)
    bundle = load_dataset(meta["dataset"])
    test = bundle.test
    x, boxes = scorecard_images(test, args.images)

    start = time.perf_counter()
    scorecard(model, x, boxes=boxes, methods=SPEED_METHODS, baselines=("random", "input"))
    speed = time.perf_counter() - start

    start = time.perf_counter()
    card = scorecard(model, x, boxes=boxes, methods=ALL_METHODS)
    full = time.perf_counter() - start
    rows = records(card)

    xs, bs = scorecard_images(test, args.sanity_images)  # spread over the split as well
    start = time.perf_counter()
    scorecard(model, xs, boxes=bs, methods=ALL_METHODS)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    checked = records(scorecard(model, xs, boxes=bs, methods=ALL_METHODS, sanity=True))
    sane = time.perf_counter() - start
    for r, c in zip(rows, checked, strict=True):
        for key in ("sanity_rank_corr", "head_rank_corr", "fails_randomisation", "class_agnostic"):
            r[key] = c[key]

    first = card.scores[0].deletion_curve
    clean, floor = float(first[0]), float(first[-1])  # the same for every map: clean and fully blurred
    steps = card.protocol["steps"]
    best_possible = ((clean + floor) / 2 + floor * (steps - 1)) / steps  # down to the floor in one step
    drawn = figures(model, test, test.stats)
    save_curves(card, FIGURES / "curves.png")
    rate_after = matmul_rate()
    command = "benchmarks/explain_scorecard.py" + (
        f" --checkpoint {args.checkpoint}" if args.checkpoint else ""
    )
    command += f" --images {args.images} --sanity-images {args.sanity_images}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n = card.protocol["images"]
    body = f"""
### The main job's scorecard

Machine: {machine()}; sgemm {rate:.0f} GFLOP/s before, {rate_after:.0f} after. {when}.
Command: `.venv/bin/python {command}` (the main job's AttentionCNN:
`visattn train` with its defaults, seed 0, unless a checkpoint was given).

{n} test images spread over the split, blur of 5 px, 20 steps, ties broken by seed 0; the
randomisation columns on {len(xs)} of them, spread the same way:

{table(rows)}

Goals of the main job's scorecard:

{chr(10).join(goals(rows))}

Every deletion curve starts at the clean image's mean target probability ({clean:.3f}) and ends
at the fully blurred image's ({floor:.3f}: the model answers about uniformly on a blur), so no map
can score a deletion AUC below {best_possible:.3f} with {steps} steps (all of the drop in the first step).

Cost: pointing, deletion and insertion of the six maps `{", ".join(SPEED_METHODS)}`, `random`
and `input` on {n} images took **{speed:.0f} s** (limit {SPEED_LIMIT_S:.0f} s on the slower kind of machine,
about 2.7x slower than this one); the {len(rows)} maps of the table {full:.0f} s. The
randomisation check on {len(xs)} images: {plain:.1f} s without it, {sane:.1f} s with it.

![mean deletion and insertion curves](explain/curves.png)

One strip per method, eight test images (+ the map's peak; box: the digit):

{chr(10).join(f"![{Path(p).stem}]({p})" for p in drawn)}
"""
    replace_section(body)
    print(body)


if __name__ == "__main__":
    main()
