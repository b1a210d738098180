"""Shared by the benchmark scripts: a description of the machine, and writing a section of
docs/benchmarks.md (replaced if present, appended otherwise), each with its date."""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Results of the scripts in `benchmarks/`, one section each, rewritten when its script runs.
Each section names the machine, the date and the command that produced it. Timings are never
asserted by the test suite.
"""


def machine() -> str:
    """CPU model, cores, torch version and threads, Python, OS (and the GPU if one is used)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads){gpu}, Python {platform.python_version()}, {platform.system()}"
    )


def write_section(title: str, body: str, doc: Path = DOC) -> None:
    """Put ``## title`` with the date and ``body`` into ``doc``."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"## {title}\n\n- date: {date}\n{body.rstrip()}\n"
    text = doc.read_text() if doc.is_file() else HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _: section + "\n", text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text.rstrip() + "\n")
    print(f"wrote section '{title}' of {doc}")
