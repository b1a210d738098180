"""COCO reader: both layouts, the category mapping, crowds, clipping, and one line naming the
file for each kind of fault, or the bad image skipped and counted under max_bad_fraction."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from visattn.data.annotated import AnnotationError
from visattn.data.coco import coco_files, read_coco
from visattn.data.folder import BadFiles

CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 12, "name": "bird"}]


def write_split(folder, names, *, size=(40, 30)):
    """Tiny RGB images ``size = (W, H)`` named ``names`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (10 * k, 50, 90)).save(folder / name)


def instances(annotations, *, names=("a.png", "b.png", "c.png"), size=(40, 30)):
    images = [
        {"id": 100 + k, "file_name": n, "width": size[0], "height": size[1]} for k, n in enumerate(names)
    ]
    anns = [{"id": k + 1, "iscrowd": 0, **a} for k, a in enumerate(annotations)]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


GOOD = [
    {"image_id": 100, "category_id": 3, "bbox": [2, 3, 10, 5], "area": 40.0},
    {"image_id": 100, "category_id": 12, "bbox": [20, 10, 5, 15]},
    {"image_id": 101, "category_id": 7, "bbox": [0, 0, 40, 30], "iscrowd": 1},
    {"image_id": 101, "category_id": 7, "bbox": [30, 20, 20, 20]},  # partly outside: clipped
]


def plain_layout(root, annotations=GOOD, split="train", **kw):
    data = instances(annotations, **kw)
    write_split(root / split, [img["file_name"] for img in data["images"]])
    (root / f"{split}.json").write_text(json.dumps(data))
    return root


def test_plain_layout_boxes_labels_and_mapping(tmp_path):
    data = read_coco(plain_layout(tmp_path), "train")
    assert data.classes == ["dog", "cat", "bird"] and data.category_ids == [3, 7, 12]  # by id
    assert len(data) == 3
    image, target = data[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32 and image.max() <= 1
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [20, 10, 25, 25]]  # [x, y, w, h] -> x0 y0 x1 y1
    assert target["labels"].tolist() == [0, 2] and target["labels"].dtype == torch.int64
    _, crowded = data[1]
    assert crowded["boxes"].tolist() == [[30, 20, 40, 30]] and crowded["labels"].tolist() == [1]
    _, empty = data[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert data.counts == {"images": 3, "boxes": 3, "ignored": 1, "clipped": 1, "empty": 0, "bad_images": 0}
    # the crowd comes back for evaluation, with the file's areas
    ev = data.evaluation_target(1)
    assert ev["iscrowd"].tolist() == [0, 1] and ev["area"].tolist() == [100.0, 1200.0]
    assert data.evaluation_target(0)["area"].tolist() == [40.0, 75.0]
    assert [data.category_ids[k] for k in target["labels"].tolist()] == [3, 12]
    assert data.coco.getCatIds() == [7, 3, 12]  # the pycocotools index of the file


def test_standard_layout_finds_the_year_folders(tmp_path):
    data = instances(GOOD)
    write_split(tmp_path / "val2017", [img["file_name"] for img in data["images"]])
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    assert coco_files(tmp_path, "val") == (
        tmp_path / "annotations" / "instances_val2017.json",
        tmp_path / "val2017",
    )
    assert len(read_coco(tmp_path, "val")) == 3
    (tmp_path / "annotations" / "instances_val2014.json").write_text("{}")
    with pytest.raises(AnnotationError, match="several annotation files match split 'val'"):
        coco_files(tmp_path, "val")
    assert coco_files(tmp_path, "val2017")[1] == tmp_path / "val2017"


def test_missing_layouts_are_named(tmp_path):
    with pytest.raises(AnnotationError, match="no COCO annotations for split 'train'"):
        read_coco(tmp_path, "train")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text("{}")
    with pytest.raises(AnnotationError, match=r"its image folder .*train2017 does not exist"):
        read_coco(tmp_path, "train")


ONE_IMAGE = '{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [%s], "categories": []}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"images": [', "not valid JSON (Expecting value at line 1, column 13)"),
        ("[1, 2]", "expected a JSON object"),
        ('{"images": [], "annotations": []}', "has no 'categories' list"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "images[0] has no 'file_name'"),
        (ONE_IMAGE % '{"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}',
         "annotation 5 names image id 2, not in images"),
        (ONE_IMAGE % '{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}',
         "annotation 5 has bbox [0, 0, 1], not [x, y, w, h]"),
    ],
)  # fmt: skip
def test_malformed_json_gives_one_line_naming_the_file(tmp_path, text, message):
    (tmp_path / "train").mkdir()
    (tmp_path / "train.json").write_text(text)
    with pytest.raises(AnnotationError) as err:
        read_coco(tmp_path, "train")
    line = str(err.value)
    assert line.startswith(f"{tmp_path / 'train.json'}: ") and message in line and "\n" not in line


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (
            {"image_id": 101, "category_id": 3, "bbox": [5, 5, -2, 4]},
            "bbox [5, 5, -2, 4] with a negative width",
        ),
        ({"image_id": 101, "category_id": 3, "bbox": [50, 5, 4, 4]}, "with no part inside the 40x30 image"),
        (
            {"image_id": 101, "category_id": 99, "bbox": [5, 5, 4, 4]},
            "has category id 99, not one of 3, 7, 12",
        ),
    ],
)
def test_bad_annotations_name_the_image_the_file_and_the_box(tmp_path, annotation, message):
    root = plain_layout(tmp_path, [*GOOD, annotation])
    with pytest.raises(AnnotationError) as err:
        read_coco(root, "train")
    line = str(err.value)
    assert (
        line.startswith(f"{root / 'train' / 'b.png'}: annotation 5 in {root / 'train.json'}")
        and message in line
    )
    # allowed a bad fraction, the read skips that image whole and reports it
    data = read_coco(root, "train", max_bad_fraction=0.5)
    assert len(data) == 2 and data.counts["bad_images"] == 1
    assert (
        list(data.bad_files) == [str(root / "train" / "b.png")]
        and message in data.bad_files[str(root / "train" / "b.png")]
    )


def test_missing_and_broken_images_skipped_and_counted(tmp_path):
    root = plain_layout(tmp_path)
    (root / "train" / "c.png").unlink()
    with pytest.raises(AnnotationError, match=r"c\.png: missing image file"):
        read_coco(root, "train")
    (root / "train" / "b.png").write_bytes(b"not an image")
    with pytest.raises(AnnotationError, match=r"2 of 3 images are unusable, more than the allowed 50%"):
        read_coco(root, "train", max_bad_fraction=0.5)
    bad = BadFiles()
    data = read_coco(root, "train", max_bad_fraction=0.7, bad=bad)
    assert len(data) == 1 and data.counts["bad_images"] == 2 and data.bad_files is bad.reasons
    assert bad.reasons[str(root / "train" / "c.png")] == "missing image file"
    assert bad.reasons[str(root / "train" / "b.png")] == "not an image"


def test_size_in_the_json_is_checked_against_the_file(tmp_path):
    root = plain_layout(tmp_path, size=(40, 30))
    write_split(root / "train", ["a.png"], size=(20, 30))
    with pytest.raises(AnnotationError, match=r"a\.png: the annotation gives 40x30 but the image is 20x30"):
        read_coco(root, "train")
    # without the check, only existence is verified and the stated size is used
    assert len(read_coco(root, "train", check_images=False)) == 3


def test_zero_size_boxes_are_left_out_and_counted(tmp_path):
    root = plain_layout(tmp_path, [*GOOD, {"image_id": 102, "category_id": 3, "bbox": [5, 5, 0, 4]}])
    data = read_coco(root, "train")
    assert data.counts["empty"] == 1 and data[2][1]["boxes"].shape == (0, 4)


def test_file_names_are_relative_to_the_split_folder(tmp_path):
    root = plain_layout(tmp_path, GOOD[:1], names=("sub/a.png", "b.png", "c.png"))
    data = read_coco(root, "train")
    assert data.items[0].path == root / "train" / "sub" / "a.png"


def test_an_image_that_breaks_later_is_replaced_with_its_own_target(tmp_path, caplog):
    data = read_coco(plain_layout(tmp_path), "train")
    (tmp_path / "train" / "a.png").write_bytes(b"gone")
    image, target = data[0]  # image 1 instead, with image 1's boxes
    assert torch.equal(target["boxes"], data.target(1)["boxes"]) and image.shape == (3, 30, 40)
    assert "failed to decode" in data.bad_files[str(tmp_path / "train" / "a.png")]
