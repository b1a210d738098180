"""visattn.attention against an independent float64 reference, fused and explicit paths."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn import attention
from visattn.functional import sincos_2d
from visattn.kernels import _as_4d, _fold_point, _mask_as_4d


def reference(q, k, v, mask=None, scale=None):
    """Textbook attention in float64: exp(scores - max) / sum, forbidden keys weigh 0."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("...le,...se->...ls", q, k) * scale
    allowed = torch.ones_like(scores, dtype=torch.bool)
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            scores = scores + mask.double()
            allowed = allowed & torch.isfinite(mask.double()).expand_as(scores)
    scores = scores.masked_fill(~allowed, -1e300)
    e = torch.exp(scores - scores.amax(-1, keepdim=True)) * allowed
    total = e.sum(-1, keepdim=True)
    w = torch.where(total > 0, e / total.clamp_min(1e-300), torch.zeros_like(e))
    return torch.einsum("...ls,...se->...le", w, v), w


SHAPES = [(7, 5), (3, 9, 4), (2, 3, 11, 8), (2, 2, 3, 6, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("need_weights", [True, False])
def test_matches_float64_reference(shape, need_weights):
    *lead, n, e = shape
    q = torch.randn(*lead, n, e)
    k = torch.randn(*lead, n + 2, e)
    v = torch.randn(*lead, n + 2, e + 1)
    out, w = attention(q, k, v, need_weights=need_weights)
    ref_out, ref_w = reference(q, k, v)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(w.double(), ref_w, atol=1e-6, rtol=1e-5)
    else:
        assert w is None


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("kind", ["bool", "float", "bool-broadcast", "float-broadcast"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_masks_match_reference(shape, kind, need_weights):
    *lead, n, e = shape
    q, k, v = torch.randn(*lead, n, e), torch.randn(*lead, n, e), torch.randn(*lead, n, e)
    mshape = (n, n) if "broadcast" in kind else (*lead, n, n)
    allowed = torch.rand(mshape) > 0.4
    allowed[..., 0, :] = False  # one query may attend to nothing at all
    mask = allowed if kind.startswith("bool") else torch.randn(mshape).masked_fill(~allowed, float("-inf"))
    out, w = attention(q, k, v, mask=mask, need_weights=need_weights)
    ref_out, ref_w = reference(q, k, v, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(w.double(), ref_w, atol=1e-6, rtol=1e-5)
        assert torch.all(w[..., 0, :] == 0)


def test_scale_and_fused_equals_explicit():
    q, k, v = torch.randn(2, 4, 33, 16), torch.randn(2, 4, 20, 16), torch.randn(2, 4, 20, 8)
    fused, _ = attention(q, k, v, scale=0.3, need_weights=False)
    explicit, w = attention(q, k, v, scale=0.3)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit.double(), reference(q, k, v, scale=0.3)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 33))


def test_gradients_match_reference():
    q, k, v = (torch.randn(2, 3, 9, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.rand(9, 9) > 0.3
    mask[:, 0] = True
    for need_weights in (True, False):
        out, _ = attention(q, k, v, mask=mask, need_weights=need_weights)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        ref = torch.autograd.grad(reference(q, k, v, mask)[0].square().sum(), (q, k, v))
        for g, r in zip(grads, ref, strict=True):
            torch.testing.assert_close(g, r)


def test_dropout_changes_output_not_weights():
    q = k = v = torch.randn(1, 2, 16, 8)
    clean, w_clean = attention(q, k, v)
    torch.manual_seed(1)
    dropped, w = attention(q, k, v, dropout_p=0.5)
    torch.testing.assert_close(w, w_clean)  # weights are reported before dropout
    assert not torch.allclose(dropped, clean)
    torch.manual_seed(1)
    again, _ = attention(q, k, v, dropout_p=0.5)
    torch.testing.assert_close(again, dropped)


def test_operands_are_laid_out_for_the_fused_kernel():
    """Transposed projections (last stride != 1) and 5-D windows would run the N x N math
    path; after layout the flash kernel is chosen (backend 1 is flash attention)."""
    flash = 1
    transposed = torch.randn(2, 4, 32, 64).transpose(-1, -2)  # (2, 4, 64, 32), stride(-1) = 64
    assert torch._fused_sdp_choice(transposed, transposed, transposed) != flash
    lead = transposed.shape[:-2]
    t4 = _as_4d(transposed, lead, 0)
    assert torch._fused_sdp_choice(t4, t4, t4) == flash
    windows = torch.randn(2, 3, 4, 49, 16)  # (B, windows, heads, N, d)
    assert torch._fused_sdp_choice(windows, windows, windows) != flash
    w4 = _as_4d(windows, windows.shape[:-2], 2)
    assert w4.shape == (6, 4, 49, 16) and torch._fused_sdp_choice(w4, w4, w4) == flash
    with torch.no_grad():  # the fused kernel's case (with gradients small windows run matmuls)
        out, _ = attention(windows, windows, windows, need_weights=False)
    torch.testing.assert_close(out.double(), reference(windows, windows, windows)[0], atol=1e-5, rtol=1e-5)
    # A per-window mask folds the batch apart from the windows: no copy per sample.
    mask = torch.rand(3, 1, 49, 49) > 0.2
    split = _fold_point(mask, windows.shape[:-2])
    assert _mask_as_4d(mask, windows.shape[:-2], split).shape == (1, 12, 49, 49)
    assert _as_4d(windows, windows.shape[:-2], split).shape == (2, 12, 49, 16)
    with torch.no_grad():
        out, _ = attention(windows, windows, windows, mask=mask, need_weights=False)
    expected = reference(windows, windows, windows, mask)[0]
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.randn(3), torch.randn(3, 2), torch.randn(3, 2)), "shape"),
        ((torch.randn(4, 8), torch.randn(5, 7), torch.randn(5, 7)), "last dimension"),
        ((torch.randn(4, 8), torch.randn(5, 8), torch.randn(6, 8)), "same length"),
        ((torch.randn(2, 4, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8)), "broadcast"),
    ],
)
def test_bad_operands_raise(args, message):
    with pytest.raises(ValueError, match=message):
        attention(*args)


def test_bad_options_raise():
    q = torch.randn(4, 8)
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, q, q, dropout_p=1.0)
    with pytest.raises(ValueError, match="scale"):
        attention(q, q, q, scale=0.0)
    with pytest.raises(ValueError, match="mask must be bool or floating"):
        attention(q, q, q, mask=torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="broadcast"):
        attention(q, q, q, mask=torch.ones(3, 4, dtype=torch.bool))


@settings(max_examples=40, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=3),
    n=st.integers(1, 12),
    s=st.integers(1, 12),
    e=st.integers(1, 9),
    need_weights=st.booleans(),
)
def test_random_shapes(lead, n, s, e, need_weights):
    q, k, v = torch.randn(*lead, n, e), torch.randn(*lead, s, e), torch.randn(*lead, s, e)
    out, _ = attention(q, k, v, need_weights=need_weights)
    assert out.shape == (*lead, n, e)
    torch.testing.assert_close(out.double(), reference(q, k, v)[0], atol=1e-5, rtol=1e-5)


def test_sincos_2d_matches_formula_and_depends_on_offsets_only():
    h, w, dim = 5, 7, 16
    enc = sincos_2d(h, w, dim, dtype=torch.float64).view(h, w, dim)
    quarter = dim // 4
    freq = torch.tensor([10000.0 ** (-i / quarter) for i in range(quarter)], dtype=torch.float64)
    y, x = 3, 4
    expected = torch.cat([(y * freq).sin(), (y * freq).cos(), (x * freq).sin(), (x * freq).cos()])
    torch.testing.assert_close(enc[y, x], expected)
    # Dot products depend only on the offset between positions, wherever they are.
    torch.testing.assert_close(enc[0, 0] @ enc[2, 3], enc[1, 2] @ enc[3, 5])
    assert sincos_2d(2, 3, 10).shape == (6, 10)
    assert torch.all(sincos_2d(2, 3, 10)[:, 8:] == 0)
