"""Detectors over visattn backbones: every kind and backbone trains and predicts labels
0..K-1, attention sits where it is asked for, FCOS's regression starts away from its dead zone,
and the levels follow the object sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.ops import generalized_box_iou_loss

from visattn.models.detection import DETECTORS, DetectionBody, build_backbone, create_detector
from visattn.models.resnet import Bottleneck
from visattn.tasks.detection import choose_levels

BACKBONES = [("conv", None), ("resnet18", [1, 2]), ("timm:resnet18", [1, 2])]


def _batch(label: int = 2) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[8.0, 6.0, 30.0, 34.0]]), "labels": torch.tensor([label])},
        {
            "boxes": torch.tensor([[30.0, 20.0, 54.0, 44.0], [2.0, 40.0, 20.0, 60.0]]),
            "labels": torch.tensor([label, 0]),
        },
    ]
    return images, targets


@pytest.mark.parametrize("kind", DETECTORS.names())
@pytest.mark.parametrize(("backbone", "levels"), BACKBONES)
def test_every_detector_trains_and_predicts_zero_based_labels(kind, backbone, levels):
    torch.manual_seed(0)
    det = create_detector(
        kind, num_classes=3, in_channels=1, backbone=backbone, levels=levels, attention="se", score_thresh=0.0
    )
    images, targets = _batch(label=2)
    det.train()
    losses = det(images, targets)
    assert set(losses) == set(det.loss_names)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in det.body.backbone.parameters())
    det.eval()
    with torch.no_grad():
        out = det(images)
    labels = torch.cat([d["labels"] for d in out])
    assert len(labels) and int(labels.min()) >= 0 and int(labels.max()) <= 2  # never K: the background shift


def test_fcos_regression_starts_at_boxes_of_the_chosen_size():
    """The first boxes reach ``regression_start`` anchor sizes from their centre (decoded with
    torchvision's own coder), where torchvision's zero start gives points."""
    torch.manual_seed(0)
    det = create_detector("fcos", num_classes=10, in_channels=1, regression_start=1.5).eval()
    head = det.net.head.regression_head
    features = list(det.body(det.net.transform([torch.rand(1, 64, 64)])[0].tensors).values())
    with torch.no_grad():
        reg, _ = head(features)  # (1, HW, 4)
    stride = det.strides[0]
    anchors = torch.tensor([[0.0, 0.0, stride, stride]]).expand(reg.shape[1], 4)
    boxes = BoxLinearCoder(normalize_by_size=True).decode(reg[0], anchors)
    sides = boxes[:, 2:] - boxes[:, :2]
    want = 2 * 1.5 * stride  # the bias; the std-0.01 weights add a spread around it
    assert abs(float(sides.mean()) - want) < 0.05 * want and bool((sides > 0.7 * want).all())


def test_zero_started_regression_is_flagged_as_collapsed():
    """Boxes of zero size give a GIoU loss of exactly 1 -- the collapse the task detects."""
    from visattn.data.detection_sets import load_detection_dataset
    from visattn.tasks import Detection, DetectionEval

    det = create_detector("fcos", num_classes=10, in_channels=1)
    nn.init.zeros_(det.net.head.regression_head.bbox_reg.weight)
    nn.init.zeros_(det.net.head.regression_head.bbox_reg.bias)
    det.train()
    images, targets = _batch()
    loss = float(det(images, targets)["bbox_regression"])
    point = torch.tensor([[10.0, 10.0, 10.0, 10.0]])
    assert loss == pytest.approx(float(generalized_box_iou_loss(point, targets[0]["boxes"])), abs=1e-6)
    assert loss == pytest.approx(1.0, abs=1e-6)
    task = Detection(load_detection_dataset("cluttered-mnist-detection"))
    task.build_model("fcos", task.model_options("fcos", {}))
    quiet = DetectionEval({"map": 0.0}, detections=0, images=500)
    found = task.epoch_warnings({"bbox_regression": loss}, quiet)
    assert len(found) == 2 and "collapsed" in found[0] and "no box was detected" in found[1]
    assert task.epoch_warnings({"bbox_regression": 0.4}, DetectionEval({"map": 0.3}, 900, 500)) == []


class Probe(nn.Module):
    """Attention stand-in that keeps what it was given."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels, self.seen = channels, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach()
        return x


def test_inner_position_is_after_the_strided_convolutions_relu():
    """mmdetection's after_conv2: the Bottleneck's conv2-bn2-ReLU output, recomputed here."""
    torch.manual_seed(0)
    net = build_backbone(
        "resnet50",
        3,
        attention=Probe,
        attention_options=None,
        attention_stages=(False, False, True, False),
        attention_position="inner",
    ).eval()
    probes = [m for m in net.modules() if isinstance(m, Probe)]
    assert len(probes) == 6 and {p.channels for p in probes} == {256}  # the 6 blocks of layer3, width 256
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = net(x)
        block: Bottleneck = net.layers[2][0]
        out = block.relu(block.bn1(block.conv1(stages[1])))
        want = block.relu(block.bn2(block.conv2(out)))
    assert torch.allclose(block.attn_inner.seen, want, atol=1e-6)
    assert isinstance(block.attn, nn.Identity)


def test_end_position_and_stages_follow_the_gcnet_placement():
    net = build_backbone(
        "resnet18", 3, attention="gc", attention_options=None, attention_stages=None, attention_position="end"
    )
    per_stage = [sum(type(b.attn).__name__ != "Identity" for b in layer) for layer in net.layers]
    assert per_stage == [0, 2, 2, 2]  # mmdetection's GCNet stages (False, True, True, True)


def test_neck_attention_on_every_level_and_strides():
    body = DetectionBody(
        build_backbone(
            "resnet18",
            1,
            attention=None,
            attention_options=None,
            attention_stages=None,
            attention_position="end",
        ),
        levels=[1, 2, 3],
        width=64,
        neck_attention="gc",
    )
    assert body.strides == [8, 16, 32]
    assert [type(m).__name__ for m in body.neck_attn] == ["GlobalContext"] * 3
    out = body(torch.randn(2, 1, 64, 64))
    assert [tuple(v.shape) for v in out.values()] == [(2, 64, 8, 8), (2, 64, 4, 4), (2, 64, 2, 2)]
    with pytest.raises(ValueError, match="levels must be increasing"):
        DetectionBody(body.backbone, levels=[2, 1])


def test_levels_follow_the_object_sizes():
    digits = np.linspace(16, 32, 200)  # the embedded set: one level at stride 8
    assert choose_levels(digits, [2, 4, 8]) == [2]
    assert choose_levels(digits, [4, 8, 16, 32]) == [1]
    spread = np.geomspace(16, 512, 400)  # COCO-like spread: strides 4 (16/4) to 128 (512/4), as available
    assert choose_levels(spread, [4, 8, 16, 32]) == [0, 1, 2, 3]
