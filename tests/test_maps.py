"""record_attention: shapes, row sums, forward order, restoration, and outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visattn import MultiHeadSelfAttention2d, record_attention
from visattn.registry import Registry


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.second = MultiHeadSelfAttention2d(8, heads=2)  # defined first, runs second
        self.first = MultiHeadSelfAttention2d(8, heads=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def test_maps_in_forward_order_with_shapes_and_row_sums():
    model = Two().eval()
    x = torch.randn(3, 8, 5, 6)
    plain = model(x)
    with record_attention(model) as maps:
        recorded = model(x)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    assert list(maps) == ["first", "second"]
    assert maps["first"].shape == (3, 4, 30, 30) and maps["second"].shape == (3, 2, 30, 30)
    for w in maps.values():
        assert not w.requires_grad
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert maps.grid("first") == (5, 6)


def test_recording_is_switched_off_and_restored():
    model = Two()
    with record_attention(model) as outer:
        assert model.first.recording
        with record_attention(model.first) as inner:
            model(torch.randn(1, 8, 3, 3))
        assert model.first.recording  # the outer recording is back
        model(torch.randn(1, 8, 3, 3))
    assert not model.first.recording and model.first._map_sink is None
    assert list(inner) == ["MultiHeadSelfAttention2d"]
    assert list(outer) == ["second", "first", "second#1"]
    with torch.no_grad():
        model(torch.randn(1, 8, 3, 3))
    assert len(outer) == 3  # nothing recorded after the block


def test_restored_after_an_error():
    model = Two()
    with pytest.raises(ValueError), record_attention(model):
        model(torch.randn(1, 3, 3, 3))
    assert not model.first.recording and model.first._map_sink is None


def test_shared_module_called_twice():
    attn = MultiHeadSelfAttention2d(4, heads=1)
    model = nn.Sequential(attn, attn)
    with record_attention(model) as maps:
        model(torch.randn(1, 4, 2, 2))
    assert list(maps) == ["0", "0#1"]


def test_registry_rejects_duplicates_and_lists_names():
    reg = Registry("thing")
    reg.register("a")(int)
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        reg.register("a")(float)
    with pytest.raises(ValueError, match="lower case"):
        reg.register("Bad Name")
    with pytest.raises(KeyError, match="unknown thing 'b'; valid names: a"):
        reg.get("b")
    assert "a" in reg and list(reg) == ["a"] and len(reg) == 1
