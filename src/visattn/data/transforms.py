"""Training augmentation presets (torchvision.transforms.v2), seeded per sample.

Each sample's augmentation is drawn from its own seed (run seed, epoch, index), so a run
resumed in the middle of an epoch -- or spread over several processes or workers -- sees
exactly the same augmented images as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2

from .._checks import check_choice

PRESETS = ("none", "basic", "trivial")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (splitmix64 of the three numbers)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


class Augment:
    """An augmentation preset for uint8 ``(C, H, W)`` images of a fixed training size.

    Args:
        preset: ``"none"``; ``"basic"`` -- for small images (<= 64 px) a random crop after
            4-pixel zero padding, for larger ones a random resized crop; plus a horizontal
            flip where the data allows it; ``"trivial"`` -- basic followed by TrivialAugment
            (Müller & Hutter 2021, arXiv:2103.10044).
        size: ``(H, W)`` of the training images.
        flip: whether mirrored images still belong to their class (not for digits).
    """

    def __init__(self, preset: str, size: tuple[int, int], *, flip: bool) -> None:
        self.preset = check_choice("augment", preset, PRESETS)
        steps: list[v2.Transform] = []
        if preset != "none":
            if max(size) <= 64:
                steps.append(v2.RandomCrop(size, padding=4))
            else:
                steps.append(v2.RandomResizedCrop(size, antialias=True))
            if flip:
                steps.append(v2.RandomHorizontalFlip())
        if preset == "trivial":
            steps.append(v2.TrivialAugmentWide())
        self.pipeline = v2.Compose(steps) if steps else None

    def __call__(self, image: Tensor, seed: int) -> Tensor:
        """Augment one uint8 ``(C, H, W)`` image with randomness drawn from ``seed`` only."""
        if self.pipeline is None:
            return image
        # torchvision's transforms draw from the global CPU generator and take no generator of
        # their own: seed that one alone and restore it afterwards. ``torch.manual_seed`` would
        # also reseed every CUDA and MPS generator, resetting the training RNG at each sample.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.pipeline(image)
