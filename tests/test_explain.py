"""Heat maps from recorded maps, the pointing game, and the attention figure."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from visattn import create_model
from visattn.data import ImageTensorDataset
from visattn.explain import (
    map_to_heatmap,
    model_heatmap,
    pointing_hits,
    received_attention,
    save_model_attention,
)


def test_softmax_map_heat_is_attention_received():
    # 2x3 grid; every query attends only to position (row 1, col 2) -> its pixels are hottest.
    attn = torch.zeros(1, 2, 6, 6)
    attn[..., 5] = 1.0
    heat = map_to_heatmap(attn, "softmax", (2, 3), (20, 30))
    assert heat.shape == (1, 20, 30)
    assert heat.min() == 0 and heat.max() == 1
    y, x = divmod(int(heat[0].argmax()), 30)
    assert y >= 10 and x >= 20  # inside the bottom-right cell of the upsampled grid
    # Received attention is averaged over heads and queries, by hand:
    attn = torch.rand(1, 3, 4, 4).softmax(-1)
    received = attn.mean(dim=(1, 2)).view(2, 2)
    heat = map_to_heatmap(attn, "softmax", (2, 2), (2, 2))[0]
    expected = (received - received.min()) / (received.max() - received.min())
    torch.testing.assert_close(heat, expected)


def test_spatial_gate_and_refusals():
    gate = torch.zeros(2, 1, 4, 4)
    gate[0, 0, 1, 2] = 0.9
    heat = map_to_heatmap(gate, "spatial", None, (4, 4))
    assert heat[0].argmax() == 1 * 4 + 2
    assert torch.all(heat[1] == 0)  # a flat map stays flat instead of dividing by zero
    with pytest.raises(ValueError, match="cannot make a spatial heat map"):
        map_to_heatmap(torch.rand(2, 16), "channel", None, (4, 4))


def test_window_map_heat_scatters_to_key_positions():
    # 1x3 grid, windows of 2 slots; slot -1 is padding. Position 2 receives everything.
    keys = torch.tensor([[2, -1], [1, 2], [2, 0]])
    attn = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.5, 0.5]]).view(1, 1, 3, 2)
    received = received_attention(attn, keys, 3)
    torch.testing.assert_close(received, torch.tensor([[0.5, 0.25, 2.25]]) / 3)
    heat = map_to_heatmap(attn, "window", (1, 3), (1, 3), keys=keys)
    torch.testing.assert_close(heat, torch.tensor([[[0.5 - 0.25, 0.0, 2.25 - 0.25]]]) / 2.0)


def test_pointing_hits_by_hand():
    heat = torch.zeros(3, 10, 10)
    heat[0, 4, 6] = 1  # inside (5, 3, 8, 6)
    heat[1, 2, 2] = 1  # outside
    heat[2, 6, 8] = 1  # just outside the exclusive end: y1 = 6
    boxes = torch.tensor([[5, 3, 8, 6]] * 3)
    assert pointing_hits(heat, boxes).tolist() == [True, False, False]
    assert pointing_hits(heat, boxes, tolerance=1).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="expects heat"):
        pointing_hits(heat[0], boxes)


def test_model_heatmap_and_figure(tmp_path):
    model = create_model("attention_cnn", num_classes=3, in_channels=1, widths=(8, 8), strides=(2, 2)).eval()
    images = torch.randint(0, 255, (4, 1, 17, 13), dtype=torch.uint8)
    data = ImageTensorDataset(
        images, torch.tensor([0, 1, 2, 0]), stats=((0.5,), (0.25,)), boxes=torch.tensor([[1, 1, 5, 5]] * 4)
    )
    x, _ = data.__getitems__([0, 1])
    logits, heat, layer = model_heatmap(model, x)
    assert layer == "attn" and heat.shape == (2, 17, 13) and logits.shape == (2, 3)
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no spatial attention map named 'stem'"):
        model_heatmap(model, x, layer="stem")
    path = tmp_path / "grid.png"
    assert save_model_attention(model, data, ["a", "b", "c"], path, count=3) == "attn"
    with Image.open(path) as img:
        assert img.format == "PNG"
    plain = create_model("attention_cnn", num_classes=3, in_channels=1, attention=None)
    with pytest.raises(ValueError, match="recorded no spatial attention map"):
        model_heatmap(plain, x)
