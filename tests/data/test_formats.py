"""On-disk data formats: MNIST IDX files, CIFAR python batches (read without running code),
image folders, and the per-sample augmentation seeds."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from visattn.data import DataUnavailableError, load_dataset
from visattn.data.formats import read_idx, read_plain_pickle
from visattn.data.transforms import Augment, sample_seed


def write_idx(path, array: np.ndarray, *, compress: bool = False) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_mnist_folder(root, n_train=30, n_test=10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = (np.arange(n_train + n_test) % 10).astype(np.uint8)
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", images[:n_train])
    write_idx(root / "train-labels-idx1-ubyte", labels[:n_train])
    write_idx(root / "t10k-images-idx3-ubyte.gz", images[n_train:], compress=True)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", labels[n_train:], compress=True)
    return images, labels


def test_idx_round_trip_and_damage(tmp_path):
    images, labels = make_mnist_folder(tmp_path / "mnist")
    bundle = load_dataset("mnist", data_dir=tmp_path / "mnist")
    assert len(bundle.train) == 30 and len(bundle.test) == 10 and bundle.input_size == (28, 28)
    assert torch.equal(bundle.train.images[:, 0], torch.from_numpy(images[:30]))
    assert torch.equal(bundle.test.labels, torch.from_numpy(labels[30:].astype(np.int64)))
    expected_mean = images[:30].astype(np.float64).mean() / 255
    assert bundle.stats[0][0] == pytest.approx(expected_mean, abs=1e-6)
    fashion = load_dataset("fashion-mnist", data_dir=tmp_path / "mnist")
    assert fashion.classes[9] == "Ankle boot"
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataUnavailableError, match="its header promises"):
        read_idx(path)
    path.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DataUnavailableError, match="bad magic number"):
        read_idx(path)
    with pytest.raises(DataUnavailableError, match="pass --data-dir"):
        load_dataset("mnist")


def write_cifar10(root, per_batch=4) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, per_batch))}  # fmt: skip
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names}, f, protocol=2)


def test_cifar_folder(tmp_path):
    write_cifar10(tmp_path)
    bundle = load_dataset("cifar10", data_dir=tmp_path)
    assert len(bundle.train) == 20 and len(bundle.test) == 4
    assert bundle.classes[1] == "automobile" and bundle.in_channels == 3 and bundle.input_size == (32, 32)
    x, y = bundle.train.__getitems__([0, 1, 2])
    assert torch.equal(y, bundle.train.labels[:3])
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_pickle_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "data_batch_1"
    with bad.open("wb") as f:
        pickle.dump({"data": Payload()}, f)
    with pytest.raises(DataUnavailableError, match=r"refusing to load posix\.system"):
        read_plain_pickle(bad)
    assert not (tmp_path / "pwned").exists()


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    augment = Augment("basic", (16, 16), flip=True)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    state = torch.get_rng_state()
    a = augment(image, sample_seed(0, 1, 5))
    assert torch.equal(torch.get_rng_state(), state)  # the training RNG is left alone
    assert torch.equal(a, augment(image, sample_seed(0, 1, 5)))
    draws = {augment(image, sample_seed(0, e, 5)).sum().item() for e in range(8)}
    assert len(draws) > 1
    assert torch.equal(Augment("none", (16, 16), flip=True)(image, 3), image)
    assert len({sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}) == 27
    with pytest.raises(ValueError, match="augment must be one of 'none', 'basic', 'trivial'"):
        Augment("heavy", (16, 16), flip=True)


def test_cluttered_refuses_extra_augmentation():
    with pytest.raises(ValueError, match="augment must be 'none'"):
        load_dataset("cluttered-mnist", augment="basic")
