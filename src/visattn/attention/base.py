"""The base class every attention mechanism derives from.

It holds only what all mechanisms share: the channel count, the input check, and the
recording flag with the slot that receives attention maps while ``record_attention`` is
active. Mechanisms decide nothing else through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor, nn

from .._checks import check_int

FAMILIES = ("channel", "spatial", "channel-spatial", "global", "local", "linear", "token")

MapSink = Callable[..., None]


class AttentionModule(nn.Module):
    """Base of all visattn attention modules.

    Subclasses set the class attributes ``family`` (one of ``FAMILIES``), ``paper`` (a
    one-line reference) and ``complexity`` (cost in the number of positions N, e.g.
    ``"O(N²)"``), call ``check_input`` at the top of ``forward`` and hand their
    attention map to ``keep_map``, which stores it only while recording.
    """

    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    complexity: ClassVar[str] = ""
    #: Feature-map modules take (B, C, H, W); token modules take (B, N, C).
    layout: ClassVar[str] = "feature-map"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        self.recording = False
        self._map_sink: MapSink | None = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.family and cls.family not in FAMILIES:
            raise ValueError(f"{cls.__name__}.family must be one of {FAMILIES}, got {cls.family!r}")

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, C, H, W)`` (or ``(B, N, C)`` for token
        modules) with ``C == self.channels``."""
        if self.layout == "token":
            ok = x.ndim == 3 and x.shape[-1] == self.channels
            expected = f"(B, N, {self.channels})"
        else:
            ok = x.ndim == 4 and x.shape[1] == self.channels
            expected = f"(B, {self.channels}, H, W)"
        if not ok:
            raise ValueError(f"{type(self).__name__} expects input of shape {expected}, got {tuple(x.shape)}")

    def keep_map(
        self,
        attn: Tensor,
        *,
        kind: str,
        grid: tuple[int, int] | None = None,
        keys: Tensor | None = None,
        part: str | None = None,
        prefix: int = 0,
    ) -> None:
        """Hand a map to the active recorder, if any (a no-op unless recording).

        Args:
            attn: the map, in the documented shape of its ``kind``:
                ``"channel"`` ``(B, C)`` gate in [0, 1];
                ``"spatial"`` ``(B, 1, H, W)`` gate in [0, 1];
                ``"softmax"`` ``(B, heads, Nq, Nk)`` weights whose rows sum to 1;
                ``"window"`` ``(B, heads, H*W, K)``: each position's weights over the K
                positions of its window (rows sum to 1);
                ``"gate"`` any other gate with values in [0, 1].
            kind: one of the kinds above.
            grid: ``(h, w)`` of the key positions of a ``"softmax"`` map whose keys are
                spatial positions (``h * w == Nk``), or of the query grid of a ``"window"``
                map; ``None`` when the keys are not positions (channels, memory slots).
            keys: for ``"window"`` maps, ``(H*W, K)`` int64: the flat position each window
                slot reads from, ``-1`` for padding (which must carry zero weight).
            part: a name for one of several maps of the same module (``name:part``).
            prefix: for ``"softmax"`` maps over tokens, how many leading tokens (class,
                register) come before the ``grid`` positions, among both queries and keys.
        """
        if self.recording and self._map_sink is not None:
            # The recorder detaches unless it was asked for gradients (explanation methods).
            self._map_sink(attn, kind=kind, grid=grid, keys=keys, part=part, prefix=prefix)

    def gated(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """For mechanisms whose output is a product ``base * gate``: that pair, so that a
        residual block can fold the product into its addition (``addcmul``, one pass over the
        map instead of two); ``None`` for every other mechanism. Overrides record their maps
        as ``forward`` does."""
        return None

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
