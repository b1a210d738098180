"""Attention ResNets against torchvision and timm given the same weights, and against the
published parameter and multiply-add counts.

Random weights would hide most mistakes (timm zero-initialises the last BN of each branch,
torchvision's running statistics are 0 and 1), so every comparison first gives all BNs
random affine parameters and running statistics measured on a batch."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import timm
import torch
import torchvision
from torch import nn

import visattn.models.resnet as R
from visattn import record_attention
from visattn.attention import ATTENTION, create_attention
from visattn.attention.eca import EfficientChannelAttention, eca_kernel_size
from visattn.catalog import model_cost

NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"]
TV_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights,
    "resnet34": torchvision.models.ResNet34_Weights,
    "resnet50": torchvision.models.ResNet50_Weights,
    "resnet101": torchvision.models.ResNet101_Weights,
    "resnet152": torchvision.models.ResNet152_Weights,
    "resnext50_32x4d": torchvision.models.ResNeXt50_32X4D_Weights,
}
STAGE_CHANNELS = {1: 256, 2: 512, 3: 1024, 4: 2048}  # block output width of ResNet-50's stages


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Random BN affine parameters, running statistics of one batch, eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch gives its own statistics
        model.train()(x)
        for m in norms:
            m.momentum = 0.1
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --- sizes and published figures ------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_torchvision(name):
    with torch.device("meta"):
        ours = count(getattr(R, name)())
        theirs = count(getattr(torchvision.models, name)())
    assert ours == theirs == TV_WEIGHTS[name].IMAGENET1K_V1.meta["num_params"]


# (attention, options) -> published millions at 1000 classes (CBAM paper, Table 4).
PUBLISHED = [
    (None, {}, 25.56),
    ("se", {}, 28.09),
    ("se", {"min_hidden": 1}, 28.09),  # the paper's C // 16, no floor: the same here
    ("cbam", {"min_hidden": 1}, 28.09),  # the paper's equations: 28.07, within 0.5 %
    ("cbam", {"min_hidden": 1, "mlp_bias": True, "spatial_norm": nn.BatchNorm2d}, 28.09),
    ("eca", {}, 25.56),
]


@pytest.mark.parametrize(("attention", "options", "published"), PUBLISHED)
def test_resnet50_parameter_counts_match_the_papers(attention, options, published):
    with torch.device("meta"):
        model = R.resnet50(attention=attention, attention_options=options or None)
    assert abs(count(model) / 1e6 - published) / published <= 0.005


def test_attention_parameter_counts_follow_the_papers_formulas():
    # Blocks per stage of ResNet-50 and their widths; SE adds C*C/16 twice plus biases.
    blocks = {256: 3, 512: 4, 1024: 6, 2048: 3}
    se = sum(n * (2 * c * c // 16 + c + c // 16) for c, n in blocks.items())
    cbam_paper = sum(n * (2 * c * c // 16 + 2 * 7 * 7 + 1) for c, n in blocks.items())
    with torch.device("meta"):
        base = count(R.resnet50())
        assert count(R.resnet50(attention="se")) - base == se == 2_530_992
        assert count(R.resnet50(attention="cbam")) - base == cbam_paper
        # The authors' code (MLP biases, BN after the 7x7 conv) gives the published 28.09 M.
        official = R.resnet50(
            attention="cbam", attention_options={"mlp_bias": True, "spatial_norm": nn.BatchNorm2d}
        )
    assert round(count(official) / 1e6, 2) == 28.09


def test_eca_kernel_sizes_and_the_published_80_parameters():
    # The adaptive rule at the block widths gives 5, 5, 5, 7, not the 3, 5, 5, 7 that the
    # published "+80 parameters" implies; a callable reproduces the paper's per-stage sizes.
    assert [eca_kernel_size(c) for c in STAGE_CHANNELS.values()] == [5, 5, 5, 7]
    by_width = {256: 3, 512: 5, 1024: 5, 2048: 7}
    with torch.device("meta"):
        base = count(R.resnet50())
        adaptive = R.resnet50(attention="eca")
        paper = R.resnet50(attention=lambda c: EfficientChannelAttention(c, kernel_size=by_width[c]))
    assert count(adaptive) - base == 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7 == 86
    assert count(paper) - base == 80
    kernels = {(b.attn.channels, b.attn.kernel_size) for b in paper.blocks()}
    assert kernels == set(by_width.items())


def test_multiply_adds_match_torchvision_and_the_cbam_paper_increments():
    base = model_cost("resnet50", attention="none").gmacs
    assert abs(base - TV_WEIGHTS["resnet50"].IMAGENET1K_V1.meta["_ops"]) < 1e-3
    # CBAM paper Table 4: 3.858 / 3.860 / 3.864 G; its absolute counts use another counter,
    # the increments are comparable (each figure rounded to 1e-3).
    assert abs(model_cost("resnet50", attention="se").gmacs - base - 0.002) <= 1e-3
    assert abs(model_cost("resnet50", attention="cbam").gmacs - base - 0.006) <= 1e-3


# --- same function as torchvision and timm ------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_equals_torchvision_given_the_same_weights(name):
    x = torch.randn(2, 3, 64, 64)
    ref = calibrate(getattr(torchvision.models, name)(num_classes=10), x)
    ours = getattr(R, name)(num_classes=10).eval()
    report = R.load_torchvision(ours, ref.state_dict())
    assert report.new == () and len(report.loaded) == len(ref.state_dict())
    with torch.no_grad():
        for size in [(64, 64), (33, 17), (16, 16), (1, 1)]:
            xs = torch.randn(2, 3, *size)
            assert max_diff(ours(xs), ref(xs)) <= 1e-5, size
        features = ref.layer4(
            ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
        )
        assert max_diff(ours.forward_features(x), features) <= 1e-5


def test_any_input_channels_and_classes():
    ref = torchvision.models.resnet18(num_classes=7)
    ref.conv1 = nn.Conv2d(5, 64, 7, stride=2, padding=3, bias=False)
    ours = R.resnet18(7, in_channels=5)
    assert ours.conv1.weight.shape == (64, 5, 7, 7)
    calibrate(ref, torch.randn(4, 5, 48, 48))
    R.load_torchvision(ours, ref.state_dict())
    ours.eval()
    with torch.no_grad():
        for size in [(33, 17), (16, 16), (1, 1)]:
            x = torch.randn(3, 5, *size)
            out = ours(x)
            assert out.shape == (3, 7)
            assert max_diff(out, ref(x)) <= 1e-5


# timm attn_layer -> (our options that build timm's layer, timm key -> our key inside the
# block's attention; None: a timm parameter with no counterpart, see the note).
TIMM = {
    "se": (
        {"round_to": 8},
        {
            "fc1.weight": "fc1.weight",
            "fc1.bias": "fc1.bias",
            "fc2.weight": "fc2.weight",
            "fc2.bias": "fc2.bias",
        },
    ),
    "eca": ({"min_kernel_size": 3}, {"conv.weight": "conv.weight"}),
    "cbam": (
        {"min_hidden": 1, "spatial_norm": nn.BatchNorm2d},
        {
            "channel.fc1.weight": "mlp.0.weight",
            "channel.fc2.weight": "mlp.2.weight",
            "spatial.conv.conv.weight": "conv.weight",
        }
        | {
            f"spatial.conv.bn.{k}": f"norm.{k}"
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        },
    ),
    "gc": (
        {"fusion": "scale", "reduction": 8, "min_hidden": 1, "norm_layer": partial(nn.LayerNorm, eps=1e-6)},
        # The context logit's bias shifts every logit equally and cancels in the softmax.
        {"conv_attn.weight": "key.weight", "conv_attn.bias": None}
        | {
            f"mlp_scale.{k}": f"transform_scale.{k}"
            for k in ("fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight", "fc2.bias")
        },
    ),
}


def from_timm(state: dict[str, torch.Tensor], keys: dict[str, str | None]) -> dict[str, torch.Tensor]:
    """timm's ``<block>.se.<key>`` -> our ``<block>.attn.<key>``; 1x1 conv weights -> linear."""
    out = {}
    for k, v in state.items():
        if ".se." not in k:
            out[k] = v
            continue
        block, rest = k.split(".se.")
        if keys[rest] is not None:
            pointwise = v.ndim == 4 and v.shape[2:] == (1, 1)
            out[f"{block}.attn.{keys[rest]}"] = v[:, :, 0, 0] if pointwise else v
    return out


@pytest.mark.parametrize("attn_layer", list(TIMM))
def test_equals_timm_resnet50_with_the_same_attention(attn_layer):
    options, keys = TIMM[attn_layer]
    x = torch.randn(2, 3, 64, 64)
    ref = timm.create_model(
        "resnet50", pretrained=False, num_classes=10, block_args={"attn_layer": attn_layer}
    )
    with torch.no_grad():  # timm zero-initialises parts of its attention: perturb everything
        for name, p in ref.named_parameters():
            if ".se." in name:
                p.add_(torch.randn_like(p) * 0.2)
    calibrate(ref, x)
    ours = R.resnet50(10, attention=attn_layer, attention_options=options).eval()
    ours.load_state_dict(from_timm(ref.state_dict(), keys))  # strict: the mapping is complete
    # float64: in float32 the two differ by rounding alone up to ~3e-4 (1x1 conv vs linear,
    # amplified through 16 blocks of random weights); in float64 by ~1e-12.
    ours, ref = ours.double(), ref.double()
    with torch.no_grad():
        for size in [(64, 64), (33, 17)]:
            xs = torch.randn(2, 3, *size, dtype=torch.float64)
            logits = ours(xs)
            assert max_diff(logits, ref(xs)) <= 1e-9, size
            assert logits.std() > 0.1  # the comparison is not between two constants


@pytest.mark.parametrize("name", ATTENTION.names())
def test_attention_sits_after_the_last_bn_before_the_addition(name):
    """Our bottleneck against torchvision's with the attention hooked onto its last BN."""
    ref = torchvision.models.resnet.Bottleneck(
        32,
        16,
        stride=2,
        downsample=nn.Sequential(nn.Conv2d(32, 64, 1, stride=2, bias=False), nn.BatchNorm2d(64)),
    )
    attn = create_attention(name, 64)
    ours = R.Bottleneck(32, 16, stride=2, attention=lambda c: attn)
    with torch.no_grad():
        for p in attn.parameters():  # some mechanisms start as the identity
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(3, 32, 9, 7)
    calibrate(ref, x)
    ours.load_state_dict({**ref.state_dict(), **{f"attn.{k}": v for k, v in attn.state_dict().items()}})
    ours.eval()
    ref.bn3.register_forward_hook(lambda module, inputs, output: attn(output))
    with torch.no_grad():
        for size in [(9, 7), (1, 1)]:
            xs = torch.randn(3, 32, *size)
            assert max_diff(ours(xs), ref(xs)) <= 1e-5, size


# --- loading torchvision weights ------------------------------------------------------


def test_load_torchvision_reports_exactly_the_attention_keys_as_new():
    source = torchvision.models.resnet50()
    calibrate(source, torch.randn(2, 3, 32, 32))
    model = R.resnet50(attention="se")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = R.load_torchvision(model, source.state_dict())
    attention_keys = tuple(k for k in model.state_dict() if ".attn." in k)
    assert report.new == attention_keys and len(attention_keys) == 16 * 4
    assert set(report.loaded) == set(source.state_dict())
    after = model.state_dict()
    for k in attention_keys:
        assert torch.equal(after[k], before[k]), k  # left at initialisation
    for k, v in source.state_dict().items():
        assert torch.equal(after[k], v), k
    assert "64 new" in str(report)


def test_load_torchvision_refuses_another_architecture():
    model = R.resnet18(attention="eca")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"does not fit resnet18.*unexpected \(\d+\): .*wrong shape") as err:
        R.load_torchvision(model, torchvision.models.resnet50().state_dict())
    assert "layer1.0.conv3.weight" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "half loaded"
    with pytest.raises(ValueError, match=r"missing \(\d+\): layer1.0.conv1.weight"):
        R.load_torchvision(model, {k: v for k, v in model.state_dict().items() if "layer1.0.conv1" not in k})
    with pytest.raises(ValueError, match=r"unexpected \(64\): layer1.0.attn"):  # not torchvision's
        R.load_torchvision(R.resnet50(attention="se"), R.resnet50(attention="se").state_dict())


def test_load_torchvision_head_of_another_class_count():
    source = torchvision.models.resnet18().state_dict()
    model = R.resnet18(10)
    with pytest.raises(ValueError, match=r"wrong shape \(2\): fc.weight \(1000, 512\) \(needs \(10, 512\)\)"):
        R.load_torchvision(model, source)
    fc = model.fc.weight.clone()
    report = R.load_torchvision(model, source, skip_head=True)
    assert report.new == ("fc.weight", "fc.bias") and torch.equal(model.fc.weight, fc)
    assert torch.equal(model.layer4[1].bn2.running_var, source["layer4.1.bn2.running_var"])


# --- training, maps, options and errors -------------------------------------------------


def test_trains_one_step_and_records_maps_at_32px():
    model = R.resnet50(10, attention="cbam")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad
    assert all(b.attn.mlp[0].weight.grad.abs().sum() > 0 for b in model.blocks())
    opt.step()
    model.eval()
    with torch.no_grad(), record_attention(model) as maps:
        model(x[:2])
    names = [
        f"layer{i}.{j}.attn:{part}"
        for i, n in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True)
        for j in range(n)
        for part in ("channel", "spatial")
    ]
    assert list(maps) == names
    for key in names:
        stage = int(key[5])
        side = 8 // 2 ** (stage - 1) if stage < 4 else 1  # 32 px: 8, 4, 2, 1
        want = (2, STAGE_CHANNELS[stage]) if key.endswith("channel") else (2, 1, side, side)
        assert maps[key].shape == want, key
        assert maps[key].min() >= 0 and maps[key].max() <= 1


def test_zero_init_last_and_attention_keeps_its_own_initialisation():
    model = R.resnet50(attention="gc", zero_init_last=True)
    assert all(b.bn3.weight.abs().sum() == 0 for b in model.blocks())
    # GC's own last layer starts at zero, its context key is Kaiming-normal: not overwritten
    # by the network's initialisation.
    assert all(b.attn.transform_add.fc2.weight.abs().sum() == 0 for b in model.blocks())
    assert R.resnet18(attention=None).layer1[0].attn.__class__ is nn.Identity


def test_registered_with_create_model():
    from visattn.models import create_model

    for name in NAMES:
        assert name in R.MODELS
    with torch.device("meta"):
        model = create_model("resnext50_32x4d", num_classes=5, in_channels=1, attention="eca")
    assert model.layer1[0].conv2.groups == 32 and model.fc.out_features == 5 and model.in_channels == 1


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        R.resnet18(0)
    with pytest.raises(ValueError, match="in_channels must be an integer >= 1, got -1"):
        R.resnet18(in_channels=-1)
    with pytest.raises(ValueError, match="attention_options given but attention is None"):
        R.resnet18(attention_options={"reduction": 8})
    with pytest.raises(ValueError, match="groups and width_per_group must be 1 and 64 with BasicBlock"):
        R.resnet18(groups=32)
    with pytest.raises(ValueError, match=r"layers must give the depth of 4 stages, got \[2, 2, 2\]"):
        R.ResNet(R.BasicBlock, (2, 2, 2), name="resnet14")
    with pytest.raises(ValueError, match=r"layers\[1\] must be an integer >= 1, got 0"):
        R.ResNet(R.BasicBlock, (2, 0, 2, 2), name="resnet14")
    with pytest.raises(KeyError, match="unknown attention 'sqeeze'"):
        R.resnet18(attention="sqeeze")
    with pytest.raises(TypeError):
        R.resnet18(widht=3)
    with pytest.raises(TypeError):
        R.resnext50_32x4d(groups=8)  # fixed by the name
    model = R.resnet18(10)
    with pytest.raises(
        ValueError, match=r"resnet18 expects input of shape \(B, 3, H, W\), got \(2, 4, 32, 32\)"
    ):
        model(torch.randn(2, 4, 32, 32))
    with pytest.raises(
        ValueError, match=r"resnet18 expects input of shape \(B, 3, H, W\), got \(3, 32, 32\)"
    ):
        model(torch.randn(3, 32, 32))
