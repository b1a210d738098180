"""insert_attention without ``where=``: the residual blocks of the networks in BRANCH_ENDS,
checked against the explicit class selection of the same blocks, on tiny torchvision, timm,
visattn and detection models (random weights, small inputs)."""

from __future__ import annotations

import copy
import logging

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models import detection

from visattn import record_attention
from visattn.models import create_model
from visattn.models.resnet import BasicBlock
from visattn.models.surgery import insert_attention

X32 = torch.zeros(1, 3, 32, 32)

# (builder, the block class insert_attention should choose, number of blocks)
TORCHVISION = [
    ("resnet18", "BasicBlock", 8),
    ("resnext50_32x4d", "Bottleneck", 16),
    ("mobilenet_v3_small", "InvertedResidual", 11),
    ("efficientnet_b0", "MBConv", 16),
    ("convnext_tiny", "CNBlock", 18),
    ("regnet_x_400mf", "ResBottleneckBlock", 22),
]
# (timm name, the block classes chosen, number of blocks)
TIMM = [
    ("resnet18", {"BasicBlock"}, 8),
    ("mobilenetv3_small_050", {"DepthwiseSeparableConv", "InvertedResidual"}, 11),
    ("regnetx_002", {"Bottleneck"}, 13),
]


def same_choice(default, explicit) -> None:
    """The default selection is the explicit one, block for block (names, paths, widths)."""
    assert len(default) > 0
    assert [tuple(i) for i in default] == [tuple(i) for i in explicit]
    assert {i.placement for i in default} == {"branch"}


@pytest.mark.parametrize(("arch", "block", "n"), TORCHVISION, ids=[a for a, _, _ in TORCHVISION])
def test_torchvision_blocks_by_default(arch, block, n, caplog):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=5).eval()
    explicit = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="visattn.models.surgery"):
        report = insert_attention(model, "se", example_input=X32)
    same_choice(report, insert_attention(explicit, "se", where=block, example_input=X32))
    assert len(report) == n
    assert report[0].name in caplog.text and report[-1].path in caplog.text  # it says what it chose
    x = torch.randn(2, 3, 32, 32)
    explicit.load_state_dict(model.state_dict())
    with torch.no_grad(), record_attention(model) as maps:
        torch.testing.assert_close(model(x), explicit(x))
    assert list(maps) == [i.path for i in report]


@pytest.mark.parametrize(("arch", "blocks", "n"), TIMM, ids=[a for a, _, _ in TIMM])
def test_timm_blocks_by_default(arch, blocks, n):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=5).eval()
    explicit = copy.deepcopy(model)
    report = insert_attention(model, "eca", example_input=X32)

    def where(name: str, module: nn.Module) -> bool:
        return type(module).__name__ in blocks and type(module).__module__.startswith("timm")

    same_choice(report, insert_attention(explicit, "eca", where=where, example_input=X32))
    assert len(report) == n
    x = torch.randn(2, 3, 32, 32)
    explicit.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), explicit(x))


def test_visattn_resnet_fills_its_own_slots():
    model = create_model("resnet18", num_classes=5)
    blocks = [n for n, m in model.named_modules() if isinstance(m, BasicBlock)]
    report = insert_attention(model, "se", example_input=X32)
    assert [i.path for i in report] == [f"{n}.attn" for n in blocks] and len(blocks) == 8
    reference = create_model("resnet18", num_classes=5, attention="se")
    reference.load_state_dict(model.state_dict())  # the same keys: the slots were filled, not wrapped
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x))


DETECTORS = [
    (detection.fasterrcnn_resnet50_fpn, "backbone.body.layer1.0"),
    (detection.retinanet_resnet50_fpn, "backbone.body.layer1.0"),
    (detection.fcos_resnet50_fpn, "backbone.body.layer1.0"),
]


@pytest.mark.parametrize(("build", "first"), DETECTORS, ids=[b.__name__ for b, _ in DETECTORS])
def test_whole_detectors_get_attention_in_their_backbone(build, first):
    torch.manual_seed(0)
    model = build(weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64).eval()
    original = copy.deepcopy(model)
    report = insert_attention(model, "gc")  # the default dry-run input: zeros(1, 3, 64, 64)
    explicit = insert_attention(copy.deepcopy(original), "gc", where="Bottleneck")
    same_choice(report, explicit)
    assert len(report) == 16 and report[0].name == first and report[-1].channels == 2048
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    with torch.no_grad(), record_attention(model) as maps:
        got, want = model(images), original(images)
    assert len(maps) == 16
    # GC starts as the identity: the detections are the network's without attention.
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g["labels"], w["labels"])
        torch.testing.assert_close(g["boxes"], w["boxes"], atol=1e-3, rtol=0)


def test_detector_backbone_alone():
    model = detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3)
    report = insert_attention(model.backbone, "cbam")
    explicit = insert_attention(copy.deepcopy(model.backbone), "cbam", where="InvertedResidual")
    assert len(report) == 15 and [i.path for i in report] == [i.path for i in explicit]


def test_unknown_network_says_what_where_accepts():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    keys = list(model.state_dict())
    with pytest.raises(
        ValueError,
        match=r"Sequential holds no residual block insert_attention knows \(.*BasicBlock.*\): pass "
        r"where=, a block class or class name, a glob .*'stages' or a predicate",
    ):
        insert_attention(model, "se")
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match=r"insert_attention needs an attention"):
        insert_attention(torchvision.models.resnet18(), None)
