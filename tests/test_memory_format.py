"""to_memory_format: 4-D weights to channels-last, 5-D ones (Conv3d) left alone, outputs unchanged;
the scorecard's channels-last copy and channels-last training of a network with a Conv3d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visattn import create_model
from visattn.explain.scorecard import scorecard
from visattn.memory_format import to_memory_format


def test_only_the_formats_rank_changes_and_outputs_stay():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Unflatten(1, (1, 4)), nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1))
    )
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    with pytest.raises(RuntimeError, match="rank 4"):  # what the plain Module.to does with the Conv3d
        net.to(memory_format=torch.channels_last)
    to_memory_format(net, torch.channels_last)
    assert (
        net[0].weight.is_contiguous(memory_format=torch.channels_last) and not net[0].weight.is_contiguous()
    )
    assert net[2].weight.is_contiguous()
    torch.testing.assert_close(net(x), expected, atol=1e-6, rtol=1e-5)


def test_scorecard_of_a_network_with_a_lambda_layer():
    torch.manual_seed(0)
    model = create_model("attention_cnn", num_classes=3, in_channels=1, widths=(8, 8), strides=(2, 2),
                         attention="lambda").eval()  # fmt: skip
    x = torch.randn(4, 1, 16, 16)
    card = scorecard(model, x, methods=["gradcam"], steps=4)
    assert [s.method for s in card.scores] == ["gradcam", "random", "centre", "input"]


def test_strides_equal_module_to_where_it_works():
    # a one-channel weight: contiguous() would keep the size-1 dimension's old stride
    for conv in (nn.Conv2d(1, 9, 3), nn.Conv2d(3, 4, 1), nn.Linear(3, 2)):
        ours = to_memory_format(nn.Sequential(conv), torch.channels_last)[0]
        theirs = nn.Sequential(type(conv)(*_shape(conv))).to(memory_format=torch.channels_last)[0]
        assert ours.weight.stride() == theirs.weight.stride()


def _shape(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels, module.kernel_size
    return module.in_features, module.out_features
