"""report.html from hand-made folders: every section copes with missing and damaged files,
text from files is escaped, a comparison folder shows its leaderboard, and the page never
refers to anything outside itself."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image
from reportkit import SECTIONS, assert_self_contained, section_text

from visattn.report import ReportError, write_report, write_run_report
from visattn.report.images import KEEP_BYTES, file_uri
from visattn.report.markup import esc
from visattn.report.svg import line_chart, nice_ticks

METRICS = (
    "epoch,step,train_loss,train_accuracy,test_loss,test_accuracy,test_top5,pointing_game,lr,skipped_steps\n"
    "1,10,1.5,0.4,1.2,0.55,0.9,0.8,0.002,0\n2,20,0.9,0.7,0.8,0.75,0.95,,0.001,0\n"
)


def page_of(folder):
    path = write_report(folder)
    assert path == folder / "report.html"
    page = path.read_text(encoding="utf-8")
    assert_self_contained(page)
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page, anchor
    return page


def test_a_folder_with_only_its_config_says_what_was_not_recorded(tmp_path):
    (tmp_path / "config.yaml").write_text("model: attention_cnn\nepochs: 3\n")
    page = page_of(tmp_path)
    assert "attention_cnn" in section_text(page, "config")
    for anchor in ("summary", "curves", "classes", "attention", "scorecard"):
        assert "not recorded for this run" in section_text(page, anchor), anchor
    assert "not a comparison folder" in section_text(page, "leaderboard")


def test_curves_and_tables_from_the_csv_and_summary(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS + "3,30,0.5\n")  # a row cut short by a crash
    summary = {"model": "m", "test_accuracy": 0.75, "per_class_accuracy": {"cat": 0.5, "dog": 1.0},
               "confusion": [[1, 1], [0, 2]], "pointing_game": None}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    page = page_of(tmp_path)
    curves = section_text(page, "curves")
    assert curves.count("<svg") == 4 and "epoch 2: 75.0%" in curves and "test accuracy" in curves
    classes = section_text(page, "classes")
    assert (
        "cat" in classes and "dog" in classes and "50.0%" in classes and "4 test images, 3 right" in classes
    )
    assert "75.00%" in page.split("</header>")[0]


def test_a_damaged_file_spoils_only_its_own_section(tmp_path):
    (tmp_path / "summary.json").write_text("{not json")
    (tmp_path / "metrics.csv").write_text(METRICS)
    (tmp_path / "attention.png").write_bytes(b"not a png")
    page = page_of(tmp_path)
    assert "could not be shown" in section_text(page, "summary")
    assert "<svg" in section_text(page, "curves")
    assert "could not be shown" in section_text(page, "attention")


def test_text_from_files_is_escaped_and_addresses_made_inert(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "model: '<script>alert(1)</script>'\ndata_dir: 'https://example.org//data'\nnote: '\" onload=\"x'\n"
    )
    (tmp_path / "metrics.csv").write_text("epoch,<b>odd</b>\n1,0.5\n")
    (tmp_path / "summary.json").write_text(json.dumps({"model": "<img src=x onerror=alert(1)>"}))
    page = page_of(tmp_path)  # also: no "https:" and no "//" anywhere
    assert "<script>" not in page and "<img src=x" not in page and "<b>odd" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;odd&lt;/b&gt;" in page
    assert esc("https://example.org//data") in page


def test_large_figures_are_shrunk_and_small_ones_kept(tmp_path):
    noisy = np.random.default_rng(0).integers(0, 255, (900, 2400, 4), dtype=np.uint8)
    Image.fromarray(noisy, "RGBA").save(tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size > KEEP_BYTES
    uri, size = file_uri(tmp_path / "big.png")
    assert uri.startswith("data:image/jpeg;base64,") and max(size) == 2000
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "small.png")
    uri, size = file_uri(tmp_path / "small.png")
    assert uri.startswith("data:image/png;base64,") and size == (40, 30)


def test_a_comparison_folder_leads_with_its_leaderboard_and_links_its_runs(tmp_path):
    for name in ("run-a", "run-b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"model: {name}\n")
    (tmp_path / "run-a" / "report.html").write_text("<!DOCTYPE html>")
    (tmp_path / "not-a-run").mkdir()
    rows = [{"run": "run-a", "attention": "se", "test_accuracy": 0.91},
            {"run": "run-b", "attention": "<cbam>", "test_accuracy": 0.93}]  # fmt: skip
    (tmp_path / "leaderboard.json").write_text(json.dumps({"metric": "test_accuracy", "rows": rows}))
    Image.new("RGB", (64, 32), (200, 40, 40)).save(tmp_path / "leaderboard.png")
    page = page_of(tmp_path)
    assert page.index('id="leaderboard"') < page.index('id="summary"')
    board = section_text(page, "leaderboard")
    assert "&lt;cbam&gt;" in board and "0.93" in board and "data:image/png;base64," in board
    assert (
        '<a href="run-a/report.html">' in board and '<a href="run-b/">' in board and "not-a-run" not in board
    )


def test_a_compare_folder_shows_its_protocol_nested_columns_and_members_two_levels_down(tmp_path):
    for member in ("none-seed0", "se-seed0"):  # members/<attention>-seed<k>/<run folder>/
        run = tmp_path / "members" / member / "20261201-120000-attention_cnn"
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}")
    rows = [{"attention": "se", "seeds": [0, 1], "test_accuracy": 0.95,
             "vs_none": {"mean": 0.012, "low": -0.003, "high": 0.027, "beyond_noise": False}},
            {"attention": "none", "seeds": [0, 1], "test_accuracy": 0.94, "vs_none": None}]  # fmt: skip
    board = {"protocol": {"epochs": 12, "dataset": "cluttered-mnist"}, "rows": rows}
    (tmp_path / "leaderboard.json").write_text(json.dumps(board))
    (tmp_path / "comparison.json").write_text("{}")
    section = section_text(page_of(tmp_path), "leaderboard")
    assert "<summary>protocol</summary>" in section and "cluttered-mnist" in section
    assert "vs none beyond noise" in section and "<td>no</td>" in section and "0, 1" in section
    assert section.count('<a href="members/') == 2 and "member runs (2)" in section


def test_a_leaderboard_csv_is_enough(tmp_path):
    (tmp_path / "leaderboard.csv").write_text("run,test_accuracy\nx,0.5\n")
    board = section_text(page_of(tmp_path), "leaderboard")
    assert "<td>x</td>" in board and "leaderboard.png: not recorded" in board


def test_folders_that_are_not_runs_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ReportError, match="not a run folder"):
        write_report(tmp_path)
    with pytest.raises(ReportError, match="not a folder"):
        write_report(tmp_path / "notes.txt")
    assert not (tmp_path / "report.html").exists()


def test_the_end_of_training_call_logs_one_line_and_never_raises(tmp_path, caplog, monkeypatch):
    (tmp_path / "config.yaml").write_text("model: m\n")
    monkeypatch.setattr("visattn.report.page.build_page", lambda *a, **k: 1 / 0)
    with caplog.at_level(logging.WARNING):
        assert write_run_report(tmp_path) is None
    (record,) = caplog.records
    assert "report.html not written: ZeroDivisionError" in record.getMessage()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no half-written page


def test_chart_pieces():
    assert nice_ticks(0.12, 0.97) == [0.2, 0.4, 0.6, 0.8] and nice_ticks(0.02, 2.1) == [0.5, 1.0, 1.5, 2.0]
    one = line_chart("loss", {"train loss": [(1.0, 0.7)]})
    assert one.startswith("<svg") and one.count("<circle") == 1 and "<polyline" not in one
    assert line_chart("loss", {"train loss": []}) == ""
