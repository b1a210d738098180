"""Reading single image files for prediction and explanation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

_CHANNEL_NAMES = {1: "grayscale", 2: "grayscale + alpha", 3: "RGB", 4: "RGBA"}
_MODE_FOR = {1: "L", 3: "RGB"}
_PLAIN_MODE = {
    "1": "L",
    "I": "L",
    "I;16": "L",
    "F": "L",
    "P": "RGB",
    "PA": "RGBA",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


def load_image(
    path: Path, *, channels: int, size: tuple[int, int] | None = None, convert: bool = False
) -> Tensor:
    """Read ``path`` as a uint8 ``(channels, H, W)`` tensor.

    Args:
        path: an image file PIL can read.
        channels: the channel count the model expects (1 or 3 to allow ``convert``).
        size: resize to ``(H, W)`` with bilinear filtering when given.
        convert: convert to ``channels`` (grayscale or RGB) instead of refusing an image
            with another channel count.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        reason = "not an image PIL can read" if isinstance(err, UnidentifiedImageError) else str(err)
        raise ImageError(f"{path} is not a usable image: {reason}") from None
    if img.mode in _PLAIN_MODE:  # palette, bilevel, 16-bit, CMYK ...: to L, RGB or RGBA
        target = "RGBA" if img.mode == "P" and "transparency" in img.info else _PLAIN_MODE[img.mode]
        img = img.convert(target)
    have = len(img.getbands())
    if have != channels:
        if not convert or channels not in _MODE_FOR:
            hint = " (or pass --convert)" if channels in _MODE_FOR else ""
            raise ImageError(
                f"{path} has {have} channel{'s' if have > 1 else ''} "
                f"({_CHANNEL_NAMES.get(have, img.mode)}) but the model expects {channels} "
                f"({_CHANNEL_NAMES.get(channels, '?')}); convert the image{hint}"
            )
        img = img.convert(_MODE_FOR[channels])
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (C, H, W)
