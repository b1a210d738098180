"""Checkpoints store every plain option of a model, defaults included, so that a later change
of a default cannot rebuild a different network from an old checkpoint."""

from __future__ import annotations

import inspect

import pytest

from visattn import create_model
from visattn.models import MODELS, resolved_options


def test_attention_cnn_options_are_spelled_out():
    options = resolved_options("attention_cnn", {"attention": "cbam"})
    params = inspect.signature(MODELS.get("attention_cnn")).parameters
    assert options["attention"] == "cbam"  # given options win
    for key in ("widths", "strides", "max_tokens", "drop_rate"):
        assert options[key] == params[key].default
    assert "num_classes" not in options and "in_channels" not in options


def test_the_spelled_out_options_rebuild_the_same_network(monkeypatch):
    """Changing the builder's default after the fact does not change what the stored
    options build."""
    stored = resolved_options("attention_cnn", {})
    before = create_model("attention_cnn", num_classes=3, in_channels=1, **stored)
    original = MODELS.get("attention_cnn")

    def changed(*args, strides=(1, 1, 1), **kwargs):
        return original(*args, strides=strides, **kwargs)

    monkeypatch.setitem(MODELS._entries, "attention_cnn", changed)
    after = create_model("attention_cnn", num_classes=3, in_channels=1, **stored)
    default = create_model("attention_cnn", num_classes=3, in_channels=1)
    strides = [
        m.stride for m in before.stem.modules() if hasattr(m, "stride") and isinstance(m.stride, tuple)
    ]
    assert [
        m.stride for m in after.stem.modules() if hasattr(m, "stride") and isinstance(m.stride, tuple)
    ] == strides
    assert [
        m.stride for m in default.stem.modules() if hasattr(m, "stride") and isinstance(m.stride, tuple)
    ] != strides


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_from_its_spelled_out_options(name):
    options = resolved_options(name, {})
    assert all(isinstance(key, str) for key in options)
    if name == "attention_cnn":
        create_model(name, num_classes=2, in_channels=1, **options)
