"""What every attention mechanism costs, next to naive and timm baselines, and ResNet-18 with
attention against timm's; writes docs/bench-attention.csv, docs/bench-models.csv,
docs/bench-attention-time.png, docs/bench-attention-memory.png and the sections "Attention
mechanisms" and "ResNet-18 with attention" of docs/benchmarks.md.

Usage (repository root, .venv installed):

    .venv/bin/python benchmarks/attention_suite.py [--names mhsa swin] [--sizes 8 16 32 64]
        [--channels 64] [--batch 8] [--repeats 10] [--no-backward] [--quick] [--out-dir docs]

Everything runs in one process, variants interleaved round by round (separate runs drift by
up to 40 % on small machines); how each figure is measured is documented in
``visattn.bench`` and repeated in the section written. ``--quick`` (sizes 8 and 16, batch 2,
3 rounds, a 512 x 512 matmul, ResNet-18 at 32 px batch 8 only) is a smoke test of the whole
pipeline that takes about a minute, not numbers to quote.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
from pathlib import Path

import torch

from _report import DOC, machine, write_section
from visattn.bench import (
    markdown,
    matmul_rate,
    model_markdown,
    model_suite_unavailable,
    plot,
    run_attention_suite,
    run_model_suite,
    write_csv,
)

FULL = {"sizes": [8, 16, 32, 64], "batch": 8, "repeats": 10, "warmup": 2, "model_repeats": 5, "matmul": 2048}
QUICK = {"sizes": [8, 16], "batch": 2, "repeats": 3, "warmup": 1, "model_repeats": 2, "matmul": 512}
MODEL_SETTINGS = {"full": [(32, 64), (224, 32)], "quick": [(32, 8)]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", help="registered mechanisms (default: all)")
    parser.add_argument("--sizes", nargs="+", type=int, help="sides of the square maps (default 8 16 32 64)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, help="default 8 (quick: 2)")
    parser.add_argument("--repeats", type=int, help="recorded rounds (default 10, quick: 3)")
    parser.add_argument("--warmup", type=int, help="unrecorded rounds (default 2, quick: 1)")
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--no-baselines", action="store_true", help="visattn's modules only")
    parser.add_argument("--no-models", action="store_true", help="skip the ResNet-18 throughput part")
    parser.add_argument("--model-repeats", type=int, help="ResNet-18 rounds (default 5, quick: 2)")
    parser.add_argument("--quick", action="store_true", help="smoke test: small sizes, few rounds")
    parser.add_argument("--out-dir", type=Path, default=DOC.parent, help="benchmarks.md, CSVs, plots")
    parser.add_argument("--csv", type=Path, help="attention CSV (default OUT_DIR/bench-attention.csv)")
    parser.add_argument("--plot-dir", type=Path, help="where the PNGs go (default OUT_DIR)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("sizes", "batch", "repeats", "warmup", "model_repeats"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.matmul = preset["matmul"]
    args.csv = args.csv or args.out_dir / "bench-attention.csv"
    args.plot_dir = args.plot_dir or args.out_dir
    return args


def header(args: argparse.Namespace, command: str) -> list[str]:
    lines = [f"- machine: {machine()}", f"- command: `{command}`"]
    if args.quick:
        lines.append("- **quick mode**: a smoke test of the pipeline, not numbers to quote.")
    return lines


def attention_section(args: argparse.Namespace, command: str, rate: float, rows: list, doc: Path) -> str:
    def link(path: Path) -> str:
        return os.path.relpath(path, doc.parent)

    size = args.matmul
    lines = [
        *header(args, command),
        f"- fp32 matmul rate ({size} x {size} @ {size} x {size}, median of 10): **{rate:.1f} GFLOP/s**; "
        "'of matmul' is each row's GFLOP/s over it.",
        f"- input (B, C, H, W) = ({args.batch}, {args.channels}, s, s), fp32, {args.device}, each "
        "mechanism with its default options. Forward: evaluation mode under `no_grad`; forward + "
        "backward: training mode, gradients of the input and every parameter. Median of "
        f"{args.repeats} rounds after {args.warmup} warm-up rounds, all variants of a size interleaved.",
        "- peak memory: most bytes allocated at once beyond parameters and inputs (CPU: the "
        "allocator's events under `torch.profiler`; CUDA: `max_memory_allocated`).",
        "- GFLOP: forward, `visattn.flops.count_flops` (matrix products and convolutions, fused "
        "attention included; element-wise work not counted); GFLOP/s at the median forward time.",
        "- baselines: `naive` = the textbook attention (`q @ k^T * scale`, softmax, `@ v`, N x N "
        "held) with mhsa's weights; `timm` = timm's layer in our module's configuration (residual "
        "added where ours has one). '× visattn' = the baseline's time over ours in the same round, "
        "median over rounds (above 1: visattn is faster).",
        f"- data: [{link(args.csv)}]({link(args.csv)}); plots: "
        f"![time]({link(args.plot_dir / 'bench-attention-time.png')}) "
        f"![memory]({link(args.plot_dir / 'bench-attention-memory.png')})",
        "",
        *slower_than_baselines(rows),
        markdown(rows),
    ]
    return "\n".join(lines)


def slower_than_baselines(rows: list, below: float = 0.95) -> list[str]:
    """A sentence per case where a baseline ran faster than visattn (ratio under ``below``)."""
    cases = []
    for r in rows:
        for label, ratio in (("forward", r.fwd_ratio), ("forward + backward", r.fwdbwd_ratio)):
            if not math.isnan(ratio) and ratio < below:  # NaN where not measured
                cases.append(f"{r.name} at {r.H}×{r.W} {label} ({r.variant} {1 / ratio:.2f}x faster)")
    if not cases:
        return [f"Every baseline row is at most {1 - below:.0%} faster than visattn's.", ""]
    lead = f"Where a baseline is more than {1 - below:.0%} faster than visattn: "
    return [lead + "; ".join(cases) + ".", ""]


def model_section(args: argparse.Namespace, command: str, doc: Path) -> str:
    lines = header(args, command)
    reason = model_suite_unavailable()
    if reason:
        return "\n".join([*lines, f"- {reason}"])
    settings = MODEL_SETTINGS["quick" if args.quick else "full"]
    rows = run_model_suite(settings=settings, repeats=args.model_repeats, warmup=1, device=args.device)
    path = write_csv(rows, args.out_dir / "bench-models.csv")
    lines += [
        "- what: visattn's `resnet18` and timm's (`block_args={'attn_layer': name}`), random "
        "weights, 1000 classes, channels-last, fp32. Inference: forward under `no_grad`; training: "
        f"forward, cross-entropy, backward, SGD step. Median of {args.model_repeats} rounds after one "
        "warm-up round, interleaved; "
        "'× visattn' = timm's time over visattn's in the same round (above 1: visattn is faster).",
        f"- data: [{os.path.relpath(path, doc.parent)}]({os.path.relpath(path, doc.parent)})",
        "",
        model_markdown(rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/attention_suite.py", *given])
    doc = args.out_dir / "benchmarks.md"
    rate = matmul_rate(args.matmul, device=args.device)
    print(f"fp32 matmul rate: {rate:.1f} GFLOP/s", flush=True)
    rows = run_attention_suite(
        args.names,
        args.sizes,
        channels=args.channels,
        batch=args.batch,
        backward=not args.no_backward,
        warmup=args.warmup,
        repeats=args.repeats,
        baselines=not args.no_baselines,
        device=args.device,
        matmul_gflops=rate,
    )
    print(f"wrote {write_csv(rows, args.csv)}")
    print(f"wrote {plot(rows, args.plot_dir / 'bench-attention-time.png', metrics=('fwd_ms', 'fwdbwd_ms'))}")
    memory = ("peak_mib",) if args.no_backward else ("peak_mib", "peak_fwdbwd_mib")
    print(f"wrote {plot(rows, args.plot_dir / 'bench-attention-memory.png', metrics=memory)}")
    write_section("Attention mechanisms", attention_section(args, command, rate, rows, doc), doc)
    if not args.no_models:
        write_section("ResNet-18 with attention", model_section(args, command, doc), doc)


if __name__ == "__main__":
    main()
