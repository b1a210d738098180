"""``visattn report RUN_DIR``: rebuild a run's (or a comparison's) self-contained report.html
from the files in its folder, for runs older than the report or after adding a scorecard."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def report_command(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder (or a comparison folder with leaderboard.json).")
    ],
) -> None:
    """Write RUN_DIR/report.html: config, learning curves, classes, attention and pointing game,
    scorecard and leaderboard, in one HTML file with every image inlined."""
    from rich.markup import escape

    from .cli import console, fail, user_errors
    from .report import write_report

    started = time.perf_counter()
    with user_errors():
        try:
            path = write_report(run_dir)
        except OSError as err:
            if isinstance(err, FileNotFoundError) and not run_dir.exists():
                raise
            fail(f"cannot write {run_dir / 'report.html'}: {err.strerror or err}")
    size, seconds = path.stat().st_size, time.perf_counter() - started
    console.print(f"wrote [cyan]{escape(str(path))}[/cyan] ({size / 1e6:.2f} MB in {seconds:.2f} s)")
