"""Gates that expose ``base * gate`` (``AttentionModule.gated``) give their forward's output and
maps, and a residual block that folds the product into its addition computes the same."""

from __future__ import annotations

import pytest
import torch

from visattn import create_model, record_attention
from visattn.attention import ATTENTION

GATED = [n for n in ATTENTION.names() if ATTENTION.get(n)(16).gated(torch.randn(1, 16, 3, 3)) is not None]


def test_the_common_gates_offer_the_product():
    assert {"se", "eca", "cbam"} <= set(GATED)


@pytest.mark.parametrize("name", GATED)
def test_gated_product_equals_forward(name):
    torch.manual_seed(0)
    module = ATTENTION.get(name)(16).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(2, 16, 9, 7)
    with record_attention(module) as direct:
        out = module(x)
    with record_attention(module) as split:
        base, gate = module.gated(x)
    torch.testing.assert_close(base * gate, out, atol=0, rtol=0)
    assert list(direct) == list(split)
    for key in direct:
        torch.testing.assert_close(direct[key], split[key], atol=0, rtol=0)


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_blocks_fold_the_gate_into_the_residual_addition(model):
    """The block's output equals relu(attention(branch) + shortcut), written out here."""
    torch.manual_seed(0)
    net = create_model(model, num_classes=4, attention="se").eval()
    block = net.layer2[0]
    x = torch.randn(2, block.conv1.in_channels, 12, 10)
    with torch.no_grad():
        out = block.relu(block.bn1(block.conv1(x)))
        if model == "resnet50":
            out = block.relu(block.bn2(block.conv2(out)))
            branch = block.bn3(block.conv3(out))
        else:
            branch = block.bn2(block.conv2(out))
        expected = torch.relu(block.attn(branch) + block.downsample(x))
        torch.testing.assert_close(block(x), expected, atol=1e-6, rtol=1e-6)
