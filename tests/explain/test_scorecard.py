"""The scorecard: its statistics against hand computations, the seeded tie-break, the
randomisation check on a tiny model, the flags, and the shared-end-point perturbation against
the cross-checked deletion_insertion."""

from __future__ import annotations

import math

import torch

from visattn import create_model
from visattn.explain import deletion_insertion, explain
from visattn.explain.perturb import deletion_insertion_many
from visattn.explain.road import road_scores
from visattn.explain.sanity import classifier_head, reinitialised
from visattn.explain.scorecard import MethodScores, Scorecard, scorecard
from visattn.explain.scorecard_files import flags, records, scorecard_csv, scorecard_json
from visattn.explain.stats import mean_interval, paired_margin, rank_correlation, tie_free_ranks

T_975_DF3 = 3.182446  # Student t, 97.5th percentile, 3 degrees of freedom (printed tables)


def _cnn(attention: str = "mhsa") -> torch.nn.Module:
    return create_model(
        "attention_cnn", num_classes=3, in_channels=1, widths=(8, 8), strides=(2, 2), attention=attention
    ).eval()


def test_paired_interval_by_hand():
    # d = 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), half width t * sd / sqrt(4)
    half = T_975_DF3 * math.sqrt(5 / 3) / 2
    baseline, d = torch.tensor([0.5, 0.1, 0.2, 0.3], dtype=torch.float64), torch.arange(1.0, 5.0).double()
    better = paired_margin(baseline + d, baseline, higher_is_better=True)
    assert math.isclose(better.mean, 2.5, abs_tol=1e-12) and math.isclose(
        better.low, 2.5 - half, abs_tol=1e-6
    )
    assert math.isclose(better.high, 2.5 + half, abs_tol=1e-6)
    # lower is better (deletion): the margin is baseline - method, positive when the method wins
    lower = paired_margin(baseline - d, baseline, higher_is_better=False)
    assert all(
        math.isclose(a, b, abs_tol=1e-12)
        for a, b in zip(vars(lower).values(), vars(better).values(), strict=True)
    )
    one = mean_interval(torch.tensor([0.7], dtype=torch.float64))
    assert one.mean == 0.7 and math.isnan(one.low) and one.as_dict()["low"] is None


def test_tie_free_ranks_keep_the_order_and_break_ties_by_the_seed():
    heat = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 1.0, 0.5]]]).expand(2, 2, 3)
    a, b = tie_free_ranks(heat, seed=0), tie_free_ranks(heat, seed=0)
    assert torch.equal(a, b) and torch.equal(a[0], a[1])  # same seed, same image: same ranks
    flat = a[0].flatten()
    assert sorted((flat * 5).round().long().tolist()) == list(range(6))  # a strict ranking
    assert flat[4] == 1.0 and flat[:3].max() < flat[[3, 5]].min()  # the map's order is kept
    orders = {tuple(tie_free_ranks(heat, seed=s)[0].flatten().tolist()) for s in range(8)}
    assert len(orders) > 1  # the ties go another way with another seed


def test_rank_correlation_against_spearman_by_hand():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    y = torch.tensor([[[2.0, 1.0, 4.0, 3.0, 5.0]]])
    # Spearman: 1 - 6 sum d^2 / (n (n^2 - 1)), d = (1, 1, 1, 1, 0): 1 - 24 / 120
    rho = rank_correlation(tie_free_ranks(x), tie_free_ranks(y))
    assert math.isclose(float(rho), 0.8, abs_tol=1e-12)


def test_same_seed_same_json_and_the_seed_matters():
    model, x = _cnn(), torch.rand(5, 1, 12, 12)
    x[:, :, :4] = 0  # flat rows: the input map ties there
    boxes = torch.tensor([[2, 2, 9, 9]]).expand(5, 4)
    texts = [
        scorecard_json(
            scorecard(model, x, boxes=boxes, methods=["input"], steps=5, seed=s, chunk=3), seconds=False
        )
        for s in (3, 3, 4)
    ]
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_shared_end_points_equal_deletion_insertion():
    model, x = _cnn(), torch.randn(4, 1, 12, 12)
    heats = [explain(model, x, method="gradcam"), explain(model, x, method="input")]
    classes = torch.tensor([0, 1, 2, 0])
    many = deletion_insertion_many(model, x, heats, classes=classes, steps=6, batch_size=5, seed=1)
    for heat, got in zip(heats, many, strict=True):
        want = deletion_insertion(model, x, heat, target=classes, steps=6, batch_size=7, seed=1)
        torch.testing.assert_close(got.deletion, want.deletion, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.insertion, want.insertion, atol=1e-6, rtol=0)


def test_reinitialisation_changes_the_weights_it_should_and_only_in_the_copy():
    model, x = _cnn(), torch.randn(2, 1, 12, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert classifier_head(model, x) == "head"
    whole = reinitialised(model, x, scope="whole", seed=0)
    head = reinitialised(model, x, scope="head", seed=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # the trained model is untouched
        if key.endswith("weight") and value.ndim > 1:
            assert not torch.equal(whole.state_dict()[key], value), key
            assert torch.equal(head.state_dict()[key], value) == (not key.startswith("head.")), key
    again = reinitialised(model, x, scope="whole", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), whole.parameters(), strict=True))


def test_randomisation_check_changes_faithful_maps_and_flags_the_class_agnostic_one():
    model, x = _cnn(), torch.randn(6, 1, 12, 12)
    card = scorecard(model, x, methods=["attention", "gradcam"], steps=4, sanity=True)
    got = {r["method"]: r for r in records(card)}
    # Grad-CAM reads the weights: a random network gives another map.
    assert got["gradcam"]["sanity_rank_corr"] < 0.9 and got["gradcam"]["head_rank_corr"] < 0.99
    assert got["gradcam"]["class_agnostic"] is False
    # The attention map never reads the head: identical maps when only the head is redrawn.
    assert got["attention"]["head_rank_corr"] == 1.0 and got["attention"]["class_agnostic"] is True
    # A baseline with the same seed ignores the model entirely.
    assert got["random"]["sanity_rank_corr"] == 1.0 and got["random"]["fails_randomisation"] is True


def test_flags_and_records_on_constructed_scores():
    assert flags(0.51, 0.99) == {"fails_randomisation": True, "class_agnostic": True}
    assert flags(0.5, 0.989) == {"fails_randomisation": False, "class_agnostic": False}
    assert flags(None, None) == {"fails_randomisation": None, "class_agnostic": None}

    def scores(method, deletion, insertion, pointing, sanity, head):
        t = torch.tensor
        return MethodScores(
            method=method, deletion_auc=t(deletion), insertion_auc=t(insertion), pointing=t(pointing),
            sanity_rank_corr=t(sanity), head_rank_corr=t(head), deletion_curve=torch.zeros(3),
            insertion_curve=torch.zeros(3), seconds=1.0, examples=torch.zeros(0, 2, 2),
        )  # fmt: skip

    card = Scorecard(
        scores=[
            scores("gradcam", [0.1, 0.2], [0.9, 0.7], [1.0, 1.0], [0.6, 0.5], [0.2, 0.3]),
            scores("random", [0.4, 0.4], [0.3, 0.4], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]),
        ],
        protocol={"baselines": ["random"]},
        images=torch.zeros(0, 1, 2, 2),
    )
    cam, rnd = records(card)
    assert cam["sanity_rank_corr"] == 0.55 and cam["fails_randomisation"] is True
    assert cam["class_agnostic"] is False and rnd["class_agnostic"] is True
    # margins: deletion 0.4 - (0.1, 0.2) = (0.3, 0.2); insertion (0.6, 0.3); pointing (1, 0)
    half = 12.706205 * (0.05 * math.sqrt(2)) / math.sqrt(2)  # t(0.975, 1) * sd(0.3, 0.2) / sqrt(n)
    assert math.isclose(cam["margins"]["random"]["deletion_auc"]["mean"], 0.25, abs_tol=1e-6)
    assert math.isclose(cam["margins"]["random"]["deletion_auc"]["high"], 0.25 + half, abs_tol=1e-5)
    assert math.isclose(cam["margins"]["random"]["insertion_auc"]["mean"], 0.45, abs_tol=1e-6)
    assert cam["margins"]["random"]["pointing"]["mean"] == 0.5 and rnd["margins"] == {}
    header, first, _ = scorecard_csv(card).splitlines()
    assert header.startswith("method,pointing,deletion_auc,insertion_auc,road,sanity_rank_corr")
    assert "deletion_auc_over_random_low" in header and first.startswith("gradcam,1.0,0.15,0.8,,0.55,")


def test_road_is_seeded_antisymmetric_and_leaves_the_callers_random_stream():
    model, x = _cnn(), torch.randn(2, 1, 8, 8)
    ranks = tie_free_ranks(explain(model, x, method="gradcam"))
    classes = torch.tensor([0, 2])
    state = torch.random.get_rng_state()
    score = road_scores(model, x, ranks, classes, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(road_scores(model, x, ranks, classes, seed=1), score)
    # LeRF of a map is MoRF of the reversed map: reversing the ranking flips ROAD's sign (up to
    # the imputation noise, drawn in another order)
    reversed_score = road_scores(model, x, 1 - ranks, classes, seed=1)
    torch.testing.assert_close(reversed_score, -score, atol=0.01, rtol=0)


def test_scorecard_images_are_spread_over_a_split_stored_class_by_class():
    from visattn.data.datasets import ImageTensorDataset
    from visattn.explain.scorecard import scorecard_images

    labels = torch.arange(10).repeat_interleave(20)  # 200 images, class by class
    images = torch.arange(200).to(torch.uint8).view(200, 1, 1, 1).expand(200, 1, 4, 4).contiguous()
    boxes = torch.stack([torch.arange(200)] * 4, dim=1)
    data = ImageTensorDataset(images, labels, boxes=boxes, stats=((0.0,), (1.0,)))
    x, b = scorecard_images(data, 20)
    picked = (x[:, 0, 0, 0] * 255).round().long()  # pixels are read as value / 255
    assert picked.tolist() == list(range(0, 200, 10))  # every tenth image: two of each class
    assert b[:, 0].tolist() == picked.tolist()
    assert len(scorecard_images(data, 500)[0]) == 200  # no more than the split holds
