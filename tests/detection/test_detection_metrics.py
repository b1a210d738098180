"""detection_map against COCOeval run directly on the same boxes, and its refusals."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visattn.data.detection_metrics import SUMMARY, detection_map

CLASSES = ["zero", "one", "two", "three", "four"]  # "four" never occurs


def random_set(seed: int = 0, images: int = 14):
    """Ground truth and predictions on 300 x 300 images: jittered copies of the objects, misses,
    false alarms and wrong classes; image 0 has no prediction, image 1 no ground truth, one
    crowd region. Coordinates on a quarter-pixel grid, exact in float32 as in float64."""
    rng = np.random.default_rng(seed)
    quarter = lambda a: np.round(np.asarray(a) * 4) / 4  # noqa: E731
    preds, targets = [], []
    for i in range(images):
        n = 0 if i == 1 else int(rng.integers(1, 6))
        xy = rng.uniform(0, 150, (n, 2))
        wh = rng.uniform(8, 140, (n, 2))  # small, medium and large objects
        gt = quarter(np.concatenate([xy, xy + wh], axis=1))
        labels = rng.integers(0, 4, n)
        target = {"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.tensor(labels)}
        if i == 2:
            target["iscrowd"] = torch.tensor([1] + [0] * (n - 1))
        if i == 3:
            target["area"] = torch.tensor(quarter(rng.uniform(10, 5000, n)), dtype=torch.float32)
        targets.append(target)
        keep = rng.random(n) < 0.8
        boxes = quarter(gt[keep] + rng.normal(0, 6, (int(keep.sum()), 4)))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        plabels = labels[keep].copy()
        plabels[rng.random(len(plabels)) < 0.15] = rng.integers(0, 4)
        extra = int(rng.integers(0, 3))
        exy = rng.uniform(0, 200, (extra, 2))
        boxes = np.concatenate(
            [boxes, quarter(np.concatenate([exy, exy + rng.uniform(5, 90, (extra, 2))], 1))]
        )
        plabels = np.concatenate([plabels, rng.integers(0, 4, extra)])
        if i == 0:
            boxes, plabels = boxes[:0], plabels[:0]
        scores = np.round(rng.uniform(0.05, 1, len(plabels)), 4)
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores,
                      dtype=torch.float32), "labels": torch.tensor(plabels)})  # fmt: skip
    return preds, targets


def coco_reference(preds, targets):
    """COCOeval's twelve stats and the AP of each class, from pycocotools alone."""
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        images.append({"id": i, "width": 300, "height": 300})
        crowd = t.get("iscrowd", torch.zeros(len(t["labels"]), dtype=torch.long))
        for k, (box, label) in enumerate(
            zip(t["boxes"].double().tolist(), t["labels"].tolist(), strict=True)
        ):
            w, h = box[2] - box[0], box[3] - box[1]
            area = float(t["area"][k]) if "area" in t else w * h
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": label,
                         "bbox": [box[0], box[1], w, h], "area": area, "iscrowd": int(crowd[k])})  # fmt: skip
        for box, label, score in zip(p["boxes"].double().tolist(), p["labels"].tolist(), p["scores"].tolist(),
                                     strict=True):  # fmt: skip
            dets.append({"image_id": i, "category_id": label, "score": score,
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})  # fmt: skip
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k, "name": n} for k, n in enumerate(CLASSES)]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = list(ev.stats)
        per_class = {}
        for k in range(len(CLASSES)):
            ev.params.catIds = [k]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            per_class[CLASSES[k]] = ev.stats[0]
    return stats, per_class


def test_matches_cocoeval_on_a_seeded_set():
    preds, targets = random_set()
    got = detection_map(preds, targets, class_names=CLASSES)
    stats, per_class = coco_reference(preds, targets)
    assert got["images"] == len(preds)
    for key, ref in zip(SUMMARY, stats, strict=True):
        if ref < 0:
            assert got[key] is None, key
        else:
            assert abs(got[key] - ref) <= 1e-6, (key, got[key], ref)
    assert got["map_small"] is not None and got["map_large"] is not None and 0.1 < got["map"] < 0.9
    assert set(got["per_class"]) == set(CLASSES)
    for name, ref in per_class.items():
        if ref < 0:
            assert got["per_class"][name] is None, name
        else:
            assert abs(got["per_class"][name] - ref) <= 1e-6, (name, got["per_class"][name], ref)
    assert got["per_class"]["four"] is None


def test_perfect_and_empty_predictions():
    _, targets = random_set(seed=1, images=4)
    perfect = [
        {"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets
    ]
    assert detection_map(perfect, targets)["map"] == pytest.approx(1.0)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    nothing = [empty for _ in targets]
    scored = detection_map(nothing, targets)
    assert scored["map"] == 0.0 and set(scored["per_class"].values()) == {0.0}
    none = detection_map([], [])
    assert none["images"] == 0 and all(none[k] is None for k in SUMMARY)


def test_labels_without_names_are_keyed_by_number():
    preds, targets = random_set(seed=2, images=3)
    assert set(detection_map(preds, targets)["per_class"]) <= {"0", "1", "2", "3"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p, t: (p[:1], t), "predictions and targets must pair up, got 1 and 3"),
        (lambda p, t: ([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}, *p[1:]], t),
         "predictions[0] has no 'scores'"),
        (lambda p, t: (p, [{"boxes": torch.zeros(2, 4), "labels": torch.zeros(1)}, *t[1:]]),
         "targets[0] holds 2 boxes but boxes 2, labels 1"),
        (lambda p, t: (p, [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([9])}, *t[1:]]),
         "targets[0] has label 9, outside 0..4 of class_names"),
    ],
)  # fmt: skip
def test_refusals_are_one_line(change, message):
    preds, targets = change(*random_set(seed=3, images=3))
    with pytest.raises(ValueError) as err:
        detection_map(preds, targets, class_names=CLASSES)
    assert message in str(err.value)
