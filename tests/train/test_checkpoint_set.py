"""A checkpoint set is published in one atomic step: a crash at any rename never pairs the
weights of one save with the training state of another."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from visattn.train.checkpoint import CheckpointError
from visattn.train.run_files import CsvLog, find_resumable, load_set, save_set

META = {"model": "linear", "classes": ["a", "b"]}


class Crash(Exception):
    """Stands for the process dying at one rename."""


def model_of(step: int) -> nn.Module:
    """A model whose weights say which save they came from."""
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(step)
        model.bias.fill_(-step)
    return model


def state_of(step: int) -> dict:
    return {"step": step, "epoch": step // 10, "optimizer": {"m": torch.full((4,), float(step))}}


def save(run_dir, step: int, stem: str = "last") -> None:
    save_set(run_dir, stem, model_of(step), META, state_of(step))


def assert_one_save(loaded, steps: set[int]) -> int:
    """The weights and the state are of the same save, one of ``steps``; returns its step."""
    weights, meta, state = loaded
    step = int(weights["weight"][0, 0])
    assert step in steps
    assert torch.equal(weights["bias"], torch.full((2,), -float(step)))
    assert meta["step"] == state["step"] == step
    assert torch.equal(state["optimizer"]["m"], torch.full((4,), float(step)))
    return step


def count_renames(tmp_path, monkeypatch) -> int:
    calls = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(a), real(a, b))[1])
    probe = tmp_path / "probe"
    probe.mkdir()
    save(probe, 1)
    save(probe, 2)
    monkeypatch.setattr(os, "replace", real)
    return len(calls) // 2


def test_a_crash_at_any_rename_leaves_one_whole_set(tmp_path, monkeypatch):
    renames = count_renames(tmp_path, monkeypatch)
    assert renames >= 2
    real = os.replace
    for crash_at in range(1, renames + 1):
        run_dir = tmp_path / f"crash-{crash_at}"
        run_dir.mkdir()
        save(run_dir, 100)
        calls = []

        def replace(src, dst, calls=calls, crash_at=crash_at):
            calls.append(src)
            if len(calls) == crash_at:
                raise Crash(f"killed at rename {crash_at}")
            real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Crash):
            save(run_dir, 200)
        monkeypatch.setattr(os, "replace", real)
        step = assert_one_save(load_set(run_dir / "last.safetensors"), {100, 200})
        # the journal is gone once the set is read, and the next save works
        assert sorted(p.name for p in run_dir.iterdir()) == ["last.safetensors", "last.state.pt"], step
        save(run_dir, 300)
        assert assert_one_save(load_set(run_dir / "last.safetensors"), {300}) == 300


def test_a_committed_set_wins_over_the_old_one(tmp_path, monkeypatch):
    # the last rename of a save is the move of the second file into place: a crash there is
    # after the commit, so the loader finishes the publication and reads the new set
    renames = count_renames(tmp_path, monkeypatch)
    save(tmp_path, 100)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == renames:
            raise Crash
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        save(tmp_path, 200)
    monkeypatch.setattr(os, "replace", real)
    assert assert_one_save(load_set(tmp_path / "last.safetensors"), {100, 200}) == 200


def test_an_unfinished_journal_left_by_a_crash_is_discarded(tmp_path):
    save(tmp_path, 100)
    pending = tmp_path / ".last.set-tmp"
    pending.mkdir()
    (pending / "last.state.pt").write_bytes(b"half a file")
    assert assert_one_save(load_set(tmp_path / "last.safetensors"), {100}) == 100
    assert not pending.exists()


def test_files_of_two_saves_at_the_same_step_are_refused(tmp_path):
    one, other = tmp_path / "one", tmp_path / "other"
    one.mkdir()
    other.mkdir()
    save(one, 100)
    save(other, 100)
    (one / "last.state.pt").write_bytes((other / "last.state.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"does not belong to .*not saved together"):
        load_set(one / "last.safetensors")


def test_resume_finishes_an_interrupted_snapshot(tmp_path, monkeypatch):
    # a crash after the commit of a step snapshot that has no weights file in place yet:
    # find_resumable must see it, so recovery runs before the candidates are listed
    renames = count_renames(tmp_path, monkeypatch)
    save(tmp_path, 100, "last")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == renames:  # the state is in place, the weights are not
            raise Crash
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        save(tmp_path, 200, "step-0000200")
    monkeypatch.setattr(os, "replace", real)
    (tmp_path / "last.safetensors").write_bytes(b"damaged")
    found, loaded = find_resumable(tmp_path)
    assert found == tmp_path / "step-0000200.safetensors"
    assert assert_one_save(loaded, {200}) == 200


def test_metrics_row_cut_short_by_a_crash_is_dropped_on_resume(tmp_path):
    log = CsvLog(tmp_path / "metrics.csv", ["epoch", "loss", "accuracy"])
    log.start(0)
    log.append({"epoch": 1, "loss": 0.5, "accuracy": 0.9})
    log.append({"epoch": 2, "loss": 0.4, "accuracy": 0.95})
    with log.path.open("a") as f:
        f.write("3,0.3")  # the process died while writing epoch 3
    log.start(3)
    assert log.path.read_text() == "epoch,loss,accuracy\n1,0.5,0.9\n2,0.4,0.95\n"
