"""Train the members of a comparison -- one network per attention and seed, the same data,
recipe and budget for all -- and keep what they measured.

A comparison folder holds ``comparison.json`` (the shared recipe, and for an equal-time budget
each attention's epochs), ``members/<attention>-seed<k>/<run>/`` (ordinary run folders), and
the leaderboard. Rerunning the same command trains only what is missing: a member whose run
folder has ``member.json`` is done, one stopped part-way goes on from its last checkpoint, and
new attentions or seeds can be added to a finished comparison. A recipe that differs from the
folder's is refused, since its members would not be comparable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text
from ..attention import ATTENTION
from ..data import load_dataset
from ..tasks import TASKS
from ..train.config import TrainConfig
from ..train.loop import train
from .leaderboard import REFERENCE, leaderboard, write_leaderboard
from .members import Member, finished_member, measure_member, member_runs

log = logging.getLogger(__name__)

#: The default set: the families of visattn's mechanisms, each by one or two members, and none.
REPRESENTATIVE = ("none", "se", "eca", "gc", "cbam", "coord", "simam", "triplet", "mhsa", "nonlocal",
                  "swin", "halo", "linear")  # fmt: skip
#: Settings of the members that the comparison decides, not the shared recipe.
PER_MEMBER = ("attention", "seed", "output", "epochs")
#: What ``--preset short`` sets: a run of a few seconds that still ranks the mechanisms.
PRESETS: dict[str, dict[str, Any]] = {"short": {"epochs": 2, "scorecard_images": 100}}


class CompareError(ValueError):
    """A comparison that cannot go on; the message says why and what to do."""


def parse_attentions(spec: str, fits: Callable[[str], bool]) -> list[str]:
    """``"se,cbam,none"``, ``"all"`` (every registered mechanism that ``fits`` the model, and
    none) or ``"default"`` (``REPRESENTATIVE``) -> names in order, without repeats."""
    if spec.strip() == "all":
        return [REFERENCE, *(n for n in ATTENTION.names() if fits(n))]
    names = list(REPRESENTATIVE) if spec.strip() == "default" else [s.strip() for s in spec.split(",")]
    valid = {REFERENCE, *ATTENTION.names()}
    unknown = [n for n in names if n not in valid]
    if unknown:
        bad = "an empty name" if unknown[0] == "" else f"unknown attention {unknown[0]!r}"
        raise CompareError(
            f"--attention: {bad}; give a comma-separated list of: "
            f"{', '.join(sorted(valid))}, or 'all' or 'default'"
        )
    return list(dict.fromkeys(names))


def recipe(cfg: TrainConfig) -> dict[str, Any]:
    """The settings every member shares (JSON values)."""
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in PER_MEMBER}


def _member_config(base: TrainConfig, member: Member, epochs: int, folder: Path) -> TrainConfig:
    values = base.model_dump()
    values.update(attention=member.attention, seed=member.seed, epochs=epochs, output=folder / member.name)
    return TrainConfig.model_validate(values)


def _options(base: TrainConfig, attention: str) -> dict[str, Any]:
    return {**base.model_kwargs(), "attention": None if attention == REFERENCE else attention}


def _fits(base: TrainConfig, task: Any, sample: torch.Tensor) -> Callable[[str], bool]:
    def fits(name: str) -> bool:
        try:
            model = task.build_model(base.model, _options(base, name))
            with torch.no_grad():
                model.eval()(sample)
        except (ValueError, TypeError, RuntimeError) as err:
            log.info("compare: %s does not fit %s (%s)", name, base.model, err)
            return False
        return True

    return fits


def _step_seconds(base: TrainConfig, task: Any, attention: str, batch: Any, steps: int = 6) -> float:
    """Median seconds of a training step of ``attention``'s network on one batch."""
    from ..bench.measures import measure  # the bench package is only needed here

    torch.manual_seed(0)
    model = task.build_model(base.model, _options(base, attention)).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = task.training_loss(model, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    return measure(step, warmup=2, repeats=steps).median


def _load_plan(folder: Path, base: TrainConfig, budget: str) -> dict[str, Any]:
    path = folder / "comparison.json"
    mine = {"recipe": recipe(base), "budget": budget, "epochs": base.epochs}
    if not path.is_file():
        return {**mine, "member_epochs": {}}
    try:
        plan = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CompareError(
            f"{path} is not a readable comparison file ({err}); use another --output"
        ) from None
    for key in ("recipe", "budget", "epochs"):
        if plan.get(key) != mine[key]:
            theirs, ours = plan.get(key), mine[key]
            if key == "recipe":
                diff = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
                theirs, ours = {k: theirs.get(k) for k in diff}, {k: ours.get(k) for k in diff}
            raise CompareError(
                f"{folder} holds a comparison with another {key} ({theirs} there, {ours} now); "
                "its members would not be comparable: use the same options or another --output"
            )
    return plan


def compare(
    base: TrainConfig,
    attentions: str,
    seeds: list[int],
    folder: Path,
    *,
    budget: str = "epochs",
    say: Callable[[str], None] = log.info,
) -> list[dict[str, Any]]:
    """Train every (attention, seed) member not trained yet and write the leaderboard.

    Args:
        base: the shared recipe (its ``attention``, ``seed`` and ``output`` are the members').
        attentions: ``parse_attentions``' spec.
        seeds: the seeds of every attention.
        folder: the comparison folder.
        budget: ``"epochs"`` (every member ``base.epochs``) or ``"equal-time"`` (the slowest
            attention gets ``base.epochs``; each other one as many epochs as fit in the same
            time, from a timed probe of its training step, fixed at the first run).
        say: progress lines.

    Returns:
        the leaderboard rows. Raises ``CompareError`` when a member is stopped by a signal
        (its checkpoint is kept; rerunning goes on) or the folder's recipe differs.
    """
    if budget not in ("epochs", "equal-time"):
        raise CompareError(f"--budget must be 'epochs' or 'equal-time', got {budget!r}")
    if not seeds:
        raise CompareError("--seeds needs at least one seed")
    folder = Path(folder)
    try:
        (folder / "members").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CompareError(f"cannot write the comparison folder {folder}: {err.strerror or err}") from None
    plan = _load_plan(folder, base, budget)
    bundle = load_dataset(base.dataset, **base.data_kwargs())
    task = TASKS.get(base.task).from_config(bundle, base)
    sample = bundle.test.__getitems__([0])[0]
    names = parse_attentions(attentions, _fits(base, task, sample))
    if budget == "equal-time":
        missing = [n for n in names if n not in plan["member_epochs"]]
        if missing:
            batch = bundle.train.__getitems__(list(range(base.batch_size)))
            seconds = {n: _step_seconds(base, task, n, batch) for n in missing}
            if "slowest_step_seconds" not in plan:
                plan["slowest_step_seconds"] = max(seconds.values())
            for n, s in seconds.items():
                plan["member_epochs"][n] = max(1, round(base.epochs * plan["slowest_step_seconds"] / s))
    plan["attentions"] = list(dict.fromkeys([*plan.get("attentions", []), *names]))
    plan["seeds"] = sorted({*plan.get("seeds", []), *seeds})
    atomic_write_text(folder / "comparison.json", json.dumps(plan, indent=2) + "\n")

    members = [Member(a, s) for a in names for s in seeds]
    for i, member in enumerate(members, 1):
        member_dir = folder / "members" / member.name
        if finished_member(member_dir) is not None:
            continue
        epochs = plan["member_epochs"].get(member.attention, base.epochs)
        cfg = _member_config(base, member, epochs, folder / "members")
        partial = [p for p in member_runs(member_dir) if (p / "last.safetensors").is_file()]
        say(f"[{i}/{len(members)}] {member.name}: {epochs} epochs" + (" (resumed)" if partial else ""))
        summary = train(cfg, resume=partial[-1] if partial else None)
        if "stopped" in summary:
            raise CompareError(
                f"interrupted while training {member.name} ({summary['stopped']}); its checkpoint and every "
                "finished member are kept: rerun the same command to go on"
            )
        measure_member(Path(summary["run_dir"]), member, bundle.test)
    return write_comparison(folder)


def write_comparison(folder: Path) -> list[dict[str, Any]]:
    """The leaderboard of every finished member in ``folder`` (and its report page)."""
    plan = json.loads((folder / "comparison.json").read_text())
    records = []
    for member_dir in sorted((folder / "members").iterdir()):
        done = finished_member(member_dir)
        if done is not None:
            records.append(json.loads((done / "member.json").read_text()))
    rows = leaderboard(records)
    protocol = {
        "budget": plan["budget"], "epochs": plan["epochs"], "member_epochs": plan["member_epochs"],
        "seeds": plan["seeds"], "recipe": plan["recipe"],
        "versus_none": "paired by seed, Student t 95 % interval of the accuracy difference; "
                       "beyond_noise when it excludes 0",
        "faithfulness": "quick scorecard: insertion AUC of the attention map minus the input baseline's",
    }  # fmt: skip
    write_leaderboard(rows, folder, protocol)
    try:
        from ..report import write_report

        write_report(folder)
    except Exception as err:  # the leaderboard is written; a page that fails must not lose it
        log.warning("compare: report.html not written (%s)", err)
    return rows
