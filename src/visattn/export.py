"""Export a checkpoint's model so it can leave Python, and prove the export right.

``onnx``: the dynamo-based ``torch.onnx.export`` with a dynamic batch dimension; the file
passes ``onnx.checker`` (full check), carries the model description (classes, input size,
normalisation) in its metadata, and must reproduce PyTorch's outputs in onnxruntime at two
batch sizes -- a difference above the tolerance is an ``ExportError``, never a silent file.
``exported-program``: ``torch.export`` saved as ``.pt2``, reloaded and compared the same way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .train.checkpoint import load_model

FORMATS = {"onnx": ".onnx", "exported-program": ".pt2"}
META_KEY = "visattn"


class ExportError(RuntimeError):
    """The export ran but its result cannot be trusted (or could not be produced)."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: str
    max_abs_diff: float
    batches: tuple[int, ...]


def _needs(*packages: str) -> None:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs the packages {', '.join(missing)} (pip install onnx onnxscript onnxruntime)"
        )


def _inputs(meta: dict[str, Any], batch: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, meta["in_channels"], *meta["input_size"], generator=generator)


def export_model(
    model: nn.Module, meta: dict[str, Any], path: Path, *, fmt: str, tolerance: float = 1e-4
) -> ExportReport:
    """Export ``model`` (eval mode) to ``path`` and compare the result with PyTorch at batch
    sizes 1 and 3. Raises ``ExportError`` if the outputs differ by more than ``tolerance``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model = model.eval()
    example = (_inputs(meta, 2, 0),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    if fmt == "onnx":
        _needs("onnx", "onnxscript", "onnxruntime")
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's optimiser talks on stdout
            program = torch.onnx.export(
                model, example, dynamic_shapes=({0: batch},), dynamo=True, verbose=False
            )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(str(path))
        _annotate_onnx(path, meta)
        run = _onnx_runner(path)
    else:
        program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()
        run = lambda x: loaded(x).detach()  # noqa: E731
    worst = 0.0
    for size in (1, 3):
        x = _inputs(meta, size, size)
        with torch.no_grad():
            expected = model(x)
        worst = max(worst, float((run(x) - expected).abs().max()))
    if worst > tolerance:
        raise ExportError(
            f"{path}: the exported model's outputs differ from PyTorch's by {worst:.3g} (> {tolerance:g})"
        )
    return ExportReport(path, fmt, worst, (1, 3))


def _annotate_onnx(path: Path, meta: dict[str, Any]) -> None:
    """Store the model description in the file and run the checker's full check."""
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path} fails the ONNX checker: {str(err).splitlines()[0]}") from None


def _onnx_runner(path: Path) -> Callable[[Tensor], Tensor]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def export_checkpoint(
    checkpoint: Path, *, fmt: str, output: Path | None = None, force: bool = False, tolerance: float = 1e-4
) -> ExportReport:
    """Export the model of a visattn checkpoint (file or run folder).

    Args:
        checkpoint: a ``.safetensors`` checkpoint or a run folder.
        fmt: ``"onnx"`` or ``"exported-program"``.
        output: destination; next to the checkpoint (``model.onnx`` / ``model.pt2``) by default.
        force: replace an existing output file.
        tolerance: largest accepted absolute difference from PyTorch's outputs.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    checkpoint = Path(checkpoint)
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    path = Path(output) if output is not None else folder / f"model{FORMATS[fmt]}"
    if path.exists() and not force:
        raise ValueError(f"{path} exists; choose another --output or pass --force")
    if path.suffix != FORMATS[fmt]:
        raise ValueError(f"an {fmt} file should end in {FORMATS[fmt]}, got {path.name}")
    model, meta = load_model(checkpoint)
    if meta.get("task") == "detection":
        if fmt != "onnx":
            raise ExportError(
                "a detector exports only as onnx: torch.export stops at torchvision's batched NMS, whose "
                "output size depends on the data"
            )
        from .export_detection import export_detector  # export_detection imports this module

        return export_detector(model, meta, path, tolerance=tolerance)
    return export_model(model, meta, path, fmt=fmt, tolerance=tolerance)


def load_onnx_predictor(path: Path) -> tuple[Callable[[Tensor], Tensor], dict[str, Any]]:
    """``(run, meta)`` for an ONNX file written by ``export_checkpoint``: ``run(x)`` maps a
    normalised ``(B, C, H, W)`` batch to logits."""
    _needs("onnx", "onnxruntime")
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # any parse failure means an unusable file
        raise ExportError(f"{path} is not a readable ONNX file: {str(err).splitlines()[0]}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise ExportError(f"{path} is an ONNX file but not one exported by visattn (no model description)")
    return _onnx_runner(path), json.loads(props[META_KEY])
