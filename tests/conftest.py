"""Shared test set-up: small thread count, fixed seeds, tiny models and data made here."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Size, int]]:
    """Every call of ``F.scaled_dot_product_attention`` from here on, as (query shape, the
    backend PyTorch chooses for it): proves that a fast path really runs the flash kernel
    (``attnkit.FLASH``) rather than silently falling back to the N x N math path."""
    calls: list[tuple[torch.Size, int]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape, torch._fused_sdp_choice(q, k, v, **kw)))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


@pytest.fixture
def fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's rules with its matmul kernel off for small windows, so that a test of a
    mechanism's fused-kernel layout reaches the fused kernel at the test's small sizes."""
    import dataclasses

    from visattn import functional

    rules = dataclasses.replace(functional.RULES, infer_scores=0, train_scores=0)
    monkeypatch.setattr(functional, "RULES", rules)
