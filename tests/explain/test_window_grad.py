"""Windowed visattn mechanisms record maps that lie on the path to the output, so gradient-based
explanations can read their gradient."""

from __future__ import annotations

import pytest
import torch

import visattn


@pytest.mark.parametrize("name", ["swin", "halo"])
def test_recorded_window_rows_feed_the_output(name):
    torch.manual_seed(0)
    model = visattn.create_model("attention_cnn", num_classes=3, in_channels=1, attention=name).eval()
    x = torch.randn(2, 1, 36, 28)
    plain = model(x)
    with visattn.record_attention(model, grad=True) as maps:
        logits = model(x)
    torch.testing.assert_close(logits, plain)  # recording does not change the output
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), [maps["attn"]])  # raises if off the path
    assert grad.abs().sum() > 0
    # Scaling the recorded rows of one sample changes only that sample's logits.
    with visattn.record_attention(model, grad=True) as maps:
        logits = model(x)
    (per_sample,) = torch.autograd.grad(logits[0].sum(), [maps["attn"]])
    assert per_sample[1].abs().sum() == 0 and per_sample[0].abs().sum() > 0
