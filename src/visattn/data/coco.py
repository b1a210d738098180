"""COCO instances files: boxes and categories read with pycocotools, images from the split's
folder.

Layouts, tried in this order for a split such as ``train``:

- ``DIR/train.json`` with the images in ``DIR/train/``;
- ``DIR/annotations/instances_train*.json`` with the images in the folder named by the rest of
  the file name (``instances_train2017.json`` -> ``DIR/train2017/``).

Image ``file_name`` entries are relative to the split folder. COCO's ``bbox`` is ``[x, y, w,
h]``; it becomes ``(x, y, x + w, y + h)`` and goes through ``annotated.fit_box``. Category ids
map to labels ``0..K-1`` in increasing id order (``category_ids`` converts back); crowd
annotations (``iscrowd = 1``) are counted and kept out of the training targets, for evaluation
only. The JSON is parsed here, so that a malformed file is named with the line and column of
its fault, then indexed by pycocotools (``AnnotatedImages.coco``).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from .annotated import AnnotatedImage, AnnotatedImages, AnnotationError, ImageScan, as_boxes, fit_box
from .folder import BadFiles


def coco_files(root: Path, split: str) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of ``split`` under ``root`` (see the module's layouts)."""
    root = Path(root)
    plain = root / f"{split}.json"
    if plain.is_file() and (root / split).is_dir():
        return plain, root / split
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise AnnotationError(f"{root}: several annotation files match split '{split}' ({names}); name one")
    if found:
        folder = root / found[0].stem.removeprefix("instances_")
        if not folder.is_dir():
            raise AnnotationError(f"{found[0]}: its image folder {folder} does not exist")
        return found[0], folder
    raise AnnotationError(
        f"{root}: no COCO annotations for split '{split}': expected {split}.json with {split}/, or "
        f"annotations/instances_{split}*.json with the matching image folder"
    )


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise AnnotationError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{path}: has no '{key}' list")
    need = {"images": ("id", "file_name"), "annotations": ("id", "image_id", "category_id", "bbox"),
            "categories": ("id", "name")}  # fmt: skip
    for key, fields in need.items():
        for i, entry in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise AnnotationError(f"{path}: {key}[{i}] has no '{missing[0]}'")
    image_ids = [img["id"] for img in data["images"]]
    if len(set(image_ids)) != len(image_ids):
        raise AnnotationError(f"{path}: image ids repeat")
    known = set(image_ids)
    for ann in data["annotations"]:
        if ann["image_id"] not in known:
            raise AnnotationError(
                f"{path}: annotation {ann['id']} names image id {ann['image_id']}, not in images"
            )
        box = ann["bbox"]
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
            raise AnnotationError(
                f"{path}: annotation {ann['id']} has bbox {box!r}, not [x, y, w, h] numbers"
            )
    return data


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def read_coco(
    root: Path, split: str, *, max_bad_fraction: float = 0.0, check_images: bool = True,
    bad: BadFiles | None = None,
) -> AnnotatedImages:  # fmt: skip
    """Read ``split`` of the COCO-format data set in ``root``.

    Args:
        max_bad_fraction: the share of bad images left out and reported instead of refused
            (see ``annotated``); 0 stops at the first with one line naming it.
        check_images: check each image file's header and checksums (else only that it exists).
        bad: the report bad images are added to (shared by the splits of one data set).

    Returns:
        The split, with ``classes`` (category names by label), ``category_ids`` (the COCO id
        of each label), ``coco`` (the pycocotools index of the file) and ``counts``.
    """
    ann_file, folder = coco_files(root, split)
    coco = COCO()
    coco.dataset = _load_json(ann_file)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    cat_ids = sorted(coco.cats)
    label_of = {cid: k for k, cid in enumerate(cat_ids)}
    scan = ImageScan(ann_file, max_bad_fraction=max_bad_fraction, bad=bad, check_images=check_images)
    for img_id, img in coco.imgs.items():
        scan.total += 1
        path = folder / str(img["file_name"])
        stated = (
            (img["height"], img["width"])
            if _number(img.get("height")) and _number(img.get("width"))
            else None
        )
        problem, (height, width) = scan.image_size(path, stated)
        item = problem or _image(
            coco.imgToAnns[img_id], path, img_id, width, height, label_of, ann_file, scan
        )
        scan.take(path, item)
    items = scan.finish()
    return AnnotatedImages(
        items, [str(coco.cats[c]["name"]) for c in cat_ids], counts=scan.counts, bad=scan.bad,
        category_ids=cat_ids, source=ann_file, coco=coco,
    )  # fmt: skip


def _image(
    anns: list[dict], path: Path, img_id: int, width: int, height: int, label_of: dict[int, int],
    ann_file: Path, scan: ImageScan,
) -> AnnotatedImage | str:  # fmt: skip
    """The image's boxes, or the problem that makes it bad."""
    kept: dict[bool, list] = {False: [], True: []}  # crowd -> (box, label, area)
    empty = clipped = 0
    for ann in anns:
        if ann["category_id"] not in label_of:
            known = ", ".join(str(c) for c in label_of)
            cat = ann["category_id"]
            return f"annotation {ann['id']} in {ann_file} has category id {cat}, not one of {known}"
        x, y, w, h = (float(v) for v in ann["bbox"])
        status, box = fit_box((x, y, x + w, y + h), width, height)
        if status in ("inverted", "outside"):
            what = (
                "a negative width or height"
                if status == "inverted"
                else f"no part inside the {width}x{height} image"
            )
            return f"annotation {ann['id']} in {ann_file} has bbox {ann['bbox']} with {what}"
        if status == "empty":
            empty += 1
            continue
        clipped += status == "clipped"
        area = float(ann["area"]) if _number(ann.get("area")) else (box[2] - box[0]) * (box[3] - box[1])
        kept[bool(ann.get("iscrowd", 0))].append((box, label_of[ann["category_id"]], area))
    scan.counts["empty"] += empty
    scan.counts["clipped"] += clipped
    scan.counts["ignored"] += len(kept[True])
    part = {crowd: ([r[0] for r in rows], [r[1] for r in rows]) for crowd, rows in kept.items()}
    areas = [r[2] for r in kept[False]] + [r[2] for r in kept[True]]
    return AnnotatedImage(
        path, height, width, as_boxes(part[False][0]), np.asarray(part[False][1], dtype=np.int64),
        as_boxes(part[True][0]), np.asarray(part[True][1], dtype=np.int64),
        areas=np.asarray(areas, dtype=np.float64), image_id=img_id,
    )  # fmt: skip
