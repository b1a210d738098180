"""Recording attention maps: ``with record_attention(model) as maps: model(x)``.

Recording switches every visattn attention module inside the model to its explicit path
(fused kernels never expose their weights) and collects each module's map, detached, keyed
by the module's qualified name in forward order. No hooks, no global state: the flag and
the slot live on the modules and are restored when the block exits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial

from torch import Tensor, nn

from .attention.base import AttentionModule


class AttentionMaps(Mapping[str, Tensor]):
    """Maps recorded during one or more forward passes: qualified name -> tensor.

    A module that runs twice inside one recording stores its second map as ``name#1``, its
    third as ``name#2``, and so on. ``grid(name)`` gives the (H, W) of the positions of a
    token map, or ``None`` for gate maps that are already spatial or channel-wise.
    """

    def __init__(self) -> None:
        self._maps: dict[str, Tensor] = {}
        self._grids: dict[str, tuple[int, int] | None] = {}

    def _add(self, name: str, attn: Tensor, grid: tuple[int, int] | None) -> None:
        key, calls = name, 0
        while key in self._maps:
            calls += 1
            key = f"{name}#{calls}"
        self._maps[key] = attn
        self._grids[key] = grid

    def grid(self, name: str) -> tuple[int, int] | None:
        """(H, W) of the positions behind a token map; ``None`` for gate maps."""
        return self._grids[name]

    def __getitem__(self, name: str) -> Tensor:
        return self._maps[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self._maps.items())
        return f"AttentionMaps({{{inner}}})"


@contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionMaps]:
    """Record the attention maps of every visattn attention module inside ``model``.

    Shapes: channel gates ``(B, C)``; spatial gates ``(B, 1, H, W)``; softmax attention
    ``(B, heads, Nq, Nk)``; windowed attention ``(B, heads, H*W, window area)``.

    Example:
        >>> model = visattn.create_model("attention_cnn", num_classes=10, in_channels=1)
        >>> with record_attention(model) as maps:
        ...     logits = model(torch.randn(2, 1, 32, 32))
        >>> list(maps)
        ['attn']
    """
    maps = AttentionMaps()
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, AttentionModule)]
    saved = [(m.recording, m._map_sink) for _, m in modules]
    for name, module in modules:
        module.recording = True
        module._map_sink = partial(maps._add, name or type(module).__name__)
    try:
        yield maps
    finally:
        for (_, module), (recording, sink) in zip(modules, saved, strict=True):
            module.recording = recording
            module._map_sink = sink
