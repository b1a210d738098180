"""The run report: one self-contained HTML page, ``report.html``, from a run folder's files.

``write_report(run_dir)`` reads what a training run leaves in its folder (config, metrics,
summary, figures, checkpoints, the explanation scorecard) -- or what a comparison leaves
(leaderboard) -- and writes a page that holds everything inline: images as ``data:`` URIs,
charts as SVG, tables as HTML; no script and no reference to anything outside the file. A
section whose files are missing says so instead of failing. The training loop calls
``write_run_report`` at the end of every run; ``visattn report RUN_DIR`` rebuilds the page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from .files import RUN_FILES

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"


class ReportError(ValueError):
    """The folder cannot be reported on (missing, or not a run or comparison folder)."""


def write_report(run_dir: Path, *, test: Any = None) -> Path:
    """Write ``run_dir/report.html`` from the files in ``run_dir`` and return its path.

    Args:
        run_dir: a training run's folder, or a comparison's (``leaderboard.json``).
        test: the run's test split, when the caller holds it (the training loop), so that the
            pointing-game grid does not build it again; by default it is built from the data
            set the checkpoint names.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ReportError: ``run_dir`` is not a folder, or holds none of the files of a run or of a
            comparison.
        OSError: the page cannot be written there.

    Example:
        >>> write_report(Path("runs/20261201-120000-attention_cnn"))  # doctest: +SKIP
        PosixPath('runs/20261201-120000-attention_cnn/report.html')
    """
    from .page import build_page

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a folder; give a run folder")
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise ReportError(f"{run_dir} is not a run folder: it holds none of {', '.join(RUN_FILES)}")
    path = run_dir / REPORT_NAME
    atomic_write_text(path, build_page(run_dir, test=test))
    return path


def write_run_report(run_dir: Path, *, test: Any = None) -> str | None:
    """``write_report`` for the end of training: the path written, or ``None`` after logging one
    warning line; it never raises, so a failing page cannot cost the run its other files."""
    try:
        return str(write_report(run_dir, test=test))
    except Exception as err:
        log.warning("report.html not written: %s: %s", type(err).__name__, err)
        return None


__all__ = ["REPORT_NAME", "ReportError", "write_report", "write_run_report"]
