"""Vision Transformer. Dosovitskiy et al., ICLR 2021, "An Image is Worth 16x16 Words: Transformers
for Image Recognition at Scale", arXiv:2010.11929.

A strided convolution cuts the image into patches, a class token is prepended, a learned position
embedding (class token included) is added, and pre-norm blocks follow: ``x + attn(LN(x))`` then
``x + MLP(LN(x))`` with GELU; a final LayerNorm and a linear head on the class token. LayerNorm
eps is 1e-6 as in the JAX original, timm and torchvision.

Any input size: the position grid is learned for ``img_size``; at another size its patch part is
resampled bicubically (antialiased when shrinking, float32 at least) and the class token's entry
kept, as timm's ``dynamic_img_size`` does. Sides that are not multiples of the patch are
zero-padded at the bottom and right before the patch embedding (timm's ``dynamic_img_pad``), so
no pixel is dropped; recorded maps then cover the padded grid.

Deviations from the paper: none at ``img_size``; ``pool="mean"`` (mean of the patch tokens) is an option.

Reference checked against: torchvision ``vit_b_16`` and timm ``vit_base_patch16_224`` (same weights
through ``load_torchvision_vit`` / ``load_timm_vit``), timm ``dynamic_img_size`` /
``dynamic_img_pad`` at other sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .._checks import check_choice, check_float, check_int
from ..attention import AttentionSpec
from ..registry import MODELS
from .factory import AttentionFactory, attention_factory

__all__ = [
    "Mlp",
    "VisionTransformer",
    "vit_base_patch16",
    "vit_base_patch32",
    "vit_large_patch16",
    "vit_small_patch16",
    "vit_tiny_patch16",
]


class Mlp(nn.Module):
    """``fc2(drop(GELU(fc1(x))))`` followed by dropout: the transformer's feed-forward layer."""

    def __init__(self, dim: int, hidden: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class _Block(nn.Module):
    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, *, attention: AttentionFactory | None, qkv_bias: bool,
        drop: float, attn_drop: float, drop_path: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6) if attention is not None else None
        settings = {"heads": heads, "qkv_bias": qkv_bias, "attn_drop": attn_drop, "proj_drop": drop}
        self.attn = attention(dim, **settings) if attention is not None else None
        self.drop_path = StochasticDepth(drop_path, "row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        if self.attn is not None:
            x = x + self.drop_path(self.attn(self.norm1(x), grid=grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def resample_position_embedding(pos: Tensor, old: tuple[int, int], new: tuple[int, int]) -> Tensor:
    """``(1, 1 + oh*ow, D) -> (1, 1 + nh*nw, D)``: bicubic resampling of the patch grid (antialiased
    when shrinking), the class token's entry unchanged."""
    if old == new:
        return pos
    D = pos.shape[-1]
    # Antialiased bicubic has no half-precision CPU kernel: resample in float32 (float64 stays).
    wide = torch.promote_types(pos.dtype, torch.float32)
    grid = pos[:, 1:].reshape(1, *old, D).permute(0, 3, 1, 2).to(wide)  # (1, D, oh, ow)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], D).to(pos.dtype)  # (1, nh*nw, D)
    return torch.cat([pos[:, :1], grid], dim=1)


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, position embedding, pre-norm blocks, head.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        img_size: input side (or ``(height, width)``) the position grid is learned for; a
            multiple of ``patch_size``. Other input sizes work (see the module docstring).
        patch_size: side of the square patches.
        embed_dim: token width.
        depth: number of blocks.
        heads: attention heads per block.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        qkv_bias: bias in the Q/K/V projections.
        attention: every block's token mixer: a registered name with a token form (``"mhsa"``:
            its ``MultiHeadAttention``), a callable ``channels -> module`` taking ``(B, N, C)``
            and ``grid=``, or ``None`` (needs ``pool="mean"``: the class token would never see
            the image). ``attention_options``: its options, but for ``heads``, ``qkv_bias``,
            ``attn_drop`` and ``proj_drop`` (``drop_rate``), which the model sets.
        pool: ``"token"`` (class token, the paper) or ``"mean"`` (mean of the patch tokens).
        drop_rate: dropout after the position embedding, in the MLPs and before the head.
        attn_drop: dropout on the attention weights.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)`` for any H, W >= 1.

    Example:
        >>> model = VisionTransformer(10, img_size=32, patch_size=8, embed_dim=64, depth=2, heads=4)
        >>> model(torch.randn(2, 3, 40, 24)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attention: AttentionSpec | None = "mhsa",
        attention_options: dict[str, Any] | None = None,
        pool: str = "token",
        drop_rate: float = 0.0,
        attn_drop: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes)
        self.in_channels = check_int("in_channels", in_channels)
        self.patch_size = check_int("patch_size", patch_size)
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(size) != 2 or any(check_int("img_size", s) % patch_size for s in size):
            raise ValueError(
                f"img_size must be one or two multiples of patch_size={patch_size}, got {img_size!r}"
            )
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        self.embed_dim = check_int("embed_dim", embed_dim)
        factory = attention_factory(
            attention,
            attention_options,
            model="VisionTransformer",
            layout="token",
            sets=("heads", "qkv_bias", "attn_drop", "proj_drop"),
        )
        self.pool = check_choice("pool", pool, ("token", "mean"))
        if attention is None and pool == "token":
            raise ValueError(
                "attention=None needs pool='mean': without attention the class token never sees the image"
            )
        check_int("depth", depth)
        if not mlp_ratio * embed_dim >= 1:
            raise ValueError(f"mlp_ratio must give an MLP at least 1 wide, got {mlp_ratio!r}")
        drop_rate = check_float("drop_rate", drop_rate, low=0.0, high=1.0)
        drop_path_rate = check_float("drop_path_rate", drop_path_rate, low=0.0, high=1.0)
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            _Block(embed_dim, heads, mlp_ratio, attention=factory, qkv_bias=qkv_bias,
                   drop=drop_rate, attn_drop=attn_drop, drop_path=drop_path_rate * i / max(depth - 1, 1))
            for i in range(depth)
        )  # fmt: skip
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, 1 + h*w, embed_dim)``: normalised tokens, class token
        first, ``h, w = ceil(H / patch), ceil(W / patch)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            expected = f"(B, {self.in_channels}, H, W)"
            raise ValueError(f"VisionTransformer expects input of shape {expected}, got {tuple(x.shape)}")
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))  # bottom / right to whole patches
        x = self.patch_embed(x)  # (B, D, h, w)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + h*w, D)
        x = self.pos_drop(x + resample_position_embedding(self.pos_embed, self.grid_size, grid))
        for block in self.blocks:
            x = block(x, grid)
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, 1 + h*w, embed_dim) -> (B, num_classes)``."""
        x = x[:, 0] if self.pool == "token" else x[:, 1:].mean(dim=1)  # (B, D)
        return self.head(self.head_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _variant(
    name: str, embed_dim: int, depth: int, heads: int, patch_size: int = 16
) -> Callable[..., VisionTransformer]:
    def build(
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        attention: AttentionSpec | None = "mhsa",
        **options: Any,
    ) -> VisionTransformer:
        return VisionTransformer(
            num_classes, in_channels=in_channels, patch_size=patch_size, embed_dim=embed_dim,
            depth=depth, heads=heads, attention=attention, **options,
        )  # fmt: skip

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"ViT with {patch_size}x{patch_size} patches, width {embed_dim}, depth {depth}, {heads} heads."
    )
    return MODELS.register(name)(build)


# The paper's ViT-B and ViT-L; tiny and small are DeiT's (Touvron et al. 2021, arXiv:2012.12877).
vit_tiny_patch16 = _variant("vit_tiny_patch16", 192, 12, 3)
vit_small_patch16 = _variant("vit_small_patch16", 384, 12, 6)
vit_base_patch16 = _variant("vit_base_patch16", 768, 12, 12)
vit_base_patch32 = _variant("vit_base_patch32", 768, 12, 12, patch_size=32)
vit_large_patch16 = _variant("vit_large_patch16", 1024, 24, 16)
