"""Export a detector to ONNX and prove the file right in onnxruntime on two images.

Which exporter, measured with torch 2.14.1 and torchvision 0.29.1 (FCOS, RetinaNet and Faster
R-CNN over the conv backbone):

- the dynamo exporter (``torch.onnx.export(..., dynamo=True)``) fails for all three in
  ``torch.export``: torchvision's batched NMS returns early on ``boxes.numel() == 0``
  (``torchvision/ops/boxes.py``), a guard on a data-dependent size it cannot decide;
- the TorchScript exporter (``dynamo=False``, torchvision's documented route, the one its
  ``test/test_onnx.py`` takes) exports all three at opset 17: torchvision's ``_is_tracing()``
  branches (ONNX NMS, top-k) keep the number of detections an output of the graph.

So the TorchScript exporter is used directly (trying dynamo first would cost seconds and fail).
It is deprecated since torch 2.9; where it fails, or is gone, the export is refused in one line.

The file takes one ``(1, C, H, W)`` image in [0, 1] of the checkpoint's ``input_size`` and
returns ``boxes`` ``(N, 4)`` (pixels, x1 y1 x2 y2), ``labels`` ``(N,)`` (int64, ``0..K-1``) and
``scores`` ``(N,)``; the model description is in its metadata as for classification files.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._io import atomic_write
from .export import ExportError, ExportReport, _annotate_onnx, _needs

__all__ = ["OPSET", "SingleImage", "export_detector"]

OPSET = 17  # torchvision registers NMS for 11+ and RoIAlign's aligned form for 16+
OUTPUTS = ("boxes", "labels", "scores")
TITLES = {"fcos": "FCOS", "retinanet": "RetinaNet", "faster_rcnn": "Faster R-CNN"}
Detections = tuple[Tensor, Tensor, Tensor]


class SingleImage(nn.Module):
    """A detector as a graph with tensor inputs and outputs: ``(1, C, H, W) -> (boxes, labels,
    scores)`` of that image (the exporter cannot name a list of dicts).

    Args:
        detector: a ``visattn.models.detection.Detector`` (labels ``0..K-1``) in eval mode.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: Tensor) -> Detections:
        found = self.detector([image[0]])[0]
        return found["boxes"], found["labels"], found["scores"]


def _reason(err: BaseException) -> str:
    """The first line of an exception, short: the exporters' messages run to pages."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _canvas(meta: dict[str, Any], seed: int) -> Tensor:
    """Even seeds: uniform noise; odd seeds: a bright square on a dark canvas (what an object
    detector trained on dark backgrounds is most likely to answer)."""
    channels, (height, width) = meta["in_channels"], meta["input_size"]
    generator = torch.Generator().manual_seed(seed)
    if seed % 2 == 0:
        return torch.rand(1, channels, height, width, generator=generator)
    image = torch.full((1, channels, height, width), 0.05)
    side = max(1, min(height, width) // 3)
    top, left = (int(torch.randint(0, max(1, n - side), (1,), generator=generator)) for n in (height, width))
    image[..., top : top + side, left : left + side] = 1.0
    return image


def _check_images(
    graph: nn.Module, meta: dict[str, Any], count: int = 2, tries: int = 8
) -> list[tuple[Tensor, Detections]]:
    """``count`` different seeded images with PyTorch's detections, preferring images where the
    detector finds something: boxes compared on an empty answer prove little. A detector that
    finds nothing in any of ``tries`` canvases is still compared (on its empty answers)."""
    found: list[tuple[Tensor, Detections]] = []
    empty: list[tuple[Tensor, Detections]] = []
    for seed in range(tries):
        image = _canvas(meta, seed)
        with torch.no_grad():
            expected = tuple(t.detach() for t in graph(image))
        (found if len(expected[0]) else empty).append((image, expected))
        if len(found) == count:
            break
    return (found + empty)[:count]


def _compare(got: Detections, expected: Detections, tolerance: float, where: str) -> float:
    """The largest absolute difference of boxes and scores over matched detections;
    ``ExportError`` naming the first PyTorch detection without a counterpart.

    Detections are matched, not read in order: two scores equal to float32 rounding leave NMS
    in either order (measured: untrained RetinaNet, 146 boxes, two scores 4e-8 apart swapped).
    Each PyTorch detection takes the nearest unused onnxruntime one of its label; boxes and
    scores must agree within ``tolerance`` relative to their size above 1 (a box corner at
    500 px carries float32 rounding 500 times that of one at 1 px).
    """
    (boxes, labels, scores), (want_boxes, want_labels, want_scores) = got, expected
    if len(boxes) != len(want_boxes):
        raise ExportError(f"{where}: onnxruntime finds {len(boxes)} boxes, PyTorch {len(want_boxes)}")
    box_gap = (boxes[None] - want_boxes[:, None]).abs()  # (PyTorch's, onnxruntime's, 4)
    score_gap = (scores[None] - want_scores[:, None]).abs()
    relative = torch.maximum(
        (box_gap / want_boxes.abs().clamp(min=1.0)[:, None]).amax(-1),
        score_gap / want_scores.abs().clamp(min=1.0)[:, None],
    )
    other_label = want_labels[:, None] != labels[None].to(want_labels.dtype)
    worst = 0.0
    for i in range(len(want_boxes)):
        cost = relative[i].masked_fill(other_label[i], float("inf"))
        j = int(cost.argmin())
        if cost[j] > tolerance:
            near = int(relative[i].argmin())  # the same box and score under another label?
            what = (
                f"has label {int(labels[near])} in onnxruntime"
                if relative[i, near] <= tolerance
                else f"is {float(box_gap[i, near].max()):.3g} px and {float(score_gap[i, near]):.3g} "
                f"in score from onnxruntime's nearest"
            )
            raise ExportError(f"{where}: PyTorch's detection {i} (label {int(want_labels[i])}, score "
                              f"{float(want_scores[i]):.3g}) {what} (tolerance {tolerance:g})")  # fmt: skip
        relative[:, j] = float("inf")  # each onnxruntime detection answers one PyTorch detection
        worst = max(worst, float(box_gap[i, j].max()), float(score_gap[i, j]))
    return worst


def _onnx_detector(path: Path, title: str) -> Callable[[Tensor], Detections]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # any load failure means a file onnxruntime cannot use
        raise ExportError(f"onnxruntime cannot load the exported {title} ({_reason(err)})") from None

    def run(image: Tensor) -> Detections:
        try:
            boxes, labels, scores = session.run(list(OUTPUTS), {"image": image.numpy()})
        except Exception as err:  # an operator that fails at run time: the file is unusable
            raise ExportError(f"onnxruntime cannot run the exported {title} ({_reason(err)})") from None
        return torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(scores)

    return run


def export_detector(
    model: nn.Module, meta: dict[str, Any], path: Path, *, tolerance: float = 1e-4
) -> ExportReport:
    """Export detector ``model`` to the ONNX file ``path`` and compare it with PyTorch.

    The file is written to a temporary name, checked (``onnx.checker`` full check), run in
    onnxruntime on two different seeded images and renamed into place only if every image gives
    the same number of boxes, equal labels, and boxes and scores within ``tolerance``; otherwise
    ``ExportError`` in one line and no file (an existing file at ``path`` is left as it was).

    Args:
        model: a ``visattn.models.detection.Detector`` (CPU); it is put in eval mode.
        meta: the checkpoint's description: ``in_channels``, ``input_size`` ``[H, W]`` (the
            image the file takes), ``model``; stored whole in the file's metadata.
        path: the ``.onnx`` file to write (replaced if it exists).
        tolerance: largest accepted difference of boxes (pixels) and scores, relative to
            their size above 1.

    Returns:
        ``ExportReport`` with the largest absolute difference and ``batches == (1, 1)``: two
        single-image runs.

    Example:
        >>> det = create_detector("fcos", num_classes=3, in_channels=1, score_thresh=0.0)
        >>> meta = {"task": "detection", "model": "fcos", "in_channels": 1, "input_size": [64, 64]}
        >>> export_detector(det, meta, Path("fcos.onnx")).max_abs_diff < 1e-4  # doctest: +SKIP
        True
    """
    _needs("onnx", "onnxruntime")
    path = Path(path)
    kind = getattr(model, "kind", meta.get("model", "detector"))
    title = TITLES.get(kind, kind)
    graph = SingleImage(model.eval()).eval()
    cases = _check_images(graph, meta)
    worst = 0.0

    def write(tmp: Path) -> None:
        nonlocal worst
        try:
            # The tracer's warnings (tensors read as Python values) and the exporter's own
            # deprecation notice would reach the user as noise: the comparison below decides.
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    graph, (cases[0][0],), str(tmp), dynamo=False, opset_version=OPSET,
                    input_names=["image"], output_names=list(OUTPUTS), do_constant_folding=True,
                )  # fmt: skip
        except Exception as err:  # whatever the exporter raises, the answer is the same refusal
            raise ExportError(f"{kind}: torchvision's {title} does not export to ONNX with torch "
                              f"{torch.__version__} ({_reason(err)})") from None  # fmt: skip
        try:
            _annotate_onnx(tmp, meta)
        except ExportError as err:  # name the file the user asked for, not the temporary one
            raise ExportError(str(err).replace(str(tmp), str(path))) from None
        run = _onnx_detector(tmp, title)
        for number, (image, expected) in enumerate(cases, 1):
            worst = max(worst, _compare(run(image), expected, tolerance, f"{path} ({title}, image {number})"))

    atomic_write(path, write)
    return ExportReport(path, "onnx", worst, (1,) * len(cases))
