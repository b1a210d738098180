"""Non-local block ("nonlocal") against timm's NonLocalAttn and a float64 reference of the paper's
embedded-Gaussian equations.

timm scales the logits by 1/sqrt(C) and reduces to C/8 (rounded to a multiple of 8); the
paper does not scale. ``scale="input"`` with the matching reduction equals timm; by default
the logits are unscaled, which is tested against the float64 reference and shown to differ
from timm's output.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from attnkit import FLASH
from timm.layers import NonLocalAttn

from visattn import record_attention
from visattn.attention.nonlocal_attn import NonLocal2d


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def randomise(module: torch.nn.Module) -> None:
    """Non-zero BN scale (it starts at zero) and non-trivial running statistics."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def from_timm(theirs: NonLocalAttn, reduction: int, **options) -> NonLocal2d:
    channels = theirs.t.weight.shape[1]
    ours = NonLocal2d(channels, reduction=reduction, **options)
    assert ours.inner == theirs.t.weight.shape[0]
    with torch.no_grad():
        ours.theta_phi_g.weight.copy_(
            torch.cat([theirs.t.weight, theirs.p.weight, theirs.g.weight])[..., 0, 0]
        )
        ours.theta_phi_g.bias.copy_(torch.cat([theirs.t.bias, theirs.p.bias, theirs.g.bias]))
        ours.out.load_state_dict(theirs.z.state_dict())
        ours.norm.load_state_dict(theirs.norm.state_dict())
    return ours.eval()


@pytest.mark.parametrize(("channels", "reduction"), [(32, 4), (64, 8)])
@pytest.mark.parametrize("hw", [(7, 5), (8, 8), (1, 1)])
def test_matches_timm_non_local_attn(channels, reduction, hw):
    theirs = NonLocalAttn(channels)
    randomise(theirs)
    with torch.no_grad():
        for conv in (theirs.t, theirs.p, theirs.g, theirs.z):
            conv.bias.normal_(0, 0.1)
    theirs.eval()
    ours = from_timm(theirs, reduction, scale="input")
    x = torch.randn(3, channels, *hw)
    with torch.no_grad():
        expected = theirs(x)
        close(ours(x), expected)
        with record_attention(ours) as maps:
            close(ours(x), expected)
    assert maps["NonLocal2d"].shape == (3, 1, hw[0] * hw[1], hw[0] * hw[1])
    # The paper's (and our default) unscaled logits are a different function.
    if hw != (1, 1):
        ours.scale = "none"
        with torch.no_grad():
            assert (ours(x) - expected).abs().max() > 1e-3


def reference(module: NonLocal2d, x: torch.Tensor, scale: float):
    """float64: z = BN(W y) + x, y_i = sum_j softmax_j(theta_i . phi_j * scale) g_j."""
    m = copy.deepcopy(module).double()
    x = x.double()
    B, _, H, W = x.shape
    inner = m.inner
    wt, bt = m.theta_phi_g.weight, m.theta_phi_g.bias
    theta, phi, g = (
        torch.einsum("oc,bchw->bohw", wt[i * inner : (i + 1) * inner], x)
        + bt[i * inner : (i + 1) * inner, None, None]
        for i in range(3)
    )
    if m.subsample:
        phi, g = F.max_pool2d(phi, 2, 2, ceil_mode=True), F.max_pool2d(g, 2, 2, ceil_mode=True)
    logits = torch.einsum("bci,bcj->bij", theta.flatten(2), phi.flatten(2)) * scale
    weights = logits.softmax(-1)
    y = torch.einsum("bij,bcj->bci", weights, g.flatten(2)).reshape(B, inner, H, W)
    return x + m.norm(m.out(y)), weights


@pytest.mark.parametrize(
    ("options", "hw"),
    [
        ({}, (6, 5)),
        ({"scale": "inner"}, (4, 9)),
        ({"subsample": True}, (7, 5)),
        ({"subsample": True}, (1, 3)),
    ],
)
def test_paper_equations_in_float64(options, hw):
    module = NonLocal2d(16, **options)
    randomise(module)
    module.eval()
    scale = {"none": 1.0, "inner": 8**-0.5}[module.scale]
    x = torch.randn(2, 16, *hw)
    expected, weights = reference(module, x, scale)
    with torch.no_grad():
        close(module(x).double(), expected)
        with record_attention(module) as maps:
            close(module(x).double(), expected)
    close(maps["NonLocal2d"][:, 0].double(), weights)
    h, w = ((hw[0] + 1) // 2, (hw[1] + 1) // 2) if module.subsample else hw
    assert maps.grid("NonLocal2d") == (h, w) and weights.shape[-1] == h * w


@pytest.mark.parametrize("norm_layer", [torch.nn.BatchNorm2d, None])
def test_starts_as_the_identity(norm_layer):
    module = NonLocal2d(16, norm_layer=norm_layer).train()
    x = torch.randn(2, 16, 5, 6)
    close(module(x), x, 0)
    module(x).square().sum().backward()  # the zero-initialised layer still learns
    last = module.norm.weight if norm_layer is not None else module.out.weight
    assert last.grad.abs().sum() > 0


def test_reduction_sets_the_inner_width_with_a_floor_of_one():
    assert NonLocal2d(64).inner == 32
    assert NonLocal2d(64, reduction=8).inner == 8
    assert NonLocal2d(16, reduction=32).inner == 1


def test_fused_path_runs_the_flash_kernel(sdpa_calls, fused_kernel):
    with torch.no_grad():
        NonLocal2d(32).eval()(torch.randn(2, 32, 9, 11))
    assert [backend for _, backend in sdpa_calls] == [FLASH]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reduction": 0}, "reduction must be an integer >= 1, got 0"),
        ({"scale": "sqrt"}, "scale must be one of 'none', 'inner', 'input', got 'sqrt'"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        NonLocal2d(16, **options)
