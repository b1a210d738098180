"""Per-box explanations of a detector: box_gradcam equals Grad-CAM computed by hand with the
same box score, box_attention equals the recorded weights averaged by hand over the box's
queries (on a padded batch too), the pointing game per box, and the detector left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from visattn.explain.detection import (
    box_attention,
    box_gradcam,
    box_pointing,
    explain_detections,
    save_box_explanations,
)
from visattn.maps import record_attention
from visattn.models.detection import create_detector

pytest.importorskip("pytorch_grad_cam")


def _detector(kind: str = "fcos", **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_detector(kind, num_classes=10, in_channels=1, detections_per_img=20, **options).eval()


def _image(h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.rand(1, h, w, generator=torch.Generator().manual_seed(1))


def _scaled(heat: torch.Tensor) -> torch.Tensor:
    return (heat - heat.min()) / (heat.max() - heat.min())


def _hand_gradcam(det, image: torch.Tensor, box: torch.Tensor, label: int) -> torch.Tensor:
    """Grad-CAM at the finest pyramid level: the box's score (FasterRCNNBoxScoreTarget's value
    over the outputs of its label: IoU of the best-matching output box + that box's score), its
    gradient averaged over space as channel weights, ReLU of the weighted sum, upsampled."""
    saved: dict[str, torch.Tensor] = {}

    def keep(module, args, out):
        saved["act"] = out
        out.register_hook(lambda g: saved.__setitem__("grad", g))

    handle = det.body.neck_attn[0].register_forward_hook(keep)
    try:
        out = det([image.clone().requires_grad_(True)])[0]
    finally:
        handle.remove()
    same = out["labels"] == label
    iou = box_iou(box[None], out["boxes"][same])[0]
    k = int(iou.argmax())
    assert iou[k] > 0.5
    (iou[k] + out["scores"][same][k]).backward()
    weights = saved["grad"].mean(dim=(2, 3))  # (1, C)
    cam = torch.relu((weights[:, :, None, None] * saved["act"]).sum(dim=1, keepdim=True))  # (1, 1, h, w)
    return _scaled(F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0])


def test_box_gradcam_equals_grad_cam_by_hand_and_a_lost_box_gets_zeros():
    det, image = _detector(attention="mhsa"), _image()
    with torch.no_grad():
        found = det([image])[0]
    boxes, labels = found["boxes"][:3], found["labels"][:3]
    # boxes 0 and 2 are one box with two labels: over all outputs the argmax would score box 2 as
    # box 0's (another label: 0, a zero map); only the outputs of its own label explain it
    assert torch.equal(boxes[0], boxes[2]) and labels[0] != labels[2]
    lost = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # no output box overlaps it by IoU > 0.5
    assert box_iou(lost, found["boxes"]).max() <= 0.5
    heat = box_gradcam(det, image, torch.cat([boxes, lost]), torch.cat([labels, labels[:1]]))
    assert heat.shape == (4, 64, 64)
    for i in range(3):
        expected = _hand_gradcam(det, image, boxes[i], int(labels[i]))
        torch.testing.assert_close(heat[i], expected, atol=1e-5, rtol=0)
    assert heat[3].abs().max() == 0


def test_box_gradcam_of_a_two_level_detector_explains_a_box_of_either_level():
    """The finest level's output feeds only its own head: a box found on the coarser level has
    no gradient there, and the default (each level, averaged) gives it that level's map."""
    det, image = _detector(levels=[1, 2]), _image()
    with torch.no_grad():
        found = det([image])[0]
    boxes, labels = found["boxes"][:4], found["labels"][:4]  # the fourth is found on the coarser level
    fine = box_gradcam(det, image, boxes, labels, layer="net.backbone.neck_attn.0")
    coarse = box_gradcam(det, image, boxes, labels, layer="net.backbone.neck_attn.1")
    on_coarse = fine.amax(dim=(1, 2)) == 0
    assert on_coarse.any() and not on_coarse.all()  # both levels found boxes
    assert (coarse[~on_coarse].amax(dim=(1, 2)) == 0).all()
    torch.testing.assert_close(box_gradcam(det, image, boxes, labels), fine + coarse)


@pytest.mark.parametrize("kind", ["retinanet", "faster_rcnn"])
def test_box_gradcam_explains_the_other_detectors(kind):
    det, image = _detector(kind, score_thresh=0.0), _image()
    with torch.no_grad():
        found = det([image])[0]
    heat = box_gradcam(det, image, found["boxes"][:1], found["labels"][:1])
    assert heat.shape == (1, 64, 64) and float(heat.max()) == pytest.approx(1.0) and float(heat.min()) == 0.0


def test_box_gradcam_leaves_modes_flags_and_gradients_as_they_were():
    det, image = _detector(), _image()
    det.train()
    det.body.backbone.eval()  # a mixed state: the backbone alone in eval mode
    det.body.fpn.requires_grad_(False)
    first = next(det.body.backbone.parameters())
    first.grad = torch.full_like(first, 3.0)
    modes = {name: m.training for name, m in det.named_modules()}
    flags = {name: p.requires_grad for name, p in det.named_parameters()}
    grads = {name: p.grad for name, p in det.named_parameters()}
    with torch.no_grad():
        found = det.eval()([image])[0]
    det.train()
    det.body.backbone.eval()
    heat = box_gradcam(det, image, found["boxes"][:1], found["labels"][:1])
    assert float(heat.max()) == pytest.approx(1.0)
    assert {name: m.training for name, m in det.named_modules()} == modes
    assert {name: p.requires_grad for name, p in det.named_parameters()} == flags
    assert all(p.grad is grads[name] for name, p in det.named_parameters())
    assert torch.equal(first.grad, torch.full_like(first, 3.0))
    det.requires_grad_(False)  # a frozen detector is explained too: the image carries the graph
    torch.testing.assert_close(box_gradcam(det, image, found["boxes"][:1], found["labels"][:1]), heat)


def _recorded_mhsa(det, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), record_attention(det) as maps:
        det([image])
    (name,) = list(maps)
    assert maps.kind(name) == "softmax" and maps.grid(name) == (8, 8)
    return maps[name][0]  # (heads, 64, 64): queries x keys on the 8 x 8 grid of stride 8


def test_box_attention_averages_the_weights_of_the_queries_inside_the_box():
    det, image = _detector(attention="mhsa"), _image()
    attn = _recorded_mhsa(det, image)
    # cell centres at 4, 12, ..., 60: x in [10, 30) -> columns 1..3, y in [3, 21) -> rows 0..2;
    # the small box (5, 5, 7, 7) holds no centre and takes the cell under its centre, (0, 0)
    boxes = torch.tensor([[10.0, 3.0, 30.0, 21.0], [5.0, 5.0, 7.0, 7.0]])
    queries = [[r * 8 + c for r in (0, 1, 2) for c in (1, 2, 3)], [0]]
    heat = box_attention(det, image, boxes)
    for i, q in enumerate(queries):
        grid = attn[:, q].mean(dim=(0, 1)).view(1, 1, 8, 8)
        expected = _scaled(F.interpolate(grid, size=(64, 64), mode="bilinear", align_corners=False)[0, 0])
        torch.testing.assert_close(heat[i], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(heat[0], heat[1])


def test_box_attention_on_a_padded_batch_is_cropped_from_the_padded_extent():
    det, image = _detector(attention="mhsa"), _image(40, 64)  # padded to 64 x 64 by the transform
    attn = _recorded_mhsa(det, image)
    heat = box_attention(det, image, torch.tensor([[10.0, 3.0, 30.0, 21.0]]))
    grid = attn[:, [r * 8 + c for r in (0, 1, 2) for c in (1, 2, 3)]].mean(dim=(0, 1)).view(1, 1, 8, 8)
    expected = F.interpolate(grid, size=(64, 64), mode="bilinear", align_corners=False)[0, 0, :40]
    torch.testing.assert_close(heat[0], _scaled(expected), atol=1e-5, rtol=0)
    heat = box_gradcam(det, image, torch.tensor([[10.0, 3.0, 30.0, 21.0]]), torch.tensor([0]))
    assert heat.shape == (1, 40, 64)


def test_box_attention_of_a_gate_is_one_map_and_none_without_spatial_attention():
    det, image = _detector(attention="cbam"), _image()
    with torch.no_grad(), record_attention(det) as maps:
        det([image])
    gate = maps["net.backbone.backbone.attn.2:spatial"]  # (1, 1, 8, 8)
    expected = _scaled(F.interpolate(gate, size=(64, 64), mode="bilinear", align_corners=False)[0, 0])
    heat = box_attention(det, image, torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 50.0]]))
    torch.testing.assert_close(heat[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(heat[1], expected, atol=1e-5, rtol=0)
    assert box_attention(_detector(), image, torch.tensor([[0.0, 0.0, 20.0, 20.0]])) is None


def test_box_pointing_hits_inside_misses_outside_and_a_flat_map_misses():
    maps = torch.zeros(4, 16, 16)
    maps[0, 5, 7] = 1.0  # inside (6.2, 4, 9, 6): pixels x 6..8, y 4..5
    maps[1, 12, 2] = 1.0  # outside
    maps[2, 5, 9] = 1.0  # x = 9 is the box's exclusive end
    boxes = torch.tensor([[6.2, 4.0, 9.0, 6.0]] * 3 + [[0.0, 0.0, 4.0, 4.0]])
    # maps[3] is flat: its argmax, pixel (0, 0), lies in its box, yet a flat map points nowhere
    assert box_pointing(maps, boxes).tolist() == [True, False, False, False]


def test_explain_detections_matches_the_truth_and_draws_a_figure(tmp_path):
    det, image = _detector(attention="mhsa"), _image()
    with torch.no_grad():
        found = det([image])[0]
    min_score = float(found["scores"][2])
    truth = {"boxes": found["boxes"][:1] + 0.5, "labels": found["labels"][:1]}
    explained = explain_detections(det, image, min_score=min_score, truth=truth)
    assert len(explained) == int((found["scores"] >= min_score).sum()) >= 3
    top = explained[0]
    assert top["label"] == int(found["labels"][0]) and top["score"] == pytest.approx(
        float(found["scores"][0])
    )
    assert top["gradcam"].shape == top["attention"].shape == (64, 64)
    torch.testing.assert_close(top["truth"], truth["boxes"][0])
    hit = box_pointing(top["gradcam"][None], truth["boxes"])[0]
    assert top["pointing_gradcam"] is bool(hit) and isinstance(top["pointing_attention"], bool)
    for e in explained:  # matched exactly when the label agrees and IoU >= 0.5
        overlaps = e["label"] == top["label"] and float(box_iou(e["box"][None], truth["boxes"])) >= 0.5
        assert (e["truth"] is not None) == overlaps and (e["pointing_gradcam"] is None) == (not overlaps)
    path = tmp_path / "boxes.png"
    save_box_explanations(path, image, explained, [str(d) for d in range(10)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == [
        "boxes.png"
    ]
