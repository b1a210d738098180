"""report.html of a real run: written by training itself, every section filled, under 2 MB,
self-contained; ``visattn report`` rebuilds it and refuses bad folders with one line."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from reportkit import SECTIONS, assert_self_contained, section_text
from typer.testing import CliRunner

from visattn.cli import app
from visattn.data import load_dataset
from visattn.report.pointing import SHOWN, _test_split
from visattn.train import load_model

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_training_ends_with_a_full_report(trained_run):
    run_dir, summary = trained_run
    assert summary["report"] == str(run_dir / "report.html")
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert len(page.encode()) < 2_000_000
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page
    for anchor in ("summary", "config", "curves", "classes", "attention", "scorecard", "files"):
        assert "not recorded" not in section_text(page, anchor), anchor
    assert section_text(page, "curves").count("<svg") == 4
    assert section_text(page, "classes").count("<tr>") == 10 + 1  # one row a class, and the head
    attention = section_text(page, "attention")
    shown = re.findall(r'<figure class="(hit|miss)">', attention)
    assert len(shown) == SHOWN and re.search(
        r"\d+ of \d+ test images spread over the split are hits", attention
    )
    scorecard = section_text(page, "scorecard")
    assert "<b>attention</b>" in scorecard and scorecard.count("data:image/") == 2
    assert page.count('<img src="data:image/') == 1 + SHOWN + 2


def test_the_command_rebuilds_the_page_of_an_older_run(trained_run, tmp_path):
    run_dir, _ = trained_run
    older = tmp_path / "older"
    shutil.copytree(
        run_dir, older, ignore=shutil.ignore_patterns("report.html", "scorecard*", "summary.json")
    )
    result = runner.invoke(app, ["report", str(older)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "report.html" in result.output
    page = (older / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "not recorded for this run (no scorecard.json)" in section_text(page, "scorecard")
    assert "not recorded for this run (no summary.json)" in section_text(page, "summary")
    assert "<svg" in section_text(page, "curves") and "<figure class=" in section_text(page, "attention")


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and fragment in err, err
    assert "Traceback" not in result.output


def test_the_command_refuses_bad_folders_in_one_line(tmp_path):
    assert_one_line_error(runner.invoke(app, ["report", str(tmp_path / "nope")]), "does not exist")
    (tmp_path / "readme.txt").write_text("not a run")
    assert_one_line_error(runner.invoke(app, ["report", str(tmp_path)]), "is not a run folder")
    assert_one_line_error(runner.invoke(app, ["report", str(tmp_path / "readme.txt")]), "is not a folder")
    (tmp_path / "config.yaml").write_text("model: m\n")
    (tmp_path / "report.html").mkdir()  # unwritable even for root: a folder is in the way
    assert_one_line_error(runner.invoke(app, ["report", str(tmp_path)]), "cannot write")


def test_the_cluttered_test_split_is_the_one_the_run_was_scored_on(trained_run):
    _, meta = load_model(trained_run[0])
    full, alone = load_dataset("cluttered-mnist").test, _test_split(meta, {})
    assert torch.equal(alone.images, full.images) and torch.equal(alone.labels, full.labels)
    assert torch.equal(alone.boxes, full.boxes)
    assert torch.allclose(torch.tensor(alone.stats), torch.tensor(full.stats), atol=1e-6)
