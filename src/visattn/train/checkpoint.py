"""Checkpoints: weights in safetensors with the model's description in the header, training
state in a tensors-and-plain-values file read with ``torch.load(weights_only=True)``.

Nothing is ever read through unrestricted pickle, and every file is written to a temporary
name and renamed into place, so a crash never leaves half a checkpoint behind.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .._io import atomic_write
from ..models.weights import mismatch_report
from ..tasks import TASKS

FORMAT = "visattn.checkpoint"
VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def save_weights(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``model``'s state_dict and its description ``meta`` (JSON-serialisable) to a
    safetensors file. Refuses non-finite weights, which no later run could use."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    check_finite(state, path)
    header = {"format": FORMAT, "version": str(VERSION), "visattn": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=header))


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise ``CheckpointError`` if any floating-point tensor of ``state`` holds NaN or inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}")


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write training state (tensors and plain values only) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """Read training state written by ``save_state``; arbitrary pickled objects are refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"training state {path} does not exist") from None
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a usable training state: {first}") from None


def _check_layout(path: Path) -> None:
    """Tell a truncated safetensors file from one that is not safetensors at all, before the
    library reports either as a bare parse error."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a checkpoint (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise CheckpointError(f"{path} is not a checkpoint (no safetensors header)")
        raw = f.read(n)
    if len(raw) < n:
        raise CheckpointError(f"{path} is truncated: its header needs {n} bytes, {len(raw)} are there")
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CheckpointError(f"{path} is not a checkpoint (no safetensors header)") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise CheckpointError(f"{path} is truncated: {size} bytes of {need}")


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state_dict and description stored in a visattn weights file (or a run folder,
    whose ``best.safetensors`` is read, else ``last.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "best.safetensors", path / "last.safetensors") if p.is_file()]
        if not found:
            raise CheckpointError(f"{path} holds no best.safetensors or last.safetensors")
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_layout(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {err}") from None
    if header.get("format") != FORMAT or "visattn" not in header:
        raise CheckpointError(
            f"{path} is a safetensors file but not a visattn checkpoint (it carries no visattn "
            "model description)"
        )
    try:
        meta = json.loads(header["visattn"])
    except ValueError:
        raise CheckpointError(f"{path} has a damaged visattn model description") from None
    return state, meta


def load_model(path: Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model described in a checkpoint and load its weights, in eval mode.

    Raises ``CheckpointError`` when the file is missing, truncated, not a visattn
    checkpoint, or holds weights that do not fit the model it describes.
    """
    state, meta = read_checkpoint(path)
    try:
        model = TASKS.get(meta.get("task", "classification")).rebuild(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} describes a model this version cannot build: {err}") from None
    check_state_dict(model, state, source=str(path), model_name=meta["model"])
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def check_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str, model_name: str
) -> None:
    """Raise ``CheckpointError`` listing missing, unexpected and mis-shaped keys, so that a
    state_dict for another architecture is never half-loaded."""
    problems = mismatch_report(model.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"{source} does not hold weights of model {model_name!r} as described: " + "; ".join(problems)
        )
