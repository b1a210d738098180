"""Class activation maps through pytorch-grad-cam, with the target layer and the
token-to-grid reshape inferred.

- ``gradcam``: Selvaraju et al. 2017, "Grad-CAM" (arXiv:1610.02391).
- ``gradcam++``: Chattopadhyay et al. 2018, "Grad-CAM++" (arXiv:1710.11063).
- ``hirescam``: Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM" (arXiv:2011.08891).

The default target layer is found by tracing one forward pass:

- a transformer over a patch grid (its attention maps say the grid and how many class or
  register tokens lead the sequence): the last module output of ``(B, prefix + h*w, C)``
  tokens *before the last attention runs* (the last block's pre-norm). After the last
  attention only the class token still reaches the classifier, so patch tokens there have
  zero gradient. The reshape drops the leading tokens and lays the rest on the grid;
- any other network: the last 4-D output before pooling (channels-last when it matches the
  grid of the last window map, as in Swin). Attention modules' own outputs are skipped:
  in a mean-pooled network Grad-CAM there equals plain CAM and is nearly flat. An output
  that a later in-place operation (``ReLU(inplace=True)``) overwrites is skipped too, since
  pytorch-grad-cam would read the overwritten values; the enclosing stage returns the
  finished tensor instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attention.base import AttentionModule
from ..maps import AttentionMaps, record_attention
from ..registry import EXPLAINERS
from .request import Request, evaluating, takes


@dataclass(frozen=True)
class CamLayer:
    """A target layer and how its output becomes ``(B, C, h, w)``.

    Attributes:
        name: qualified module name.
        layout: ``"nchw"``, ``"nhwc"`` or ``"tokens"``.
        grid: ``(h, w)`` of a token layer.
        prefix: leading non-patch tokens of a token layer.
    """

    name: str
    layout: str
    grid: tuple[int, int] | None = None
    prefix: int = 0

    def reshape(self, t: Tensor) -> Tensor:
        """The layer's output (or its gradient) as ``(B, C, h, w)``."""
        if self.layout == "nhwc":
            return t.permute(0, 3, 1, 2)  # (B, C, h, w)
        if self.layout == "tokens":
            assert self.grid is not None
            patches = t[:, self.prefix :]  # (B, h*w, C)
            return patches.reshape(t.shape[0], *self.grid, t.shape[-1]).permute(0, 3, 1, 2)  # (B, C, h, w)
        return t


def _attention_names(model: nn.Module, maps: AttentionMaps) -> set[str]:
    recorded = {key.split(":")[0].split("#")[0] for key in maps}
    own = {name for name, m in model.named_modules() if isinstance(m, AttentionModule)}
    return recorded | own


def _inside(name: str, parents: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in parents)


def cam_layers(model: nn.Module, images: Tensor) -> tuple[list[CamLayer], CamLayer | None]:
    """Trace one forward pass: every layer a CAM can use, and the default (``None`` when
    nothing qualifies)."""
    events: list[tuple[str, str, Tensor | None, int]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(
            module.register_forward_pre_hook(lambda m, a, name=name: events.append(("start", name, None, 0)))
        )

        def done(m: nn.Module, args: object, out: object, name: str = name) -> None:
            if isinstance(out, Tensor):
                events.append(("end", name, out, out._version))

        handles.append(module.register_forward_hook(done))
    try:
        with evaluating(model), torch.no_grad(), record_attention(model) as maps:
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    attention = _attention_names(model, maps)
    tokens = _token_layout(maps)
    window_grid = next((maps.grid(n) for n in reversed(list(maps)) if maps.kind(n) == "window"), None)
    layers: list[CamLayer] = []
    token_before_attention, spatial_default, seen_attention = None, None, False
    for event, name, out, version in reversed(events):  # backwards: the last attention first
        if event == "start":
            seen_attention = seen_attention or name in attention
            continue
        if _inside(name, attention) or out is None:
            continue
        layer = _classify(name, out, tokens, window_grid)
        if layer is None:
            continue
        layers.insert(0, layer)
        if layer.layout == "tokens" and seen_attention and token_before_attention is None:
            token_before_attention = layer
        # An output some later in-place operation overwrote is not what the classifier saw.
        if layer.layout != "tokens" and spatial_default is None and out._version == version:
            spatial_default = layer
    return layers, token_before_attention or spatial_default


def _token_layout(maps: AttentionMaps) -> tuple[tuple[int, int], int] | None:
    for name in reversed(list(maps)):
        grid, prefix = maps.grid(name), maps.prefix_tokens(name)
        if (
            maps.kind(name) == "softmax"
            and grid is not None
            and maps[name].shape[-1] == prefix + grid[0] * grid[1]
        ):
            return grid, prefix
    return None


def _classify(
    name: str, out: Tensor, tokens: tuple[tuple[int, int], int] | None, window_grid: tuple[int, int] | None
) -> CamLayer | None:
    if out.ndim == 3 and tokens is not None and out.shape[1] == tokens[1] + tokens[0][0] * tokens[0][1]:
        return CamLayer(name, "tokens", tokens[0], tokens[1])
    if out.ndim != 4:
        return None
    if window_grid is not None and tuple(out.shape[1:3]) == window_grid:
        return CamLayer(name, "nhwc")
    if out.shape[2] * out.shape[3] > 1:
        return CamLayer(name, "nchw")
    return None


def resolve_cam_layer(model: nn.Module, images: Tensor, layer: str | None) -> CamLayer:
    """The target layer: ``layer`` when given (a module name), else the inferred default."""
    layers, default = cam_layers(model, images)
    if layer is None:
        if default is None:
            raise ValueError("no layer with a spatial output was found for a CAM; pass layer=<module name>")
        return default
    chosen = [candidate for candidate in layers if candidate.name == layer]
    if not chosen:
        names = ", ".join(dict.fromkeys(c.name for c in layers)) or "(none)"
        raise ValueError(f"layer {layer!r} has no spatial output for a CAM; valid layers: {names}")
    return chosen[-1]


def _cam_method(class_name: str) -> Callable[[Request], Tensor]:
    def method(request: Request) -> Tensor:
        grad_cam = importlib.import_module("pytorch_grad_cam")
        targets_module = importlib.import_module("pytorch_grad_cam.utils.model_targets")
        layer = resolve_cam_layer(request.model, request.images, request.layer)
        classes = request.classes()
        targets = [targets_module.ClassifierOutputTarget(int(c)) for c in classes]
        module = request.model.get_submodule(layer.name)
        # pytorch-grad-cam needs a graph: it fails under no_grad and inference mode.
        with evaluating(request.model), torch.inference_mode(False), torch.enable_grad():
            images = request.images.detach().clone().requires_grad_(True)
            cam_class = getattr(grad_cam, class_name)
            with cam_class(
                model=request.model, target_layers=[module], reshape_transform=layer.reshape
            ) as cam:
                heat = cam(input_tensor=images, targets=targets)
        return torch.from_numpy(heat).to(request.images.device)  # (B, H, W) in [0, 1]

    takes("layer")(method)
    method.__name__ = class_name
    method.__doc__ = f"pytorch-grad-cam's {class_name} at the inferred (or given) layer: ``(B, H, W)``."
    return method


gradcam = EXPLAINERS.register("gradcam")(_cam_method("GradCAM"))
gradcam_plus_plus = EXPLAINERS.register("gradcam++")(_cam_method("GradCAMPlusPlus"))
hirescam = EXPLAINERS.register("hirescam")(_cam_method("HiResCAM"))
