"""Pascal VOC folders: one XML file per image in ``DIR/Annotations/``, the images in
``DIR/JPEGImages/``, and optionally the ids of each split in ``DIR/ImageSets/Main/<split>.txt``.

VOC's ``bndbox`` counts pixels from 1 with both ends included (the devkit's convention), so
``(xmin, ymin, xmax, ymax)`` becomes ``(xmin - 1, ymin - 1, xmax, ymax)`` in the continuous
coordinates of ``annotated``, and then goes through ``annotated.fit_box``; ``xmax < xmin`` or
``ymax < ymin`` makes the image bad. Objects marked ``difficult`` are counted and kept out of
the training targets, for evaluation only. Class names are the caller's list, or the sorted
names found in every XML file of the folder, so that all splits share one mapping.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .annotated import AnnotatedImage, AnnotatedImages, AnnotationError, ImageScan, as_boxes, fit_box
from .folder import BadFiles

COORDS = ("xmin", "ymin", "xmax", "ymax")


def _text(node: ET.Element, tag: str) -> str | None:
    found = node.find(tag)
    return None if found is None or found.text is None else found.text.strip()


def parse_voc_xml(path: Path) -> dict:
    """``{"filename", "size" ((H, W) or None), "objects": [(name, difficult, (xmin, ymin, xmax,
    ymax)), ...]}`` of one VOC annotation file; malformed files raise one line naming them."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise AnnotationError(f"{path}: malformed XML ({err})") from None
    if root.tag != "annotation":
        raise AnnotationError(f"{path}: the root element is <{root.tag}>, not <annotation>")
    size = None
    node = root.find("size")
    if node is not None:
        try:
            w, h = int(float(_text(node, "width") or 0)), int(float(_text(node, "height") or 0))
        except ValueError:
            raise AnnotationError(f"{path}: <size> holds a width or height that is not a number") from None
        size = (h, w) if w > 0 and h > 0 else None
    objects = []
    for i, obj in enumerate(root.iter("object"), start=1):
        name, box = _text(obj, "name"), obj.find("bndbox")
        if not name or box is None:
            raise AnnotationError(f"{path}: object {i} has no <name> or no <bndbox>")
        try:
            coords = tuple(float(_text(box, c)) for c in COORDS)  # type: ignore[arg-type]
            difficult = int(float(_text(obj, "difficult") or 0))
        except (TypeError, ValueError):
            raise AnnotationError(
                f"{path}: object {i} ('{name}') lacks a numeric {'/'.join(COORDS)}"
            ) from None
        objects.append((name, difficult, coords))
    return {"filename": _text(root, "filename"), "size": size, "objects": objects}


def voc_ids(root: Path, split: str | None) -> list[str]:
    """The image ids of ``split`` from ``ImageSets/Main/<split>.txt``, or of every XML file of
    ``Annotations/`` when ``split`` is ``None``."""
    root = Path(root)
    for folder in ("Annotations", "JPEGImages"):
        if not (root / folder).is_dir():
            raise AnnotationError(f"{root}: not a VOC folder, {folder}/ is missing")
    if split is None:
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in listing.parent.glob("*.txt")) if listing.parent.is_dir() else []
        raise AnnotationError(f"{listing} does not exist (splits there: {', '.join(have) or 'none'})")
    return [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]


def read_voc(
    root: Path, split: str | None = None, *, classes: list[str] | None = None, max_bad_fraction: float = 0.0,
    check_images: bool = True, bad: BadFiles | None = None,
) -> AnnotatedImages:  # fmt: skip
    """Read ``split`` (all annotated images when ``None``) of the VOC folder ``root``.

    Args:
        classes: the class names, label ``k`` being ``classes[k]``; an object of another name
            makes its image bad. ``None``: the sorted names of all of ``Annotations/``.
        max_bad_fraction: the share of bad images left out and reported instead of refused
            (see ``annotated``); 0 stops at the first with one line naming it.
        check_images: check each image file's header and checksums (else only that it exists).
        bad: the report bad images are added to (shared by the splits of one data set).
    """
    root = Path(root)
    ids = voc_ids(root, split)
    parsed: dict[str, dict] = {}
    if classes is None:
        for xml in sorted((root / "Annotations").glob("*.xml")):
            parsed[xml.stem] = parse_voc_xml(xml)
        classes = sorted({obj[0] for p in parsed.values() for obj in p["objects"]})
    label_of = {name: k for k, name in enumerate(classes)}
    scan = ImageScan(root, max_bad_fraction=max_bad_fraction, bad=bad, check_images=check_images)
    for image_id in ids:
        scan.total += 1
        xml = root / "Annotations" / f"{image_id}.xml"
        if image_id not in parsed and not xml.is_file():
            scan.reject(xml, "listed in the split but has no annotation file")
            continue
        info = parsed.get(image_id) or parse_voc_xml(xml)
        path = root / "JPEGImages" / (info["filename"] or f"{image_id}.jpg")
        problem, (height, width) = scan.image_size(path, info["size"])
        item = problem or _image(info["objects"], path, image_id, width, height, label_of, xml, scan)
        scan.take(path, item)
    items = scan.finish()
    return AnnotatedImages(items, list(classes), counts=scan.counts, bad=scan.bad, source=root)


def _image(
    objects: list[tuple], path: Path, image_id: str, width: int, height: int, label_of: dict[str, int],
    xml: Path, scan: ImageScan,
) -> AnnotatedImage | str:  # fmt: skip
    """The image's boxes, or the problem that makes it bad."""
    kept: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}  # difficult -> boxes, labels
    clipped = 0
    for i, (name, difficult, (xmin, ymin, xmax, ymax)) in enumerate(objects, start=1):
        if name not in label_of:
            return f"object {i} in {xml} is a '{name}', not one of the classes {', '.join(label_of)}"
        if xmax < xmin or ymax < ymin:  # VOC's ends are inclusive: xmax == xmin is one pixel wide
            return f"object {i} ('{name}') in {xml} has xmax < xmin or ymax < ymin: {xmin, ymin, xmax, ymax}"
        status, box = fit_box((xmin - 1, ymin - 1, xmax, ymax), width, height)
        if status == "outside":
            where = f"outside the {width}x{height} image"
            return f"object {i} ('{name}') in {xml} lies {where}: {xmin, ymin, xmax, ymax}"
        clipped += status == "clipped"
        kept[bool(difficult)][0].append(box)
        kept[bool(difficult)][1].append(label_of[name])
    scan.counts["clipped"] += clipped
    scan.counts["ignored"] += len(kept[True][0])
    return AnnotatedImage(
        path, height, width, as_boxes(kept[False][0]), np.asarray(kept[False][1], dtype=np.int64),
        as_boxes(kept[True][0]), np.asarray(kept[True][1], dtype=np.int64), image_id=image_id,
    )  # fmt: skip
