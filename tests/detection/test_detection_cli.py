"""The detection job through the command line: train, evaluate, predict and export a
detector; COCO data from disk, with each kind of fault ending in one line and exit 2 (or
skipped and counted), nothing already written lost; and an exact kill/resume."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from visattn.data.detection_metrics import detection_map
from visattn.data.detection_sets import load_detection_dataset
from visattn.train import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from trainkit import only_run, run_visattn, start_visattn, wait_for_mid_epoch

pytestmark = pytest.mark.slow
ONE_EPOCH = ["train", "--task", "detection", "--epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One epoch of the default detection job (FCOS with GC on the embedded canvases)."""
    root = tmp_path_factory.mktemp("det")
    done = run_visattn(*ONE_EPOCH, "--attention", "gc", "--output", root / "runs")
    assert done.returncode == 0, done.stderr
    return only_run(root / "runs")


def test_train_writes_a_detection_run(trained):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["model"] == "fcos" and summary["attention"] == "gc"
    assert 0 < summary["test_map"] <= summary["test_map_50"] <= 1
    assert set(summary["per_class_ap"]) == {str(d) for d in range(10)}
    assert (trained / "detections.png").stat().st_size > 10_000 and (trained / "report.html").is_file()
    # the checkpoint rebuilds the detector without the data, and scores what the run recorded
    model, _ = load_model(trained)
    test = load_detection_dataset("cluttered-mnist-detection").test
    with torch.no_grad():
        preds = [model([test[i][0]])[0] for i in range(len(test))]
    again = detection_map(preds, [test.target(i) for i in range(len(test))], backend="pycocotools")
    assert again["map"] == pytest.approx(summary["test_map"], abs=1e-6)


def test_evaluate_predict_and_export(trained, tmp_path):
    shown = run_visattn("evaluate", "--checkpoint", trained)
    assert shown.returncode == 0, shown.stderr
    assert "mAP@[.5:.95]" in shown.stdout and "AP 7" in shown.stdout
    summary = json.loads((trained / "summary.json").read_text())
    assert f"{summary['test_map']:.3f}" in shown.stdout
    test = load_detection_dataset("cluttered-mnist-detection").test
    image = tmp_path / "canvas.png"
    Image.fromarray((test[3][0][0].numpy() * 255).round().astype(np.uint8)).save(image)
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    said = run_visattn("predict", image, "--checkpoint", trained, "--min-score", "0.2", "--draw", drawn)
    assert said.returncode == 0, said.stderr
    (record,) = json.loads(said.stdout)
    assert record["image"] == str(image)
    assert all(d["score"] >= 0.2 and d["label"] in [str(k) for k in range(10)] for d in record["detections"])
    picture = drawn / "canvas.boxes.png"
    before = picture.read_bytes()
    again = run_visattn("predict", image, "--checkpoint", trained, "--draw", drawn)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert picture.read_bytes() == before  # nothing already written is lost
    out = tmp_path / "det.onnx"
    exported = run_visattn("export", "--checkpoint", trained, "--output", out)
    assert exported.returncode == 0, exported.stderr
    assert out.is_file() and "match" in exported.stdout


def _coco(root: Path, annotations: list[dict], *, images: int = 6) -> Path:
    """A tiny COCO data set: ``images`` 64 x 64 canvases per split with one bright square each."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        entries = []
        for k in range(images):
            name = f"{k}.png"
            pixels = np.zeros((64, 64, 3), np.uint8)
            pixels[10 + k : 30 + k, 12:36] = 255
            Image.fromarray(pixels).save(root / split / name)
            entries.append({"id": k + 1, "file_name": name, "width": 64, "height": 64})
        anns = [{"id": k + 1, "image_id": k + 1, "category_id": 5, "bbox": [12, 10 + k, 24, 20], "iscrowd": 0}
                for k in range(images)]  # fmt: skip
        for extra in annotations if split == "train" else []:
            anns.append({"id": 100 + len(anns), "iscrowd": 0, **extra})
        data = {"images": entries, "annotations": anns, "categories": [{"id": 5, "name": "square"}]}
        (root / f"{split}.json").write_text(json.dumps(data))
    return root


def _coco_train(root: Path, *extra: str):
    return run_visattn(*ONE_EPOCH, "--dataset", "coco", "--data-dir", root, "--batch-size", "2",
                       "--output", root / "runs", *extra)  # fmt: skip


def test_coco_data_trains(tmp_path):
    done = _coco_train(_coco(tmp_path, []))
    assert done.returncode == 0, done.stderr
    summary = json.loads((only_run(tmp_path / "runs") / "summary.json").read_text())
    assert summary["dataset"] == "coco" and list(summary["per_class_ap"]) == ["square"]


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("json", "not valid JSON"),
        ("missing", "missing.png"),
        ("x1<x0", "negative width"),
    ],
)
def test_coco_faults_end_in_one_line_or_are_skipped_and_counted(tmp_path, fault, message):
    if fault == "json":
        root = _coco(tmp_path, [])
        (root / "train.json").write_text('{"images": [}')
    elif fault == "missing":
        root = _coco(tmp_path, [])
        data = json.loads((root / "train.json").read_text())
        data["images"].append({"id": 99, "file_name": "missing.png", "width": 64, "height": 64})
        (root / "train.json").write_text(json.dumps(data))
    else:
        root = _coco(tmp_path, [{"image_id": 2, "category_id": 5, "bbox": [30, 5, -10, 8]}])
    refused = _coco_train(root)
    assert refused.returncode == 2, refused.stderr
    lines = [line for line in refused.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr and not (root / "runs").exists()  # refused before any folder
    if fault == "json":
        return
    allowed = _coco_train(root, "--max-bad-fraction", "0.5")
    assert allowed.returncode == 0, allowed.stderr
    summary = json.loads((only_run(root / "runs") / "summary.json").read_text())
    assert summary["bad_files"] == 1


def test_kill_and_resume_is_exact(tmp_path):
    flags = [*ONE_EPOCH[:3], "--epochs", "2", "--checkpoint-every", "5", "--attention", "cbam"]
    ref = run_visattn(*flags, "--output", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    proc = start_visattn(*flags, "--output", tmp_path / "cut")
    wait_for_mid_epoch(proc, tmp_path / "cut")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    resumed = run_visattn("train", "--resume", "last", "--output", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    run, reference = only_run(tmp_path / "cut"), only_run(tmp_path / "ref")
    assert (run / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    got, want = load_file(str(run / "last.safetensors")), load_file(str(reference / "last.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_explain_and_attention_maps_draw_every_box(trained, tmp_path):
    said = run_visattn("explain", "--checkpoint", trained, "--images", "2", "--output", tmp_path)
    assert said.returncode == 0, said.stderr
    result = json.loads((tmp_path / "box_explanations.json").read_text())
    assert result["images"] == [0, 499] and "pointing game per box" in said.stdout
    assert all(r["score"] >= 0.5 and r["pointing_gradcam"] in (True, False, None) for r in result["boxes"])
    assert all((tmp_path / f"boxes-{i}.png").is_file() for i in result["images"])
    refused = run_visattn("explain", "--checkpoint", trained, "--scorecard", "--output", tmp_path)
    assert refused.returncode == 2 and "per box" in refused.stderr and "Traceback" not in refused.stderr
    out = tmp_path / "maps.png"
    drawn = run_visattn("attention-maps", "--checkpoint", trained, "--start", "7", "--output", out)
    assert drawn.returncode == 0, drawn.stderr
    assert out.stat().st_size > 5_000 and "pointing game per box" in drawn.stdout


def test_torchrun_evaluation_gathers_every_image_once(tmp_path):
    """Under two processes each rank scores half the test canvases; the gathered mAP is the
    mAP of the same weights evaluated in one process."""
    import shutil
    import subprocess

    from trainkit import ENV

    from visattn.tasks import Detection

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "visattn", *ONE_EPOCH, "--output",
           str(tmp_path / "two")]  # fmt: skip
    two = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**ENV, "OMP_NUM_THREADS": "1"}
    )
    assert two.returncode == 0, two.stderr
    run = only_run(tmp_path / "two")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    model, _ = load_model(run / "last.safetensors")
    task = Detection(load_detection_dataset("cluttered-mnist-detection"))
    alone = task.evaluate(model, device=torch.device("cpu"), rank=0, world=1, channels_last=False)
    # not bit for bit: the ranks ran on one thread each and batched other images together, which
    # moves scores in their last bits and reorders a few near-ties
    assert alone.images == 500 and alone.score == pytest.approx(summary["test_map"], abs=1e-3)
    assert summary["test_detections"] == pytest.approx(alone.detections, rel=1e-3)  # all 500, once
