"""Rollout and gradient-weighted attention against the products written out in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from swinkit import tiny_timm_swin
from visattn import create_model, record_attention
from visattn.attention.base import AttentionModule
from visattn.explain import explain

timm = pytest.importorskip("timm")


def _vit() -> torch.nn.Module:
    # 2 blocks, 3 heads, a 2x3 patch grid behind one class token.
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=(32, 48), depth=2
    )


def _own_softmax(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's weights, recomputed in float64 from its input and qkv weights."""
    inputs = []
    hooks = [b.attn.register_forward_hook(lambda m, a, o: inputs.append(a[0].double())) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    maps = []
    for block, tokens in zip(model.blocks, inputs, strict=True):
        w, b = block.attn.qkv.weight.double(), block.attn.qkv.bias.double()
        q, k, _ = F.linear(tokens, w, b).view(x.shape[0], -1, 3, 3, 64).permute(2, 0, 3, 1, 4)
        maps.append((q @ k.transpose(-2, -1) / 8.0).softmax(-1))  # (B, heads, N, N)
    return maps


def _to_image(per_patch: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    heat = F.interpolate(
        per_patch.view(-1, 1, *grid).float(), size=size, mode="bilinear", align_corners=False
    )
    heat = heat[:, 0]
    low = heat.amin(dim=(1, 2), keepdim=True)
    return (heat - low) / (heat.amax(dim=(1, 2), keepdim=True) - low)


def test_rollout_of_two_layers_is_the_written_out_product():
    model = _vit().eval()
    x = torch.randn(2, 3, 32, 48)
    w1, w2 = _own_softmax(model, x)
    eye = torch.eye(7, dtype=torch.float64)
    a1 = 0.5 * w1.mean(1) + 0.5 * eye
    a2 = 0.5 * w2.mean(1) + 0.5 * eye
    joint = torch.einsum("bij,bjk->bik", a2, a1)  # A_2 A_1
    expected = _to_image(joint[:, 0, 1:], (2, 3), (32, 48))
    torch.testing.assert_close(explain(model, x, method="rollout"), expected, atol=1e-5, rtol=0)

    # max fusion with half of each layer's weakest weights discarded
    def layer(w: torch.Tensor) -> torch.Tensor:
        fused = w.amax(1).flatten(1)  # (B, 49)
        keep = fused >= fused.sort(dim=1).values[:, 24:25]  # the 24 smallest of 49 are dropped
        fused = (fused * keep).view(-1, 7, 7) + eye
        return fused / fused.sum(-1, keepdim=True)

    joint = layer(w2) @ layer(w1)
    expected = _to_image(joint[:, 0, 1:], (2, 3), (32, 48))
    got = explain(model, x, method="rollout", head_fusion="max", discard_ratio=0.5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_rollout_of_a_cnn_with_one_attention_block_is_attention_received_with_identity():
    model = create_model("attention_cnn", num_classes=3, in_channels=1, widths=(8, 8), strides=(2, 2)).eval()
    x = torch.randn(2, 1, 12, 16)
    with torch.no_grad(), record_attention(model) as maps:
        model(x)
    w = maps["attn"].double()  # (B, heads, 12, 12) over the 3x4 grid
    a = 0.5 * w.mean(1) + 0.5 * torch.eye(12, dtype=torch.float64)
    expected = _to_image(a.mean(1), maps.grid("attn"), (12, 16))
    torch.testing.assert_close(explain(model, x, method="rollout"), expected, atol=1e-5, rtol=0)


def test_grad_attention_follows_chefer_rule_on_timms_own_weights_and_gradients():
    model = _vit().eval()
    x = torch.randn(2, 3, 32, 48)
    target = torch.tensor([1, 3])
    # Reference: timm's own unfused path; its softmax output enters attn_drop, keep its gradient.
    reference = copy.deepcopy(model)
    seen = []

    def keep(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        args[0].retain_grad()
        seen.append(args[0])

    for block in reference.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_pre_hook(keep)
    logits = reference(x)
    logits.gather(1, target[:, None]).sum().backward()
    relevance = torch.eye(7, dtype=torch.float64).expand(2, 7, 7)
    for attn in seen:
        weighted = (attn.grad.double() * attn.double()).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    expected = _to_image(relevance[:, 0, 1:], (2, 3), (32, 48))
    got = explain(model, x, method="grad-attention", target=target)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got[0], explain(model, x, method="grad-attention", target=0)[0])


def test_grad_attention_on_a_visattn_cnn():
    model = create_model("attention_cnn", num_classes=3, in_channels=1, widths=(8, 8), strides=(2, 2)).eval()
    x = torch.randn(2, 1, 12, 16)
    with record_attention(model, grad=True) as maps:
        score = model(x)[:, 2].sum()
    attn = maps["attn"]
    (grad,) = torch.autograd.grad(score, [attn])
    relevance = torch.eye(12, dtype=torch.float64) + (grad.double() * attn.double()).clamp(min=0).mean(1)
    expected = _to_image(relevance.mean(1), maps.grid("attn"), (12, 16))
    torch.testing.assert_close(
        explain(model, x, method="grad-attention", target=2), expected, atol=1e-5, rtol=0
    )


def test_rollout_refuses_models_without_global_attention():
    plain = create_model("attention_cnn", num_classes=3, in_channels=1, attention=None)
    with pytest.raises(ValueError, match=r"recorded no attention.*gradcam"):
        explain(plain, torch.randn(1, 1, 8, 8), method="rollout")


def _dense(fused: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, P, K) window weights -> (B, P, P) dense layer (padding slots dropped)."""
    b, p, k = fused.shape
    dense = torch.zeros(b, p, p, dtype=torch.float64)
    for q in range(p):
        for j in range(k):
            if keys[q, j] >= 0:
                dense[:, q, keys[q, j]] += fused[:, q, j]
    return dense


def _merging(fine: tuple[int, int], coarse: tuple[int, int]) -> torch.Tensor:
    """(Pc, Pf): each merged token's flow shared by the positions of its 2x2 block."""
    merge = torch.zeros(coarse[0] * coarse[1], fine[0] * fine[1], dtype=torch.float64)
    for i in range(fine[0]):
        for j in range(fine[1]):
            merge[(i // 2) * coarse[1] + j // 2, i * fine[1] + j] = 1.0
    return merge / merge.sum(dim=1, keepdim=True)


def test_swin_rollout_and_grad_attention_are_the_written_out_products():
    model = tiny_timm_swin(3, (2, 2, 1, 1))  # grids 10x14, 5x7, 3x4 (an odd merge), 2x2
    x = torch.randn(2, 3, 40, 56)
    with record_attention(model, grad=True) as maps:
        score = model(x)[:, 1].sum()
    names = list(maps)
    grads = torch.autograd.grad(score, [maps[n] for n in names])

    def chain(step) -> torch.Tensor:
        joint = None
        for index, name in enumerate(names):
            layer = step(name, index)
            if joint is not None and maps.grid(names[index - 1]) != maps.grid(name):
                joint = _merging(maps.grid(names[index - 1]), maps.grid(name)) @ joint
            joint = layer if joint is None else layer @ joint
        return joint.mean(dim=1).view(2, *maps.grid(names[0]))  # mean over the last stage

    def rollout_step(name: str, index: int) -> torch.Tensor:
        a = _dense(maps[name].detach().double().mean(1), maps.keys_index(name))
        a = a + torch.eye(a.shape[-1], dtype=torch.float64)
        return a / a.sum(dim=-1, keepdim=True)

    def chefer_step(name: str, index: int) -> torch.Tensor:
        weighted = (grads[index].double() * maps[name].detach().double()).clamp(min=0).mean(1)
        return torch.eye(weighted.shape[1], dtype=torch.float64) + _dense(weighted, maps.keys_index(name))

    expected = _to_image(chain(rollout_step).flatten(1), maps.grid(names[0]), (40, 56))
    torch.testing.assert_close(explain(model, x, method="rollout"), expected, atol=1e-5, rtol=0)
    expected = _to_image(chain(chefer_step).flatten(1), maps.grid(names[0]), (40, 56))
    torch.testing.assert_close(
        explain(model, x, method="grad-attention", target=1), expected, atol=1e-5, rtol=0
    )


class _OffPath(AttentionModule):
    """Records a copy of its weights that the output is not computed from."""

    family = "global"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        weights = (tokens @ tokens.transpose(1, 2)).softmax(-1)  # (B, N, N)
        self.keep_map(weights.clone().unsqueeze(1), kind="softmax", grid=tuple(x.shape[-2:]))
        return x + (weights @ tokens).transpose(1, 2).reshape(x.shape)


def test_grad_attention_refuses_maps_off_the_output_path():
    model = torch.nn.Sequential(_OffPath(4), torch.nn.Flatten(), torch.nn.Linear(4 * 9, 2))
    with pytest.raises(ValueError, match="maps of 0 are not on the path to the output"):
        explain(model, torch.randn(1, 4, 3, 3), method="grad-attention")
