"""Image folders: one sub-folder per class, with ``train/`` and ``val/`` (or ``test/``)
splits or a seeded split of a single tree.

Unusable files (zero bytes, not an image, a JPEG cut short, a PNG whose chunks do not check
out) are found by a scan before training, logged once each and left out; the run refuses to
start when more than ``max_bad_fraction`` of the files are bad. A file that still fails to
decode later is logged, counted and replaced by the next usable image of the split, so a
batch never changes size and resumed runs see the same data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .mnist_sample import DataUnavailableError
from .transforms import Augment, sample_seed

log = logging.getLogger(__name__)

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class BadFiles:
    """Files left out of a run, each with the reason; shared by the splits of one data set."""

    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, path: Path, reason: str) -> None:
        if str(path) not in self.reasons:
            log.warning("skipping %s: %s", path, reason)
            self.reasons[str(path)] = reason


def inspect_image(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """``(reason, None)`` when ``path`` cannot be used as an image, else ``(None, (H, W))``.
    Cheap: header and checksums (PNG), end-of-image marker (JPEG); no full decode."""
    try:
        nbytes = path.stat().st_size
        if nbytes == 0:
            return "empty file", None
        with Image.open(path) as img:
            fmt, (w, h) = img.format, img.size
            img.verify()
        if fmt == "JPEG":
            with path.open("rb") as f:
                f.seek(max(0, nbytes - 2))
                if f.read(2) != b"\xff\xd9":
                    return "truncated JPEG (no end-of-image marker)", None
    except UnidentifiedImageError:
        return "not an image", None
    except (OSError, SyntaxError, ValueError) as err:
        kind = "truncated" if "truncat" in str(err).lower() else "unreadable"
        return f"{kind} image ({err})", None
    return None, (h, w)


def check_image(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or ``None`` if it looks sound."""
    return inspect_image(path)[0]


def _class_tree(root: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {c.name: sorted(f for f in c.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
            for c in classes}  # fmt: skip


def scan_folder(
    root: Path, *, val_fraction: float, seed: int, max_bad_fraction: float, bad: BadFiles,
    sizes: list[tuple[int, int]] | None = None,
) -> tuple[dict[str, tuple[list[Path], list[int]]], list[str]]:  # fmt: skip
    """``({"train": (files, labels), "test": (files, labels)}, class names)``; the ``(H, W)``
    of every usable training image is appended to ``sizes`` when given (read while checking
    the files, at no extra cost)."""
    split_dirs = {
        "train": root / "train",
        "test": next((root / n for n in ("val", "test") if (root / n).is_dir()), None),
    }
    if split_dirs["train"].is_dir() and split_dirs["test"] is not None:
        trees = {split: _class_tree(folder) for split, folder in split_dirs.items()}
        classes = sorted(trees["train"])
        if sorted(trees["test"]) != classes:
            raise DataUnavailableError(
                f"{root}: train and {split_dirs['test'].name} hold different class folders"
            )
    else:
        tree = _class_tree(root)
        classes = sorted(tree)
        rng = np.random.default_rng(seed)
        trees = {"train": {}, "test": {}}
        for name, files in tree.items():  # stratified: the same fraction of every class
            order = rng.permutation(len(files))
            n_test = round(val_fraction * len(files))
            trees["test"][name] = [files[i] for i in sorted(order[:n_test])]
            trees["train"][name] = [files[i] for i in sorted(order[n_test:])]
    if len(classes) < 2:
        raise DataUnavailableError(f"{root} needs at least two class folders, found {len(classes)}")
    splits, total = {}, 0
    for split, tree in trees.items():
        files, labels = [], []
        for label, name in enumerate(classes):
            for f in tree.get(name, []):
                total += 1
                reason, hw = inspect_image(f)
                if reason is None:
                    files.append(f)
                    labels.append(label)
                    if sizes is not None and split == "train":
                        sizes.append(hw)
                else:
                    bad.add(f, reason)
        if not files:
            raise DataUnavailableError(f"{root}: no usable images for the {split} split")
        splits[split] = (files, labels)
    if total and len(bad.reasons) / total > max_bad_fraction:
        raise DataUnavailableError(
            f"{root}: {len(bad.reasons)} of {total} files are unusable, more than the allowed "
            f"{max_bad_fraction:.0%} (set max_bad_fraction to accept more)"
        )
    return splits, classes


class ImageFolderDataset(Dataset):
    """Decodes files on demand into uint8 RGB tensors of ``size``, then normalises.

    Training images go through ``augment`` (a random resized crop for large images);
    evaluation images are resized (shorter side to size / 0.875) and centre-cropped. An image
    that already has the training size is used as it is, so a folder of images of one size
    trains and is evaluated on its pixels unresampled.
    """

    def __init__(
        self, files: list[Path], labels: list[int], *, size: tuple[int, int],
        stats: tuple[tuple[float, ...], tuple[float, ...]], augment: Augment | None, bad: BadFiles,
        seed: int = 0,
    ) -> None:  # fmt: skip
        self.files, self.labels = files, torch.tensor(labels, dtype=torch.long)
        self.size, self.stats, self.augment, self.bad, self.seed = size, stats, augment, bad, seed
        self.epoch = 0
        self.boxes = None
        self._mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
        self._std = torch.tensor(stats[1]).view(1, -1, 1, 1)
        short = round(min(size) / 0.875)
        self._fit = v2.Compose([v2.Resize(short, antialias=True), v2.CenterCrop(size)])
        self._raw_crop = augment is not None and augment.preset != "none" and max(size) > 64

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def decode(self, index: int) -> Tensor:
        """uint8 ``(3, H, W)`` of file ``index``, or of the next usable file if it fails."""
        for step in range(len(self.files)):
            path = self.files[(index + step) % len(self.files)]
            try:
                with Image.open(path) as img:
                    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
                return torch.from_numpy(array.copy()).permute(2, 0, 1)
            except (OSError, SyntaxError, ValueError) as err:
                self.bad.add(path, f"failed to decode ({err})")
        raise DataUnavailableError("no image of the split can be decoded")

    def fit(self, raw: Tensor) -> Tensor:
        """uint8 ``(3, h, w)`` -> ``(3, *size)``: resize and centre-crop, unless it fits already."""
        return raw if tuple(raw.shape[1:]) == tuple(self.size) else self._fit(raw)

    def image(self, index: int) -> Tensor:
        raw = self.decode(index)
        if self.augment is None:
            return self.fit(raw)
        seed = sample_seed(self.seed, self.epoch, index)
        return self.augment(raw if self._raw_crop else self.fit(raw), seed)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        images = torch.stack([self.image(i) for i in indices])  # (B, 3, H, W) uint8
        x = (images.float() / 255.0 - self._mean) / self._std
        return x, self.labels[torch.as_tensor(indices, dtype=torch.long)]
