"""Where the time goes in the cases whose performance goals are not met: operator-level
profiles (torch.profiler, CPU) written to the section "Profiles" of docs/benchmarks.md.

Usage (repository root, .venv installed):

    .venv/bin/python benchmarks/profiles.py [--steps 10]

1. ResNet-18 with SE / CBAM / ECA, one training step at 32 px, batch 64, visattn and timm:
   the share of convolutions (shared by both, oneDNN) against everything else.
2. The swin mechanism against timm's WindowAttention with Swin's pad/roll/partition,
   forward + backward at 56 x 56, C = 128, B = 8: the operators that differ.
3. The windowed attention core (goal 2) beside the naive attention and SDPA: how much of each
   is the batched matmuls they all share.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from _report import machine, write_section
from goals import naive
from visattn import attention, create_model
from visattn.attention import ATTENTION
from visattn.attention.swin import ShiftedWindowAttention
from visattn.bench.baselines import BASELINES, TimmShiftedWindows

CONV = ("convolution", "mkldnn", "conv2d", "conv_depthwise", "_slow_conv")


def op_times(step, steps: int) -> dict[str, float]:
    """Self CPU milliseconds per step, by operator."""
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}


def training_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def resnet_rows(steps: int) -> list[str]:
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (64,))
    rows = [
        "| attention | network | ms per step | convolutions | share | everything else |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in ("se", "cbam", "eca"):
        ours = create_model("resnet18", num_classes=1000, attention=name)
        theirs = timm.create_model("resnet18", num_classes=1000, block_args={"attn_layer": name})
        for label, model in (("visattn", ours), ("timm", theirs)):
            model = model.to(memory_format=torch.channels_last).train()
            times = op_times(training_step(model, x, y), steps)
            total = sum(times.values())
            conv = sum(t for k, t in times.items() if any(c in k for c in CONV))
            rows.append(
                f"| {name} | {label} | {total:.1f} | {conv:.1f} | {conv / total:.0%} | {total - conv:.1f} |"
            )
            print(rows[-1], flush=True)
    return rows


def compare_rows(steps: int, step_fns: dict[str, Callable[[], None]], top: int = 14) -> list[str]:
    """The operators taking most time in any of the variants, side by side, and the totals."""
    times = {label: op_times(fn, steps) for label, fn in step_fns.items()}
    labels = list(times)
    merged = defaultdict(lambda: [0.0] * len(labels))
    for i, label in enumerate(labels):
        for op, t in times[label].items():
            merged[op][i] += t
    heavy = sorted(merged.items(), key=lambda kv: -max(kv[1]))[:top]
    rows = ["| operator | " + " | ".join(f"{label} ms" for label in labels) + " |"]
    rows.append("|---|" + "---:|" * len(labels))
    rows += ["| `" + op + "` | " + " | ".join(f"{t:.2f}" for t in ts) + " |" for op, ts in heavy]
    rows.append("| **total** | " + " | ".join(f"{sum(times[label].values()):.2f}" for label in labels) + " |")
    return rows


def swin_rows(steps: int) -> list[str]:
    x = torch.randn(8, 128, 56, 56, requires_grad=True)
    step_fns = {}
    for label, module in (
        ("visattn", ShiftedWindowAttention(128, window_size=7, heads=4)),
        ("timm", TimmShiftedWindows(128, 56, window=7, shift=3, heads=4, residual=True)),
    ):
        module.train()

        def step(m=module) -> None:
            torch.autograd.grad(m(x).sum(), [x, *m.parameters()])

        step_fns[label] = step
    return compare_rows(steps, step_fns)


def window_core_rows(steps: int) -> list[str]:
    """The windowed core of performance goal 2 (K = 49, 512 windows, learnable bias)."""
    K, windows = 49, 512
    q, k, v = (torch.randn(windows, 4, K, 32, requires_grad=True) for _ in range(3))
    bias = (torch.randn(4, K, K) * 0.1).requires_grad_(True)
    cores = {
        "visattn": lambda: attention(q, k, v, bias=bias, need_weights=False)[0],
        "naive": lambda: naive(q, k, v, bias),
        "SDPA": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
    }

    def step(core) -> Callable[[], None]:
        return lambda: torch.autograd.grad(core().sum(), [q, k, v, bias])

    return compare_rows(steps, {label: step(core) for label, core in cores.items()}, top=10)


def relative_rows(steps: int) -> list[str]:
    """BoT and halo against timm's layers at 8 x 8, forward: the sizes where timm is faster."""
    rows = []
    x = torch.randn(8, 64, 8, 8)
    for name in ("bot", "halo"):
        torch.manual_seed(0)
        ours = ATTENTION.get(name)(64).eval()
        theirs = BASELINES[name]["timm"](ours, 8, 8).eval()
        rows += [f"{name}:", ""]
        step_fns = {
            label: torch.no_grad()(lambda m=m: m(x)) for label, m in (("visattn", ours), ("timm", theirs))
        }
        rows += [*compare_rows(steps, step_fns, top=10), ""]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    body = [
        f"- machine: {machine()}",
        f"- command: `{shlex.join(['python', 'benchmarks/profiles.py', *sys.argv[1:]])}`",
        "- self CPU time per step from `torch.profiler` (its own overhead included, so totals run",
        "  above the benchmarks' wall-clock times).",
        "",
        "### ResNet-18 with attention, one training step (32 px, batch 64, channels-last)",
        "",
        *resnet_rows(args.steps),
        "",
        "### swin against timm's WindowAttention, forward + backward (56 x 56, C = 128, B = 8)",
        "",
        *swin_rows(args.steps),
        "",
        "### Windowed attention core, forward + backward (K = 49, 512 windows, learnable bias)",
        "",
        *window_core_rows(args.steps),
        "",
        "### BoT and halo against timm's layers, forward at 8 x 8 (C = 64, B = 8)",
        "",
        *relative_rows(args.steps),
    ]
    write_section("Profiles", "\n".join(body))


if __name__ == "__main__":
    main()
