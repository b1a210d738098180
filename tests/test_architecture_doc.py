"""docs/architecture.md stays true to the code: every file, folder and name it cites exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from visattn import functional

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "architecture.md").read_text()

PATHS = sorted(set(re.findall(r"`((?:src|tests|benchmarks|docs)/[\w/.]+?)(?:::\w+)?`", PAGE)))
SHORT = sorted(set(re.findall(r"`(\w+/[\w.]+\.py|\w+\.py|\w+/)`", PAGE)) - {p.split("/")[-1] for p in PATHS})
DOTTED = sorted(set(re.findall(r"`(visattn(?:\.\w+)+)`", PAGE)))


def test_the_page_cites_files():
    assert len(PATHS) > 10 and DOTTED


@pytest.mark.parametrize("path", PATHS)
def test_cited_paths_exist(path):
    assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist"


@pytest.mark.parametrize("name", SHORT)
def test_short_module_names_exist(name):
    """Names such as `tasks/base.py`, `_io.py` or `recorders/` are inside src/visattn (or at the
    repository's root, as `benchmarks/`)."""
    package = ROOT / "src" / "visattn"
    found = [ROOT / name, package / name, *package.rglob(name.rstrip("/"))]
    assert any(p.exists() for p in found), f"docs/architecture.md names {name}, not found under src/visattn"


@pytest.mark.parametrize("dotted", DOTTED)
def test_cited_python_names_exist(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{dotted} cannot be imported")


def test_rules_table_states_the_rules_in_force():
    for field in ("train_scores", "infer_scores", "rel_scores", "score_bytes"):
        assert f"`{field}`" in PAGE
        assert f"{getattr(functional.RULES, field):,}" in PAGE, f"docs/architecture.md: {field} changed"
