"""``explain(model, images, method=...)``: one per-pixel map per image for a target class.

The methods live in ``EXPLAINERS`` (``visattn.registry``): ``attention``, ``rollout``,
``grad-attention``, ``gradcam``, ``gradcam++``, ``hirescam`` and the baselines ``random``,
``centre`` and ``input``. See docs/explain.md for each method's paper and what it needs
from the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import EXPLAINERS
from . import baselines, cam, rollout  # noqa: F401  (each registers its methods)
from .request import HEAD_FUSIONS, Request, evaluating


def explain(
    model: nn.Module,
    images: Tensor,
    *,
    method: str,
    target: Tensor | int | None = None,
    layer: str | None = None,
    head_fusion: str | None = None,
    discard_ratio: float | None = None,
    seed: int | None = None,
) -> Tensor:
    """Per-pixel explanation maps of ``model`` for ``images``.

    The model runs in evaluation mode (its own mode is restored afterwards); gradient
    methods enable gradients themselves, so this may be called under ``torch.no_grad`` or
    ``torch.inference_mode``.

    Args:
        model: a classifier ``(B, C, H, W) -> (B, classes)``.
        images: ``(B, C, H, W)`` normalised input.
        method: a name in ``EXPLAINERS`` (``visattn.registry``).
        target: class to explain, one for all images or ``(B,)``; ``None`` explains each
            image's prediction. Class-agnostic methods (attention, rollout, baselines)
            still refuse a target out of range.
        layer: attention: the recorded map; CAMs: the module name of the target layer.
            Inferred when ``None``.
        head_fusion: rollout: ``"mean"`` (default), ``"max"`` or ``"min"`` over heads.
        discard_ratio: rollout: fraction of the weakest weights dropped per layer (0).
        seed: random: the generator's seed (0).

    Returns:
        ``(B, H, W)`` float maps in [0, 1], at the images' size.

    Example:
        >>> model = visattn.create_model("attention_cnn", num_classes=3, in_channels=1)
        >>> explain(model, torch.randn(2, 1, 32, 32), method="rollout").shape
        torch.Size([2, 32, 32])
    """
    if method not in EXPLAINERS:
        raise ValueError(f"method must be one of {', '.join(EXPLAINERS.names())}, got {method!r}")
    given = {
        name
        for name, value in (
            ("layer", layer),
            ("head_fusion", head_fusion),
            ("discard_ratio", discard_ratio),
            ("seed", seed),
        )
        if value is not None
    }
    explainer = EXPLAINERS.get(method)
    unused = sorted(given - getattr(explainer, "options", frozenset()))
    if unused:
        raise ValueError(f"method {method!r} takes no option {', '.join(unused)}")
    if head_fusion is not None and head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
    if images.ndim != 4:
        raise ValueError(f"explain expects images of shape (B, C, H, W), got {tuple(images.shape)}")
    with torch.inference_mode(False):
        # A tensor made under inference mode cannot enter autograd; a plain copy can.
        plain = images.clone() if images.is_inference() else images
        request = Request(
            model,
            plain.detach(),
            target=None if target is None else torch.as_tensor(target),
            layer=layer,
            head_fusion=head_fusion or "mean",
            discard_ratio=0.0 if discard_ratio is None else discard_ratio,
            seed=0 if seed is None else seed,
        )
        with evaluating(model):
            return explainer(request)
