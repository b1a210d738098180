"""Model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
arXiv:1810.03292): a map that explains the model must change when the model's weights are
replaced by random ones.

Two re-initialised copies of the trained model are made; the original is never touched:

- ``whole``: every layer's parameters drawn again by its own ``reset_parameters`` (the
  initialisation PyTorch or the layer defines), buffers such as batch-norm statistics reset;
  a parameter held by a module without ``reset_parameters`` (a class token, a position
  table) is drawn from a normal distribution of standard deviation 0.02;
- ``head``: only the classifier, the last module with parameters that the forward pass runs.
  A map that does not change when the head is re-initialised does not depend on the class.

The draws use their own seeded generator state (``torch.random.fork_rng``), so the caller's
random stream is unchanged and the same seed gives the same copies. The generator is seeded
with ``seed + STREAM``, not ``seed``: a model built after ``torch.manual_seed(seed)`` would
otherwise be drawn again exactly as it was.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .request import evaluating

SCOPES = ("whole", "head")
STREAM = 8191  # offset of the re-initialisation seed from the caller's


def classifier_head(model: nn.Module, images: Tensor) -> str:
    """Qualified name of the last module with its own parameters that a forward pass of
    ``model`` on ``images`` runs: the layer that produces the class scores."""
    names = {module: name for name, module in model.named_modules()}
    ran: list[str] = []

    def seen(module: nn.Module, _inputs: object, _output: object) -> None:
        if any(True for _ in module.parameters(recurse=False)):
            ran.append(names[module])

    handles = [m.register_forward_hook(seen) for m in model.modules()]
    try:
        with evaluating(model), torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    if not ran:
        raise ValueError("the model ran no module with parameters; there is nothing to re-initialise")
    return ran[-1]


def reinitialised(model: nn.Module, images: Tensor, *, scope: str, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with the ``scope`` (``"whole"`` or ``"head"``) re-initialised.

    Args:
        model: the trained network (left unchanged).
        images: ``(B, C, H, W)`` example input, used to find the head.
        scope: ``"whole"`` or ``"head"``.
        seed: seed of the new weights.

    Raises:
        ValueError: for another scope.

    Example:
        >>> fresh = reinitialised(model, x, scope="head", seed=0)
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    clone = copy.deepcopy(model)
    if scope == "whole":
        modules = list(clone.named_modules())
    else:
        head = classifier_head(model, images)
        modules = [
            (name, m) for name, m in clone.named_modules() if name == head or name.startswith(head + ".")
        ]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + STREAM)
        for _, module in modules:
            own = any(True for _ in module.parameters(recurse=False))
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            elif own:
                with torch.no_grad():
                    for param in module.parameters(recurse=False):
                        nn.init.normal_(param, std=0.02)
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    return clone
