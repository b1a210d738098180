"""The measurements behind the attention core's kernel rules (``visattn.functional.KernelRules``),
each kernel forced with ``attention(..., kernel=...)`` and timed interleaved in one process.
Written to the section "Attention core kernel rules" of docs/benchmarks.md.

Usage (repository root, .venv installed):

    .venv/bin/python benchmarks/core_rules.py [--quick] [--repeats 7]

Tables:
1. no extra term, forward+backward (training) and forward (inference): matmul against
   fused, by scores per window (``L * S``) -> ``KernelRules.train_scores``,
   ``KernelRules.infer_scores``;
2. factored relative logits that learn (BoT, halo), forward+backward and forward: matmul
   against the logits folded into the fused kernel -> ``KernelRules.rel_scores``;
3. an additive bias (Swin's table), learnable (forward+backward) and constant (forward):
   matmul against autograd (explicit) and PyTorch's SDPA with the bias as its mask.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch
import torch.nn.functional as F

from _report import machine, write_section
from visattn import attention
from visattn.bench import interleave, matmul_rate, paired_ratio
from visattn.functional import RULES, Relative

HEADS, DIM = 4, 32


def operands(windows: int, n: int, *, grad: bool, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(windows, HEADS, n, DIM, generator=g).requires_grad_(grad) for _ in range(3)]


def step(kernel: str, q, k, v, **terms):
    """One call, and its backward when the operands need gradients."""
    learn = [t for t in (q, k, v, terms.get("bias"), *(terms.get("rel") or ())) if t is not None]
    learn = [t for t in learn if t.requires_grad]

    def run() -> None:
        out = attention(q, k, v, need_weights=False, kernel=kernel, **terms)[0]
        if learn:
            torch.autograd.grad(out.sum(), learn)

    return run


def windows_for(n: int, budget: int) -> int:
    """Windows so that every row does about the same number of score entries."""
    return max(1, budget // (n * n))


def plain_table(sizes: list[int], repeats: int, budget: int) -> list[str]:
    lines = [
        "### 1. No extra term, forward + backward and forward",
        "",
        f"{HEADS} heads of {DIM}; windows chosen so that each row has about {budget:,} scores.",
        "",
        "| tokens | windows | pass | matmul ms | fused ms | fused / matmul |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for n in sizes:
        w = windows_for(n, budget)
        for label, grad in (("fwd+bwd", True), ("forward", False)):
            q, k, v = operands(w, n, grad=grad)
            with torch.set_grad_enabled(grad):
                t = interleave({name: step(name, q, k, v) for name in ("matmul", "fused")}, warmup=1,
                               repeats=repeats)  # fmt: skip
            ratio = paired_ratio(t["matmul"], t["fused"])  # fused time over matmul time
            ms = [t[name].median * 1e3 for name in ("matmul", "fused")]
            lines.append(f"| {n} | {w} | {label} | {ms[0]:.1f} | {ms[1]:.1f} | {ratio:.2f} |")
            print(lines[-1], flush=True)
    return lines


def relative_table(sides: list[int], repeats: int, budget: int) -> list[str]:
    lines = [
        "### 2. Learnable factored relative logits (BoT), forward + backward and forward",
        "",
        f"A global map of side x side tokens, {HEADS} heads of {DIM}, rows and cols logits that "
        "require grad; fused = the logits folded into the operands of the flash kernel.",
        "",
        "| map | tokens | maps | pass | matmul ms | fused ms | fused / matmul |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for side in sides:
        n = side * side
        w = windows_for(n, budget)
        for label, grad in (("fwd+bwd", True), ("forward", False)):
            q, k, v = operands(w, n, grad=grad)
            g = torch.Generator().manual_seed(1)
            rows, cols = (torch.randn(w, HEADS, n, side, generator=g).requires_grad_(grad) for _ in range(2))
            rel = Relative(rows, cols)
            runs = {name: step(name, q, k, v, rel=rel) for name in ("matmul", "fused")}
            with torch.set_grad_enabled(grad):
                t = interleave(runs, warmup=1, repeats=repeats)
            ratio = paired_ratio(t["matmul"], t["fused"])  # fused time over matmul time
            lines.append(
                f"| {side}x{side} | {n} | {w} | {label} | {t['matmul'].median * 1e3:.1f} | "
                f"{t['fused'].median * 1e3:.1f} | {ratio:.2f} |"
            )
            print(lines[-1], flush=True)
    return lines


def bias_table(sizes: list[tuple[int, int]], repeats: int) -> list[str]:
    lines = [
        "### 3. Additive bias (Swin), learnable (forward + backward) and constant (forward)",
        "",
        f"A (heads, K, K) bias broadcast over the windows, {HEADS} heads of {DIM}; SDPA = "
        "`F.scaled_dot_product_attention` with the bias as its mask.",
        "",
        "| K | windows | pass | matmul ms | explicit ms | SDPA ms | matmul / best other |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for n, w in sizes:
        for label, grad in (("fwd+bwd", True), ("forward", False)):
            q, k, v = operands(w, n, grad=grad)
            bias = (torch.randn(HEADS, n, n) * 0.1).requires_grad_(grad)

            def sdpa(q=q, k=k, v=v, bias=bias, grad=grad) -> None:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
                if grad:
                    torch.autograd.grad(out.sum(), [q, k, v, bias])

            runs = {name: step(name, q, k, v, bias=bias) for name in ("matmul", "explicit")}
            runs["sdpa"] = sdpa
            with torch.set_grad_enabled(grad):
                t = interleave(runs, warmup=1, repeats=repeats)
            best = max(paired_ratio(t["explicit"], t["matmul"]), paired_ratio(t["sdpa"], t["matmul"]))
            ms = [t[name].median * 1e3 for name in ("matmul", "explicit", "sdpa")]
            lines.append(f"| {n} | {w} | {label} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {best:.2f} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, print only")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    budget = 16 * 49 * 49 if args.quick else 512 * 49 * 49
    plain = [16, 49, 64, 100, 144, 256] if args.quick else [16, 49, 64, 100, 144, 196, 256, 576, 1024]
    sides = [8, 12] if args.quick else [8, 12, 16, 20, 24, 32]
    windows = [(49, 16), (144, 4)] if args.quick else [(49, 512), (144, 128)]
    rate = matmul_rate()
    print(f"fp32 matmul rate: {rate:.1f} GFLOP/s", flush=True)
    lines = [*plain_table(plain, args.repeats, budget), ""]
    lines += [*relative_table(sides, args.repeats, budget), ""]
    lines += bias_table(windows, args.repeats)
    if args.quick:
        return
    body = "\n".join(
        [
            f"- machine: {machine()}",
            f"- command: `{shlex.join(['python', 'benchmarks/core_rules.py', *sys.argv[1:]])}`",
            f"- fp32 matmul rate (2048 x 2048 sgemm): **{rate:.1f} GFLOP/s**",
            f"- rules in force during the run: train_scores = {RULES.train_scores:,}, "
            f"infer_scores = {RULES.infer_scores:,}, rel_scores = {RULES.rel_scores:,}, "
            f"score_bytes = {RULES.score_bytes:,}",
            "",
            *lines,
        ]
    )
    write_section("Attention core kernel rules", body)


if __name__ == "__main__":
    main()
