"""The detection task's pieces: the task's defaults in the run configuration, fresh training
canvases that are a pure function of (seed, epoch), the options read off the data and stored
for the rebuild, and the evaluation against pycocotools on the same boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visattn.data.detection import make_detection_canvases
from visattn.data.detection_metrics import detection_map
from visattn.data.detection_sets import FreshCanvases, load_detection_dataset
from visattn.data.mnist_sample import load_mnist_sample, split_indices
from visattn.tasks import TASKS, Detection
from visattn.train.config import ConfigError, TrainConfig, resolve_config


def test_the_task_sets_its_own_defaults_and_registries():
    cfg = TrainConfig(task="detection")
    assert (cfg.model, cfg.dataset, cfg.batch_size) == ("fcos", "cluttered-mnist-detection", 32)
    assert TrainConfig().model == "attention_cnn" and TrainConfig().batch_size == 64  # classification's
    assert resolve_config(task="detection", batch_size=8).batch_size == 8  # a flag still wins
    with pytest.raises(ConfigError, match="unknown detection model 'resnet18'; valid: faster_rcnn, fcos"):
        resolve_config(task="detection", model="resnet18")
    with pytest.raises(ConfigError, match="unknown detection dataset 'cifar10'"):
        resolve_config(task="detection", dataset="cifar10")
    with pytest.raises(ConfigError, match="unknown model 'fcos'"):
        resolve_config(model="fcos")  # a detector is not a classifier


def test_fresh_canvases_are_a_function_of_seed_and_epoch():
    images, labels = load_mnist_sample()
    tr, _ = split_indices(labels)
    fresh = FreshCanvases(images[tr], labels[tr], tr, count=20, canvas=64, seed=3, channels=1)
    first = fresh.images.clone()
    fresh.set_epoch(1)
    second = fresh.images.clone()
    assert not torch.equal(first, second)
    made = make_detection_canvases(images[tr], labels[tr], count=20, canvas=64, seed=(2, 0, 3, 1))
    assert np.array_equal(second[:, 0].numpy(), made.images)  # epoch 1 = stream (2, 0, seed, 1)
    assert torch.equal(fresh.boxes, torch.from_numpy(made.boxes).float())
    fresh.set_epoch(0)
    assert torch.equal(fresh.images, first)  # back to epoch 0: the same canvases (exact resume)


def test_model_options_come_from_the_data_and_rebuild_the_same_detector():
    task = Detection(load_detection_dataset("cluttered-mnist-detection"))
    options = task.model_options("retinanet", {"attention": "cbam"})
    assert options["levels"] == [2] and options["image_size"] == [64, 64]  # one level at stride 8
    small, middle, large = options["anchor_sizes"][0]
    sides = task.bundle.train.boxes[:, 2:] - task.bundle.train.boxes[:, :2]
    longer = sides.max(dim=1).values.numpy()
    assert small == pytest.approx(np.percentile(longer, 5), abs=0.05)
    assert large == pytest.approx(np.percentile(longer, 95), abs=0.05)
    assert middle == pytest.approx((small * large) ** 0.5, abs=0.06)
    torch.manual_seed(0)
    model = task.build_model("retinanet", options)
    meta = {"model": "retinanet", "model_kwargs": options, **task.describe()}
    torch.manual_seed(0)
    again = TASKS.get(meta["task"]).rebuild(meta)
    mine, rebuilt = model.state_dict(), again.state_dict()
    assert mine.keys() == rebuilt.keys() and all(torch.equal(mine[k], rebuilt[k]) for k in mine)
    assert task.train_metrics == ("loss", "classification", "bbox_regression")


def test_evaluation_is_pycocotools_on_the_same_boxes():
    task = Detection(load_detection_dataset("cluttered-mnist-detection"))
    torch.manual_seed(0)
    model = task.build_model("fcos", task.model_options("fcos", {}))
    result = task.evaluate(model, device=torch.device("cpu"), rank=0, world=1, channels_last=False)
    test = task.bundle.test
    truth = [test.target(i) for i in range(len(test))]
    direct = detection_map(result.predictions, truth, backend="pycocotools", per_class=False)
    assert result.images == len(test) and result.score == pytest.approx(direct["map"], abs=1e-9)
    assert result.detections == sum(len(p["boxes"]) for p in result.predictions)
    assert result.row()["test_map"] == f"{direct['map']:.6f}"
