"""Image folders train at a size read off their images unless one is asked for."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visattn.data import load_dataset
from visattn.data.image_size import MAX_SIDE, resolve_image_size


def write_images(folder, sizes, seed=0):
    """One RGB PNG of each ``(H, W)`` in ``folder``; returns their pixels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    pixels = []
    for n, (h, w) in enumerate(sizes):
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{n}.png")
        pixels.append(array)
    return pixels


def test_a_folder_of_one_size_trains_at_that_size_on_its_own_pixels(tmp_path):
    write_images(tmp_path / "train" / "cat", [(32, 32)] * 4)
    write_images(tmp_path / "train" / "dog", [(32, 32)] * 4, seed=1)
    (shown,) = write_images(tmp_path / "val" / "cat", [(32, 32)], seed=2)
    write_images(tmp_path / "val" / "dog", [(32, 32)], seed=3)
    bundle = load_dataset("imagefolder", data_dir=tmp_path, image_size=None)
    assert bundle.input_size == bundle.image_size == (32, 32)
    assert bundle.size_note == "32x32: every image has this size"
    x, y = bundle.test.__getitems__([0])
    mean, std = (np.array(s).reshape(3, 1, 1) for s in bundle.stats)
    restored = (x[0].numpy() * std + mean) * 255  # (3, 32, 32): the file's pixels, not resampled
    np.testing.assert_allclose(restored, shown.transpose(2, 0, 1), atol=1e-3)
    assert y.tolist() == [0]


def test_a_mixed_folder_trains_at_the_median_shorter_side_of_its_training_images(tmp_path):
    write_images(tmp_path / "train" / "a", [(20, 30), (40, 40), (24, 50)])
    write_images(tmp_path / "train" / "b", [(36, 36), (30, 64)])
    write_images(tmp_path / "val" / "a", [(100, 100)])  # not a training image: not counted
    write_images(tmp_path / "val" / "b", [(100, 90)])
    bundle = load_dataset("imagefolder", data_dir=tmp_path)  # image_size defaults to None
    # shorter sides 20, 40, 24, 36, 30: the median is 30
    assert bundle.input_size == bundle.image_size == (30, 30)
    assert bundle.size_note == "30x30: median shorter side of 5 images (sizes vary)"
    x, _ = bundle.train.__getitems__([0, 1, 2, 3, 4])
    assert tuple(x.shape) == (5, 3, 30, 30)
    fixed = load_dataset("imagefolder", data_dir=tmp_path, image_size=16)
    assert fixed.input_size == fixed.image_size == (16, 16)
    assert fixed.size_note == "16x16: set by image_size"


def test_the_rule_caps_large_images_and_even_counts():
    assert resolve_image_size([(600, 800)] * 3, requested=None) == (
        (MAX_SIDE, MAX_SIDE),
        f"{MAX_SIDE}x{MAX_SIDE}: every image is 600x800, capped at {MAX_SIDE}",
    )
    assert resolve_image_size([(480, 640), (1000, 300), (200, 260)], requested=None) == (
        (224, 224),
        "224x224: median shorter side of 3 images (sizes vary), capped at 224",
    )
    assert resolve_image_size([(28, 40), (40, 28), (30, 30), (64, 32)], requested=None)[0] == (29, 29)
    uniform = resolve_image_size([(48, 64)] * 2, requested=None)
    assert uniform == ((48, 64), "48x64: every image has this size")
    with pytest.raises(ValueError, match="no training images"):
        resolve_image_size([], requested=None)


def test_a_bad_size_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="image_size must be an integer >= 1, got 0"):
        load_dataset("imagefolder", data_dir=tmp_path, image_size=0)
