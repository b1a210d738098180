"""Checkpoints: round trip, truncation, foreign files, pickle payloads, mismatched models."""

from __future__ import annotations

import json
import os
import pickle
import random

import pytest
import torch

from visattn import create_model
from visattn.train.checkpoint import (
    CheckpointError,
    load_model,
    load_state,
    read_checkpoint,
    save_state,
    save_weights,
)

META = {
    "model": "attention_cnn",
    "model_kwargs": {"attention": "mhsa", "widths": [8, 16], "strides": [2, 2]},
    "num_classes": 4,
    "in_channels": 1,
    "classes": list("abcd"),
    "dataset": "mnist-sample",
    "input_size": [20, 20],
    "mean": [0.1],
    "std": [0.3],
}


def tiny(attention="mhsa"):
    return create_model(
        "attention_cnn", num_classes=4, in_channels=1, attention=attention, widths=(8, 16), strides=(2, 2)
    ).eval()


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "best.safetensors"
    model = tiny()
    save_weights(path, model, META)
    return path, model


def test_round_trip(checkpoint):
    path, model = checkpoint
    loaded, meta = load_model(path)
    assert meta == META
    x = torch.randn(2, 1, 20, 20)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training
    assert load_model(path.parent)[1] == META  # a run folder works too


def test_truncated_at_random_bytes(checkpoint):
    path, _ = checkpoint
    data = path.read_bytes()
    rng = random.Random(0)
    for cut in [0, 5, 8, 40, *rng.sample(range(9, len(data) - 1), 8)]:
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"{path}.*(truncated|not a checkpoint)"):
            load_model(path)


def test_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not the weights you are looking for\n" * 10)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_checkpoint(text)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"conv1.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a visattn checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"holds no best.safetensors"):
        read_checkpoint(tmp_path)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, tiny(attention=None), META)  # weights without attention, described with it
    expected = r"does not hold weights of model 'attention_cnn'.*missing \(4\): attn\.qkv\.weight"
    with pytest.raises(CheckpointError, match=expected):
        load_model(path)
    wider = create_model("attention_cnn", num_classes=4, in_channels=1, widths=(8, 32), strides=(2, 2))
    save_weights(path, wider, META)
    with pytest.raises(
        CheckpointError,
        match=r"wrong shape \(10\): stem\.1\.0\.weight \(32, 8, 3, 3\) \(needs \(16, 8, 3, 3\)\)",
    ):
        load_model(path)
    save_weights(path, tiny(), {**META, "model": "no_such_model"})
    with pytest.raises(CheckpointError, match=r"cannot build.*unknown model 'no_such_model'"):
        load_model(path)


def test_non_finite_weights_are_never_written(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite values in head.bias"):
        save_weights(tmp_path / "w.safetensors", model, META)
    assert not list(tmp_path.iterdir())  # not even a temporary file is left


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_state_with_pickle_payload_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "last.state.pt"
    with evil.open("wb") as f:
        pickle.dump({"epoch": 3, "x": Payload()}, f)
    with pytest.raises(CheckpointError, match="not a usable training state"):
        load_state(evil)
    torch.save({"epoch": 3, "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="not a usable training state"):
        load_state(evil)
    assert not (tmp_path / "pwned.txt").exists()


def test_state_round_trip(tmp_path):
    model = tiny()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 20, 20)).sum().backward()
    opt.step()
    state = {"epoch": 2, "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}
    save_state(tmp_path / "s.pt", state)
    back = load_state(tmp_path / "s.pt")
    assert back["epoch"] == 2 and torch.equal(back["rng"], state["rng"])
    assert json.dumps(back["optimizer"]["param_groups"])  # plain values only


def test_checkpoint_files_get_the_mode_of_the_umask(tmp_path):
    # safetensors and torch.save reopen the temporary file by name: the mode must survive that
    old = os.umask(0o022)
    try:
        save_weights(tmp_path / "last.safetensors", tiny(), META)
        save_state(tmp_path / "last.state.pt", {"step": 1})
    finally:
        os.umask(old)
    for name in ("last.safetensors", "last.state.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
