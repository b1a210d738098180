"""Measure what attention costs: time, peak memory, FLOPs and the share of the machine's
matmul rate, for every registered mechanism next to naive and timm baselines, and ResNet-18
throughput against timm's. ``benchmarks/attention_suite.py`` (and ``visattn bench``) drive it.

Example:
    >>> from visattn.bench import run_attention_suite, markdown
    >>> rows = run_attention_suite(["mhsa"], [8, 16], batch=2, repeats=3)
    >>> print(markdown(rows))  # doctest: +SKIP
"""

from .baselines import BASELINES, NAIVE_MAX_SCORE_BYTES, TIMM_NOTES, NaiveSelfAttention2d
from .measures import TimingStats, interleave, matmul_rate, measure, paired_ratio, peak_memory
from .report import markdown, model_markdown, plot, write_csv
from .suite import Row, run_attention_suite
from .throughput import ModelRow, model_suite_unavailable, run_model_suite

__all__ = [
    "BASELINES",
    "NAIVE_MAX_SCORE_BYTES",
    "TIMM_NOTES",
    "ModelRow",
    "NaiveSelfAttention2d",
    "Row",
    "TimingStats",
    "interleave",
    "markdown",
    "matmul_rate",
    "measure",
    "model_markdown",
    "model_suite_unavailable",
    "paired_ratio",
    "peak_memory",
    "plot",
    "run_attention_suite",
    "run_model_suite",
    "write_csv",
]
