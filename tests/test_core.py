"""The attention core: every kernel against a float64 autograd reference, gradients of
learnable biases and relative logits included, and each kernel rule."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from visattn import functional
from visattn.functional import Relative, attention, attention_weights, choose_kernel
from visattn.kernels import Terms

FLASH = int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)
KERNELS = ["fused", "matmul", "chunked", "explicit"]


def reference(q, k, v, *, mask=None, bias=None, rel=None, scale=None):
    """Textbook attention in float64 with plain autograd: exp(s - max) / sum, forbidden keys
    weigh 0, a row with nothing left gives zeros."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("...le,...se->...ls", q.double(), k.double()) * scale
    if bias is not None:
        s = s + bias.double()
    if rel is not None:
        rows, cols = rel
        s = s + (rows.double()[..., :, None] + cols.double()[..., None, :]).flatten(-2)
    allowed = torch.ones_like(s, dtype=torch.bool) if mask is None else mask.expand_as(s)
    s = s.masked_fill(~allowed, -1e300)
    e = torch.exp(s - s.amax(-1, keepdim=True)) * allowed
    total = e.sum(-1, keepdim=True)
    w = torch.where(total > 0, e / total.clamp_min(1e-300), torch.zeros_like(e))
    return torch.einsum("...ls,...se->...le", w, v.double()), w


def leaves(*shapes, scale=1.0):
    return [(torch.randn(*s) * scale).requires_grad_() for s in shapes]


CASES = ["plain", "bool-mask", "learnable-bias", "constant-bias", "relative", "relative+mask"]


def operands(case: str):
    """(q, k, v) of 2 x 3 heads, 12 queries, 4 x 5 = 20 keys, and the case's terms."""
    q, k, v = leaves((2, 3, 12, 8), (2, 3, 20, 8), (2, 3, 20, 6))
    extra: dict = {}
    if "mask" in case:
        mask = torch.rand(12, 20) > 0.3
        mask[3] = False  # a query with nothing to attend to
        extra["mask"] = mask
    if case == "learnable-bias":
        extra["bias"] = leaves((3, 12, 20), scale=0.5)[0]  # broadcast over the batch
    if case == "constant-bias":
        extra["bias"] = torch.randn(2, 1, 12, 20)
    if case.startswith("relative"):
        rows, cols = leaves((2, 3, 12, 4), (1, 3, 12, 5), scale=0.5)
        extra["rel"] = Relative(rows, cols)
    return q, k, v, extra


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_float64_reference_with_gradients(case, kernel, monkeypatch):
    monkeypatch.setattr(functional, "RULES", dataclasses.replace(functional.RULES, score_bytes=2000))
    q, k, v, extra = operands(case)
    out, _ = attention(q, k, v, need_weights=False, kernel=kernel, **extra)
    ref, _ = reference(q, k, v, **extra)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    inputs = [q, k, v] + [t for t in (extra.get("bias"), *(extra.get("rel") or ())) if t is not None]
    inputs = [t for t in inputs if t.requires_grad]
    ours = torch.autograd.grad(out, inputs, grad)
    theirs = torch.autograd.grad(ref, inputs, grad.double())
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.double(), b.double(), atol=5e-5, rtol=1e-4)


def test_chunked_splits_the_queries(monkeypatch):
    """With a budget of one query row's scores per slice, every slice is one query."""
    monkeypatch.setattr(functional, "RULES", dataclasses.replace(functional.RULES, score_bytes=1))
    q, k, v, extra = operands("learnable-bias")
    seen = []
    matmul = functional.kernels.matmul
    monkeypatch.setattr(functional.kernels, "matmul", lambda q, *a: seen.append(q.shape[-2]) or matmul(q, *a))
    attention(q, k, v, need_weights=False, kernel="chunked", **extra)
    assert seen == [1] * 12


def test_weights_carry_the_gradient_of_the_explicit_computation():
    q, k, v, extra = operands("learnable-bias")
    out, w = attention(q, k, v, need_weights=True, **extra)
    grad = torch.randn_like(out)
    (dw,) = torch.autograd.grad(out, w, grad, retain_graph=True)
    torch.testing.assert_close(dw, grad @ v.transpose(-2, -1))  # out = w @ v
    _, ref_w = reference(q, k, v, **extra)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-6, rtol=1e-5)
    # And through the weights to the bias: the same as autograd of the float64 reference.
    probe = torch.randn_like(w)
    (ours,) = torch.autograd.grad((w * probe).sum(), extra["bias"])
    (theirs,) = torch.autograd.grad((ref_w * probe.double()).sum(), extra["bias"])
    torch.testing.assert_close(ours.double(), theirs.double(), atol=1e-5, rtol=1e-4)


def terms_of(extra):
    return Terms(extra.get("mask"), extra.get("bias"), extra.get("rel"))


def test_rules():
    small = leaves((4, 2, 49, 16), (4, 2, 49, 16), (4, 2, 49, 16))
    big = leaves((1, 2, 1024, 16), (1, 2, 1024, 16), (1, 2, 1024, 16))
    learnable = Terms(None, leaves((2, 49, 49))[0], None)
    # Small windows run matmuls, with and without gradients; larger ones the fused kernel.
    assert choose_kernel(*small, Terms(None, None, None), 0.0) == "matmul"
    medium = leaves((2, 2, 144, 16), (2, 2, 144, 16), (2, 2, 144, 16))  # 144 * 144 > the rules
    assert choose_kernel(*medium, Terms(None, None, None), 0.0) == "fused"
    with torch.no_grad():
        assert choose_kernel(*small, Terms(None, None, None), 0.0) == "matmul"
        assert choose_kernel(*small, learnable, 0.0) == "matmul"  # no gradient wanted: constant
        assert choose_kernel(*medium, Terms(None, None, None), 0.0) == "fused"
        assert choose_kernel(*medium, Terms(None, learnable.bias.detach()[..., :1, :1], None), 0.0) == "fused"
    # Large global attention trains on the fused kernel; a learnable bias moves it off.
    assert choose_kernel(*big, Terms(None, None, None), 0.0) == "fused"
    assert choose_kernel(*big, Terms(None, leaves((2, 1024, 1024))[0], None), 0.0) == "matmul"
    # Dropout: only the fused kernel and autograd have it.
    assert choose_kernel(*small, Terms(None, None, None), 0.1) == "fused"
    assert choose_kernel(*small, learnable, 0.1) == "explicit"
    # Relative logits: matmuls with gradients and on small maps; in inference on large maps
    # folded into the fused kernel, unless they hold -inf (0 * -inf in the fold is NaN).
    side = math.ceil(functional.RULES.rel_scores**0.25) + 1  # (side * side)**2 > rel_scores
    large = leaves(*[(1, 1, side * side, 8)] * 3)
    rows, cols = leaves((1, 1, side * side, side), (1, 1, side * side, side))
    assert choose_kernel(*large, Terms(None, None, Relative(rows, cols)), 0.0) in ("matmul", "chunked")
    with torch.no_grad():
        assert choose_kernel(*large, Terms(None, None, Relative(rows, cols)), 0.0) == "fused"
        blocked = Relative(rows.clone().index_fill_(-1, torch.tensor([0]), float("-inf")), cols)
        assert choose_kernel(*large, Terms(None, None, blocked), 0.0) in ("matmul", "chunked")
    r7, c7 = leaves((4, 2, 49, 7), (4, 2, 49, 7))
    assert choose_kernel(*small, Terms(None, None, Relative(r7, c7)), 0.0) == "matmul"
    with torch.no_grad():
        assert choose_kernel(*small, Terms(None, None, Relative(r7, c7)), 0.0) == "matmul"


def test_rule_chunks_when_scores_exceed_the_budget(monkeypatch):
    q, k, v, extra = operands("learnable-bias")
    assert choose_kernel(q, k, v, terms_of(extra), 0.0) == "matmul"
    budget = 2 * 3 * 20 * 4  # one query row of scores for the whole batch
    monkeypatch.setattr(functional, "RULES", dataclasses.replace(functional.RULES, score_bytes=budget))
    assert choose_kernel(q, k, v, terms_of(extra), 0.0) == "chunked"


def test_folded_relative_logits_run_the_flash_kernel(sdpa_calls):
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
    rel = Relative(torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8))
    out, _ = attention(q, k, v, rel=rel, need_weights=False, kernel="fused")
    torch.testing.assert_close(out.double(), reference(q, k, v, rel=rel)[0], atol=2e-5, rtol=1e-5)
    assert [backend for _, backend in sdpa_calls] == [FLASH]


def test_attention_weights_for_structured_keys():
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    mask = torch.rand(3, 5, 7) > 0.4
    mask[0, 0] = False
    w = attention_weights(logits, mask=mask)
    e = torch.exp(logits) * mask
    expected = e / e.sum(-1, keepdim=True).clamp_min(1e-300)
    torch.testing.assert_close(w, expected)
    assert w[0, 0].abs().sum() == 0


def test_bad_input():
    q = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="kernel must be one of"):
        attention(q, q, q, kernel="flash")
    with pytest.raises(ValueError, match="rel needs rows"):
        attention(q, q, q, rel=Relative(torch.randn(2, 5, 2), torch.randn(2, 5, 2)))
    with pytest.raises(ValueError, match="bias must be floating point"):
        attention(q, q, q, bias=torch.ones(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="has no dropout"):
        attention(q, q, q, dropout_p=0.1, need_weights=False, kernel="matmul")
    with pytest.raises(ValueError, match="mask must be bool"):
        attention_weights(q, mask=torch.ones(5, 4))
