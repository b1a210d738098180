"""Recording attention maps: ``with record_attention(model) as maps: model(x)``.

Recording switches every visattn attention module inside the model to its explicit path
(fused kernels never expose their weights) and collects each module's map keyed by the
module's qualified name in forward order. The attention layers of timm and torchvision
models (and ``nn.MultiheadAttention``) are recorded too: for the duration of the block each
gets an instance-level forward that computes its own attention explicitly
(``visattn.recorders``). No global state: flags, slots and patches live on the modules and
are undone when the block exits, errors included. Maps are detached unless the recording
asks for gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn

from . import recorders
from .attention.base import AttentionModule

#: Documented map kinds and shapes (see ``AttentionModule.keep_map``).
MAP_KINDS = ("channel", "spatial", "softmax", "window", "gate")


@dataclass(frozen=True)
class _Record:
    attn: Tensor
    kind: str
    grid: tuple[int, int] | None
    keys: Tensor | None
    prefix: int


class AttentionMaps(Mapping[str, Tensor]):
    """Maps recorded during one or more forward passes: qualified name -> tensor.

    A module with several maps stores them as ``name:part``. A module that runs twice
    inside one recording stores its second map as ``name#1``, its third as ``name#2``, and
    so on. ``kind``, ``grid``, ``keys_index`` and ``prefix_tokens`` describe each map (see
    ``AttentionModule.keep_map``).

    Args:
        grad: keep the maps in the autograd graph (for gradient-based explanations);
            otherwise they are detached as they arrive.
    """

    def __init__(self, *, grad: bool = False) -> None:
        self.grad = grad
        self._records: dict[str, _Record] = {}

    def _add(
        self,
        name: str,
        attn: Tensor,
        *,
        kind: str,
        grid: tuple[int, int] | None = None,
        keys: Tensor | None = None,
        part: str | None = None,
        prefix: int = 0,
    ) -> None:
        if kind not in MAP_KINDS:
            raise ValueError(f"map kind must be one of {', '.join(MAP_KINDS)}, got {kind!r}")
        base = name if part is None else f"{name}:{part}"
        key, calls = base, 0
        while key in self._records:
            calls += 1
            key = f"{base}#{calls}"
        kept = attn if self.grad else attn.detach()
        self._records[key] = _Record(kept, kind, None if grid is None else tuple(grid), keys, prefix)

    def kind(self, name: str) -> str:
        """The map's kind: channel, spatial, softmax, window or gate."""
        return self._records[name].kind

    def grid(self, name: str) -> tuple[int, int] | None:
        """(h, w) of the key positions of a softmax map (of the query grid of a window
        map); ``None`` when its keys are not spatial positions."""
        return self._records[name].grid

    def keys_index(self, name: str) -> Tensor | None:
        """For window maps, ``(H*W, K)``: the flat position behind each window slot, -1 for
        padding."""
        return self._records[name].keys

    def prefix_tokens(self, name: str) -> int:
        """Leading keys of a softmax map that are not patches (class, distillation and
        register tokens of a vision transformer); its patch keys follow them."""
        return self._records[name].prefix

    def __getitem__(self, name: str) -> Tensor:
        return self._records[name].attn

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {r.kind} {tuple(r.attn.shape)}" for k, r in self._records.items())
        return f"AttentionMaps({{{inner}}})"


@contextmanager
def record_attention(model: nn.Module, *, grad: bool = False) -> Iterator[AttentionMaps]:
    """Record the attention maps of every attention module inside ``model``: visattn's,
    timm's ``Attention`` and Swin ``WindowAttention``, torchvision's Swin
    ``ShiftedWindowAttention`` and PyTorch's ``nn.MultiheadAttention`` (torchvision's ViT).

    Shapes by kind: channel gates ``(B, C)``; spatial gates ``(B, 1, H, W)``; softmax
    attention ``(B, heads, Nq, Nk)``; windowed attention ``(B, heads, H*W, window area)``.
    Vision-transformer maps carry the patch ``grid`` and the number of leading non-patch
    tokens (``AttentionMaps.prefix_tokens``).

    Args:
        model: any model.
        grad: keep the maps in the autograd graph so that their gradients can be taken
            (``torch.autograd.grad(score, list(maps.values()))``); detached otherwise.

    Example:
        >>> model = visattn.create_model("attention_cnn", num_classes=10, in_channels=1)
        >>> with record_attention(model) as maps:
        ...     logits = model(torch.randn(2, 1, 32, 32))
        >>> list(maps), maps.kind("attn")
        (['attn'], 'softmax')
    """
    maps = AttentionMaps(grad=grad)
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, AttentionModule)]
    saved = [(m.recording, m._map_sink) for _, m in modules]
    restores: list[recorders.Restore] = []
    try:
        for name, module in modules:
            module.recording = True
            module._map_sink = partial(maps._add, name or type(module).__name__)
        restores = recorders.install(model, lambda name: partial(maps._add, name))
        yield maps
    finally:
        for restore in restores:
            restore()
        for (_, module), (recording, sink) in zip(modules, saved, strict=True):
            module.recording = recording
            module._map_sink = sink
