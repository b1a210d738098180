"""Helpers shared by the mechanism tests (this folder is on the import path under pytest)."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)

#: The backend id of PyTorch's flash kernel, as ``torch._fused_sdp_choice`` (and the
#: ``sdpa_calls`` fixture) reports it.
FLASH = int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)


def perturbed(module: M, *, seed: int | None = None, scale: float = 0.2) -> M:
    """Move ``module`` away from its initialisation, in place, and return it in eval mode.

    Zero-initialised gates and unit BatchNorm statistics hide mistakes (a wrong branch that
    multiplies by exactly 1 or adds exactly 0 still passes), so every parameter gets Gaussian
    noise of std ``scale`` and every BatchNorm new running statistics. ``seed`` fixes the noise.
    """
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def assert_window_map_is(maps, hw: tuple[int, int], window: int, expected: torch.Tensor) -> None:
    """The one recorded ``"window"`` map in ``maps``, scattered back to ``(B, heads, N, N)``
    through its key index, equals ``expected`` (float64 weights of a masked full attention);
    slots outside the map (key ``-1``) carry zero weight."""
    (name,) = maps
    w, keys = maps[name], maps.keys_index(name)
    n = hw[0] * hw[1]
    B, heads = expected.shape[:2]
    assert maps.kind(name) == "window" and maps.grid(name) == hw
    assert w.shape == (B, heads, n, window) and keys.shape == (n, window)
    assert torch.all(w[..., keys < 0] == 0)
    full = torch.zeros(B, heads, n, n + 1, dtype=torch.float64)  # padding into a spare column
    full.scatter_add_(-1, torch.where(keys >= 0, keys, n).expand(B, heads, n, -1), w.double())
    torch.testing.assert_close(full[..., :n], expected, atol=1e-6, rtol=1e-5)
