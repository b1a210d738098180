"""The training size of an image folder, chosen from the images themselves.

Rule (``image_size=None``, the default):

- every image has the same size ``H x W`` and neither side exceeds ``MAX_SIDE``: train at
  ``H x W``, the images as they are -- a folder of 32x32 images trains at 32x32;
- otherwise: square images of side ``min(MAX_SIDE, median shorter side)``. The shorter side
  is what the resize-and-centre-crop of evaluation maps onto the training side, so the median
  image is the one resampled least, the larger half is shrunk, the smaller half enlarged; the cap
  keeps large photographs at the size attention models are built and measured for (the cost
  of global attention grows with the square of the positions).

An ``int`` ``image_size`` overrides the rule: square images of that side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_SIDE = 224


def resolve_image_size(
    sizes: Sequence[tuple[int, int]], *, requested: int | None
) -> tuple[tuple[int, int], str]:
    """``((H, W), note)``: the training size and one line saying how it was chosen.

    Args:
        sizes: ``(H, W)`` of the training images (read from their headers).
        requested: a side set by the user, or ``None`` for the rule above.

    Example:
        >>> resolve_image_size([(32, 32)] * 3, requested=None)
        ((32, 32), '32x32: every image has this size')
        >>> resolve_image_size([(60, 80), (100, 90), (300, 400)], requested=None)[0]
        (90, 90)
    """
    if requested is not None:
        return (requested, requested), f"{requested}x{requested}: set by image_size"
    if not sizes:
        raise ValueError("cannot choose an image size: no training images")
    distinct = set(sizes)
    if len(distinct) == 1:
        ((h, w),) = distinct
        if max(h, w) <= MAX_SIDE:
            return (h, w), f"{h}x{w}: every image has this size"
        side = min(MAX_SIDE, h, w)
        return (side, side), f"{side}x{side}: every image is {h}x{w}, capped at {MAX_SIDE}"
    median = round(float(np.median([min(h, w) for h, w in sizes])))
    side = min(MAX_SIDE, median)
    capped = f", capped at {MAX_SIDE}" if median > MAX_SIDE else ""
    return (side, side), f"{side}x{side}: median shorter side of {len(sizes):,} images (sizes vary){capped}"
