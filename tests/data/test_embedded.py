"""The embedded MNIST sample, the split by digit and the Cluttered MNIST generator."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from visattn.data import load_dataset
from visattn.data.cluttered import ink_box, make_cluttered
from visattn.data.mnist_sample import load_mnist_sample, source_path, split_indices


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return load_mnist_sample(tmp_path_factory.mktemp("cache"))


def test_sample_matches_the_bundled_csv(sample):
    images, labels = sample
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    with gzip.open(source_path(), "rt") as f:
        first = next(f)
    row = np.array(first.strip().split(","), dtype=float)
    assert np.array_equal(images[0].ravel(), row[:-1].astype(np.uint8)) and labels[0] == row[-1]


def test_cache_is_written_and_reused(tmp_path):
    images, labels = load_mnist_sample(tmp_path)
    cached = list(tmp_path.glob("mnist_sample-*.npz"))
    assert len(cached) == 1
    again_images, again_labels = load_mnist_sample(tmp_path)
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)
    cached[0].write_bytes(b"damaged")  # a broken cache is ignored and rewritten
    repaired, _ = load_mnist_sample(tmp_path)
    assert np.array_equal(repaired, images)


def test_split_is_by_digit_and_stratified(sample):
    _, labels = sample
    train, test = split_indices(labels)
    assert len(train) == 4000 and len(test) == 1000
    assert not set(train) & set(test)
    assert np.bincount(labels[test]).tolist() == [100] * 10


def test_cluttered_is_deterministic_and_index_wise(sample):
    images, labels = sample
    a = make_cluttered(images[:50], labels[:50], count=20, seed=3)
    b = make_cluttered(images[:50], labels[:50], count=20, seed=3)
    c = make_cluttered(images[:50], labels[:50], count=10, seed=3)
    d = make_cluttered(images[:50], labels[:50], count=20, seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
    assert np.array_equal(a.images[:10], c.images)  # image i does not depend on count
    assert not np.array_equal(a.images, d.images)


def test_boxes_hold_the_digit(sample):
    images, labels = sample
    made = make_cluttered(images[:200], labels[:200], count=400, seed=0)
    assert made.images.shape == (400, 60, 60)
    for img, box, src in zip(made.images, made.boxes, made.source, strict=True):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 60 and 0 <= y0 < y1 <= 60
        digit = images[src]
        dx0, dy0, dx1, dy1 = ink_box(digit)
        assert (x1 - x0, y1 - y0) == (dx1 - dx0, dy1 - dy0)  # the box is tight
        ink = digit[dy0:dy1, dx0:dx1]
        assert np.all(img[y0:y1, x0:x1] >= ink)  # every digit pixel is drawn inside the box
    assert np.array_equal(made.labels, labels[made.source])


def test_clutter_is_present_and_comes_from_other_digits(sample):
    images, labels = sample
    made = make_cluttered(images[:100], labels[:100], count=100, seed=0)
    outside = []
    for img, (x0, y0, x1, y1) in zip(made.images, made.boxes, strict=True):
        mask = np.ones_like(img, dtype=bool)
        mask[y0:y1, x0:x1] = False
        outside.append(img[mask].astype(int).sum())
    assert np.mean(np.array(outside) > 0) > 0.9  # clutter lands outside the digit's box
    no_clutter = make_cluttered(images[:100], labels[:100], pieces=0, seed=0)
    for img, (x0, y0, x1, y1) in zip(no_clutter.images, no_clutter.boxes, strict=True):
        mask = np.ones_like(img, dtype=bool)
        mask[y0:y1, x0:x1] = False
        assert img[mask].sum() == 0


def test_cluttered_rejects_bad_options(sample):
    images, labels = sample
    with pytest.raises(ValueError, match="canvas must be an integer >= 28"):
        make_cluttered(images[:5], labels[:5], canvas=20)
    with pytest.raises(ValueError, match="piece_size"):
        make_cluttered(images[:5], labels[:5], piece_size=40)


def test_bundles(tmp_path):
    bundle = load_dataset("cluttered-mnist", data_dir=tmp_path)
    assert (len(bundle.train), len(bundle.test)) == (8000, 1000)
    assert bundle.input_size == (60, 60) and bundle.in_channels == 1 and bundle.classes[3] == "3"
    assert bundle.test.boxes.shape == (1000, 4)
    first = bundle.train.images.clone()
    bundle.train.set_epoch(1)
    assert not torch.equal(first, bundle.train.images)  # fresh canvases each epoch
    bundle.train.set_epoch(0)
    assert torch.equal(first, bundle.train.images)
    x, _y = bundle.train.__getitems__([0, 5])
    assert x.shape == (2, 1, 60, 60) and x.dtype == torch.float32
    mean, std = bundle.stats
    torch.testing.assert_close(x * std[0] + mean[0], bundle.train.images[[0, 5]].float() / 255)
    plain = load_dataset("mnist-sample", data_dir=tmp_path)
    assert plain.input_size == (28, 28) and len(plain.train) == 4000 and plain.test.boxes is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist-sample", data_dir=tmp_path / "missing")
    with pytest.raises(KeyError, match="unknown dataset 'cifar1000'"):
        load_dataset("cifar1000")
