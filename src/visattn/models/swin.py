"""Swin Transformer (hierarchical model). Liu et al., ICCV 2021, "Swin Transformer: Hierarchical
Vision Transformer using Shifted Windows", arXiv:2103.14030.

A 4x4 patch embedding (convolution + LayerNorm), stages of pre-norm blocks whose attention
alternates plain and shifted windows (visattn's ``"swin"`` module), 2x2 patch merging between
stages (LayerNorm over the four gathered positions, then a linear reduction to twice the width),
a final LayerNorm, global average pooling and a linear head. ``swin_tiny`` is torchvision's
``swin_t`` configuration and loads its weights with ``load_torchvision_swin``.

Deviations (neither applies when the sides are multiples of ``patch_size`` and every stage map
a multiple of the window, e.g. 224 px for ``swin_tiny``):
- Sides that are not multiples of the patch are zero-padded at the bottom and right (torchvision's
  strided convolution drops the remaining pixels).
- Window padding is masked out as keys (the attention module's default); ``mask_padding=False``
  attends to it as torchvision and timm do.

Reference checked against: torchvision ``swin_t`` (same weights, 224 px) and torchvision's
``SwinTransformer`` at a small configuration and sizes that need padding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .._checks import check_float, check_int
from ..attention import AttentionSpec
from ..functional import relative_position_index
from ..registry import MODELS
from .factory import attention_factory
from .vit import Mlp
from .weights import load_mapped

__all__ = ["SwinTransformer", "load_torchvision_swin", "swin_base", "swin_micro", "swin_small", "swin_tiny"]


class _Block(nn.Module):
    """``x + mix(LN(x))`` then ``x + MLP(LN(x))`` on a channels-last ``(B, H, W, C)`` map; the
    mixer sees ``(B, C, H, W)`` as every visattn attention module does."""

    def __init__(self, dim: int, mixer: nn.Module | None, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if mixer is not None else None
        self.attn = mixer
        self.drop_path = StochasticDepth(drop_path, "row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        if self.attn is not None:
            mixed = self.attn(self.norm1(x).permute(0, 3, 1, 2))  # (B, C, H, W)
            x = x + self.drop_path(mixed.permute(0, 2, 3, 1))  # (B, H, W, C)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)``: each 2x2 neighbourhood's four vectors
    are concatenated (order (0,0), (1,0), (0,1), (1,1) as (row, column) offsets, torchvision's),
    normalised and linearly reduced. Odd sides are zero-padded at the bottom / right."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # (B, H', W', C), H', W' even
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)  # (B, H/2, W/2, dx, dy, C)
        return self.reduction(self.norm(x.reshape(B, H // 2, W // 2, 4 * C)))


class SwinTransformer(nn.Module):
    """Hierarchical vision transformer with (shifted) window attention.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        patch_size: side of the patches of the embedding (4 in the paper).
        embed_dim: width of the first stage; it doubles at every patch merging.
        depths: blocks per stage.
        heads: attention heads per stage.
        window_size: side of the attention windows (7 in the paper).
        mlp_ratio: MLP hidden width over the stage width.
        attention: ``"swin"`` (default: window attention, shifted in every second block), another
            registered attention name or a callable ``channels -> module`` used as every block's
            token mixer on the ``(B, C, H, W)`` stage map, or ``None`` for the blocks without
            attention (LayerNorm + MLP only).
        attention_options: keyword options of the named attention. The model sets
            ``heads`` (the stage's), ``window_size`` and ``shift_size`` (0, then half the window
            in every second block) of every mechanism that has those options, which
            ``attention_options`` may therefore not name, and defaults ``residual=False``
            (the block adds the input; ``attention_options`` may override it).
        drop_rate: dropout in the MLPs and before the head.
        drop_path_rate: stochastic depth, rising linearly to this value over all blocks.

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)`` for any H, W >= 1.

    Example:
        >>> model = swin_micro(num_classes=10)
        >>> model(torch.randn(2, 3, 32, 24)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        attention: AttentionSpec | None = "swin",
        attention_options: Mapping[str, Any] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes)
        self.in_channels = check_int("in_channels", in_channels)
        self.patch_size = check_int("patch_size", patch_size)
        check_int("embed_dim", embed_dim)
        check_int("window_size", window_size)
        if not mlp_ratio * embed_dim >= 1:
            raise ValueError(f"mlp_ratio must give an MLP at least 1 wide, got {mlp_ratio!r}")
        if not depths or len(depths) != len(heads):
            raise ValueError(
                f"depths and heads must be non-empty and of equal length, got {depths} and {heads}"
            )
        for i, (d, h) in enumerate(zip(depths, heads, strict=True)):
            check_int(f"depths[{i}]", d)
            check_int(f"heads[{i}]", h)
        drop_rate = check_float("drop_rate", drop_rate, low=0.0, high=1.0)
        drop_path_rate = check_float("drop_path_rate", drop_path_rate, low=0.0, high=1.0)
        factory = attention_factory(
            attention,
            attention_options,
            model="SwinTransformer",
            sets=("heads", "window_size", "shift_size"),
            defaults={"residual": False},
        )

        def mixer(dim: int, n_heads: int, index: int) -> nn.Module | None:
            if factory is None:
                return None
            shift = 0 if index % 2 == 0 else window_size // 2
            return factory(dim, heads=n_heads, window_size=window_size, shift_size=shift)

        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(embed_dim)
        total, done = sum(depths), 0
        self.stages = nn.ModuleList()
        for s, (depth, n_heads) in enumerate(zip(depths, heads, strict=True)):
            dim = embed_dim * 2**s
            stage = nn.Module()
            stage.downsample = PatchMerging(dim // 2) if s else nn.Identity()
            stage.blocks = nn.Sequential(
                *(
                    _Block(dim, mixer(dim, n_heads, i), mlp_ratio, drop_rate,
                           drop_path_rate * (done + i) / max(total - 1, 1))
                    for i in range(depth)
                )
            )  # fmt: skip
            done += depth
            self.stages.append(stage)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, num_features, H', W')``: the normalised last-stage map."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            expected = f"(B, {self.in_channels}, H, W)"
            raise ValueError(f"SwinTransformer expects input of shape {expected}, got {tuple(x.shape)}")
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))  # bottom / right to whole patches
        x = self.patch_norm(self.patch_embed(x).permute(0, 2, 3, 1))  # (B, h, w, C)
        for stage in self.stages:
            x = stage.blocks(stage.downsample(x))  # (B, h_s, w_s, C_s)
        return self.norm(x).permute(0, 3, 1, 2)  # (B, C, H', W')

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, num_features, H', W') -> (B, num_classes)``: mean over positions, then the head."""
        return self.head(self.head_drop(x.mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def load_torchvision_swin(model: SwinTransformer, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision ``SwinTransformer`` (v1) state_dict (``swin_t`` layout: ``features.0`` the
    patch embedding, ``features.{2s+1}.{b}`` the blocks of stage s, ``features.{2s}`` the
    merging before it, ``mlp.0`` / ``mlp.3``). torchvision's ``relative_position_index`` buffers
    must equal the index the attention module computes; v2 layouts are refused.

    Example:
        >>> model = swin_tiny(num_classes=1000)
        >>> load_torchvision_swin(model, torchvision.models.swin_t().state_dict())
    """
    index = [k for k in state_dict if k.endswith(".attn.relative_position_index")]
    for key in index:
        ws = round(state_dict[key].numel() ** 0.25)
        if not state_dict[key].flatten().equal(relative_position_index(ws, ws).flatten()):
            raise ValueError(
                f"torchvision Swin state_dict: {key} is not the standard relative-position index"
            )
    rules = [
        (r"^patch_embed\.", "features.0.0."),
        (r"^patch_norm\.", "features.0.2."),
        (r"^stages\.(\d+)\.downsample\.", lambda m: f"features.{2 * int(m[1])}."),
        (
            r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.",
            lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.mlp.0.",
        ),
        (
            r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.",
            lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.mlp.3.",
        ),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}."),
    ]
    load_mapped(model, state_dict, rules, source="torchvision Swin", ignore=index)


def _variant(
    name: str, embed_dim: int, depths: tuple[int, ...], heads: tuple[int, ...], drop_path: float, **fixed: Any
) -> Callable[..., SwinTransformer]:
    def build(
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        attention: AttentionSpec | None = "swin",
        **options: Any,
    ) -> SwinTransformer:
        options = {"drop_path_rate": drop_path, **fixed, **options}
        return SwinTransformer(
            num_classes, in_channels=in_channels, embed_dim=embed_dim, depths=depths, heads=heads,
            attention=attention, **options,
        )  # fmt: skip

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"Swin with width {embed_dim}, depths {depths}, heads {heads}, stochastic depth {drop_path}."
    )
    return MODELS.register(name)(build)


# torchvision's swin_t / swin_s / swin_b, the paper's Swin-T/S/B (stochastic depth included);
# swin_micro is a small variant for 32-64 px images (2x2 patches, 4x4 windows).
swin_tiny = _variant("swin_tiny", 96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2)
swin_small = _variant("swin_small", 96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3)
swin_base = _variant("swin_base", 128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5)
swin_micro = _variant("swin_micro", 32, (2, 2, 2), (1, 2, 4), 0.1, patch_size=2, window_size=4)
