"""The maps every explanation must beat, and the attention map visattn has always shown.

- ``random``: uniform noise from a seeded generator (same seed, same maps);
- ``centre``: a Gaussian on the image centre with a standard deviation of a quarter of each
  side (objects tend to sit in the middle of a photograph);
- ``input``: the input's own intensity, the mean over its channels (a map that only follows
  the ink or the brightness);
- ``attention``: the attention each position receives in the last spatial map (see
  ``heatmap.model_heatmap``); it is the same for every target class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import EXPLAINERS
from .heatmap import model_heatmap
from .request import Request, evaluating, normalise, takes


@EXPLAINERS.register("random")
@takes("seed")
def random_map(request: Request) -> Tensor:
    """Uniform noise in [0, 1): ``(B, H, W)``."""
    request.classes()
    generator = torch.Generator().manual_seed(request.seed)
    b, (h, w) = request.images.shape[0], request.size
    return torch.rand(b, h, w, generator=generator).to(request.images.device)


@EXPLAINERS.register("centre")
@takes()
def centre_map(request: Request) -> Tensor:
    """A centred Gaussian, the same for every image: ``(B, H, W)``."""
    request.classes()
    h, w = request.size
    ys = (torch.arange(h, dtype=torch.float64) + 0.5 - h / 2) / (h / 4)
    xs = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) / (w / 4)
    heat = torch.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).float()  # (H, W)
    return normalise(heat.expand(request.images.shape[0], h, w).to(request.images.device).clone())


@EXPLAINERS.register("input")
@takes()
def input_map(request: Request) -> Tensor:
    """The input's intensity (mean over channels), scaled to [0, 1]: ``(B, H, W)``."""
    request.classes()
    return normalise(request.images.detach().float().mean(dim=1))


@EXPLAINERS.register("attention")
@takes("layer")
def attention_map(request: Request) -> Tensor:
    """Attention received in the last spatial map (or ``layer``): ``(B, H, W)``."""
    with evaluating(request.model):
        logits, heat, _ = model_heatmap(request.model, request.images, layer=request.layer)
    request.classes(logits)
    return heat
