"""Timing, peak memory and the machine's matrix-multiply rate: what every benchmark measures.

Timing is the wall clock of whole calls (CUDA is synchronised around each call). Separate
runs of the same code on a small shared machine drift by up to 40 %, so variants are timed
interleaved in one process -- A B, B A, A B ... after a warm-up -- and two variants are
compared by the median of their per-repeat ratios (``paired_ratio``): both members of a
pair ran a moment apart and share the drift.

Peak memory is the largest number of bytes the call had allocated at any moment beyond what
was allocated when it started (parameters, inputs and anything kept from before are not
counted). On CUDA it comes from ``torch.cuda.max_memory_allocated``. On the CPU, PyTorch
keeps no such statistic, so the call runs under ``torch.profiler`` with
``profile_memory=True``: the CPU allocator then reports every allocation and release to the
profiler -- every tensor, including the temporaries inside kernels such as an N x N score
matrix -- and the peak is the largest running sum of those events in time order. Not seen:
memory that libraries allocate outside PyTorch's allocator (oneDNN and MKL scratch space)
and allocations made on the worker threads of a parallel region; PyTorch's attention and
matrix kernels allocate their buffers before they fork, so the N x N and N x d tensors are
all counted.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from .._checks import check_int

# The profiler serves here only as an allocation counter; its C++ tracer (kineto) would
# otherwise print start/stop lines, and on a machine without a GPU an ERROR about the device
# count, for every measurement. Read when the tracer first starts; a value the user set wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

__all__ = ["TimingStats", "interleave", "matmul_rate", "measure", "paired_ratio", "peak_memory"]


@dataclass(frozen=True)
class TimingStats:
    """Seconds per call, in the order the calls ran.

    Example:
        >>> TimingStats((0.3, 0.1, 0.2)).median
        0.2
    """

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def minimum(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range over the median: how noisy the repeats were."""
        if len(self.times) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return (q3 - q1) / self.median


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 2,
    repeats: int = 10,
    device: torch.device | str = "cpu",
) -> dict[str, TimingStats]:
    """Time several calls interleaved: ``warmup`` unrecorded rounds, then ``repeats`` rounds
    in which every function runs once, the order reversed every other round so that no
    variant always runs right after the same neighbour.

    Args:
        fns: name -> function of no arguments (its result is dropped).
        warmup: unrecorded rounds first (kernel selection, caches, lazy initialisation).
        repeats: recorded rounds; ``times[i]`` of every variant comes from round ``i``.
        device: where the functions run; CUDA is synchronised around each call.

    Example:
        >>> stats = interleave({"a": lambda: sum(range(100)), "b": lambda: sum(range(200))}, repeats=3)
        >>> len(stats["b"].times)
        3
    """
    check_int("warmup", warmup, minimum=0)
    check_int("repeats", repeats)
    if not fns:
        raise ValueError("interleave needs at least one function, got none")
    device = torch.device(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: TimingStats(tuple(t)) for name, t in times.items()}


def measure(
    fn: Callable[[], object], *, warmup: int = 2, repeats: int = 10, device: torch.device | str = "cpu"
) -> TimingStats:
    """Time one function: ``warmup`` unrecorded calls, then ``repeats`` timed calls."""
    return interleave({"fn": fn}, warmup=warmup, repeats=repeats, device=device)["fn"]


def paired_ratio(reference: TimingStats, other: TimingStats) -> float:
    """Median over rounds of ``other`` time / ``reference`` time (both from one ``interleave``).

    Example:
        >>> paired_ratio(TimingStats((1.0, 2.0, 1.0)), TimingStats((2.0, 4.0, 3.0)))
        2.0
    """
    if len(reference.times) != len(other.times):
        raise ValueError(
            "paired_ratio needs timings of the same rounds, "
            f"got {len(reference.times)} and {len(other.times)} times"
        )
    return statistics.median(o / r for r, o in zip(reference.times, other.times, strict=True))


def peak_memory(fn: Callable[[], object], *, device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before it.

    Run it on its own, not inside a timing: on the CPU the profiler slows every operation.
    The result of ``fn`` counts while it is alive; let ``fn`` return ``None`` to count only
    its working memory.

    Example:
        >>> peak_memory(lambda: torch.empty(1000, 250))
        1000000
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - start)
    if device.type != "cpu":
        raise ValueError(f"device must be a CPU or CUDA device, got {device}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # "[memory]" events carry +bytes on allocation and -bytes on release; releases of blocks
    # allocated before the profile started are not reported, so the sum starts at zero.
    host = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() in host
    ]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def matmul_rate(
    size: int = 2048,
    *,
    warmup: int = 2,
    repeats: int = 10,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """The machine's dense matrix-multiply rate in GFLOP/s: ``size x size @ size x size``
    (``2 size³`` FLOPs) into a preallocated output, median of ``repeats`` calls.

    Example:
        >>> matmul_rate(256, repeats=3) > 0
        True
    """
    check_int("size", size)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    stats = measure(lambda: torch.mm(a, b, out=out), warmup=warmup, repeats=repeats, device=device)
    return 2 * size**3 / stats.median / 1e9
