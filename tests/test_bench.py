"""The benchmark's measurement code (visattn.bench and benchmarks/attention_suite.py): the
FLOP column against a hand formula, peak memory against allocations of known size and the
N x N scores of the naive baseline, the baselines against independent implementations with
the same weights, the arithmetic from times to rows (on fixed, injected times), and the
outputs (CSV, Markdown, plots, the script end to end). No timing is asserted."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.layers import EcaModule, SEModule
from timm.layers.cbam import CbamModule
from torch import nn

from visattn.attention import ATTENTION, MultiHeadSelfAttention2d, create_attention
from visattn.attention.swin import ShiftedWindowAttention
from visattn.bench import (
    BASELINES,
    NaiveSelfAttention2d,
    Row,
    TimingStats,
    interleave,
    markdown,
    matmul_rate,
    model_markdown,
    model_suite_unavailable,
    paired_ratio,
    peak_memory,
    plot,
    run_attention_suite,
    run_model_suite,
    write_csv,
)
from visattn.bench import measures as measure_module
from visattn.bench import suite as suite_module
from visattn.bench import throughput as throughput_module
from visattn.flops import count_flops
from visattn.functional import sincos_2d
from visattn.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def quick(names, sizes, **options) -> list[Row]:
    options = {"batch": 2, "repeats": 1, "warmup": 0, "matmul_gflops": 100.0, **options}
    return run_attention_suite(names, sizes, **options)


# --- FLOPs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "size"), [(32, 8), (64, 12)])
def test_flop_column_equals_the_hand_formula_for_mhsa(channels, size):
    B, C, N = 2, channels, size * size
    # qkv 2BN*C*3C, sine position on q and k 2N*C*2C, q k^T and (attn) v 2 * 2BN*N*C, proj 2BN*C*C.
    expected = 6 * B * N * C * C + 4 * N * C * C + 4 * B * N * N * C + 2 * B * N * C * C
    rows = quick(["mhsa"], [size], channels=channels, backward=False)
    assert [r.variant for r in rows] == ["visattn", "naive"]
    for row in rows:  # the fused kernel's matmuls are counted like the naive ones
        assert row.gflop * 1e9 == pytest.approx(expected, rel=1e-12), row.variant
        assert row.gflops_per_s == pytest.approx(row.gflop / (row.fwd_ms / 1e3), rel=1e-12)
        assert row.fraction_of_matmul == pytest.approx(row.gflops_per_s / 100.0, rel=1e-12)


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "gc", "nonlocal"])
def test_timm_baseline_does_the_same_products_as_ours(name):
    """Same configuration -> the same matrix products: a wrong width or kernel would show."""
    ours = create_attention(name, 64).eval()
    theirs = BASELINES[name]["timm"](ours, 16, 2).eval()
    x = torch.randn(2, 64, 16, 16)
    assert count_flops(theirs, x) == count_flops(ours, x) > 0


def test_timm_swin_baseline_differs_only_by_projecting_the_padding():
    """timm projects the padded windows back, ours crops first: 2 B (P² - H²) C² more FLOPs."""
    ours = create_attention("swin", 32).eval()
    theirs = BASELINES["swin"]["timm"](ours, 9, 2).eval()
    x = torch.randn(2, 32, 9, 9)
    assert count_flops(theirs, x) - count_flops(ours, x) == 2 * 2 * (14**2 - 9**2) * 32 * 32


def test_timm_baselines_are_the_timm_layers_in_our_configuration():
    se = create_attention("se", 200)
    assert BASELINES["se"]["timm"](se, 8, 1).fc1.out_channels == se.hidden == 12  # 200 // 16; timm: 16
    eca = create_attention("eca", 256)
    timm_eca = BASELINES["eca"]["timm"](eca, 8, 1)
    assert isinstance(timm_eca, EcaModule) and timm_eca.conv.kernel_size[0] == eca.kernel_size == 5
    cbam = create_attention("cbam", 64, kernel_size=3)
    timm_cbam = BASELINES["cbam"]["timm"](cbam, 8, 1)
    assert isinstance(timm_cbam, CbamModule) and timm_cbam.spatial.conv.conv.kernel_size == (3, 3)
    assert isinstance(BASELINES["se"]["timm"](se, 8, 1), SEModule)
    halo = create_attention("halo", 64)
    assert BASELINES["halo"]["timm"](halo, 12, 1).startswith("skipped: timm's HaloAttn needs a multiple")


# --- baselines compute the mechanism ----------------------------------------------------------


@pytest.mark.parametrize("pos", ["sine", "none"])
def test_naive_baseline_equals_torch_multihead_attention_in_float64(pos):
    source = MultiHeadSelfAttention2d(32, heads=4, pos=pos).double().eval()
    naive = NaiveSelfAttention2d(source).double().eval()
    mha = nn.MultiheadAttention(32, 4, batch_first=True).double().eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(source.qkv.weight)
        mha.in_proj_bias.copy_(source.qkv.bias)
        mha.out_proj.weight.copy_(source.proj.weight)
        mha.out_proj.bias.copy_(source.proj.bias)
        x = torch.randn(2, 32, 5, 7, dtype=torch.float64)
        tokens = x.flatten(2).transpose(1, 2)
        enc = sincos_2d(5, 7, 32, dtype=torch.float64) if pos == "sine" else 0
        expected = tokens + mha(tokens + enc, tokens + enc, tokens, need_weights=False)[0]
        out = naive(x)
        torch.testing.assert_close(out.flatten(2).transpose(1, 2), expected, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(out, source(x), atol=1e-12, rtol=1e-10)


def test_naive_baseline_refuses_what_it_cannot_reproduce():
    with pytest.raises(ValueError, match="pos 'sine' or 'none'"):
        NaiveSelfAttention2d(MultiHeadSelfAttention2d(32, pos="conv"))


def test_timm_swin_baseline_equals_our_swin_with_the_same_weights():
    ours = ShiftedWindowAttention(32, window_size=7, heads=4).eval()
    theirs = BASELINES["swin"]["timm"](ours, 14, 2).eval()
    names = ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table"]
    with torch.no_grad():
        ours.relative_position_bias_table.normal_()  # visible: the default is tiny
        for name in names:  # timm's WindowAttention uses the same names
            theirs.attn.get_parameter(name).copy_(ours.get_parameter(name))
        x = torch.randn(2, 32, 14, 14)  # whole windows: timm's -100 mask is our -inf mask
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)
    assert theirs.shift == 3 and theirs.mask.shape == (4, 49, 49)
    with pytest.raises(ValueError, match=r"TimmShiftedWindows expects .* got \(1, 32, 15, 15\)"):
        theirs(torch.randn(1, 32, 15, 15))


# --- peak memory --------------------------------------------------------------------------------


def test_peak_memory_of_known_allocations():
    assert peak_memory(lambda: torch.empty(1000, 250)) == 1_000_000

    def free_then_allocate() -> None:
        a = torch.empty(1_000_000, dtype=torch.uint8)
        b = torch.empty(500_000, dtype=torch.uint8)
        del a
        c = torch.empty(700_000, dtype=torch.uint8)  # 1.2 MB live now, below the 1.5 MB before
        del b, c

    assert peak_memory(free_then_allocate) == 1_500_000
    held = [torch.empty(1_000_000, dtype=torch.uint8)]

    def release_older_block() -> None:
        held.pop()  # allocated before: its release must not offset what follows
        torch.empty(300_000, dtype=torch.uint8)

    assert peak_memory(release_older_block) == 300_000


def test_naive_baseline_holds_the_scores_and_the_fused_path_does_not():
    B, heads, N = 2, 4, 32 * 32
    scores = B * heads * N * N * 4  # 32 MiB of fp32
    visattn, naive = quick(["mhsa"], [32], channels=64, batch=B)
    for column in ("peak_mib", "peak_fwdbwd_mib"):
        assert getattr(naive, column) * MIB >= scores, column
        assert getattr(visattn, column) * MIB < scores / 4, column  # O(N C): a few MiB here


# --- from times to rows, on injected times ------------------------------------------------------


def test_interleave_alternates_the_order_after_warmup():
    calls: list[str] = []
    stats = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(s.times) for s in stats.values()] == [3, 3]
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        interleave({"a": lambda: None}, repeats=0)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    ours, theirs = TimingStats((1.0, 10.0, 1.0)), TimingStats((3.0, 10.0, 2.0))
    assert paired_ratio(ours, theirs) == 2.0  # rounds 3, 1, 2; the ratio of medians would be 3
    assert TimingStats((0.3, 0.1, 0.2)).median == 0.2
    with pytest.raises(ValueError, match="same rounds"):
        paired_ratio(ours, TimingStats((1.0,)))


def test_matmul_rate_is_two_n_cubed_over_the_median(monkeypatch):
    seen = {}

    def fixed(fn, **kwargs):
        fn()
        seen.update(kwargs)
        return TimingStats((0.5, 0.25, 1.0))

    monkeypatch.setattr(measure_module, "measure", fixed)
    assert matmul_rate(64, repeats=3) == pytest.approx(2 * 64**3 / 0.5 / 1e9)
    assert seen["repeats"] == 3


def test_rows_from_fixed_times(monkeypatch):
    times = {"visattn": TimingStats((0.002, 0.004, 0.002)), "naive": TimingStats((0.006, 0.004, 0.01))}
    monkeypatch.setattr(suite_module, "interleave", lambda fns, **kw: {v: times[v] for v in fns})
    visattn, naive = quick(["mhsa"], [8])
    assert visattn.fwd_ms == pytest.approx(2.0) and naive.fwd_ms == pytest.approx(6.0)
    assert math.isnan(visattn.fwd_ratio) and naive.fwd_ratio == pytest.approx(3.0)  # ratios 3, 1, 5
    assert naive.fwdbwd_ratio == pytest.approx(3.0)
    assert naive.gflops_per_s == pytest.approx(naive.gflop / 0.006)


def test_model_rows_from_fixed_times(monkeypatch):
    times = {"visattn": TimingStats((1.0, 2.0, 1.0)), "timm": TimingStats((2.0, 2.0, 3.0))}
    monkeypatch.setattr(throughput_module, "interleave", lambda fns, **kw: {v: times[v] for v in fns})
    built = []

    def build(attention: str, num_classes: int) -> nn.Module:
        built.append(attention)
        return throughput_module._timm_resnet18(attention, num_classes)

    rows = run_model_suite(["none", "se"], [(16, 4)], repeats=3, num_classes=10, build=build)
    assert built == ["none", "se"]
    assert [(r.attention, r.variant) for r in rows] == [
        ("none", "visattn"),
        ("none", "timm"),
        ("se", "visattn"),
        ("se", "timm"),
    ]
    assert [(r.infer_img_s, r.train_img_s) for r in rows] == [(4.0, 4.0), (2.0, 2.0)] * 2  # batch / median
    assert rows[1].infer_ratio == 2.0 and math.isnan(rows[0].infer_ratio)
    assert "| resnet18 | se | timm | 16 | 4 | 2 | 2 | 2 | 2 |" in model_markdown(rows)


def test_timm_resnet18_has_the_requested_attention():
    kinds = (SEModule, CbamModule, EcaModule)
    for name, kind in zip(["se", "cbam", "eca"], kinds, strict=True):
        model = throughput_module._timm_resnet18(name, 10)
        assert sum(isinstance(m, kind) for m in model.modules()) == 8, name  # one per block
    plain = throughput_module._timm_resnet18("none", 10)
    assert not any(isinstance(m, kinds) for m in plain.modules())


def test_without_timm_its_baselines_are_skipped_with_a_reason(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "timm" else find_spec(name, *a)
    )
    rows = run_attention_suite(["se"], [4], batch=2, repeats=1, warmup=0, matmul_gflops=100.0)
    assert [r.variant for r in rows] == ["visattn", "timm"]
    assert rows[0].fwd_ms > 0 and "timm is not installed" in rows[1].note
    assert "timm is not installed" in model_suite_unavailable()
    with pytest.raises(RuntimeError, match="needs timm"):
        run_model_suite(["se"], [(32, 2)], repeats=1)


def test_model_suite_runs_visattn_resnet18():
    assert model_suite_unavailable() is None
    rows = run_model_suite(["se"], [(32, 2)], repeats=1, warmup=0, num_classes=10)
    assert [r.variant for r in rows] == ["visattn", "timm"] and all(r.train_img_s > 0 for r in rows)


# --- outputs ------------------------------------------------------------------------------------


def adjacent(records: list[tuple[str, str, str]]) -> None:
    """Every baseline line follows its mechanism's visattn line (or a baseline of it)."""
    for previous, (name, variant, size) in itertools.pairwise(records):
        if variant != "visattn":
            assert previous[0] == name and previous[2] == size, (previous, name, variant)
            assert variant in BASELINES[name]


def test_csv_and_markdown_hold_every_mechanism_with_baselines_adjacent(tmp_path):
    names = ATTENTION.names()
    rows = quick(names, [8])  # batch 2: BatchNorm after pooling trains on B > 1
    expected = sum(1 + len(BASELINES.get(n, {})) for n in names)
    with write_csv(rows, tmp_path / "out" / "bench.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == expected
    assert {r["name"] for r in table} == set(names)
    assert all(float(r["fwd_ms"]) > 0 and float(r["peak_fwdbwd_mib"]) > 0 for r in table)
    adjacent([(r["name"], r["variant"], r["H"]) for r in table])
    lines = [line.split(" | ") for line in markdown(rows).splitlines()[2:]]
    assert len(lines) == expected
    adjacent([(cells[0].lstrip("| "), cells[1], cells[2]) for cells in lines])
    assert all(cells[11] != "–" for cells in lines if cells[1] != "visattn")  # the ratio is there
    for name in names:
        assert f"| {name} | visattn | 8×8 | 64 |" in markdown(rows)


def test_plot_writes_a_png_and_refuses_unknown_columns(tmp_path):
    rows = quick(["se"], [4, 8], backward=False)
    path = plot(rows, tmp_path / "p" / "time.png", metrics=("fwd_ms", "fwdbwd_ms"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="metrics must be one to three of"):
        plot(rows, tmp_path / "x.png", metrics=("gflop",))


def test_bad_arguments_name_the_option():
    with pytest.raises(ValueError, match="sizes must be"):
        run_attention_suite(["se"], [0], matmul_gflops=1.0)
    with pytest.raises(ValueError, match="batch must be an integer"):
        run_attention_suite(["se"], [8], batch=0, matmul_gflops=1.0)
    with pytest.raises(KeyError, match="valid names"):
        run_attention_suite(["nope"], [8], matmul_gflops=1.0)
    with pytest.raises(ValueError, match="settings must be"):
        run_model_suite(["se"], [(32,)], build=lambda a, n: nn.Identity())


def test_quick_script_end_to_end(tmp_path):
    """A subset of mechanisms keeps it short; size 12 makes timm's halo skip with a note."""
    command = [sys.executable, "benchmarks/attention_suite.py", "--quick", "--names", "mhsa", "halo"]
    command += ["--sizes", "8", "12", "--out-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "bench-attention.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["name"], r["variant"], r["H"]) for r in table] == [
        ("mhsa", "visattn", "8"),
        ("mhsa", "naive", "8"),
        ("mhsa", "visattn", "12"),
        ("mhsa", "naive", "12"),
        ("halo", "visattn", "8"),
        ("halo", "timm", "8"),
        ("halo", "visattn", "12"),
        ("halo", "timm", "12"),
    ]
    assert table[7]["fwd_ms"] == "" and table[7]["note"].startswith("skipped")
    assert float(table[5]["fwd_ratio"]) > 0 and table[5]["note"]  # timm's halo at 8: ratio and note
    for png in ("bench-attention-time.png", "bench-attention-memory.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    doc = (tmp_path / "benchmarks.md").read_text()
    assert "## Attention mechanisms" in doc and "## ResNet-18 with attention" in doc
    assert "--quick --names mhsa halo --sizes 8 12" in doc and "GFLOP/s" in doc
    assert "| mhsa | naive | 12×12 | 144 |" in doc
    if "resnet18" not in MODELS:
        assert "skipped: visattn.models has no 'resnet18'" in doc
