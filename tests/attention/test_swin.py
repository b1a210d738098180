"""Swin shifted-window attention against torchvision's ``shifted_window_attention``, timm's
``WindowAttention`` and a masked full attention written here in float64.

torchvision and timm attend to the zero padding of maps whose sides are not multiples of the
window; with ``mask_padding=False`` our output equals torchvision's at every size, and by
default it equals the masked full attention (padding excluded) and differs from
torchvision's exactly where padding exists.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnkit import assert_window_map_is
from timm.models import swin_transformer as timm_swin
from torchvision.models.swin_transformer import ShiftedWindowAttention as TvWindowAttention
from torchvision.models.swin_transformer import shifted_window_attention

from visattn import record_attention
from visattn.attention.swin import ShiftedWindowAttention

C, HEADS, WS = 16, 2, 4


def make(**options) -> ShiftedWindowAttention:
    module = ShiftedWindowAttention(C, window_size=WS, heads=HEADS, residual=False, **options).eval()
    with torch.no_grad():  # a visible bias: the default initialisation is tiny
        module.relative_position_bias_table.normal_(0, 1)
    return module


def torchvision_output(module: ShiftedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """torchvision's functional W-MSA/SW-MSA fed our weights; the bias comes from torchvision's
    own relative-position index."""
    tv = TvWindowAttention(C, [WS, WS], [module.shift_size] * 2, HEADS)
    with torch.no_grad():
        tv.relative_position_bias_table.copy_(module.relative_position_bias_table)
    out = shifted_window_attention(
        x.permute(0, 2, 3, 1),
        module.qkv.weight,
        module.proj.weight,
        tv.get_relative_position_bias(),
        [WS, WS],
        HEADS,
        [module.shift_size] * 2,
        qkv_bias=module.qkv.bias,
        proj_bias=module.proj.bias,
        training=False,
    )
    return out.permute(0, 3, 1, 2)


def masked_full_attention(
    module: ShiftedWindowAttention, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over all H*W positions in float64, each query restricted to the real
    positions of its (shifted) window and of its side of the wrap-around; returns the output
    and the (B, heads, N, N) weights."""
    x = x.double()
    B, _, H, W = x.shape
    Hp, Wp = math.ceil(H / WS) * WS, math.ceil(W / WS) * WS
    sh = module.shift_size if Hp > WS else 0
    sw = module.shift_size if Wp > WS else 0
    rows = torch.arange(H).repeat_interleave(W)  # (N,) original coordinates
    cols = torch.arange(W).repeat(H)
    rr, rc = (rows - sh) % Hp, (cols - sw) % Wp  # coordinates after the cyclic shift
    window = (rr // WS) * (Wp // WS) + rc // WS
    region = 2 * (rr >= Hp - sh).long() + (rc >= Wp - sw).long()  # wrapped round by the shift
    allowed = (window[:, None] == window[None, :]) & (region[:, None] == region[None, :])  # (N, N)
    dy, dx = rows[:, None] - rows[None, :], cols[:, None] - cols[None, :]  # query minus key
    # Pairs further apart than a window are masked; clamp only to keep the lookup in range.
    dy, dx = dy.clamp(1 - WS, WS - 1), dx.clamp(1 - WS, WS - 1)
    table = module.relative_position_bias_table.double()
    bias = table[(dy + WS - 1) * (2 * WS - 1) + (dx + WS - 1)].permute(2, 0, 1)  # (heads, N, N)
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    qkv = tokens @ module.qkv.weight.double().T + module.qkv.bias.double()
    q, k, v = qkv.view(B, H * W, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(C // HEADS) + bias
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)  # (B, heads, N, N)
    out = (weights @ v).transpose(1, 2).reshape(B, H * W, C)
    out = out @ module.proj.weight.double().T + module.proj.bias.double()
    return out.transpose(1, 2).reshape(B, C, H, W), weights


SIZES = [(8, 8), (8, 12), (9, 13), (3, 10), (1, 1), (5, 5)]


@pytest.mark.parametrize("shift", [0, 2, 1])
@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_torchvision_when_attending_to_padding(shift, hw):
    module = make(shift_size=shift, mask_padding=False)
    x = torch.randn(2, C, *hw)
    with torch.no_grad():
        torch.testing.assert_close(module(x), torchvision_output(module, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_default_masks_padding(shift, hw):
    module = make(shift_size=shift)
    x = torch.randn(2, C, *hw)
    with torch.no_grad():
        out = module(x)
        expected, _ = masked_full_attention(module, x)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
        # Differs from torchvision exactly when there is padding to attend to.
        padded = hw[0] % WS != 0 or hw[1] % WS != 0
        gap = (out - torchvision_output(module, x)).abs().max()
        assert (gap > 1e-3) if padded else (gap < 1e-5), gap


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("hw", [(8, 8), (8, 12), (12, 4)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_timm_window_attention(shift, hw):
    module = make(shift_size=shift)
    block = timm_swin.SwinTransformerBlock(C, hw, num_heads=HEADS, window_size=WS, shift_size=shift).eval()
    ref = block.attn  # timm's WindowAttention; the mask is the block's
    with torch.no_grad():
        ref.qkv.weight.copy_(module.qkv.weight)
        ref.qkv.bias.copy_(module.qkv.bias)
        ref.proj.weight.copy_(module.proj.weight)
        ref.proj.bias.copy_(module.proj.bias)
        ref.relative_position_bias_table.copy_(module.relative_position_bias_table)
    x = torch.randn(2, C, *hw)
    s = block.shift_size
    with torch.no_grad():
        shifted = torch.roll(x.permute(0, 2, 3, 1), (-s[0], -s[1]), dims=(1, 2))  # (B, H, W, C)
        windows = timm_swin.window_partition(shifted, (WS, WS)).view(-1, WS * WS, C)
        out = ref(windows, mask=block.attn_mask).view(-1, WS, WS, C)
        out = torch.roll(timm_swin.window_reverse(out, (WS, WS), *hw), s, dims=(1, 2))
        torch.testing.assert_close(module(x), out.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(9, 13), (8, 8), (3, 6)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_recorded_window_map_is_the_attention_used(hw):
    """Scattered back to (N, N) through its keys, the map equals the masked full attention's
    weights: right positions, right weights, nothing on padding."""
    module = make(shift_size=2)
    x = torch.randn(2, C, *hw)
    with torch.no_grad():
        fused = module(x)
        with record_attention(module) as maps:
            explicit = module(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    _, expected = masked_full_attention(module, x)
    assert_window_map_is(maps, hw, WS * WS, expected)
    n, keys = hw[0] * hw[1], maps.keys_index(next(iter(maps)))
    # Each query's window holds the query itself.
    assert torch.all((keys == torch.arange(n)[:, None]).sum(-1) == 1)


def test_no_shift_along_an_axis_one_window_covers():
    """torchvision's rule: H <= window_size means no shift along H (W still shifts)."""
    module = make(shift_size=2)
    x = torch.randn(1, C, 3, 9)
    with torch.no_grad(), record_attention(module) as maps:
        module(x)
    keys = maps.keys_index("ShiftedWindowAttention")
    rows = torch.where(keys >= 0, keys // 9, -1)
    # Every real query sees all three rows: the H axis is one unshifted window.
    assert all(set(r[r >= 0].tolist()) == {0, 1, 2} for r in rows)


def test_residual_adds_the_input():
    module = make()
    with_residual = ShiftedWindowAttention(C, window_size=WS, heads=HEADS).eval()
    with_residual.load_state_dict(module.state_dict())
    x = torch.randn(2, C, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(with_residual(x), x + module(x))


def test_defaults_follow_the_paper():
    module = ShiftedWindowAttention(32)
    assert module.window_size == 7 and module.shift_size == 3 and module.residual
    assert module.relative_position_bias_table.shape == (13 * 13, 4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_size": 0}, "window_size must be an integer >= 1, got 0"),
        ({"shift_size": 7}, r"shift_size must be None or an integer in \[0, window_size=7\), got 7"),
        ({"shift_size": -1}, r"shift_size must be None or an integer in \[0, window_size=7\), got -1"),
        ({"heads": 3}, r"heads must divide channels \(32\) when head_dim is not given, got 3"),
        ({"head_dim": 0}, "head_dim must be an integer >= 1, got 0"),
        ({"attn_drop": 1.0}, r"attn_drop must be a number in \[0.0, 1.0\), got 1.0"),
        ({"proj_drop": -0.1}, r"proj_drop must be a number in \[0.0, 1.0\), got -0.1"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        ShiftedWindowAttention(32, **options)
