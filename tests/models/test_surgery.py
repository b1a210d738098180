"""insert_attention on torchvision, timm, detection and segmentation models.

What is checked, and against what:
- surgery adds modules and nothing else: with GC (additive fusion, last layer zero: the
  identity at initialisation) the modified model equals the original;
- placement: an attention that outputs zeros turns every block with an identity shortcut
  into the identity when it sits before the addition (and zeroes the block after it);
- timm's own resnet18 with ``attn_layer="se"`` given the same weights;
- maps, gradients, a detection training step, ONNX through onnxruntime.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models import detection, segmentation

from visattn import record_attention
from visattn.attention.se import SqueezeExcite
from visattn.models.surgery import AttentionAfter, InsertionReport, insert_attention

X32 = torch.zeros(1, 3, 32, 32)  # dry-run input: the smallest size every family accepts


class Zero(nn.Module):
    """An attention that outputs zeros: exposes whether it sits before the addition."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == self.channels
        return x * 0


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Random BN affine parameters and running statistics of one batch, ConvNeXt's layer
    scales at 1 (from 1e-6, which would hide the residual branches); eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.fill_(1.0)
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.2)
            m.reset_running_stats()
            m.momentum = None
        model.train()(x)
        for m in norms:
            m.momentum = 0.1
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def block_io(
    model: nn.Module, names: list[str], x: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of each named module in one eval forward."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen.setdefault(name, (inputs[0].clone(), output.clone()))

        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return seen


# (torchvision builder, block class, number of blocks)
FAMILIES = [
    ("resnet18", "BasicBlock", 8),
    ("resnet50", "Bottleneck", 16),
    ("resnext50_32x4d", "Bottleneck", 16),
    ("mobilenet_v2", "InvertedResidual", 17),
    ("mobilenet_v3_large", "InvertedResidual", 15),
    ("efficientnet_b0", "MBConv", 16),
    ("convnext_tiny", "CNBlock", 18),
    ("regnet_y_400mf", "ResBottleneckBlock", 16),
]


@pytest.mark.parametrize(("arch", "block", "n"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_torchvision_family(arch, block, n):
    x = torch.randn(2, 3, 32, 32)
    original = calibrated(
        getattr(torchvision.models, arch)(weights=None, num_classes=10), torch.randn(4, 3, 32, 32)
    )
    with torch.no_grad():
        expected = original(x)

    # Surgery changes nothing but adding the modules: GC starts as the identity.
    same = copy.deepcopy(original)
    report = insert_attention(same, "gc", where=block, example_input=X32)
    assert len(report) == n and {i.placement for i in report} == {"branch"}
    with torch.no_grad():
        assert max_diff(same(x), expected) <= 1e-6
        for i in report:  # and the modules are live: a non-zero last layer changes the output
            same.get_submodule(i.path).transform_add.fc2.bias.fill_(0.5)
        assert max_diff(same(x), expected) > 1e-2

    # Placement: zeroing the residual branch makes each identity-shortcut block the identity.
    zeroed = copy.deepcopy(original)
    insert_attention(zeroed, Zero, where=block, example_input=X32)
    io = block_io(zeroed, [i.name for i in report], x)
    residual = [k for k, (i, o) in io.items() if i.shape == o.shape]
    assert residual and all(torch.equal(io[k][1], io[k][0]) for k in residual)
    after = copy.deepcopy(original)
    insert_attention(after, Zero, where=block, placement="output", example_input=X32)
    io = block_io(after, [i.name for i in report], x)
    assert all(o.abs().max() == 0 for _, o in io.values())

    # A real mechanism: maps, shapes, gradients.
    model = copy.deepcopy(original)
    report = insert_attention(model, "se", where=block, example_input=X32)
    with torch.no_grad(), record_attention(model) as maps:
        assert model(x).shape == expected.shape
    assert list(maps) == [i.path for i in report]
    assert all(maps[i.path].shape == (2, i.channels) for i in report)
    model.train()
    nn.functional.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    for i in report:
        grads = [p.grad for p in model.get_submodule(i.path).parameters()]
        assert grads and all(
            g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads
        ), i


def test_resnet50_channels_paths_and_table():
    model = torchvision.models.resnet50(weights=None)
    report = insert_attention(model, "se", where="Bottleneck")
    assert [i.channels for i in report] == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    assert report[0] == ("layer1.0", "SqueezeExcite", 256, "branch", "layer1.0.bn3.attention")
    assert isinstance(model.layer1[0].bn3, AttentionAfter)
    assert isinstance(report, InsertionReport)
    lines = str(report).splitlines()
    assert lines[0].split() == ["module", "attention", "channels", "placement", "inserted", "as"]
    assert lines[2].split() == ["layer1.0", "SqueezeExcite", "256", "branch", "layer1.0.bn3.attention"]
    assert len(lines) == 2 + 16


BLOCKS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


@pytest.mark.parametrize(
    ("where", "names", "placement"),
    [
        ("layer4.*", ["layer4.0", "layer4.1"], "branch"),  # outermost matches only
        ("layer4", ["layer4"], "output"),
        (torchvision.models.resnet.BasicBlock, BLOCKS, "branch"),
        ("BasicBlock", BLOCKS, "branch"),
        (
            lambda name, m: name.startswith("layer") and name.endswith(".1") and name.count(".") == 1,
            [f"layer{i}.1" for i in range(1, 5)],
            "branch",
        ),
        ("stages", ["layer1", "layer2", "layer3", "layer4"], "output"),
    ],
    ids=["glob", "name", "class", "class-name", "predicate", "stages"],
)
def test_where_selectors(where, names, placement):
    model = torchvision.models.resnet18(weights=None)
    report = insert_attention(model, "eca", where=where, example_input=X32)
    assert [i.name for i in report] == names
    assert {i.placement for i in report} == {placement}


@pytest.mark.parametrize(
    ("arch", "stages"),
    [
        ("convnext_tiny", ["features.1", "features.3", "features.5", "features.7"]),
        ("regnet_y_400mf", ["stem"] + [f"trunk_output.block{i}" for i in range(1, 5)]),
        ("efficientnet_b0", [f"features.{i}" for i in range(9)]),
    ],
)
def test_stages_of_other_families(arch, stages):
    model = getattr(torchvision.models, arch)(weights=None)
    assert [i.name for i in insert_attention(model, "se", where="stages", example_input=X32)] == stages
    assert all(isinstance(model.get_submodule(s), AttentionAfter) for s in stages)


def test_same_function_as_timm_resnet18_with_se():
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=10, block_args={"attn_layer": "se"})
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if ".se." in name:
                p.add_(torch.randn_like(p) * 0.2)
    ref = calibrated(ref.double(), torch.randn(4, 3, 48, 48, dtype=torch.float64))
    ours = timm.create_model("resnet18", pretrained=False, num_classes=10)
    report = insert_attention(ours, "se", where="BasicBlock", attention_options={"round_to": 8})
    assert [i.path for i in report] == [f"layer{i}.{j}.se" for i in range(1, 5) for j in range(2)]
    state = {
        k: v[:, :, 0, 0] if ".se.fc" in k and k.endswith("weight") else v for k, v in ref.state_dict().items()
    }
    ours.double().load_state_dict(state)
    with torch.no_grad():
        assert max_diff(ours.eval()(x), ref(x)) <= 1e-9


def test_timm_efficientnet_blocks():
    original = calibrated(
        timm.create_model("efficientnet_b0", pretrained=False, num_classes=10), torch.randn(4, 3, 32, 32)
    )
    x = torch.randn(2, 3, 32, 32)
    model = copy.deepcopy(original)
    report = insert_attention(model, "gc", where="InvertedResidual", example_input=X32)
    assert len(report) == 15 and report[0].path == "blocks.1.0.bn3.attention"
    with torch.no_grad():
        assert max_diff(model(x), original(x)) <= 1e-6
    zeroed = copy.deepcopy(original)
    insert_attention(zeroed, Zero, where="InvertedResidual", example_input=X32)
    io = block_io(zeroed, [i.name for i in report], x)
    residual = [k for k, (i, o) in io.items() if i.shape == o.shape]
    assert len(residual) == 9 and all(torch.equal(io[k][1], io[k][0]) for k in residual)


# --- detection and segmentation: attention in the backbone ------------------------------


def detection_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 100)]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0]]),
            "labels": torch.tensor([1, 2]),
        },
        {"boxes": torch.tensor([[20.0, 20.0, 70.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


def test_faster_rcnn_mobilenet_v3_fpn_trains_and_detects():
    torch.manual_seed(0)
    model = detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=96, max_size=128
    )
    original = copy.deepcopy(model).eval()
    report = insert_attention(model.backbone, "cbam", where="InvertedResidual")
    assert len(report) == 15 and report[0].path == "body.1.block.attention"
    images, targets = detection_batch()
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for i in report:
        grads = [p.grad for p in model.backbone.get_submodule(i.path).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(
            g.abs().sum() > 0 for g in grads
        )
    with torch.no_grad():
        detections = model.eval()(images)
        with record_attention(model) as maps:
            model(images[:1])
    assert len(detections) == 2 and all(set(d) == {"boxes", "labels", "scores"} for d in detections)
    assert all(d["boxes"].shape[1:] == (4,) and torch.isfinite(d["boxes"]).all() for d in detections)
    assert len(maps) == 2 * 15  # CBAM: a channel and a spatial map per insertion
    # Identity at initialisation: the same detections as the network without attention.
    same = copy.deepcopy(original)
    insert_attention(same.backbone, "gc", where="InvertedResidual")
    with torch.no_grad():
        want, got = original(images), same(images)
    assert want[0]["boxes"].shape[0] > 0
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w["labels"], g["labels"]) and max_diff(w["boxes"], g["boxes"]) <= 1e-3


def test_retinanet_backbone():
    model = detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64
    )
    report = insert_attention(model.backbone, "eca", where="Bottleneck")
    assert len(report) == 16 and report[-1].channels == 2048
    images, targets = detection_batch()
    losses = model.train()(images, targets)
    assert set(losses) == {"classification", "bbox_regression"} and all(
        torch.isfinite(v) for v in losses.values()
    )
    sum(losses.values()).backward()
    assert all(model.backbone.get_submodule(i.path).conv.weight.grad.abs().sum() > 0 for i in report)
    with torch.no_grad():
        assert len(model.eval()(images)) == 2


def test_deeplabv3_whole_model():
    torch.manual_seed(0)
    original = segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=False
    )
    original = calibrated(original, torch.randn(2, 3, 48, 48))
    x = torch.randn(2, 3, 40, 36)
    model = copy.deepcopy(original)
    report = insert_attention(model, "gc", where="Bottleneck", example_input=X32)
    assert len(report) == 16 and report[0].path == "backbone.layer1.0.bn3.attention"
    with torch.no_grad():
        assert max_diff(model(x)["out"], original(x)["out"]) <= 1e-5
    zeroed = copy.deepcopy(original)
    insert_attention(zeroed, Zero, where="Bottleneck", example_input=X32)
    io = block_io(zeroed, [i.name for i in report], x)  # dilated stages: 12 identity blocks
    residual = [k for k, (i, o) in io.items() if i.shape == o.shape]
    assert len(residual) == 12 and all(torch.equal(io[k][1], io[k][0]) for k in residual)


# --- export, errors --------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    insert_attention(model, "se", where="BasicBlock", example_input=X32)
    model = calibrated(model, torch.randn(4, 3, 32, 32))
    path = tmp_path / "resnet18_se.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    x = torch.randn(2, 3, 32, 32)
    torch.onnx.export(model, (x,), str(path), dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    for b in (1, 3):
        xb = torch.randn(b, 3, 32, 32)
        with torch.no_grad():
            want = model(xb)
        (got,) = session.run(None, {feed: xb.numpy()})
        assert got.shape == (b, 10) and max_diff(torch.from_numpy(got), want) <= 1e-4


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.spare = nn.Sequential(nn.Conv2d(8, 8, 1))  # never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


def test_errors_name_the_problem_and_leave_the_model_unchanged():
    model = torchvision.models.resnet18(weights=None).eval()
    keys = list(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    with pytest.raises(ValueError, match=r"where='Botleneck' selects no module of ResNet"):
        insert_attention(model, "se", where="Botleneck")
    with pytest.raises(ValueError, match=r"placement must be one of 'auto', 'branch', 'output', got 'after'"):
        insert_attention(model, "se", where="BasicBlock", placement="after")
    with pytest.raises(
        ValueError, match=r"placement='branch' needs a residual block .* layer1 is a Sequential"
    ):
        insert_attention(model, "se", where="layer1", placement="branch")
    with pytest.raises(ValueError, match=r"fc did not return a \(B, C, H, W\) tensor"):
        insert_attention(model, "se", where="fc")
    with pytest.raises(ValueError, match=r"spare did not run in the dry run"):
        insert_attention(Unused(), "se", where="spare")
    with pytest.raises(ValueError, match=r"cannot tell what Sequential takes as input: pass example_input"):
        insert_attention(nn.Sequential(nn.Linear(3, 3)), "se", where="0")
    with pytest.raises(KeyError, match="unknown attention 'sx'"):
        insert_attention(model, "sx", where="BasicBlock")
    with pytest.raises(
        ValueError, match=r"ResNet fails with the attention inserted, left unchanged: .*expects"
    ):
        insert_attention(model, lambda c: SqueezeExcite(c + 1), where="BasicBlock")  # wrong width
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(x), before)
