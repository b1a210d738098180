"""The detection data sets a run can name, registered in ``DETECTION_DATASETS``:
``cluttered-mnist-detection`` (embedded), ``coco`` and ``voc`` (read from ``--data-dir``).

``load_detection_dataset(name, **options)`` takes the options of ``load_dataset``
(``DataOptions``) and returns a ``DataBundle`` whose splits yield torchvision's
``(image in [0, 1], {"boxes", "labels"})`` items. The embedded set draws new training canvases
every epoch from ``(seed, epoch)``, as Cluttered MNIST does for classification: a fixed
2,000 canvases were learned by heart (train mAP 0.80 against 0.59 on test in the first
prototype), fresh canvases are the augmentation.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..registry import Registry
from . import DataOptions, DataUnavailableError, _needs_dir, load_dataset
from .annotated import AnnotatedImages
from .coco import read_coco
from .datasets import DataBundle
from .detection import (
    DETECTION_STREAM,
    DIGITS,
    TEST_SPLIT,
    TRAIN_SPLIT,
    DetectionTensorDataset,
    _dataset,
    _grey_stats,
    make_detection_canvases,
)
from .folder import BadFiles
from .mnist_sample import load_mnist_sample, split_indices
from .voc import read_voc

log = logging.getLogger(__name__)
DETECTION_DATASETS = Registry("detection data set")
MAX_SIDE = 512  # the default working size of read data sets caps the median shorter side here

__all__ = ["DETECTION_DATASETS", "FreshCanvases", "load_detection_dataset"]


class FreshCanvases(DetectionTensorDataset):
    """Training canvases made anew for every epoch: epoch ``e`` holds canvases ``0..count-1``
    of the stream ``(2, 0, seed, e)``, so an epoch's images are a pure function of the seed and
    the epoch (exact resume), and no two epochs share a canvas."""

    def __init__(
        self,
        digits: np.ndarray,
        labels: np.ndarray,
        sample_index: np.ndarray,
        *,
        count: int,
        canvas: int,
        seed: int,
        channels: int,
    ) -> None:
        self._digits, self._labels, self._index = digits, labels, sample_index
        self._count, self._canvas, self._seed, self._channels = count, canvas, seed, channels
        self.epoch = -1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        made = make_detection_canvases(
            self._digits,
            self._labels,
            count=self._count,
            canvas=self._canvas,
            seed=(DETECTION_STREAM, TRAIN_SPLIT, self._seed, epoch),
        )
        built = _dataset(made, self._index, self._channels)
        super().__init__(
            built.images,
            built.boxes,
            built.labels,
            built.offsets,
            source=built.source,
            clutter_source=built.clutter_source,
        )
        self.epoch = epoch


def load_detection_dataset(name: str, **options: Any) -> DataBundle:
    """Build the detection data set registered as ``name`` (options: ``DataOptions``).

    Example:
        >>> bundle = load_detection_dataset("cluttered-mnist-detection")
        >>> len(bundle.train), len(bundle.test), bundle.input_size
        (2000, 500, (64, 64))
    """
    if options.get("augment") not in (None, "none"):
        raise ValueError(
            "detection data sets take no augmentation preset; augment must be 'none', "
            f"got {options['augment']!r}"
        )
    return load_dataset(name, registry=DETECTION_DATASETS, **options)


@DETECTION_DATASETS.register("cluttered-mnist-detection")
def cluttered_mnist_detection(
    opts: DataOptions, *, train_count: int = 2000, test_count: int = 500, canvas: int = 64
) -> DataBundle:
    """1-4 digits of 16-32 px on 64 x 64 canvases with clutter, from the embedded MNIST sample:
    ``train_count`` fresh training canvases an epoch from the training digits, ``test_count``
    fixed test canvases from the test digits (see ``detection.py``)."""
    images, labels = load_mnist_sample(opts.data_dir)
    tr, te = split_indices(labels)
    train = FreshCanvases(
        images[tr], labels[tr], tr, count=train_count, canvas=canvas, seed=opts.seed, channels=1
    )
    made = make_detection_canvases(
        images[te], labels[te], count=test_count, canvas=canvas, seed=(DETECTION_STREAM, TEST_SPLIT, 0)
    )
    test = _dataset(made, te, 1)
    mean, std = _grey_stats(train.images.numpy())
    return DataBundle(
        "cluttered-mnist-detection",
        train,
        test,
        DIGITS,
        ((mean,), (std,)),
        1,
        (canvas, canvas),
        size_note=f"{canvas}x{canvas}: the data set's fixed size",
    )


def _read_bundle(name: str, opts: DataOptions, train: AnnotatedImages, test: AnnotatedImages) -> DataBundle:
    if train.classes != test.classes:
        raise DataUnavailableError(
            f"{name}: the training and test splits name different classes ({len(train.classes)} and "
            f"{len(test.classes)}); give both splits the same categories"
        )
    if opts.image_size is not None:
        side, note = opts.image_size, f"{opts.image_size}: --img-size (shorter side; the detector resizes)"
    else:
        median = int(np.median([min(i.height, i.width) for i in train.items]))
        side = min(median, MAX_SIDE)
        note = f"{side}: the training images' median shorter side {median}, at most {MAX_SIDE} (--img-size)"
    longer = max(max(i.height, i.width) / min(i.height, i.width) for i in train.items)
    size = (side, round(side * min(longer, 1333 / 800)))
    stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # ImageNet's, as torchvision's detectors use
    return DataBundle(
        name,
        train,
        test,
        list(train.classes),
        stats,
        3,
        size,
        bad_files=train.bad.reasons,
        image_size=size,
        size_note=note,
    )


@DETECTION_DATASETS.register("coco")
def coco(opts: DataOptions) -> DataBundle:
    """A COCO instances data set in --data-dir (``train`` and ``val`` splits; see ``coco.py``)."""
    root = _needs_dir(opts, "coco")
    bad = BadFiles()
    train, test = (
        read_coco(root, split, max_bad_fraction=opts.max_bad_fraction, bad=bad) for split in ("train", "val")
    )
    return _read_bundle("coco", opts, train, test)


@DETECTION_DATASETS.register("voc")
def voc(opts: DataOptions) -> DataBundle:
    """A Pascal VOC folder in --data-dir: ``trainval`` (or ``train``) and ``test`` (or ``val``)
    id lists under ``ImageSets/Main`` (see ``voc.py``)."""
    root = _needs_dir(opts, "voc")
    lists = root / "ImageSets" / "Main"
    pick = [
        next((s for s in choices if (lists / f"{s}.txt").is_file()), None)
        for choices in (("trainval", "train"), ("test", "val"))
    ]
    if None in pick:
        raise DataUnavailableError(
            f"{root}: a VOC folder needs ImageSets/Main/trainval.txt (or train.txt) and test.txt (or val.txt)"
        )
    bad = BadFiles()
    train = read_voc(root, pick[0], max_bad_fraction=opts.max_bad_fraction, bad=bad)
    test = read_voc(root, pick[1], classes=train.classes, max_bad_fraction=opts.max_bad_fraction, bad=bad)
    return _read_bundle("voc", opts, train, test)
