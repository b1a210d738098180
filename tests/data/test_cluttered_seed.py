"""Cluttered MNIST: the training canvases follow the run's seed, the test canvases do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visattn.data import load_dataset
from visattn.data.cluttered import make_cluttered
from visattn.data.datasets import ClutteredTrainSet
from visattn.data.mnist_sample import load_mnist_sample, split_indices


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def digits(cache):
    images, labels = load_mnist_sample(cache)
    return images[:40], labels[:40]


def canvases(digits, seed: int, epoch: int) -> torch.Tensor:
    train = ClutteredTrainSet(*digits, copies=1, seed=seed)
    train.set_epoch(epoch)
    return train.images.clone()


def test_training_canvases_depend_on_seed_and_epoch(digits):
    drawn = {(s, e): canvases(digits, s, e) for s in (0, 1, 7) for e in (0, 1)}
    assert torch.equal(drawn[(7, 1)], canvases(digits, 7, 1))  # a pure function of both
    keys = list(drawn)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:  # seed 0 epoch 1 is not seed 1 epoch 0, and so on
            assert not torch.equal(drawn[a], drawn[b]), (a, b)
    # the digit and its label stay; only where it lands and its clutter change
    train = ClutteredTrainSet(*digits, copies=1, seed=3)
    assert train.labels.tolist() == digits[1].tolist()


def test_seed_reaches_the_training_split_and_the_test_split_stays_fixed(cache):
    zero, one = (load_dataset("cluttered-mnist", data_dir=cache, seed=s) for s in (0, 1))
    assert not torch.equal(zero.train.images, one.train.images)
    assert torch.equal(zero.train.labels, one.train.labels)
    assert torch.equal(zero.test.images, one.test.images) and torch.equal(zero.test.boxes, one.test.boxes)
    # and the test split is the set every earlier run was scored on: seed 1 of the generator
    images, labels = load_mnist_sample(cache)
    _, te = split_indices(labels)
    made = make_cluttered(images[te], labels[te], seed=1)
    assert np.array_equal(zero.test.images[:, 0].numpy(), made.images)
    assert np.array_equal(zero.test.boxes.numpy(), made.boxes)


def test_a_negative_seed_is_refused_by_name():
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        load_dataset("cluttered-mnist", seed=-1)
