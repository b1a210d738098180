"""Vision Transformer against torchvision's vit_b_16 and timm's vit_* given the same weights (copied
with the loaders' explicit key mapping), at 224 px and, through timm's dynamic_img_size /
dynamic_img_pad, at other resolutions; recorded maps against a float64 softmax; loader refusals;
the model contract (errors, ONNX)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torchvision
from modelkit import one_training_step

from visattn import record_attention
from visattn.explain import explain, model_heatmap
from visattn.flops import count_flops
from visattn.models import MODELS, create_model
from visattn.models.vit import VisionTransformer, vit_base_patch16, vit_tiny_patch16
from visattn.models.weights import load_timm_vit, load_torchvision_vit


def perturb(module: torch.nn.Module) -> torch.nn.Module:
    """Random offsets on every parameter: LayerNorms at (1, 0), zero heads and zero class tokens
    would hide a wrong key mapping."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.02))
    return module.eval()


def small(num_classes: int = 10, **options) -> VisionTransformer:
    config = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "heads": 2, **options}
    return perturb(VisionTransformer(num_classes, **config))


def max_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_torchvision_vit_b_16_logits_and_parameter_count():
    theirs = perturb(torchvision.models.vit_b_16(weights=None))
    ours = vit_base_patch16(num_classes=1000).eval()
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in theirs.parameters()) == 86_567_656
    assert int(n / 1e6) == 86  # ViT-Base: "86M" in Table 1 of the paper (86.57 M)
    load_torchvision_vit(ours, theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 0.5  # logits worth comparing
    assert max_gap(got, expected) <= 1e-4


def test_timm_vit_base_logits():
    theirs = perturb(timm.create_model("vit_base_patch16_224", pretrained=False))
    ours = vit_base_patch16(num_classes=1000).eval()
    load_timm_vit(ours, theirs.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_gap(ours(x), theirs(x)) <= 1e-4


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[torch.nn.Module, VisionTransformer]:
    torch.manual_seed(1)
    theirs = perturb(
        timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, dynamic_img_pad=True
        )
    )
    ours = vit_tiny_patch16(num_classes=1000).eval()
    load_timm_vit(ours, theirs.state_dict())
    return theirs, ours


def test_tiny_parameter_count(tiny_pair):
    theirs, ours = tiny_pair
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in theirs.parameters()) == 5_717_416  # DeiT-Ti: "5M" in its Table 1


@pytest.mark.parametrize(
    ("name", "params", "gmacs"), [("vit_small_patch16", 22, 4.6), ("vit_base_patch16", 86, 17.5)]
)
def test_published_size_and_cost(name, params, gmacs):
    """DeiT-S and DeiT-B (= ViT-B/16) at 224 px: 22 M parameters and 4.6 G multiply-adds, 86 M and
    17.5 G (Liu et al. 2021, Swin, Table 1; 86 M also in the ViT paper's Table 1). Both papers
    drop the decimals of 22.05 and 86.57 M."""
    with torch.device("meta"):  # the counts need shapes only
        model = MODELS.get(name)(num_classes=1000).eval()
        x = torch.zeros(1, 3, 224, 224)
    assert int(sum(p.numel() for p in model.parameters()) / 1e6) == params
    assert abs(count_flops(model, x) / 2e9 - gmacs) / gmacs < 0.01


@pytest.mark.parametrize("hw", [(224, 224), (64, 48), (50, 70), (33, 17)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_other_resolutions_match_timm_dynamic_img_size(tiny_pair, hw):
    """Bicubic, antialiased resampling of the position grid and zero padding to whole patches."""
    theirs, ours = tiny_pair
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        assert max_gap(ours(x), theirs(x)) <= 1e-5


def test_upsampled_position_grid_matches_timm():
    theirs = perturb(timm.create_model("vit_tiny_patch16_224", img_size=64, dynamic_img_size=True, depth=2))
    ours = VisionTransformer(1000, img_size=64, embed_dim=192, depth=2, heads=3).eval()
    load_timm_vit(ours, theirs.state_dict())
    x = torch.randn(2, 3, 96, 128)  # grid 4x4 -> 6x8
    with torch.no_grad():
        assert max_gap(ours(x), theirs(x)) <= 1e-5
        assert ours.forward_features(x).shape == (2, 1 + 6 * 8, 192)


def test_recorded_maps_are_the_softmax_of_the_block_input():
    model = small()
    x = torch.randn(2, 3, 40, 20)  # grid 5 x 3 (the width padded from 20 to 24)
    seen = {}
    model.blocks[1].attn.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        fused = model(x)
        with record_attention(model) as maps:
            explicit = model(x)
    assert max_gap(fused, explicit) <= 1e-5
    assert list(maps) == ["blocks.0.attn", "blocks.0.attn:cls", "blocks.1.attn", "blocks.1.attn:cls"]
    full, cls = maps["blocks.1.attn"], maps["blocks.1.attn:cls"]
    assert full.shape == (2, 2, 16, 16) and maps.grid("blocks.1.attn") == (5, 3)
    assert maps.prefix_tokens("blocks.1.attn") == 1 and maps.prefix_tokens("blocks.1.attn:cls") == 0
    assert cls.shape == (2, 2, 1, 15) and maps.grid("blocks.1.attn:cls") == (5, 3)
    # float64 reference: softmax(q k^T / sqrt(d)) from the block's (normalised) input.
    attn = model.blocks[1].attn
    qkv = seen["x"].double() @ attn.qkv.weight.double().T + attn.qkv.bias.double()  # (B, N, 3C)
    q, k, _ = qkv.view(2, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
    expected = (q @ k.transpose(-1, -2) / math.sqrt(16)).softmax(-1)
    torch.testing.assert_close(full.double(), expected, atol=1e-6, rtol=1e-5)
    row = expected[:, :, :1, 1:]
    torch.testing.assert_close(cls.double(), row / row.sum(-1, keepdim=True), atol=1e-6, rtol=1e-5)
    _, heat, layer = model_heatmap(model, x)
    assert layer == "blocks.1.attn:cls" and heat.shape == (2, 40, 20)


@pytest.mark.parametrize("method", ["rollout", "grad-attention"])
def test_rollout_and_grad_attention_equal_timms_given_the_same_weights(method):
    """Both read the full maps with their grid and class token, as they read timm's."""
    torch.manual_seed(2)
    config = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    theirs = perturb(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **config))
    ours = VisionTransformer(5, img_size=32, patch_size=8, embed_dim=32, depth=2, heads=2).eval()
    load_timm_vit(ours, theirs.state_dict())
    x = torch.randn(3, 3, 32, 32)
    a, b = explain(ours, x, method=method, target=1), explain(theirs, x, method=method, target=1)
    assert a.shape == (3, 32, 32) and a.std() > 0.01  # not flat
    assert max_gap(a, b) <= 1e-4


def test_without_attention_equals_a_zero_attention_branch():
    with_attn = small(pool="mean")
    for block in with_attn.blocks:
        torch.nn.init.zeros_(block.attn.proj.weight)
        torch.nn.init.zeros_(block.attn.proj.bias)
    without = VisionTransformer(
        10, img_size=32, patch_size=8, embed_dim=32, depth=2, heads=2, attention=None, pool="mean"
    ).eval()
    kept = {k: v for k, v in with_attn.state_dict().items() if ".attn." not in k and ".norm1." not in k}
    without.load_state_dict(kept)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), record_attention(without) as maps:
        torch.testing.assert_close(without(x), with_attn(x))
    assert len(maps) == 0


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()


def test_loaders_refuse_other_layouts(tiny_state):
    model = vit_tiny_patch16()
    before = model.pos_embed.detach().clone()
    with pytest.raises(
        ValueError, match=r"torchvision ViT state_dict does not fit.*missing.*class_token.*unexpected"
    ):
        load_torchvision_vit(model, tiny_state)
    small_state = timm.create_model("vit_small_patch16_224", pretrained=False).state_dict()
    with pytest.raises(
        ValueError, match=r"wrong shape \(\d+\): cls_token \(1, 1, 384\) \(needs \(1, 1, 192\)\)"
    ):
        load_timm_vit(model, small_state)
    # torchvision's layout at vit_tiny's shape
    torchvision_state = torchvision.models.VisionTransformer(
        image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768
    ).state_dict()
    with pytest.raises(ValueError, match=r"timm ViT state_dict .*unexpected \(\d+\): class_token"):
        load_timm_vit(model, torchvision_state)
    with pytest.raises(ValueError, match=r"missing \(\d+\): cls_token.*unexpected \(\d+\): conv1\.weight"):
        load_timm_vit(model, torchvision.models.resnet18().state_dict())
    assert torch.equal(model.pos_embed, before), "a refused state_dict must not be half-loaded"
    load_torchvision_vit(model, torchvision_state)  # the right loader takes it
    assert torch.equal(model.pos_embed, torchvision_state["encoder.pos_embedding"])


def test_loaders_name_missing_and_unexpected_keys(tiny_state):
    state = dict(tiny_state)
    del state["blocks.3.mlp.fc1.bias"]
    state["reg_token"] = torch.zeros(1, 4, 192)
    with pytest.raises(
        ValueError, match=r"missing \(1\): blocks\.3\.mlp\.fc1\.bias; unexpected \(1\): reg_token"
    ):
        load_timm_vit(vit_tiny_patch16(), state)
    with pytest.raises(ValueError, match=r"wrong shape.*pos_embed \(1, 197, 192\) \(needs \(1, 577, 192\)\)"):
        load_timm_vit(vit_tiny_patch16(img_size=384), tiny_state)


def test_grey_input_other_classes_and_one_training_step():
    model = small(in_channels=1, num_classes=7).train()
    x, y = torch.randn(4, 1, 24, 40), torch.randint(0, 7, (4,))
    one_training_step(model, x, y, lr=0.05)
    assert model.forward_features(x).shape == (4, 1 + 3 * 5, 32)


def test_registered_builders():
    model = create_model("vit_tiny_patch16", num_classes=3, in_channels=1, attention="mhsa", img_size=32)
    assert isinstance(model, VisionTransformer) and model.grid_size == (2, 2)
    assert {"vit_small_patch16", "vit_base_patch16", "vit_base_patch32", "vit_large_patch16"} <= set(MODELS)


def test_wrong_inputs():
    model = small()
    with pytest.raises(
        ValueError, match=r"VisionTransformer expects input of shape \(B, 3, H, W\), got \(2, 1, 32, 32\)"
    ):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"VisionTransformer expects input.*got \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"img_size": 30}, r"img_size must be one or two multiples of patch_size=8, got 30"),
        (
            {"attention": "se"},
            r"VisionTransformer needs attention on \(B, N, C\) tokens; 'se' works on \(B, C, H, W\) "
            r"feature maps: use one of mhsa,",
        ),
        ({"attention_options": {"heads": 2}}, r"attention_options may not set heads: the model sets them"),
        ({"attention_options": {"pos": "sine"}}, r"attention_options 'pos' are not options of 'mhsa'"),
        ({"pool": "max"}, r"pool must be one of 'token', 'mean', got 'max'"),
        ({"attention": None}, r"attention=None needs pool='mean'"),
        ({"heads": 5}, r"heads must divide channels \(32\) when head_dim is not given, got 5"),
        ({"drop_rate": 1.0}, r"drop_rate must be a number in \[0.0, 1.0\), got 1.0"),
        ({"depth": 0}, r"depth must be an integer >= 1, got 0"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        small(**options)


@pytest.mark.slow
def test_onnx_runtime_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = small()
    path = tmp_path / "vit.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    x = torch.randn(2, 3, 40, 24)
    torch.onnx.export(model, (x,), str(path), dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        xb = torch.randn(b, 3, 40, 24)
        with torch.no_grad():
            expected = model(xb)
        (got,) = session.run(None, {session.get_inputs()[0].name: xb.numpy()})
        assert max_gap(torch.from_numpy(got), expected) <= 1e-4
