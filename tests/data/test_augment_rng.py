"""Per-sample augmentation draws its randomness from its own seed and leaves every training
generator -- CPU, CUDA, MPS -- exactly as it was."""

from __future__ import annotations

import pytest
import torch

from visattn.data import ImageTensorDataset
from visattn.data.transforms import Augment, sample_seed


@pytest.fixture
def reseeds(monkeypatch):
    """Every call that would reseed an accelerator's generators, recorded instead of run."""
    calls = []
    for module, name in [
        (torch.cuda, "manual_seed"),
        (torch.cuda, "manual_seed_all"),
        (torch.mps, "manual_seed"),
    ]:
        monkeypatch.setattr(module, name, lambda seed, n=f"{module.__name__}.{name}": calls.append((n, seed)))
    return calls


def test_a_sample_draw_reseeds_no_accelerator(reseeds):
    augment = Augment("trivial", (16, 16), flip=True)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    augment(image, sample_seed(3, 1, 7))
    assert reseeds == []
    torch.manual_seed(5)  # the spy sees a real reseed: the check above can fail
    assert ("torch.cuda.manual_seed_all", 5) in reseeds


def test_a_batch_leaves_the_cpu_generator_where_it_was(reseeds):
    images = torch.randint(0, 256, (6, 1, 12, 12), dtype=torch.uint8)
    data = ImageTensorDataset(
        images,
        torch.arange(6),
        stats=((0.5,), (0.2,)),
        augment=Augment("basic", (12, 12), flip=False),
        seed=4,
    )
    torch.manual_seed(11)
    expected = torch.rand(3)  # what the training RNG draws next without augmentation
    torch.manual_seed(11)
    reseeds.clear()
    data.__getitems__([0, 1, 2, 3])
    assert torch.equal(torch.rand(3), expected) and reseeds == []


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    augment = Augment("basic", (16, 16), flip=True)

    def batch(seed, epoch, order):
        data = ImageTensorDataset(
            images, torch.arange(5), stats=((0.5,) * 3, (0.2,) * 3), augment=augment, seed=seed
        )
        data.set_epoch(epoch)
        torch.manual_seed(len(order))  # whatever the global RNG holds does not matter
        x, _ = data.__getitems__(order)
        return dict(zip(order, x, strict=True))

    a, b = batch(0, 2, [0, 1, 2, 3, 4]), batch(0, 2, [4, 2, 0])
    for i in (0, 2, 4):  # the same sample, drawn in another batch and order
        assert torch.equal(a[i], b[i])
        # and equal to augmenting that image alone with its own seed
        alone = augment(images[i], sample_seed(0, 2, i)).float() / 255
        torch.testing.assert_close(a[i] * 0.2 + 0.5, alone)
    other_epoch, other_seed = batch(0, 3, [0, 1, 2, 3, 4]), batch(1, 2, [0, 1, 2, 3, 4])
    assert any(not torch.equal(a[i], other_epoch[i]) for i in range(5))
    assert any(not torch.equal(a[i], other_seed[i]) for i in range(5))
