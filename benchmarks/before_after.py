"""Every attention mechanism now against the same mechanism at an earlier revision, both
imported into one process and timed interleaved; written to the section "Mechanisms before
and after" of docs/benchmarks.md.

Usage (repository root, .venv installed, a git checkout):

    .venv/bin/python benchmarks/before_after.py --before REV [--names swin halo] [--sizes 8 16 32 64]
        [--channels 64] [--batch 8] [--repeats 7] [--quick]

The earlier revision's ``src/visattn`` is extracted with ``git archive`` into a temporary
folder as the package ``visattn_before`` (the package imports itself only relatively, so both
copies live side by side with their own registries). Each mechanism is built with its
defaults in both versions; when the parameter names agree the earlier one gets the same
weights. 'after / before' is the median of paired ratios of the two times (below 1: faster
now); rows above 1.05 are listed below the table.
"""

from __future__ import annotations

import argparse
import importlib
import io
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from _report import machine, write_section
from visattn.attention import ATTENTION
from visattn.bench import interleave, matmul_rate, paired_ratio

ROOT = Path(__file__).resolve().parents[1]


def import_revision(rev: str, folder: Path):
    """``src/visattn`` at ``rev`` as the package ``visattn_before``."""
    archive = subprocess.run(
        ["git", "archive", rev, "src/visattn"], cwd=ROOT, check=True, capture_output=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "src" / "visattn").rename(folder / "visattn_before")
    sys.path.insert(0, str(folder))
    return importlib.import_module("visattn_before.attention").ATTENTION


def build_pair(name: str, before_registry, channels: int):
    torch.manual_seed(0)
    now = ATTENTION.get(name)(channels)
    torch.manual_seed(0)
    then = before_registry.get(name)(channels)
    state = now.state_dict()
    if set(state) == set(then.state_dict()) and all(
        state[k].shape == v.shape for k, v in then.state_dict().items()
    ):
        then.load_state_dict(state)
    return now, then


def time_pair(now, then, x: torch.Tensor, *, train: bool, repeats: int) -> float:
    now.train(train), then.train(train)

    def run(module):
        if not train:
            return lambda: module(x)
        params = [p for p in module.parameters() if p.requires_grad]
        return lambda: torch.autograd.grad(module(x).sum(), [x, *params])

    with torch.set_grad_enabled(train):
        t = interleave({"now": run(now), "then": run(then)}, warmup=2, repeats=repeats)
    # now time over then time, round by round
    return paired_ratio(t["then"], t["now"]), t["now"].median * 1e3, t["then"].median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare with")
    parser.add_argument("--names", nargs="+")
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="sizes 8 and 16, 3 rounds, print only")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = [8, 16], 3
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    rows, slower = [], []
    with tempfile.TemporaryDirectory() as tmp:
        before = import_revision(args.before, Path(tmp))
        names = [n for n in (args.names or ATTENTION.names()) if n in before]
        for name in names:
            now, then = build_pair(name, before, args.channels)
            for side in args.sizes:
                x = torch.randn(args.batch, args.channels, side, side, requires_grad=True)
                cells = []
                for train in (False, True):
                    ratio, ms_now, ms_then = time_pair(now, then, x, train=train, repeats=args.repeats)
                    cells += [f"{ms_then:.2f}", f"{ms_now:.2f}", f"{ratio:.2f}"]
                    if ratio > 1.05:
                        slower.append(
                            f"{name} {side}x{side} {'fwd+bwd' if train else 'forward'}: {ratio:.2f}"
                        )
                rows.append(f"| {name} | {side}x{side} | " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    if args.quick:
        return
    body = [
        f"- machine: {machine()}",
        f"- command: `{shlex.join(['python', 'benchmarks/before_after.py', *sys.argv[1:]])}`",
        f"- before: revision {rev}",
        f"- fp32 matmul rate (2048 x 2048 sgemm): **{matmul_rate():.1f} GFLOP/s**",
        f"- C = {args.channels}, batch {args.batch}, fp32; median of {args.repeats} interleaved rounds;",
        "  'after / before' is the median of paired ratios (below 1: faster now).",
        "",
        "| mechanism | map | forward before ms | forward after ms | after / before | fwd+bwd before ms "
        "| fwd+bwd after ms | after / before |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "More than 5 % slower now: " + ("; ".join(slower) if slower else "none") + ".",
    ]
    write_section("Mechanisms before and after", "\n".join(body))


if __name__ == "__main__":
    main()
