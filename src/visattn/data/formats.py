"""Readers for the standard on-disk formats of small image data sets.

- MNIST / Fashion-MNIST IDX files (LeCun et al.; Xiao et al. 2017, arXiv:1708.07747),
  plain or gzipped.
- CIFAR-10 / CIFAR-100 in their "python version" layout (Krizhevsky 2009): pickled dicts.
  Pickle can run code, so these files are read with an unpickler that only builds plain
  containers and numpy arrays and refuses anything else.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .mnist_sample import DataUnavailableError

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally ``.gz``) as a numpy array of its stored shape."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataUnavailableError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataUnavailableError(f"{path} is truncated (IDX header)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    need = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != need:
        raise DataUnavailableError(f"{path} holds {len(raw)} bytes, its header promises {need}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError) as err:
        raise DataUnavailableError(f"cannot read {path}: {err}") from None


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_file(folder: Path, stem: str) -> Path:
    """``folder/stem`` or ``folder/stem.gz``, also one level down (e.g. ``raw/``)."""
    candidates = [folder / stem, folder / f"{stem}.gz"]
    candidates += [p / name for p in sorted(folder.iterdir()) if p.is_dir() for name in (stem, f"{stem}.gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataUnavailableError(f"{folder} holds no {stem}[.gz] (expected the standard MNIST file names)")


def read_mnist_folder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of one split of an MNIST-format folder."""
    images_name, labels_name = MNIST_FILES[split]
    images = read_idx(find_file(folder, images_name))
    labels = read_idx(find_file(folder, labels_name))
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != (len(images),):
        raise DataUnavailableError(
            f"{folder}: {split} images {images.shape} and labels {labels.shape} do not form an MNIST split"
        )
    return images, labels.astype(np.int64)


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global,
    so a crafted file cannot run code."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_plain_pickle(path: Path) -> dict:
    """A CIFAR batch file: a pickled dict of plain values, read without running code."""
    try:
        with Path(path).open("rb") as f:
            data = _PlainUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except FileNotFoundError:
        raise DataUnavailableError(f"{path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as err:
        raise DataUnavailableError(f"{path} is not a usable CIFAR batch file: {err}") from None
    if not isinstance(data, dict):
        raise DataUnavailableError(f"{path} does not hold a CIFAR batch (a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}  # fmt: skip


def read_cifar_folder(folder: Path, name: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """``({"train": (images uint8 (N, 3, 32, 32), labels), "test": ...}, class names)`` from a
    folder holding the python-version CIFAR files (or their standard sub-folder)."""
    sub, train_files, test_file, meta_file, label_key, names_key = CIFAR[name]
    root = folder / sub if (folder / sub).is_dir() else folder
    splits = {}
    for split, files in (("train", train_files), ("test", [test_file])):
        images, labels = [], []
        for file in files:
            batch = read_plain_pickle(root / file)
            try:
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels.append(np.asarray(batch[label_key], dtype=np.int64))
            except (KeyError, ValueError) as err:
                raise DataUnavailableError(f"{root / file} is not a {name} batch: {err}") from None
            images.append(data)
        splits[split] = (np.concatenate(images), np.concatenate(labels))
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in read_plain_pickle(root / meta_file)[names_key]
    ]
    return splits, names
