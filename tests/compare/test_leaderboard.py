"""The leaderboard's statistics against a hand computation, and its files."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from visattn.compare import leaderboard, parse_attentions, versus_reference, write_leaderboard
from visattn.compare.leaderboard import leaderboard_csv

T_975_DF2 = 4.302653  # Student t, 97.5th percentile, 2 degrees of freedom (printed tables)


def _member(attention: str, seed: int, accuracy: float, **extra: float) -> dict:
    base = {"attention": attention, "seed": seed, "test_accuracy": accuracy, "pointing_game": None,
            "faithfulness": None, "train_images_per_s": 100.0, "infer_images_per_s": 400.0,
            "wall_seconds": 10.0, "parameters": 1000, "flops": 2_000_000}  # fmt: skip
    return {**base, **extra}


def test_mean_spread_and_paired_interval_by_hand():
    none = [0.90, 0.92, 0.91]
    se = [0.93, 0.96, 0.93]  # differences 0.03, 0.04, 0.02: mean 0.03, sd 0.01
    members = [_member("none", s, a) for s, a in enumerate(none)] + [
        _member("se", s, a, pointing_game=0.5 + s / 10) for s, a in enumerate(se)
    ]
    rows = leaderboard(members)
    assert [r["attention"] for r in rows] == ["se", "none"]  # best mean accuracy first
    se_row = rows[0]
    assert se_row["test_accuracy"] == pytest.approx(0.94, abs=1e-9)
    assert se_row["test_accuracy_std"] == pytest.approx(
        math.sqrt(0.0003), abs=1e-6
    )  # squares .0001+.0004+.0001
    assert se_row["pointing_game"] == pytest.approx(0.6) and se_row["pointing_game_std"] == pytest.approx(0.1)
    v = se_row["vs_none"]
    half = T_975_DF2 * 0.01 / math.sqrt(3)
    assert v["mean"] == pytest.approx(0.03, abs=1e-9)
    assert v["low"] == pytest.approx(0.03 - half, abs=1e-6) and v["high"] == pytest.approx(
        0.03 + half, abs=1e-6
    )
    assert v["beyond_noise"] is True and v["seeds"] == 3
    assert rows[1]["vs_none"] is None


def test_noise_larger_than_the_difference_gives_no_verdict_and_one_seed_no_interval():
    close = versus_reference({0: 0.91, 1: 0.90, 2: 0.93}, {0: 0.90, 1: 0.92, 2: 0.91})
    assert close["beyond_noise"] is False and close["low"] < 0 < close["high"]
    assert versus_reference({0: 0.91}, {0: 0.90}) is None  # one shared seed: no interval
    assert versus_reference({0: 0.91, 1: 0.9}, {2: 0.90, 3: 0.8}) is None  # no shared seed


def test_files_round_trip(tmp_path):
    rows = leaderboard([_member("none", 0, 0.9), _member("none", 1, 0.8), _member("se", 0, 0.95),
                        _member("se", 1, 0.85)])  # fmt: skip
    paths = write_leaderboard(rows, tmp_path, {"budget": "epochs"})
    assert [p.name for p in paths] == ["leaderboard.csv", "leaderboard.json", "leaderboard.png"]
    assert json.loads(paths[1].read_text())["rows"] == rows
    table = list(csv.DictReader(io.StringIO(leaderboard_csv(rows))))
    assert table[0]["attention"] == "se" and table[0]["seeds"] == "0 1"
    assert float(table[0]["vs_none_mean"]) == pytest.approx(0.05)
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_lists():
    assert parse_attentions("se, none,se", lambda n: True) == ["se", "none"]
    assert parse_attentions("all", lambda n: n in ("se", "eca")) == ["none", "eca", "se"]
    with pytest.raises(ValueError, match="unknown attention 'sse'; give a comma-separated list of: "):
        parse_attentions("se,sse", lambda n: True)
    with pytest.raises(ValueError, match="an empty name"):
        parse_attentions("se,,eca", lambda n: True)
