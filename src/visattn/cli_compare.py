"""``visattn compare``: train the same model with several attentions over several seeds, on
the same data, recipe and budget, and write the leaderboard (``visattn.compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_options import schema_parameters, with_parameters
from .train.config import TrainConfig, resolve_config

#: Train options that the comparison sets per member instead.
OWN = ("attention", "seed", "output")


def compare_command(
    *,
    attention: Annotated[
        str,
        typer.Option(
            help="Comma-separated attentions (none for the network without), 'default' "
            "(a representative set across the families) or 'all' (every one that fits the model)."
        ),
    ] = "default",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per attention: 0, 1, ..., N-1.")] = 3,
    budget: Annotated[
        str,
        typer.Option(help="epochs (every member the same epochs) or equal-time (the slowest one's time)."),
    ] = "epochs",
    preset: Annotated[
        str | None, typer.Option(help="short: 2 epochs and a 100-image quick scorecard, for a quick ranking.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config shared by every member.")] = None,
    output: Annotated[Path, typer.Option(help="The comparison folder.")] = Path("runs/compare"),
    **flags: Any,
) -> None:
    """Compare attentions fairly: members with the same data, recipe and budget, several seeds
    each; leaderboard.csv, leaderboard.json, leaderboard.png and report.html in the folder.
    Rerunning trains only what is missing (new attentions or seeds, an interrupted member)."""
    from .cli import console, user_errors
    from .compare import PRESETS, compare

    with user_errors():
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"--preset must be one of: {', '.join(PRESETS)}; got {preset!r}")
        values = {**(PRESETS[preset] if preset else {}), **{k: v for k, v in flags.items() if v is not None}}
        base = resolve_config(config, **values)
        rows = compare(base, attention, list(range(seeds)), output, budget=budget, say=console.print)
    console.print(_table(rows))
    console.print(f"wrote {output / 'leaderboard.csv'}, leaderboard.json, leaderboard.png, report.html")


def _table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="leaderboard (mean +- std over seeds)")
    for name in ("attention", "accuracy", "vs none (95 %)", "pointing", "faithfulness", "params", "MFLOPs",
                 "train img/s"):  # fmt: skip
        table.add_column(name)

    def pm(mean: float | None, std: float | None, scale: float = 100.0, digits: int = 2) -> str:
        if mean is None:
            return "-"
        return f"{mean * scale:.{digits}f}" + ("" if std is None else f" +- {std * scale:.{digits}f}")

    for r in rows:
        v = r["vs_none"]
        versus = "-" if v is None or v["low"] is None else (
            f"{v['mean'] * 100:+.2f} [{v['low'] * 100:+.2f}, {v['high'] * 100:+.2f}]"
            + (" *" if v["beyond_noise"] else "")
        )  # fmt: skip
        table.add_row(
            r["attention"], pm(r["test_accuracy"], r["test_accuracy_std"]), versus,
            pm(r["pointing_game"], r["pointing_game_std"], digits=1),
            pm(r["faithfulness"], r["faithfulness_std"], scale=1.0, digits=3),
            f"{r['parameters']:,}", f"{r['flops'] / 1e6:.1f}", pm(r["train_images_per_s"], None, 1.0, 0),
        )  # fmt: skip
    return table


compare_command = with_parameters(
    compare_command, [p for p in schema_parameters(TrainConfig) if p.name not in OWN]
)
