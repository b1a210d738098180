"""Window helpers of visattn.functional against timm, torchvision and hand-worked cases."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import get_relative_position_index as timm_relative_position_index
from timm.models.swin_transformer import window_partition as timm_window_partition
from torchvision.models.swin_transformer import ShiftedWindowAttention as TvWindowAttention

from visattn.functional import (
    grid_index,
    halo_index,
    inverse_index,
    neighborhood_index,
    relative_position_index,
    window_partition,
    window_reverse,
)


@pytest.mark.parametrize(("hw", "window"), [((14, 21), (7, 7)), ((4, 6), (2, 3)), ((3, 3), (3, 3))])
def test_window_partition_matches_timm_and_reverses(hw, window):
    x = torch.randn(2, *hw, 5)
    windows = window_partition(x, window)
    n_win = (hw[0] // window[0]) * (hw[1] // window[1])
    expected = timm_window_partition(x, window).reshape(2, n_win, window[0] * window[1], 5)
    assert torch.equal(windows, expected)
    assert torch.equal(window_reverse(windows, window, *hw), x)


def test_window_partition_order_by_hand():
    x = torch.arange(16).view(1, 4, 4, 1)
    assert window_partition(x, (2, 2))[0, :, :, 0].tolist() == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
        [8, 9, 12, 13],
        [10, 11, 14, 15],
    ]


def test_window_helpers_reject_sizes_that_do_not_tile():
    with pytest.raises(ValueError, match=r"multiples of the window \(3, 3\), got 4x6"):
        window_partition(torch.randn(1, 4, 6, 2), (3, 3))
    with pytest.raises(ValueError, match="do not tile 5x6"):
        window_reverse(torch.randn(1, 4, 9, 2), (3, 3), 5, 6)


@pytest.mark.parametrize("window", [(7, 7), (2, 3), (1, 1)])
def test_relative_position_index_matches_timm_and_torchvision(window):
    ours = relative_position_index(*window)
    assert torch.equal(ours, timm_relative_position_index(*window))
    tv = TvWindowAttention(8, list(window), [0, 0], 2)
    assert torch.equal(ours, tv.relative_position_index.view(ours.shape))


def test_halo_index_by_loop():
    length, block, halo = 11, 4, 2
    got = halo_index(length, block, halo)
    expected = [
        [p if 0 <= p < length else -1 for p in range(i * block - halo, (i + 1) * block + halo)]
        for i in range(3)
    ]
    assert got.tolist() == expected


def test_neighborhood_index_by_hand():
    index, rel = neighborhood_index(7, 3, 2)  # groups {0, 2, 4, 6} and {1, 3, 5}
    assert index.tolist() == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [1, 3, 5], [2, 4, 6]]
    assert rel[0].tolist() == [2, 3, 4] and rel[3].tolist() == [1, 2, 3] and rel[6].tolist() == [0, 1, 2]
    # Fewer positions per group than the kernel: the whole group, the rest empty.
    index, rel = neighborhood_index(3, 3, 2)
    assert index.tolist() == [[0, 2, -1], [1, -1, -1], [0, 2, -1]]
    assert rel.tolist() == [[2, 3, 2], [2, 2, 2], [1, 2, 2]]
    index, _ = neighborhood_index(2, 5)
    assert index.tolist() == [[0, 1, -1, -1, -1], [0, 1, -1, -1, -1]]


@pytest.mark.parametrize(("length", "kernel", "dilation"), [(9, 3, 1), (10, 5, 2), (11, 3, 3), (6, 7, 1)])
def test_neighborhood_index_properties(length, kernel, dilation):
    index, rel = neighborhood_index(length, kernel, dilation)
    pos = torch.arange(length)[:, None]
    filled = index >= 0
    # Every query is among its own neighbours, all neighbours share its dilation group, and the
    # relative index is the offset in steps of the dilation.
    assert torch.all((index == pos).any(-1))
    assert torch.all(((index - pos) % dilation == 0) | ~filled)
    assert torch.all((rel == (index - pos) // dilation + kernel - 1) | ~filled)
    # A group with at least `kernel` members always yields a full neighbourhood.
    group_size = (length - pos.squeeze(1) % dilation + dilation - 1) // dilation
    assert torch.equal(filled.sum(-1), group_size.clamp(max=kernel))


def test_grid_index_and_inverse_index():
    rows, cols = torch.tensor([[0, 1], [1, -1]]), torch.tensor([[2, 0, -1]])
    got = grid_index(rows, cols, 3)
    expected = [
        [r * 3 + c if r >= 0 and c >= 0 else -1 for r in row for c in col]
        for row in rows.tolist()
        for col in cols.tolist()
    ]
    assert got.tolist() == expected
    slots = torch.full((12,), -1)
    perm = torch.randperm(12)[:7]
    slots[perm] = torch.arange(7)
    assert torch.equal(slots[inverse_index(slots.view(3, 4), 7)], torch.arange(7))
