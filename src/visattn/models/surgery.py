"""Attention surgery: add attention modules to an existing network without copying its code.

``insert_attention(model, "se")`` puts attention in every residual block it knows (table
``BRANCH_ENDS``); ``where=`` selects other points. It finds the insertion points, measures
each point's channel count with one dry run on a small input (forward hooks that live only
during that run), builds one attention module per point and splices it in:

- residual blocks with a known branch end (``BRANCH_ENDS`` in ``visattn.models.blocks``:
  torchvision's and timm's ResNet, MobileNet, EfficientNet, RegNet blocks, torchvision's
  ConvNeXt blocks, and visattn's ResNet blocks) get
  the attention at the end of the residual branch, before the addition, where SE (Hu et al.
  2018, arXiv:1709.01507), CBAM (Woo et al. 2018, arXiv:1807.06521) and ECA put it. The
  branch's last module is wrapped (``bn3`` -> ``AttentionAfter(bn3, attention)``), or, for
  blocks that own an empty attention slot (timm's ``se``, visattn's ``attn``), the slot is
  filled;
- every other module is wrapped whole: its output goes through the attention.

The modified model is then run once more on the same input, and the surgery is undone if it
fails, so a wrong placement never survives the call. Parameter names of the original model
gain a ``.module`` level where a module was wrapped; load pretrained weights before inserting.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._checks import check_choice
from ..attention import AttentionSpec
from .blocks import BRANCH_ENDS, branch_end, known_block
from .factory import attention_factory

logger = logging.getLogger(__name__)

Where = str | type[nn.Module] | Callable[[str, nn.Module], bool]
PLACEMENTS = ("auto", "branch", "output")


class AttentionAfter(nn.Module):
    """Runs ``module`` and then ``attention`` on its output.

    Shapes: whatever ``module`` takes -> ``(B, C, H, W)``, C the attention's width.
    """

    def __init__(self, module: nn.Module, attention: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.attention = attention

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.attention(self.module(*args, **kwargs))


class Insertion(NamedTuple):
    """One inserted module: the selected module's qualified name, the attention's class,
    its channel count, ``"branch"`` or ``"output"``, and the attention's own qualified name
    (the key ``record_attention`` uses)."""

    name: str
    attention: str
    channels: int
    placement: str
    path: str


class InsertionReport(tuple[Insertion, ...]):
    """The insertions in forward-definition order; ``str()`` renders a table."""

    def __str__(self) -> str:
        rows = [("module", "attention", "channels", "placement", "inserted as")]
        rows += [(i.name, i.attention, str(i.channels), i.placement, i.path) for i in self]
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _class_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


class _Step(NamedTuple):
    name: str  # the selected module
    target: str  # the module whose output is measured: wrapped, or the block whose slot is filled
    slot: str | None  # attribute to fill, or None to wrap ``target``
    placement: str


def _select(model: nn.Module, where: Where) -> list[tuple[str, nn.Module]]:
    """Modules matching ``where``, outermost first; the root itself cannot be replaced."""
    named = [(n, m) for n, m in model.named_modules() if n]
    if isinstance(where, type):
        hits = [(n, m) for n, m in named if isinstance(m, where)]
    elif isinstance(where, str):
        by_class = any(where in _class_names(m) for _, m in named)
        hits = [
            (n, m)
            for n, m in named
            if (where in _class_names(m) if by_class else fnmatch.fnmatchcase(n, where))
        ]
    elif callable(where):
        hits = [(n, m) for n, m in named if where(n, m)]
    else:
        raise ValueError(
            f"where must be a class, a class name, a glob, 'stages' or a predicate, got {where!r}"
        )
    outer: list[tuple[str, nn.Module]] = []
    for n, m in hits:
        if not any(n.startswith(f"{o}.") for o, _ in outer):
            outer.append((n, m))
    return outer


class _Output(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def _dry_run(
    model: nn.Module, watch: dict[str, nn.Module], example: tuple[Any, ...]
) -> dict[str, _Output | None]:
    """First output of each watched module that ran during one eval-mode forward, in the
    order the modules finished; None where it was not a (B, C, H, W) tensor."""
    seen: dict[str, _Output | None] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if name not in seen:
                ok = isinstance(output, Tensor) and output.ndim == 4
                seen[name] = _Output(tuple(output.shape), output.dtype, output.device) if ok else None

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in watch.items()]
    try:
        _run(model, example)
    finally:
        for h in handles:
            h.remove()
    return seen


def _run(model: nn.Module, example: tuple[Any, ...]) -> None:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for m, training in modes:
            m.training = training


def _stages(model: nn.Module, seen: dict[str, _Output | None]) -> list[str]:
    """The stages as ``insert_attention`` defines them, from one dry run of every module."""
    modules = dict(model.named_modules())
    chw = {n: r.shape[1:] for n, r in seen.items() if r is not None}  # in finish order

    def candidate(name: str) -> bool:
        module = modules[name]
        kids = {chw[f"{name}.{c}"] for c, _ in module.named_children() if f"{name}.{c}" in chw}
        return len(kids) == 1 and next(module.parameters(), None) is not None

    candidates = {n for n in chw if candidate(n)}
    stages: list[str] = []
    for n in chw:
        parts = n.split(".")
        if n not in candidates or any(".".join(parts[:i]) in candidates for i in range(1, len(parts))):
            continue  # not a candidate, or inside one
        if stages and chw[stages[-1]] == chw[n]:
            stages[-1] = n  # the same run: keep its last module
        else:
            stages.append(n)
    return stages


def _example(model: nn.Module, example_input: Tensor | tuple[Any, ...] | None) -> tuple[Any, ...]:
    if example_input is not None:
        return example_input if isinstance(example_input, tuple) else (example_input,)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"cannot tell what {type(model).__name__} takes as input: pass example_input")
    w = conv.weight
    return (torch.zeros(1, conv.in_channels, 64, 64, dtype=w.dtype, device=w.device),)


def _plan(chosen: list[tuple[str, nn.Module]], placement: str) -> Iterator[_Step]:
    for name, module in chosen:
        end = None if placement == "output" else branch_end(module)
        if end is None:
            if placement == "branch":
                raise ValueError(
                    f"placement='branch' needs a residual block listed in BRANCH_ENDS; {name} is a "
                    f"{type(module).__name__}: use placement='output' or 'auto'"
                )
            yield _Step(name, name, None, "output")
            continue
        attr, how = end
        current = getattr(module, attr)
        if how == "slot" and (current is None or isinstance(current, nn.Identity)):
            yield _Step(name, name, attr, "branch")
        else:
            yield _Step(name, f"{name}.{attr}", None, "branch")


def insert_attention(
    model: nn.Module,
    attention: AttentionSpec,
    *,
    where: Where | None = None,
    attention_options: dict[str, Any] | None = None,
    placement: str = "auto",
    example_input: Tensor | tuple[Any, ...] | None = None,
) -> InsertionReport:
    """Add an attention module at each selected point of ``model``, in place.

    Args:
        model: any ``nn.Module`` (torchvision, timm, detection backbones, ...).
        attention: a registered attention name or a callable ``channels -> module``.
        where: which modules get attention (the model itself never does; of nested
            matches only the outermost is taken):

            - ``None`` (default): every residual block listed in ``BRANCH_ENDS`` (the blocks
              of torchvision's and timm's ResNet / ResNeXt, MobileNet, EfficientNet, RegNet,
              torchvision's ConvNeXt, visattn's ResNet, also inside a detector's backbone);
              a network without such blocks raises ``ValueError``;
            - a class, or a class name such as ``"Bottleneck"``, ``"InvertedResidual"``,
              ``"MBConv"``, ``"CNBlock"``: every module of that class (or a subclass);
            - any other string: a glob (``fnmatch``, case-sensitive, ``*`` crossing dots)
              over qualified module names, e.g. ``"layer4.*"`` (the blocks of layer4) or
              ``"features.1[0-5]"``;
            - ``"stages"``: the output of each stage. Among modules that have children and
              parameters, returned a ``(B, C, H, W)`` tensor in the dry run and whose
              children that returned one all gave the same (C, H, W), keep the outermost;
              in the order they finished, group consecutive ones of equal (C, H, W) and take
              the last of each group. For torchvision's ResNet: ``layer1`` ... ``layer4``;
              ConvNeXt: ``features.1/3/5/7``; RegNet: ``stem``, ``trunk_output.block1`` ...
              ``block4``; MobileNetV2: the last block of each row of the paper's table.
            - a predicate ``(qualified_name, module) -> bool``.
        attention_options: keyword options for a named attention.
        placement: ``"auto"`` puts attention at the end of the residual branch of blocks in
            ``BRANCH_ENDS`` and after the module's output elsewhere (always after the output
            for ``where="stages"``); ``"branch"`` requires a known block; ``"output"``
            always wraps the selected module.
        example_input: the model's input for the dry runs (a tensor, or a tuple of
            arguments); default ``zeros(1, C, 64, 64)`` with C the first convolution's
            input channels, on its device and dtype.

    Returns:
        ``InsertionReport``: one ``Insertion`` per module, ``print``-able as a table.

    Example:
        >>> model = torchvision.models.resnet50()
        >>> report = insert_attention(model, "se")
        >>> len(report), report[0].name, report[0].path
        (16, 'layer1.0', 'layer1.0.bn3.attention')
    """
    check_choice("placement", placement, PLACEMENTS)
    factory = attention_factory(attention, attention_options, model="insert_attention")
    if factory is None:
        raise ValueError("insert_attention needs an attention: a registered name or a callable, got None")
    example = _example(model, example_input)
    if where is None:
        chosen = _select(model, known_block)
        if not chosen:
            known = sorted({k.rpartition(".")[2] for k in BRANCH_ENDS})
            raise ValueError(
                f"{type(model).__name__} holds no residual block insert_attention knows "
                f"({', '.join(known)}): pass where=, a block class or class name, a glob over "
                "qualified module names (e.g. 'layer4.*'), 'stages' or a predicate (name, module) -> bool"
            )
    elif isinstance(where, str) and where == "stages":
        watch = {n: m for n, m in model.named_modules() if n}
        chosen = [(n, watch[n]) for n in _stages(model, _dry_run(model, watch, example))]
        placement = "output" if placement == "auto" else placement
    else:
        chosen = _select(model, where)
    if not chosen:
        raise ValueError(
            f"where={where!r} selects no module of {type(model).__name__}: give a block class or class "
            "name, a glob over qualified module names (e.g. 'layer4.*'), 'stages' or a predicate"
        )
    steps = list(_plan(chosen, placement))
    seen = _dry_run(model, {s.target: model.get_submodule(s.target) for s in steps}, example)
    built, channels = [], []
    for step in steps:
        record = seen.get(step.target)
        if record is None:
            ran = "did not run" if step.target not in seen else "did not return a (B, C, H, W) tensor"
            raise ValueError(f"{step.target} {ran} in the dry run: nothing to put attention on")
        channels.append(record.shape[1])
        module = factory(record.shape[1])
        built.append(module.to(device=record.device, dtype=record.dtype))
    undo = [_splice(model, step, module) for step, module in zip(steps, built, strict=True)]
    try:
        _run(model, example)
    except Exception as err:
        for restore in reversed(undo):
            restore()
        raise ValueError(
            f"{type(model).__name__} fails with the attention inserted, left unchanged: {err}"
        ) from err
    report = InsertionReport(
        Insertion(s.name, type(m).__name__, c, s.placement, _path(s))
        for s, m, c in zip(steps, built, channels, strict=True)
    )
    logger.info("insert_attention into %s:\n%s", type(model).__name__, report)
    return report


def _path(step: _Step) -> str:
    return f"{step.name}.{step.slot}" if step.slot else f"{step.target}.attention"


def _splice(model: nn.Module, step: _Step, module: nn.Module) -> Callable[[], None]:
    """Put ``module`` in place; return the function that takes it out again."""
    if step.slot is not None:
        parent, attr, new = model.get_submodule(step.name), step.slot, module
    else:
        parent_name, _, attr = step.target.rpartition(".")
        parent = model.get_submodule(parent_name)
        new = AttentionAfter(getattr(parent, attr), module)
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return lambda: setattr(parent, attr, old)
