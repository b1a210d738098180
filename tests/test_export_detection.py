"""Detector export: every detector kind writes an ONNX file that onnxruntime runs to PyTorch's
detections on images the export never saw; a failed export or a mismatch is one line and no file."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
import torch

from visattn.export import ExportError
from visattn.export_detection import export_detector
from visattn.models.detection import DETECTORS, create_detector

SIZE = [64, 64]


def _detector(kind: str) -> torch.nn.Module:
    # No score threshold and room for every detection NMS keeps: the number of boxes then
    # differs between images, so a count frozen into the graph would show.
    torch.manual_seed(0)
    return create_detector(
        kind, num_classes=3, in_channels=1, levels=None, score_thresh=0.0, detections_per_img=1000
    ).eval()


def _meta(kind: str) -> dict:
    return {
        "task": "detection", "model": kind, "model_kwargs": {"levels": None}, "num_classes": 3,
        "in_channels": 1, "classes": ["a", "b", "c"], "input_size": SIZE,
    }  # fmt: skip


def _images() -> list[torch.Tensor]:
    """Two images unlike the export's own seeded canvases."""
    g = torch.Generator().manual_seed(123)
    noise = torch.rand(1, 1, *SIZE, generator=g) ** 2
    square = torch.zeros(1, 1, *SIZE)
    square[..., 30:50, 8:36] = 0.9
    return [noise, square]


def _assert_same_detections(got: list[torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Each PyTorch detection pairs with onnxruntime's nearest of its label, one to one: scores
    equal to float32 rounding may leave NMS in either order (untrained heads tie often)."""
    boxes, labels, scores = got
    assert len(boxes) == len(expected["boxes"])
    gap = (boxes[None] - expected["boxes"][:, None]).abs().amax(-1) + (
        scores[None] - expected["scores"][:, None]
    ).abs()
    nearest = gap.masked_fill(expected["labels"][:, None] != labels[None], float("inf")).argmin(1)
    assert len(nearest.unique()) == len(nearest)
    assert float((nearest == torch.arange(len(nearest))).float().mean()) > 0.9  # in order, but for ties
    torch.testing.assert_close(boxes[nearest], expected["boxes"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scores[nearest], expected["scores"], atol=1e-5, rtol=1e-5)
    assert (
        torch.equal(labels[nearest], expected["labels"]) and 0 <= int(labels.min()) <= int(labels.max()) < 3
    )


@pytest.mark.parametrize("kind", DETECTORS.names())
def test_detector_exports_and_onnxruntime_matches_pytorch(kind, tmp_path):
    det, meta = _detector(kind), _meta(kind)
    path = tmp_path / "detector.onnx"
    report = export_detector(det, meta, path)
    assert (report.path, report.format, report.batches) == (path, "onnx", (1, 1))
    assert report.max_abs_diff <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["detector.onnx"]  # no temporary file left
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["visattn"]) == meta

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", [1, 1, *SIZE])]
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores"]
    counts = []
    for image in _images():
        with torch.no_grad():
            expected = det([image[0]])[0]
        got = [torch.from_numpy(a) for a in session.run(None, {"image": image.numpy()})]
        assert len(expected["boxes"]) > 0
        _assert_same_detections(got, expected)
        counts.append(len(got[0]))
    assert counts[0] != counts[1], counts  # the count is the graph's output, not a constant


def test_a_failed_export_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "detector.onnx"
    path.write_bytes(b"an earlier export")

    def failing_export(model, args, f, **options):
        with open(f, "wb") as out:  # half a file, then the exporter's pages of explanation
            out.write(b"\x08\x07partial")
        raise RuntimeError("Unsupported: ONNX export of operator roi_align\n  File x.py, line 1\n    frames")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(ExportError) as info:
        export_detector(_detector("faster_rcnn"), _meta("faster_rcnn"), path)
    message = str(info.value)
    assert "\n" not in message and "frames" not in message
    assert message.startswith("faster_rcnn: torchvision's Faster R-CNN does not export to ONNX with torch ")
    assert "RuntimeError: Unsupported: ONNX export of operator roi_align" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback
    assert [p.name for p in tmp_path.iterdir()] == ["detector.onnx"]
    assert path.read_bytes() == b"an earlier export"


def _shift(found: dict) -> dict:
    return {**found, "boxes": found["boxes"] + 0.5}


def _drop(found: dict) -> dict:
    return {key: value[:-1] for key, value in found.items()}


def _relabel(found: dict) -> dict:
    return {**found, "labels": (found["labels"] + 1) % 3}


FIRST = r"image 1\): PyTorch's detection 0 \(label \d, score [\d.]+\)"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_shift, FIRST + r" is 0\.5 px and [\d.e+-]+ in score from onnxruntime's nearest "),
        (_drop, r"image 1\): onnxruntime finds (\d+) boxes, PyTorch (\d+)$"),
        (_relabel, FIRST + r" has label \d in onnxruntime "),
    ],
)
def test_a_mismatch_is_an_export_error_naming_the_difference(change, match, tmp_path):
    det = _detector("fcos")
    forward = det.forward

    def changed(images, targets=None):  # PyTorch's answer changes; the traced graph's does not
        found = forward(images, targets)
        return found if torch.jit.is_tracing() else [change(d) for d in found]

    det.forward = changed
    with pytest.raises(ExportError, match=match) as info:
        export_detector(det, _meta("fcos"), tmp_path / "detector.onnx")
    assert "\n" not in str(info.value) and "FCOS" in str(info.value)
    assert list(tmp_path.iterdir()) == []
