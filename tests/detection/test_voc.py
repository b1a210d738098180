"""VOC reader: XML folders with or without split lists, 1-based inclusive boxes, class names,
difficult objects, and one line naming the file for each fault or the bad image counted."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from visattn.data.annotated import AnnotationError
from visattn.data.voc import read_voc, voc_ids


def xml(filename, objects, *, size=(40, 30)):
    parts = [f"<annotation><filename>{filename}</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, box, difficult in objects:
        coords = "".join(
            f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
        )
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coords}</bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


SET = {
    "001": [("dog", (3, 4, 12, 8), 0), ("cat", (20, 10, 25, 25), 0)],
    "002": [("cat", (1, 1, 40, 30), 1), ("bird", (30, 20, 45, 35), 0)],  # difficult; partly outside
    "003": [],
}


def voc_folder(root, objects=SET, *, splits=None):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for k, (stem, objs) in enumerate(objects.items()):
        Image.new("RGB", (40, 30), (20 * k, 60, 90)).save(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(xml(f"{stem}.jpg", objs))
    if splits:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for split, stems in splits.items():
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def test_boxes_labels_classes_and_difficult(tmp_path):
    data = read_voc(voc_folder(tmp_path))
    assert data.classes == ["bird", "cat", "dog"] and data.category_ids is None and len(data) == 3
    image, target = data[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    # 1-based inclusive pixels -> continuous coordinates: xmin - 1, ymin - 1, xmax, ymax
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [19, 9, 25, 25]] and target["labels"].tolist() == [
        2,
        1,
    ]
    _, second = data[1]
    assert second["boxes"].tolist() == [[29, 19, 40, 30]] and second["labels"].tolist() == [0]  # clipped
    assert data.evaluation_target(1)["iscrowd"].tolist() == [0, 1]  # the difficult cat, for evaluation only
    assert "area" not in data.evaluation_target(1)
    assert data[2][1]["boxes"].shape == (0, 4)
    assert data.counts == {"images": 3, "boxes": 3, "ignored": 1, "clipped": 1, "bad_images": 0}


def test_split_lists_and_one_mapping_for_all_splits(tmp_path):
    root = voc_folder(tmp_path, splits={"train": ["001", "003"], "val": ["002"]})
    train, val = read_voc(root, "train"), read_voc(root, "val")
    assert [item.image_id for item in train.items] == ["001", "003"] and len(val) == 1
    assert train.classes == val.classes == ["bird", "cat", "dog"]  # from every XML file, not the split's
    assert voc_ids(root, None) == ["001", "002", "003"]
    with pytest.raises(AnnotationError, match=r"Main/test\.txt does not exist \(splits there: train, val\)"):
        read_voc(root, "test")
    fixed = read_voc(root, "val", classes=["cat", "bird", "dog", "horse"])
    assert fixed.classes == ["cat", "bird", "dog", "horse"] and fixed[0][1]["labels"].tolist() == [1]


def test_not_a_voc_folder(tmp_path):
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(AnnotationError, match="not a VOC folder, JPEGImages/ is missing"):
        read_voc(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<annotation><object>", "malformed XML (no element found: line 1, column 20)"),
        ("<notes/>", "the root element is <notes>, not <annotation>"),
        ("<annotation><object><name>cat</name></object></annotation>",
         "object 1 has no <name> or no <bndbox>"),
        ("<annotation><object><name>cat</name><bndbox><xmin>a</xmin></bndbox></object></annotation>",
         "object 1 ('cat') lacks a numeric xmin/ymin/xmax/ymax"),
    ],
)  # fmt: skip
def test_malformed_xml_gives_one_line_naming_the_file(tmp_path, text, message):
    root = voc_folder(tmp_path)
    (root / "Annotations" / "002.xml").write_text(text)
    with pytest.raises(AnnotationError) as err:
        read_voc(root)
    line = str(err.value)
    assert line.startswith(f"{root / 'Annotations' / '002.xml'}: ") and message in line and "\n" not in line


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        (
            [("cat", (12, 4, 3, 8), 0)],
            "object 1 ('cat') in {xml} has xmax < xmin or ymax < ymin: (12.0, 4.0, 3.0, 8.0)",
        ),
        ([("cat", (50, 4, 60, 8), 0)], "object 1 ('cat') in {xml} lies outside the 40x30 image: (50.0, 4.0"),
    ],
)
def test_bad_boxes_name_the_file_and_the_box(tmp_path, objects, message):
    root = voc_folder(tmp_path, {**SET, "002": objects})
    message = message.format(xml=root / "Annotations" / "002.xml")
    with pytest.raises(AnnotationError) as err:
        read_voc(root)
    assert str(err.value).startswith(f"{root / 'JPEGImages' / '002.jpg'}: ") and message in str(err.value)
    data = read_voc(root, max_bad_fraction=0.4)
    assert (
        len(data) == 2
        and data.counts["bad_images"] == 1
        and message in data.bad_files[str(root / "JPEGImages" / "002.jpg")]
    )


def test_one_pixel_box_is_kept(tmp_path):
    data = read_voc(voc_folder(tmp_path, {"001": [("cat", (5, 5, 5, 5), 0)]}))
    assert data[0][1]["boxes"].tolist() == [[4, 4, 5, 5]]


def test_unknown_class_names_the_object_and_the_file(tmp_path):
    root = voc_folder(tmp_path)
    with pytest.raises(
        AnnotationError, match=r"object 1 in .*001\.xml is a 'dog', not one of the classes cat, bird"
    ):
        read_voc(root, classes=["cat", "bird"])


def test_missing_image_and_listed_id_without_xml_are_counted(tmp_path):
    root = voc_folder(tmp_path, splits={"train": ["001", "002", "003", "004"]})
    (root / "JPEGImages" / "003.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"003\.jpg: missing image file"):
        read_voc(root, "train")
    with pytest.raises(AnnotationError, match=r"2 of 4 images are unusable, more than the allowed 25%"):
        read_voc(root, "train", max_bad_fraction=0.25)
    data = read_voc(root, "train", max_bad_fraction=0.5)
    assert len(data) == 2
    assert data.bad_files == {
        str(root / "JPEGImages" / "003.jpg"): "missing image file",
        str(root / "Annotations" / "004.xml"): "listed in the split but has no annotation file",
    }


def test_size_from_the_image_when_the_xml_has_none(tmp_path):
    root = voc_folder(tmp_path, {"001": [("cat", (30, 20, 60, 40), 0)]})
    (root / "Annotations" / "001.xml").write_text(xml("001.jpg", [("cat", (30, 20, 60, 40), 0)], size=None))
    for check in (True, False):
        data = read_voc(root, check_images=check)
        assert (data.items[0].height, data.items[0].width) == (30, 40)
        assert data[0][1]["boxes"].tolist() == [[29, 19, 40, 30]]
