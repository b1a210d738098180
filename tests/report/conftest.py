"""One real one-epoch training run of the default job, shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``(run folder, training summary)`` of one epoch of the default job, with a scorecard."""

    from visattn.train import TrainConfig, load_model, train

    out = tmp_path_factory.mktemp("runs")
    quick = {"scorecard_images": 16} if "scorecard_images" in TrainConfig.model_fields else {}
    summary = train(TrainConfig(epochs=1, output=out, device="cpu", **quick))
    run_dir = Path(summary["run_dir"])
    if not (run_dir / "scorecard.json").is_file():  # a run that does not end with one: score here
        from visattn.data import load_dataset
        from visattn.explain.scorecard import scorecard
        from visattn.explain.scorecard_files import write_scorecard

        model, _ = load_model(run_dir)
        test = load_dataset("cluttered-mnist").test
        x, _ = test.__getitems__(list(range(16)))
        card = scorecard(model, x, boxes=test.boxes[:16], methods=["attention", "random"], steps=5)
        write_scorecard(card, run_dir, stats=test.stats)
    return run_dir, summary
