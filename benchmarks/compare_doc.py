"""Write docs/compare.md's measured section from a finished comparison folder: the command,
the machine, the date, the leaderboard table and its plot (copied to docs/compare/), and the
time the comparison took.

Usage (after ``visattn compare ... --output FOLDER`` has finished):

    .venv/bin/python benchmarks/compare_doc.py FOLDER --command "visattn compare ..." --seconds S

``--seconds`` is the comparison's wall time as measured by the caller (for example with
``/usr/bin/time``); the members' own wall times are summed from their ``member.json`` as well.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from _report import machine
from visattn.bench import matmul_rate

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "compare.md"
BEGIN, END = "<!-- comparison:begin -->", "<!-- comparison:end -->"


def cell(mean: float | None, std: float | None, scale: float = 100.0, digits: int = 1) -> str:
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f}" + ("" if std is None else f" ± {std * scale:.{digits}f}")


def versus(v: dict | None) -> str:
    if v is None or v.get("low") is None:
        return "-"
    text = f"{v['mean'] * 100:+.1f} [{v['low'] * 100:+.1f}, {v['high'] * 100:+.1f}]"
    return f"**{text}**" if v["beyond_noise"] else text


def table(rows: list[dict]) -> str:
    lines = [
        "| attention | test accuracy, % | vs none, points (95 %) | pointing, % | faithfulness | "
        "parameters | MFLOPs | train img/s | inference img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attention']} | {cell(r['test_accuracy'], r['test_accuracy_std'])} "
            f"| {versus(r['vs_none'])} "
            f"| {cell(r['pointing_game'], r['pointing_game_std'])} "
            f"| {cell(r['faithfulness'], r['faithfulness_std'], 1.0, 3)} | {r['parameters']:,} "
            f"| {r['flops'] / 1e6:.1f} | {cell(r['train_images_per_s'], None, 1.0, 0)} "
            f"| {cell(r['infer_images_per_s'], None, 1.0, 0)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--command", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args()
    board = json.loads((args.folder / "leaderboard.json").read_text())
    rows, protocol = board["rows"], board["protocol"]
    members = [json.loads(p.read_text()) for p in sorted(args.folder.glob("members/*/*/member.json"))]
    trained = sum(m["wall_seconds"] or 0 for m in members)
    (ROOT / "docs" / "compare").mkdir(exist_ok=True)
    shutil.copyfile(args.folder / "leaderboard.png", ROOT / "docs" / "compare" / "leaderboard.png")
    beyond = [r["attention"] for r in rows if (r["vs_none"] or {}).get("beyond_noise")]
    body = f"""{BEGIN}
## Measured: every mechanism that fits the AttentionCNN, three seeds

Command: `{args.command}` ({len(members)} members: {len(rows)} attentions x
{len(protocol["seeds"])} seeds, budget {protocol["budget"]}, {protocol["epochs"]} epochs each).
Machine: {machine()}; sgemm {matmul_rate():.0f} GFLOP/s when this page was written. Date:
{datetime.now(timezone.utc).strftime("%Y-%m-%d")}. The comparison took **{args.seconds / 60:.1f} minutes**
in all ({trained / 60:.1f} of them inside the members' training runs, the rest their closing
figures, quick scorecards, report pages and measurements).

Mean ± standard deviation over the seeds. *vs none*: the paired-by-seed 95 % interval of the
accuracy difference from the network without attention, in points, **bold** where it excludes 0
({", ".join(beyond) or "none of them"}). *Faithfulness*: the attention map's insertion AUC minus
the input baseline's in the members' quick scorecards ("-" for mechanisms without a spatial map).

{table(rows)}

![accuracy against cost](compare/leaderboard.png)
{END}"""
    text = DOC.read_text() if DOC.exists() else "# Which attention should I use?\n"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: body, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    DOC.write_text(text)
    print(body)


if __name__ == "__main__":
    main()
