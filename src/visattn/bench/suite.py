"""The attention benchmark: every mechanism, at every size, next to its baselines.

For each mechanism and square size, our module and its baselines (``baselines.BASELINES``)
are built at the same shapes and measured in one process:

- forward time: evaluation mode under ``torch.no_grad``, all variants interleaved;
- forward + backward time: training mode, the gradients of the input and of every parameter
  (``torch.autograd.grad``, so nothing accumulates between calls), interleaved the same way;
- peak memory of one forward and of one forward + backward (``measure.peak_memory``), each
  beyond the parameters and inputs;
- forward FLOPs with ``visattn.flops.count_flops`` (matrix products and convolutions, the
  fused attention kernel included; element-wise work is not counted), the rate this gives at
  the median forward time, and that rate over the machine's fp32 matmul rate.

A baseline's ``fwd_ratio`` / ``fwdbwd_ratio`` is the median over rounds of its time over our
module's time in the same round: above 1, visattn is faster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..attention import create_attention
from ..flops import count_flops
from ..registry import ATTENTION
from .baselines import BASELINES, TIMM_NOTES, timm_missing
from .measures import interleave, matmul_rate, paired_ratio, peak_memory

__all__ = ["Row", "run_attention_suite"]

log = logging.getLogger(__name__)
NAN = math.nan
MIB = 2**20


@dataclass(frozen=True)
class Row:
    """One mechanism x size x variant; times in ms, memory in MiB, NaN where not measured."""

    name: str
    variant: str
    B: int
    C: int
    H: int
    W: int
    N: int
    fwd_ms: float = NAN
    fwdbwd_ms: float = NAN
    peak_mib: float = NAN
    peak_fwdbwd_mib: float = NAN
    gflop: float = NAN
    gflops_per_s: float = NAN
    fraction_of_matmul: float = NAN
    fwd_ratio: float = NAN
    fwdbwd_ratio: float = NAN
    note: str = ""


def _forward_call(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad():
            module(x)

    return call


def _train_call(module: nn.Module, x: Tensor, grad: Tensor) -> Callable[[], None]:
    params = [p for p in module.parameters() if p.requires_grad]

    def call() -> None:
        leaf = x.detach().requires_grad_()  # the input's gradient is part of a training step
        torch.autograd.grad(module(leaf), [leaf, *params], grad, allow_unused=True)

    return call


def run_attention_suite(
    names: Sequence[str] | None = None,
    sizes: Sequence[int] = (8, 16, 32, 64),
    *,
    channels: int = 64,
    batch: int = 8,
    backward: bool = True,
    warmup: int = 2,
    repeats: int = 10,
    baselines: bool = True,
    device: torch.device | str = "cpu",
    matmul_gflops: float | None = None,
) -> list[Row]:
    """Measure registered mechanisms at ``(batch, channels, s, s)`` for each size ``s``.

    Args:
        names: registered mechanism names (``KeyError`` lists the valid ones); all when ``None``.
        sizes: sides of the square input maps; N = side².
        channels: C of the input.
        batch: B of the input.
        backward: also time and measure forward + backward.
        warmup: unrecorded interleaved rounds before each timing.
        repeats: recorded rounds; the times reported are their medians.
        baselines: add the naive and timm variants where ``BASELINES`` has them.
        device: where everything runs (CPU or CUDA).
        matmul_gflops: the machine's fp32 matmul rate; measured here (``matmul_rate``) when ``None``.

    Returns:
        Rows in order: mechanism, size, then our module followed by its baselines.

    Example:
        >>> rows = run_attention_suite(["se"], [8], batch=2, repeats=3, matmul_gflops=100.0)
        >>> [r.variant for r in rows]
        ['visattn', 'timm']
    """
    names = ATTENTION.names() if names is None else list(names)
    for name in names:
        ATTENTION.get(name)  # an unknown name raises KeyError listing the valid ones, before any work
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of integers >= 1, got {list(sizes)!r}")
    check_int("channels", channels)
    check_int("batch", batch)
    device = torch.device(device)
    rate = matmul_rate(device=device) if matmul_gflops is None else matmul_gflops
    if not rate > 0:
        raise ValueError(f"matmul_gflops must be positive, got {matmul_gflops!r}")
    rows: list[Row] = []
    no_timm = timm_missing()
    for name in names:
        for size in sizes:
            ours = create_attention(name, channels)
            variants: dict[str, nn.Module | str] = {"visattn": ours}
            for variant, build in (BASELINES.get(name, {}) if baselines else {}).items():
                skip = no_timm if variant == "timm" else None
                variants[variant] = skip or build(ours, size, batch)
            x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(size))
            case = _measure_case(name, variants, x.to(device), backward, warmup, repeats, device, rate)
            times = ", ".join(f"{r.variant} {r.fwd_ms:.3g} / {r.fwdbwd_ms:.3g} ms" for r in case)
            log.info("%s at %dx%d, forward / forward + backward: %s", name, size, size, times)
            rows += case
    return rows


def _measure_case(
    name: str,
    variants: dict[str, nn.Module | str],
    x: Tensor,
    backward: bool,
    warmup: int,
    repeats: int,
    device: torch.device,
    rate: float,
) -> list[Row]:
    B, C, H, W = x.shape
    ready = {v: m.to(device) for v, m in variants.items() if isinstance(m, nn.Module)}
    for module in ready.values():
        module.eval()
    calls = {v: _forward_call(m, x) for v, m in ready.items()}
    fwd = interleave(calls, warmup=warmup, repeats=repeats, device=device)
    peak = {v: peak_memory(call, device=device) for v, call in calls.items()}
    flops = {v: count_flops(m, x) for v, m in ready.items()}
    fwdbwd, peak_bwd = {}, {}
    if backward:
        for module in ready.values():
            module.train()
        grad = torch.randn_like(x)
        calls = {v: _train_call(m, x, grad) for v, m in ready.items()}
        fwdbwd = interleave(calls, warmup=warmup, repeats=repeats, device=device)
        peak_bwd = {v: peak_memory(call, device=device) for v, call in calls.items()}
    rows = []
    for variant, module in variants.items():
        note = TIMM_NOTES.get(name, "") if variant == "timm" else ""
        if isinstance(module, str):
            rows.append(Row(name, variant, B, C, H, W, H * W, note=module))
            continue
        seconds = fwd[variant].median
        gflop = flops[variant] / 1e9
        rows.append(
            Row(
                name,
                variant,
                B,
                C,
                H,
                W,
                H * W,
                fwd_ms=seconds * 1e3,
                fwdbwd_ms=fwdbwd[variant].median * 1e3 if backward else NAN,
                peak_mib=peak[variant] / MIB,
                peak_fwdbwd_mib=peak_bwd[variant] / MIB if backward else NAN,
                gflop=gflop,
                gflops_per_s=gflop / seconds,
                fraction_of_matmul=gflop / seconds / rate,
                fwd_ratio=NAN if variant == "visattn" else paired_ratio(fwd["visattn"], fwd[variant]),
                fwdbwd_ratio=(
                    paired_ratio(fwdbwd["visattn"], fwdbwd[variant])
                    if backward and variant != "visattn"
                    else NAN
                ),
                note=note,
            )
        )
    return rows
