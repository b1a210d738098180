"""Cluttered MNIST detection: seeded canvases, digits kept apart between the splits, boxes
tight around the ink, the item format and the argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from visattn.data.cluttered import ink_box
from visattn.data.detection import (
    DetectionTensorDataset,
    cluttered_mnist_detection,
    collate,
    ink_boxes,
    make_detection_canvases,
)
from visattn.data.mnist_sample import load_mnist_sample, split_indices


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def bundle(cache):
    return cluttered_mnist_detection(cache, train_count=300, test_count=100)


@pytest.fixture(scope="module")
def digits(cache):
    images, labels = load_mnist_sample(cache)
    return images[:200], labels[:200]


def test_default_sizes_and_item_format(cache):
    full = cluttered_mnist_detection(cache)
    assert (len(full.train), len(full.test)) == (2000, 500)
    assert (
        full.input_size == (64, 64) and full.in_channels == 1 and full.classes == [str(d) for d in range(10)]
    )
    image, target = full.train[0]
    assert (
        image.dtype == torch.float32 and image.shape == (1, 64, 64) and 0 <= image.min() <= image.max() <= 1
    )
    assert set(target) == {"boxes", "labels"}
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(target["boxes"])
    counts = np.diff(full.train.offsets.numpy())
    assert counts.min() >= 1 and counts.max() <= 4
    assert set(np.bincount(counts)[1:] > 400) == {True}  # one to four digits, about equally often
    for split in (full.train, full.test):
        assert split.labels.min() >= 0 and split.labels.max() <= 9
        b = split.boxes
        side = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        assert side.min() >= 16 and side.max() <= 32  # the longer side of each digit's ink
        assert b.min() >= 0 and b[:, 2:].max() <= 64


def test_same_seed_same_bytes_other_seed_other_canvases(cache, bundle):
    again = cluttered_mnist_detection(cache, train_count=300, test_count=100)
    other = cluttered_mnist_detection(cache, train_count=300, test_count=100, seed=1)
    for a, b in ((bundle.train, again.train), (bundle.test, again.test), (bundle.test, other.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.offsets, b.offsets)
    assert not torch.equal(bundle.train.images, other.train.images)
    # canvas i does not depend on how many are made
    fewer = cluttered_mnist_detection(cache, train_count=50, test_count=10)
    assert torch.equal(fewer.train.images, bundle.train.images[:50])


def test_train_and_test_canvases_use_disjoint_digits(cache, bundle):
    _, labels = load_mnist_sample(cache)
    tr, te = split_indices(labels)
    train_used = set(bundle.train.source.tolist()) | set(bundle.train.clutter_source.tolist())
    test_used = set(bundle.test.source.tolist()) | set(bundle.test.clutter_source.tolist())
    assert train_used <= set(tr.tolist()) and test_used <= set(te.tolist())
    assert not train_used & test_used
    assert torch.equal(bundle.train.labels, torch.from_numpy(labels[bundle.train.source.numpy()]))


def _expanded_apart(boxes: np.ndarray, k: int) -> bool:
    """Box k, grown by a pixel, meets no other box of the canvas."""
    x0, y0, x1, y1 = boxes[k] + (-1, -1, 1, 1)
    others = np.delete(boxes, k, axis=0)
    return bool(
        np.all((others[:, 2] <= x0) | (others[:, 0] >= x1) | (others[:, 3] <= y0) | (others[:, 1] >= y1))
    )


def test_boxes_are_tight_around_the_ink(bundle):
    checked = 0
    for split in (bundle.train, bundle.test):
        images, offsets, boxes = split.images[:, 0].numpy(), split.offsets.numpy(), split.boxes.long().numpy()
        for i in range(len(images)):
            own = boxes[offsets[i] : offsets[i + 1]]
            for k in range(len(own)):
                if not _expanded_apart(own, k):
                    continue
                x0, y0, x1, y1 = own[k]
                lx, ly = max(x0 - 1, 0), max(y0 - 1, 0)  # the box and the ring of pixels around it
                window = images[i, ly : y1 + 1, lx : x1 + 1]
                wx0, wy0, wx1, wy1 = ink_box(window)
                assert (wx0 + lx, wy0 + ly, wx1 + lx, wy1 + ly) == (x0, y0, x1, y1), (i, k)
                checked += 1
    assert checked > 250  # about a third of the digits stand apart
    # and the ink outside all boxes is clutter: some canvases have it
    img, off = bundle.train.images[:, 0].numpy().copy(), bundle.train.offsets.numpy()
    owner = np.repeat(np.arange(len(img)), np.diff(off))
    for i, (x0, y0, x1, y1) in zip(owner, bundle.train.boxes.long().numpy(), strict=True):
        img[i, y0:y1, x0:x1] = 0
    assert (img.reshape(len(img), -1).max(axis=1) > 0).mean() > 0.9


def test_digit_boxes_overlap_at_most_max_iou(digits):
    made = make_detection_canvases(*digits, count=200, max_iou=0.1, seed=5)
    from torchvision.ops import box_iou

    for i in range(200):
        b = torch.from_numpy(made.boxes[made.offsets[i] : made.offsets[i + 1]]).float()
        iou = box_iou(b, b).fill_diagonal_(0)
        assert iou.max() <= 0.1 + 1e-6


def test_options_shape_the_canvases(digits):
    made = make_detection_canvases(*digits, count=40, canvas=96, digits_per_canvas=(2, 2), sizes=(20, 24),
                                   pieces=0, seed=3)  # fmt: skip
    assert made.images.shape == (40, 96, 96)
    assert np.array_equal(np.diff(made.offsets), np.full(40, 2)) and len(made.clutter_source) == 0
    sides = np.maximum(made.boxes[:, 2] - made.boxes[:, 0], made.boxes[:, 3] - made.boxes[:, 1])
    assert sides.min() >= 20 and sides.max() <= 24
    # without clutter all ink lies in the boxes
    ink = made.images.copy()
    for i in range(40):
        for x0, y0, x1, y1 in made.boxes[made.offsets[i] : made.offsets[i + 1]]:
            ink[i, y0:y1, x0:x1] = 0
    assert ink.max() == 0


def test_ink_boxes_match_the_single_digit_rule(digits):
    images = digits[0][:50].copy()
    images[3] = 0  # a blank array keeps its whole frame
    expected = [ink_box(d) for d in images]
    assert ink_boxes(images).tolist() == [list(b) for b in expected]


def test_collate_keeps_lists(bundle):
    loader = DataLoader(bundle.train, batch_size=5, collate_fn=collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 5
    assert torch.equal(targets[2]["boxes"], bundle.train[2][1]["boxes"])


def test_three_channels_repeat_the_grey_plane(cache):
    rgb = cluttered_mnist_detection(cache, train_count=5, test_count=5, channels=3)
    image, _ = rgb.train[0]
    assert image.shape == (3, 64, 64) and torch.equal(image[0], image[2])
    assert rgb.in_channels == 3 and len(rgb.stats[0]) == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"count": -1}, "count must be an integer >= 0"),
        ({"count": 1, "sizes": (32, 16)}, "low <= high"),
        ({"count": 1, "sizes": (16, 80)}, "at most the canvas 64"),
        ({"count": 1, "digits_per_canvas": (0, 2)}, "digits_per_canvas must be an integer >= 1"),
        ({"count": 1, "max_iou": 1.5}, "max_iou must be a number in [0.0, 1.0]"),
        ({"count": 1, "piece_size": 40}, "piece_size must be at most the digit size 28"),
    ],
)
def test_bad_options_are_named(digits, options, message):
    with pytest.raises(ValueError) as err:
        make_detection_canvases(*digits, **options)
    assert message in str(err.value)


def test_dataset_checks_its_arrays():
    none, one = torch.zeros(0, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="N \\+ 1 offsets"):
        DetectionTensorDataset(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, 4), none, one)
    with pytest.raises(ValueError, match="boxes must be"):
        DetectionTensorDataset(
            torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 4), one, torch.tensor([0, 1])
        )
