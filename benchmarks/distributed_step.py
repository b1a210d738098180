"""The main job's training step in one process against two DDP processes (torchrun, gloo) on
the same machine, runs interleaved; written to the section "Measured: one process against
two" of docs/distributed.md.

Usage (repository root, .venv installed):

    .venv/bin/python benchmarks/distributed_step.py [--pairs 3] [--epochs 3]

Each run is ``visattn train`` with the main job's defaults and ``--epochs N``; its training
throughput is the median of the per-epoch images/s in its timing.csv after the first epoch
(which includes warm-up). One process uses every core's thread; torchrun gives each of its
two processes one thread (its default ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from _report import machine
from visattn.bench import matmul_rate

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "distributed.md"
TITLE = "## Measured: one process against two"


def throughput(run_root: Path) -> float:
    run_dir = next(p for p in run_root.iterdir() if p.is_dir())
    with (run_dir / "timing.csv").open() as f:
        rows = list(csv.DictReader(f))
    return statistics.median(float(r["train_images_per_s"]) for r in rows[1:])


def train(processes: int, epochs: int, out: Path) -> float:
    bin_dir = Path(sys.executable).parent
    args = ["train", "--epochs", str(epochs), "--output", str(out)]
    if processes == 1:
        cmd = [str(bin_dir / "visattn"), *args]
    else:
        cmd = [
            str(bin_dir / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            str(processes),
            "-m",
            "visattn",
            *args,
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    if "Grad strides do not match" in proc.stderr:
        raise SystemExit("DDP warned about gradient strides again:\n" + proc.stderr[-2000:])
    return throughput(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="visattn-ddp-"))
    rows = []
    try:
        for pair in range(args.pairs):
            one = train(1, args.epochs, work / f"one-{pair}")
            two = train(2, args.epochs, work / f"two-{pair}")
            rows.append((one, two))
            print(f"pair {pair}: 1 process {one:.0f} img/s, 2 processes {two:.0f} img/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(two / one for one, two in rows)
    section = [
        TITLE,
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- fp32 matmul rate (2048 x 2048 sgemm): {matmul_rate():.1f} GFLOP/s",
        f"- command: `{shlex.join(['python', 'benchmarks/distributed_step.py', *sys.argv[1:]])}`",
        f"- what: the main job (`visattn train --epochs {args.epochs}`), one process with its",
        "  threads against `torchrun --standalone --nproc_per_node 2` (gloo, one thread each);",
        "  training images/s, median of the epochs after the first; no stride warning was printed.",
        "",
        "| pair | 1 process img/s | 2 processes img/s | 2 / 1 |",
        "|---:|---:|---:|---:|",
        *(f"| {i} | {a:.0f} | {b:.0f} | {b / a:.2f} |" for i, (a, b) in enumerate(rows)),
        "",
        f"Median ratio: **{ratio:.2f}**. On one machine the processes share its cores, so DDP buys",
        "no speed here; the figure shows what its all-reduce and the split batches cost.",
    ]
    text = DOC.read_text()
    pattern = re.compile(rf"^{re.escape(TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = "\n".join(section) + "\n"
    text = pattern.sub(lambda _: body + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    DOC.write_text(text.rstrip() + "\n")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
