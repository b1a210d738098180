"""Every gradient comes out laid out like its parameter, the layout DDP's gradient buckets
copy without a stride mismatch ("Grad strides do not match bucket view strides")."""

from __future__ import annotations

import pytest
import torch

from visattn.data import load_dataset
from visattn.models import default_attention
from visattn.tasks import Classification, as_memory_format
from visattn.train.config import TrainConfig
from visattn.train.distributed import Dist
from visattn.train.setup import memory_format, prepare_model


def mismatched_grads(model: torch.nn.Module) -> list[tuple[str, tuple, tuple]]:
    return [
        (n, p.stride(), p.grad.stride()) for n, p in model.named_parameters() if p.grad.stride() != p.stride()
    ]


@pytest.mark.parametrize("channels_last", [False, True])
def test_default_model_grads_have_their_parameters_strides(channels_last):
    cfg = TrainConfig(dataset="mnist-sample", channels_last=channels_last)
    assert default_attention(cfg.model) == "mhsa"
    bundle = load_dataset(cfg.dataset)
    raw = bundle.train.__getitems__(list(range(8)))
    # The one-channel images are stored channel-last, (B, 1, H, W) with channel stride 1:
    # the layout that made the first convolution's weight gradient channels-last.
    assert raw[0].stride()[1] == 1
    task = Classification(bundle)
    torch.manual_seed(0)
    model, forward, _ = prepare_model(task.build_model(cfg.model, {}), cfg, Dist(), torch.device("cpu"))
    batch = task.to_device(raw, torch.device("cpu"), memory_format(cfg))
    task.training_loss(forward, batch).loss.backward()
    assert mismatched_grads(model) == []


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(2, 1, 5, 7), (1, 3, 1, 4), (3, 4, 2, 2)])
def test_as_memory_format_gives_the_strides_of_a_fresh_tensor(shape, fmt):
    fresh = torch.empty(shape, memory_format=fmt)
    for source in (torch.randn(shape), torch.randn(shape).contiguous(memory_format=torch.channels_last),
                   torch.randn(*shape[:1], *shape[2:], shape[1]).permute(0, 3, 1, 2)):  # fmt: skip
        out = as_memory_format(source, fmt)
        assert out.stride() == fresh.stride() and torch.equal(out, source)
