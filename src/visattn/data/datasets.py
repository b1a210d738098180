"""In-memory image data sets and the bundle of splits a training run needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .cluttered import make_cluttered
from .transforms import Augment, sample_seed

Stats = tuple[tuple[float, ...], tuple[float, ...]]
TRAIN_STREAM, TEST_STREAM = 0, 1  # first entropy word of Cluttered MNIST's train and test canvases


def channel_stats(images: np.ndarray) -> Stats:
    """Per-channel mean and std of uint8 ``(N, C, H, W)`` images, in [0, 1] units."""
    x = images.astype(np.float64) / 255.0
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8, augmented per sample and normalised batch by batch.

    Args:
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)``.
        stats: per-channel ``(mean, std)`` of the training split, in [0, 1] units.
        boxes: optional int64 ``(N, 4)`` object boxes ``(x0, y0, x1, y1)``, exclusive ends.
        augment: optional training augmentation; sample i of epoch e is augmented with
            randomness drawn from ``(seed, e, i)`` alone.
        seed: the run seed for the augmentation.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        stats: Stats,
        boxes: Tensor | None = None,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images must be uint8 (N, C, H, W) with N labels, got {images.shape}")
        self.images, self.labels, self.boxes, self.stats = images, labels, boxes, stats
        self.augment, self.seed, self.epoch = augment, seed, 0
        self._mean = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (the training loop calls this)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> normalised float32."""
        return (images.float() / 255.0 - self._mean) / self._std

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.normalize(self.images[index : index + 1])[0], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        # DataLoader hands whole batches of indices here: one gather instead of B calls.
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[idx]
        if self.augment is not None and self.augment.pipeline is not None:
            images = torch.stack(
                [
                    self.augment(img, sample_seed(self.seed, self.epoch, int(i)))
                    for img, i in zip(images, idx, strict=True)
                ]
            )
        return self.normalize(images), self.labels[idx]


class ClutteredTrainSet(ImageTensorDataset):
    """Training split of Cluttered MNIST whose canvases are made anew for every epoch: each
    digit lands at fresh positions among fresh clutter, a pure function of the run's ``seed``
    and the epoch, so runs with different seeds train on different canvases. The
    normalisation statistics are those of epoch 0.

    Args:
        digits: uint8 ``(M, 28, 28)`` training digits.
        labels: ``(M,)`` their classes.
        copies: canvases per digit and epoch.
        seed: the run seed (a non-negative int).
    """

    def __init__(self, digits: np.ndarray, labels: np.ndarray, *, copies: int, seed: int = 0) -> None:
        self.digits, self.digit_labels, self.copies = digits, labels, copies
        self.canvas_seed = seed
        images, canvas_labels = self._canvases(0)
        super().__init__(images, canvas_labels, stats=channel_stats(images.numpy()), seed=seed)

    def _canvases(self, epoch: int) -> tuple[Tensor, Tensor]:
        # TRAIN_STREAM leads the entropy, so no training canvas shares the random stream of a
        # test canvas (those start with TEST_STREAM) whatever the seed and epoch
        made = make_cluttered(
            self.digits,
            self.digit_labels,
            count=self.copies * len(self.digits),
            seed=(TRAIN_STREAM, self.canvas_seed, epoch),
        )
        return torch.from_numpy(made.images[:, None]), torch.from_numpy(made.labels)

    def set_epoch(self, epoch: int) -> None:
        """Switch to the canvases of ``epoch`` (the training loop calls this every epoch)."""
        if epoch != self.epoch:
            self.images, self.labels = self._canvases(epoch)
        super().set_epoch(epoch)


@dataclass(frozen=True)
class DataBundle:
    """Both splits of a data set and what a model trained on it must know.

    Attributes:
        input_size: ``(H, W)`` of the images the model sees.
        bad_files: path -> reason of each file left out, shared with the splits.
        image_size: the training size resolved from the ``image_size`` option (image folders;
            ``None`` for data sets whose images have one fixed size).
        size_note: one line saying how the training size was chosen, for the run's log.
    """

    name: str
    train: Dataset
    test: Dataset
    classes: list[str]
    stats: Stats
    in_channels: int
    input_size: tuple[int, int]
    bad_files: dict[str, str] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    size_note: str = ""

    @classmethod
    def in_memory(
        cls, name: str, train: ImageTensorDataset, test: ImageTensorDataset, classes: list[str]
    ) -> DataBundle:
        """A bundle whose geometry and statistics are read off in-memory training images."""
        _, c, h, w = train.images.shape
        note = f"{h}x{w}: the data set's fixed size"
        return cls(name, train, test, classes, train.stats, int(c), (int(h), int(w)), size_note=note)
