"""DANet dual attention ("danet") against a float64 re-implementation of the paper's equations.

No installable reference exists. The reference below follows the modules of the paper, with
CAM's ``rowmax(E) - E`` energy written out literally as in the authors' code (our module uses
the equivalent ``softmax(-E)``), and eq. 3's ``softmax(E)`` for ``cam_energy="paper"``.
"""

from __future__ import annotations

import pytest
import torch
from attnkit import FLASH

from visattn import record_attention
from visattn.attention.danet import DualAttention


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def reference(module: DualAttention, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.double()
    B, C, H, W = x.shape
    flat = x.reshape(B, C, H * W)  # (B, C, N)
    out, maps = x.clone(), {}
    if module.branches != "channel":
        weight, bias = module.qkv.weight.double(), module.qkv.bias.double()
        r = module.inner
        proj = torch.einsum("oc,bcn->bon", weight, flat) + bias[:, None]  # (B, 2r + C, N)
        query, key, value = proj[:, :r], proj[:, r : 2 * r], proj[:, 2 * r :]
        energy = torch.bmm(query.transpose(1, 2), key)  # (B, N, N): B_i . C_j, no scaling
        attn = energy.softmax(-1)
        pam = torch.bmm(value, attn.transpose(1, 2)).reshape(B, C, H, W)  # sum_j s_ij D_j
        out = out + module.gamma_position.double() * pam
        maps["position"] = attn
    if module.branches != "position":
        energy = torch.bmm(flat, flat.transpose(1, 2))  # (B, C, C)
        if module.cam_energy == "max_minus":
            energy = energy.max(-1, keepdim=True)[0].expand_as(energy) - energy
        attn = energy.softmax(-1)
        cam = torch.bmm(attn, flat).reshape(B, C, H, W)
        out = out + module.gamma_channel.double() * cam
        maps["channel"] = attn
    return out, maps


def build(channels=16, **options) -> DualAttention:
    module = DualAttention(channels, **options)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # non-zero gammas
    return module.eval()


@pytest.mark.parametrize(
    "options",
    [{}, {"cam_energy": "paper"}, {"branches": "position"}, {"branches": "channel", "reduction": 2}],
)
@pytest.mark.parametrize("hw", [(6, 5), (1, 1), (4, 9)])
def test_matches_float64_reference(options, hw):
    module = build(**options)
    x = torch.randn(2, 16, *hw)
    expected, ref_maps = reference(module, x)
    with torch.no_grad():
        close(module(x).double(), expected)
        with record_attention(module) as maps:
            close(module(x).double(), expected)
    assert sorted(maps) == sorted(f"DualAttention:{part}" for part in ref_maps)
    for part, attn in ref_maps.items():
        close(maps[f"DualAttention:{part}"][:, 0].double(), attn)
    if "position" in ref_maps:
        assert maps.grid("DualAttention:position") == hw
    if "channel" in ref_maps:
        assert maps.grid("DualAttention:channel") is None and ref_maps["channel"].shape == (2, 16, 16)


def test_max_minus_energy_is_softmax_of_minus_energy_and_differs_from_eq3():
    """The authors' max-minus CAM favours dissimilar channels; eq. 3 favours similar ones."""
    code = build(branches="channel", cam_energy="max_minus")
    paper = build(branches="channel")  # eq. 3 is the default
    paper.load_state_dict(code.state_dict())
    x = torch.randn(2, 16, 5, 5)
    with record_attention(code) as a, record_attention(paper) as b:
        code(x), paper(x)
    attn_code, attn_paper = a["DualAttention:channel"][:, 0], b["DualAttention:channel"][:, 0]
    # Each channel is most similar to itself: eq. 3 puts the most weight on the diagonal,
    # the max-minus form the least.
    diag = torch.eye(16, dtype=torch.bool).expand(2, 16, 16)
    assert (attn_paper.argmax(-1) == torch.arange(16)).all()
    assert (attn_code[diag].view(2, 16) <= attn_code.amin(-1) + 1e-12).all()
    assert (code(x) - paper(x)).abs().max() > 1e-2


def test_starts_as_the_identity_and_gammas_learn():
    module = DualAttention(16).train()
    x = torch.randn(2, 16, 5, 6)
    out = module(x)
    close(out, x, 0)
    out.square().sum().backward()
    assert module.gamma_position.grad.abs() > 0 and module.gamma_channel.grad.abs() > 0


def test_both_modules_run_the_flash_kernel(sdpa_calls, fused_kernel):
    """PAM's query/key (C/8) are narrower than its value (C): unpadded, the kernel would
    silently materialise the N x N scores."""
    with torch.no_grad():
        DualAttention(32).eval()(torch.randn(2, 32, 9, 11))
    assert [backend for _, backend in sdpa_calls] == [FLASH] * 2


def test_branches_hold_only_their_parameters():
    assert {n for n, _ in DualAttention(16, branches="channel").named_parameters()} == {"gamma_channel"}
    assert "gamma_channel" not in dict(DualAttention(16, branches="position").named_parameters())
    assert DualAttention(16).inner == 2 and DualAttention(16, reduction=32).inner == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reduction": 0}, "reduction must be an integer >= 1, got 0"),
        ({"cam_energy": "softmax"}, "cam_energy must be one of 'max_minus', 'paper', got 'softmax'"),
        ({"branches": "spatial"}, "branches must be one of 'both', 'position', 'channel', got 'spatial'"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        DualAttention(16, **options)
