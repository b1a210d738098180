"""Reading a run folder's files for the report. A missing file raises ``Absent`` (its section
then says it was not recorded); a damaged one raises its own error, which the page shows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from .markup import NOT_RECORDED, Absent

# Files whose presence makes a folder something the report can describe.
RUN_FILES = ("config.yaml", "summary.json", "metrics.csv", "timing.csv", "best.safetensors",
             "last.safetensors", "scorecard.json", "leaderboard.json", "leaderboard.csv")  # fmt: skip


def need(path: Path) -> Path:
    if not path.is_file():
        raise Absent(f"{NOT_RECORDED} (no {path.name})")
    return path


def read_json(path: Path) -> Any:
    return json.loads(need(path).read_text(encoding="utf-8"))


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file; rows cut short (a crash while appending) are left out."""
    with need(path).open(newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if None not in row.values()]


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(need(path).read_text(encoding="utf-8"))


def optional(read: Any, path: Path) -> Any:
    """``read(path)``, or ``None`` when the file is missing or unreadable."""
    try:
        return read(path)
    except (Absent, OSError, ValueError, yaml.YAMLError):
        return None


def number(text: Any) -> float | None:
    """A CSV cell as a float, ``None`` when empty or not a number."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # NaN counts as missing
