"""torchvision's FCOS, RetinaNet and Faster R-CNN over visattn backbones, registered in
``DETECTORS`` as ``fcos``, ``retinanet`` and ``faster_rcnn``.

What visattn sets beyond torchvision's defaults, and why:

- Images are neither up- nor down-scaled by default: the detectors' transform works at the
  data's own size (``image_size``), with the data's normalisation (``image_mean``,
  ``image_std``); torchvision's 800-1333 px default is for COCO.
- Heads are as deep as ``head_convs`` (torchvision: 4). On small images the heads cost as much
  as the backbone, and two convolutions per tower halve a step.
- FCOS's box regression starts from boxes of about the object size (``regression_start``: the
  bias of the regression output, in units of the level's anchor size, so the first boxes reach
  that many anchor sizes from their centre on each side). torchvision starts it at zero with
  a ReLU on the output: every first box is a point, where the GIoU loss is 1 and gives almost
  no gradient, and a network whose outputs fall below zero in the first steps never recovers
  (the loss then sits at exactly 1.000 while nothing is detected). Tian et al. 2019
  (arXiv:1904.01355) regress ``exp(s * x)`` instead, which cannot die; torchvision's head is
  kept and started away from the dead zone.
- Anchors are sized for the objects (``anchor_sizes``; the task picks them from the training
  boxes): COCO's defaults start at 32 px.
- Faster R-CNN numbers its classes from 1 (0 is background); ``Detector`` shifts the labels so
  that every detector takes and returns labels ``0..K-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from ..._checks import check_float, check_int
from ...attention import AttentionSpec
from ...registry import DETECTORS
from .backbones import build_backbone
from .necks import DetectionBody

__all__ = ["DETECTORS", "Detector", "build_detector", "create_detector", "default_anchor_sizes"]

#: Loss terms with a value they sit at when the head has collapsed (FCOS's GIoU loss of
#: degenerate boxes is exactly 1).
CEILINGS = {"fcos": {"bbox_regression": 1.0}, "retinanet": {}, "faster_rcnn": {}}
LOSSES = {
    "fcos": ("classification", "bbox_regression", "bbox_ctrness"),
    "retinanet": ("classification", "bbox_regression"),
    "faster_rcnn": ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
}


class Detector(nn.Module):
    """A torchvision detector that takes and returns labels ``0..K-1``.

    ``forward(images, targets)`` in training mode returns the loss dict (names in
    ``loss_names``); in evaluation mode, one ``{"boxes", "labels", "scores"}`` per image.
    ``images`` is a list of ``(C, H, W)`` tensors in [0, 1] or one ``(B, C, H, W)`` batch.
    """

    def __init__(self, net: nn.Module, *, kind: str, num_classes: int, strides: Sequence[int]) -> None:
        super().__init__()
        self.net, self.kind, self.num_classes = net, kind, num_classes
        self.offset = 1 if kind == "faster_rcnn" else 0  # two-stage: class 0 is background
        self.loss_names, self.ceilings, self.strides = LOSSES[kind], CEILINGS[kind], list(strides)

    @property
    def body(self) -> DetectionBody:
        return self.net.backbone

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None) -> Any:
        if targets is not None and self.offset:
            targets = [{**t, "labels": t["labels"] + self.offset} for t in targets]
        out = self.net(list(images), targets)
        if isinstance(out, dict):  # the losses (training)
            return out
        if self.offset:
            out = [{**d, "labels": d["labels"] - self.offset} for d in out]
        return out


def default_anchor_sizes(strides: Sequence[int], kind: str) -> tuple[tuple[float, ...], ...]:
    """FCOS: one size per level, the stride (torchvision's); anchor detectors: three scales an
    octave apart in thirds from four strides (RetinaNet's areas 32^2 ... 512^2 at strides 8 ... 128)."""
    if kind == "fcos":
        return tuple((float(s),) for s in strides)
    return tuple(tuple(round(4.0 * s * 2 ** (k / 3), 2) for k in range(3)) for s in strides)


def build_detector(
    kind: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    image_size: Sequence[int] = (64, 64),
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    backbone: str = "conv",
    backbone_options: dict[str, Any] | None = None,
    attention: AttentionSpec | None = None,
    attention_options: dict[str, Any] | None = None,
    attention_stages: Sequence[bool] | None = None,
    attention_position: str = "end",
    neck_attention: AttentionSpec | None = None,
    neck_attention_options: dict[str, Any] | None = None,
    levels: Sequence[int] | None = None,
    width: int = 64,
    head_convs: int = 2,
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    regression_start: float = 1.0,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> Detector:
    """Build detector ``kind`` (``fcos``, ``retinanet``, ``faster_rcnn``); see the module.

    Args:
        num_classes: object classes (no background class).
        in_channels: image channels.
        image_size: ``(H, W)`` the transform works at (shorter side ``min``, longer ``max``).
        image_mean, image_std: per-channel normalisation (default: 0.5 and 0.25).
        backbone: ``conv``, ``resnet18`` ... ``resnet152`` or ``timm:<name>``
            (``backbones.BACKBONES``); ``backbone_options`` go to the conv backbone.
        attention, attention_options, attention_stages, attention_position: the backbone's
            attention (see ``backbones``).
        neck_attention, neck_attention_options: attention on each pyramid level.
        levels: backbone stages the detector sees (default: the last one).
        width: channels of the pyramid and heads.
        head_convs: 3x3 convolutions per head tower (at least 1).
        anchor_sizes: per level, the anchor sizes in pixels (default ``default_anchor_sizes``).
        regression_start: FCOS's first regression output, in anchor sizes (see the module).
        score_thresh, nms_thresh, detections_per_img: post-processing.

    Example:
        >>> det = build_detector("fcos", 10, in_channels=1, attention="gc")
        >>> det.eval()([torch.rand(1, 64, 64)])[0].keys()
        dict_keys(['boxes', 'scores', 'labels'])
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown detector {kind!r}; valid: {', '.join(LOSSES)}")
    check_int("num_classes", num_classes)
    check_int("head_convs", head_convs)
    check_float("regression_start", regression_start, low=0.0, high=64.0)
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size!r}")
    net = build_backbone(
        backbone,
        in_channels,
        attention=attention,
        attention_options=attention_options,
        attention_stages=attention_stages,
        attention_position=attention_position,
        options=backbone_options,
    )
    levels = [len(net.channels) - 1] if levels is None else list(levels)
    body = DetectionBody(
        net,
        levels=levels,
        width=width,
        neck_attention=neck_attention,
        neck_attention_options=neck_attention_options,
    )
    sizes = tuple(
        tuple(float(v) for v in s) for s in (anchor_sizes or default_anchor_sizes(body.strides, kind))
    )
    if len(sizes) != len(levels) or any(not s for s in sizes):
        raise ValueError(
            f"anchor_sizes must give sizes for each of the {len(levels)} levels, got {anchor_sizes}"
        )
    ratios = ((1.0,),) * len(sizes) if kind == "fcos" else ((0.5, 1.0, 2.0),) * len(sizes)
    anchors = AnchorGenerator(sizes, ratios)
    per_cell = anchors.num_anchors_per_location()[0]
    common = {
        "min_size": min(image_size),
        "max_size": max(image_size),
        "image_mean": list(image_mean or [0.5] * in_channels),
        "image_std": list(image_std or [0.25] * in_channels),
    }
    post = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "detections_per_img": detections_per_img}
    if kind == "fcos":
        head = FCOSHead(width, per_cell, num_classes, num_convs=head_convs)
        nn.init.constant_(head.regression_head.bbox_reg.bias, regression_start)
        model = FCOS(body, num_classes, anchor_generator=anchors, head=head, **post, **common)
    elif kind == "retinanet":
        head = RetinaNetHead(width, per_cell, num_classes, norm_layer=partial(nn.GroupNorm, 32))
        for tower in (head.classification_head, head.regression_head):
            tower.conv = tower.conv[:head_convs]
        model = RetinaNet(body, num_classes, anchor_generator=anchors, head=head, **post, **common)
    else:
        names = [str(k) for k in range(len(levels))]
        hidden = 4 * width
        model = FasterRCNN(
            body,
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(width, per_cell, conv_depth=head_convs),
            box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(width * 7 * 7, hidden),
            box_predictor=FastRCNNPredictor(hidden, num_classes + 1),
            box_score_thresh=score_thresh,
            box_nms_thresh=nms_thresh,
            box_detections_per_img=detections_per_img,
            rpn_pre_nms_top_n_train=600,
            rpn_post_nms_top_n_train=300,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_test=150,
            box_batch_size_per_image=128,
            **common,
        )
    return Detector(model, kind=kind, num_classes=num_classes, strides=body.strides)


for _kind in LOSSES:
    DETECTORS.register(_kind)(partial(build_detector, _kind))


def create_detector(name: str, *, num_classes: int, in_channels: int = 3, **options: Any) -> Detector:
    """Build the registered detector ``name`` (see ``build_detector`` for the options).

    Example:
        >>> create_detector("retinanet", num_classes=10, in_channels=1, backbone="resnet18", levels=[1, 2])
    """
    return DETECTORS.get(name)(num_classes, in_channels=in_channels, **options)
