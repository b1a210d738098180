"""The ``visattn`` command: train, evaluate, predict and explain attention models.

Thin on purpose: it parses and validates what the user typed, calls the library, and owns
the console. A user mistake (bad flag value, missing file, unusable checkpoint or image)
ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import torch
import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import cli_detection
from .attention import ATTENTION
from .catalog import catalog, catalog_markdown, model_cost, models_markdown
from .cli_compare import compare_command
from .cli_options import schema_parameters, with_parameters
from .cli_report import report_command
from .data import DataUnavailableError, ImageTensorDataset
from .data.images import ImageError, load_image
from .explain import save_confusion_matrix, save_model_attention
from .explain.scorecard import scorecard as score_methods
from .explain.scorecard import scorecard_images
from .explain.scorecard_figures import save_method_maps
from .explain.scorecard_files import records, write_scorecard
from .explain.scorecard_methods import DEFAULT_METHODS, method_maps
from .export import ExportError, export_checkpoint, load_onnx_predictor
from .registry import MODELS, TASKS
from .train import (
    CheckpointError,
    ConfigError,
    TrainingError,
    evaluate,
    load_model,
    resolve_config,
    resolve_device,
)
from .train.config import TrainConfig, resume_config
from .train.loop import LogReporter, train
from .train.run_files import latest_run_dir

log = logging.getLogger("visattn")
console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="visattn",
    help="Train, evaluate, predict with and explain attention models for images.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

USER_ERRORS = (
    CheckpointError,
    ConfigError,
    DataUnavailableError,
    ImageError,
    TrainingError,
    FileNotFoundError,
    KeyError,
    ValueError,
    ExportError,
)


def fail(message: str) -> NoReturn:
    """Print one error line and exit with code 2."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors about user input into one line and exit code 2; the
    traceback is still logged at debug level (``visattn -v``)."""
    try:
        yield
    except USER_ERRORS as err:
        log.debug("error details", exc_info=True)
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        fail(str(message).strip().splitlines()[0] if str(message).strip() else type(err).__name__)


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log details, including tracebacks of errors.")
    ] = False,
) -> None:
    """Attention for computer vision: train, evaluate, predict and explain."""
    handler = (
        RichHandler(console=err_console, show_path=False, show_time=False)
        if err_console.is_terminal
        else logging.StreamHandler()
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler], force=True
    )
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RichReporter:
    """A progress bar for the whole run, with loss, accuracy and throughput, and one line
    per finished epoch."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[values]}  {task.fields[rate]:.0f} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = None
        self.steps = 0

    def run_started(self, run_dir: Path, epochs: int, steps_per_epoch: int, start: int) -> None:
        console.print(f"run folder [cyan]{escape(str(run_dir))}[/cyan]")
        self.steps = steps_per_epoch
        self.epochs = epochs
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=epochs * steps_per_epoch, completed=start,
            epoch=f"{start // steps_per_epoch + 1}/{epochs}", values="", rate=0.0,
        )  # fmt: skip

    def message(self, text: str) -> None:
        self.progress.console.print(escape(text), highlight=False)

    def step(self, epoch: int, step: int, values: dict[str, float], images_per_s: float) -> None:
        self.progress.update(
            self.task,
            completed=(epoch - 1) * self.steps + step,
            epoch=f"{epoch}/{self.epochs}",
            values="  ".join(f"{k} {v:.3f}" for k, v in values.items()),
            rate=images_per_s,
        )

    def epoch_done(self, metrics: dict[str, Any]) -> None:
        self.progress.console.print(epoch_line(metrics), highlight=False)


def epoch_line(metrics: dict[str, Any]) -> str:
    """One line per epoch: the task's training and test metrics, then the speed."""
    shown = [
        f"{k.replace('_', ' ')} {float(v):.4f}"
        for k, v in metrics.items()
        if k.startswith(("train_", "test_", "pointing")) and k != "train_images_per_s" and v != ""
    ]
    speed = f"{float(metrics['train_images_per_s']):.0f} img/s, {float(metrics['epoch_seconds']):.1f} s"
    return f"epoch {metrics['epoch']:>3}  " + "  ".join(shown) + f"  |  {speed}"


Opt = typer.Option


def train_command(
    *,
    config: Annotated[Path | None, Opt(help="YAML config; flags override its values.")] = None,
    resume: Annotated[
        str | None,
        Opt(
            help="'last' (newest run under --output; falls back to an older snapshot if its last "
            "checkpoint is damaged) or a run folder or checkpoint file (loaded as it is, or not at all)."
        ),
    ] = None,
    allow_device_change: Annotated[
        bool,
        Opt("--allow-device-change", help="With --resume: go on from a checkpoint of another device type."),
    ] = False,
    **flags: Any,
) -> None:
    """Train a model (default: AttentionCNN with self-attention on Cluttered MNIST).

    Every option is a field of the run configuration (``TrainConfig``); a YAML file given with
    --config holds the same keys, and flags override it.
    """
    with user_errors():
        if resume is None:
            cfg, start = resolve_config(config, **flags), None
        else:
            if config is not None:
                raise ValueError("--resume continues a run with its own config; drop --config")
            start = latest_run_dir(flags.get("output") or Path("runs")) if resume == "last" else Path(resume)
            if not start.exists():
                raise FileNotFoundError(f"nothing to resume at {start}")
            cfg = resume_config(start if start.is_dir() else start.parent, **flags)
        reporter = RichReporter() if console.is_terminal else LogReporter()
        try:
            summary = train(
                cfg, reporter=reporter, resume=start, fallback=resume == "last",
                allow_device_change=allow_device_change,
            )  # fmt: skip
        finally:
            if isinstance(reporter, RichReporter):
                reporter.close()
    if summary.get("rank", 0) != 0:  # under torchrun the first process reports for all
        return
    if "stopped" in summary:
        console.print(f"stopped by {summary['stopped']}; checkpoint saved. Resume with: {summary['resume']}")
        return
    _print_summary(summary)


app.command("train")(with_parameters(train_command, schema_parameters(TrainConfig)))
app.command("report")(report_command)
app.command("compare")(compare_command)


def _print_summary(s: dict[str, Any]) -> None:
    bad = f", {s['bad_files']} unusable files skipped" if s["bad_files"] else ""
    rate = s["train_images_per_s"] or 0
    rows = [
        ("model", f"{s['model']} (attention {s['attention']}), {s['parameters']:,} parameters"),
        ("data", f"{s['dataset']}{bad}"),
    ]
    if cli_detection.is_detection(s):
        rows += cli_detection.summary_rows(s)
    if "test_accuracy" in s:  # classification
        top5 = "" if s["test_top5"] is None else f", top-5 {s['test_top5']:.2%}"
        best = f"best {s['best_test_accuracy']:.2%} at epoch {s['best_epoch']}"
        rows.append(("test accuracy", f"{s['test_accuracy']:.2%}{top5} ({best})"))
        rows.append(("pointing game", "n/a" if s["pointing_game"] is None else f"{s['pointing_game']:.1%}"))
    if s.get("scorecard"):
        rows.append(("faithfulness", _quick_scores(s["scorecard"])))
    rows += [
        ("throughput", f"{rate:.0f} training images/s on {s['device']} x {s['processes']} process(es)"),
        ("wall time", f"{s['wall_seconds']:.0f} s"),
        ("run folder", s["run_dir"]),
        *([("report", s["report"])] if s.get("report") else []),
    ]
    table = Table(title="training summary", show_header=False)
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    console.print(table)


def _quick_scores(card: dict[str, Any]) -> str:
    """One line of the closing quick scorecard: insertion / deletion AUC of each map."""
    parts = [f"{m} {v['insertion_auc']:.2f} / {v['deletion_auc']:.2f}" for m, v in card["methods"].items()]
    return f"insertion / deletion AUC: {', '.join(parts)} ({card['images']} test images, scorecard.json)"


def _compatible_data(meta: dict[str, Any], dataset: str | None, data_dir: Path | None) -> tuple[Any, str]:
    name = dataset or meta.get("dataset")
    if name is None:
        raise ValueError("the checkpoint names no data set; pass --dataset")
    bundle = TASKS.get(meta.get("task", "classification")).load_data(name, data_dir=data_dir)
    if bundle.in_channels != meta["in_channels"] or len(bundle.classes) != meta["num_classes"]:
        raise ValueError(
            f"data set {name} has {bundle.in_channels} channels and {len(bundle.classes)} classes, "
            f"the checkpoint's model expects {meta['in_channels']} and {meta['num_classes']}"
        )
    return bundle, name


@app.command("evaluate")
def evaluate_command(
    checkpoint: Annotated[Path, typer.Option(help="A .safetensors checkpoint or a run folder.")],
    dataset: Annotated[str | None, typer.Option(help="Data set (default: the checkpoint's).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding (or caching) the data.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 250,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    confusion: Annotated[
        Path | None, typer.Option(help="Also write the confusion matrix to this PNG.")
    ] = None,
) -> None:
    """Top-1, top-5 and per-class accuracy, and the pointing game, on a data set's test split."""
    with user_errors():
        if confusion is not None and confusion.exists():
            raise ValueError(f"{confusion} exists; choose another --confusion file")
        dev = resolve_device(device)
        model, meta = load_model(checkpoint, device=dev)
        bundle, name = _compatible_data(meta, dataset, data_dir)
        if cli_detection.is_detection(meta):
            if confusion is not None:
                raise ValueError("--confusion is for classification checkpoints; this one is a detector")
            title = f"{escape(str(checkpoint))} on {name} (test)"
            table = cli_detection.evaluate_table(model, bundle, device=dev, title=title)
            console.print(table)
            return
        result = evaluate(
            model, bundle.test, num_classes=meta["num_classes"], device=dev, batch_size=batch_size
        )
        if confusion is not None:
            save_confusion_matrix(confusion, result.confusion, meta["classes"])
    table = Table(title=f"{escape(str(checkpoint))} on {name} (test, {result.count} images)")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for cls, acc in zip(meta["classes"], result.per_class, strict=True):
        table.add_row(escape(str(cls)), f"{acc:.2%}")
    table.add_section()
    table.add_row("all", f"{result.accuracy:.2%}")
    console.print(table)
    top5 = "" if result.top5 is None else f", top-5 accuracy {result.top5:.2%}"
    console.print(f"loss {result.loss:.4f}{top5}")
    if result.pointing is not None:
        console.print(f"pointing game {result.pointing:.1%} (attention peak inside the object's box)")


@app.command("predict")
def predict_command(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    checkpoint: Annotated[
        Path,
        typer.Option(help="A .safetensors checkpoint, a run folder, or an ONNX file from `visattn export`."),
    ],
    top_k: Annotated[int, typer.Option(min=1, help="Classes to show per image.")] = 3,
    convert: Annotated[
        bool, typer.Option(help="Convert images to the model's channel count instead of refusing them.")
    ] = False,
    resize: Annotated[bool, typer.Option(help="Resize images to the training size.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    min_score: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Detectors: the lowest score of a box reported.")
    ] = 0.5,
    draw: Annotated[
        Path | None, typer.Option(help="Detectors: draw the boxes on each image into this folder.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Detectors: replace drawings that exist.")] = False,
) -> None:
    """Top-k classes with probabilities for each image; for a detector, its boxes, labels and
    scores as JSON (and drawn on the images with --draw)."""
    with user_errors():
        if checkpoint.suffix.lower() != ".onnx":
            dev = resolve_device(device)
            model, meta = load_model(checkpoint, device=dev)
            if cli_detection.is_detection(meta):
                records, drawn = cli_detection.predict(
                    model, images, meta, device=dev, convert=convert, min_score=min_score, draw=draw,
                    force=force,
                )  # fmt: skip
                console.print_json(data=records)
                for path in drawn:
                    err_console.print(f"wrote [cyan]{escape(str(path))}[/cyan]")
                return
        if checkpoint.suffix.lower() == ".onnx":
            forward, meta = load_onnx_predictor(checkpoint)
            if cli_detection.is_detection(meta):
                raise ValueError(
                    f"{checkpoint} is a detector's ONNX file (run it in onnxruntime: outputs boxes, labels, "
                    "scores); visattn predict takes the detector's checkpoint or run folder"
                )
        else:
            forward = lambda x: model(x.to(dev)).cpu()  # noqa: E731
        batch = [_model_input(p, meta, convert=convert, resize=resize) for p in images]
        with torch.no_grad():
            probs = [forward(x[None]).float().softmax(dim=1)[0] for x in batch]
    k = min(top_k, meta["num_classes"])
    ranked = [p.topk(k) for p in probs]
    if as_json:
        records = [
            {
                "image": str(path),
                "top": [
                    {"class": meta["classes"][i], "probability": round(v, 6)}
                    for v, i in zip(values.tolist(), idx.tolist(), strict=True)
                ],
            }
            for path, (values, idx) in zip(images, ranked, strict=True)
        ]
        console.print_json(data=records)
        return
    table = Table(title=f"predictions of {escape(str(checkpoint))}")
    table.add_column("image", overflow="fold")
    for rank in range(1, k + 1):
        table.add_column(f"#{rank}", justify="right", no_wrap=True)
    for path, (values, idx) in zip(images, ranked, strict=True):
        cells = [
            f"{escape(str(meta['classes'][i]))} {v:.1%}"
            for v, i in zip(values.tolist(), idx.tolist(), strict=True)
        ]
        table.add_row(escape(str(path)), *cells)
    console.print(table)


def _model_input(path: Path, meta: dict[str, Any], *, convert: bool, resize: bool) -> torch.Tensor:
    """An image file as the normalised ``(C, H, W)`` input of the checkpoint's model."""
    size = tuple(meta["input_size"]) if resize else None
    raw = load_image(path, channels=meta["in_channels"], size=size, convert=convert)
    mean = torch.tensor(meta["mean"]).view(-1, 1, 1)
    std = torch.tensor(meta["std"]).view(-1, 1, 1)
    return (raw.float() / 255.0 - mean) / std


@app.command("attention-maps")
def attention_maps_command(
    checkpoint: Annotated[Path, typer.Option(help="A .safetensors checkpoint or a run folder.")],
    images: Annotated[
        list[Path] | None, typer.Argument(help="Image files (default: test images of the data set).")
    ] = None,
    output: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("attention-maps.png"),
    dataset: Annotated[str | None, typer.Option(help="Data set (default: the checkpoint's).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding (or caching) the data.")] = None,
    count: Annotated[int, typer.Option(min=1, max=64, help="Test images to show.")] = 8,
    start: Annotated[int, typer.Option(min=0, help="Index of the first test image.")] = 0,
    layer: Annotated[str | None, typer.Option(help="Attention module to show (default: the last).")] = None,
    convert: Annotated[bool, typer.Option(help="Convert images to the model's channel count.")] = False,
    force: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """A PNG grid: each input, its attention map overlaid, and the prediction."""
    with user_errors():
        if output.exists() and not force:
            raise ValueError(f"{output} exists; choose another --output or pass --force to replace it")
        if output.suffix.lower() != ".png":
            raise ValueError(f"--output must name a .png file, got {output}")
        if not output.parent.is_dir():
            raise FileNotFoundError(f"folder {output.parent} does not exist")
        dev = resolve_device(device)
        model, meta = load_model(checkpoint, device=dev)
        if cli_detection.is_detection(meta):
            if images:
                raise ValueError("a detector's maps are drawn on test images (--start), not on image files")
            test = _compatible_data(meta, dataset, data_dir)[0].test
            _, result = cli_detection.explain_boxes(
                model, test, [start], meta["classes"], folder=None, min_score=0.5, device=dev, output=output
            )
            console.print(f"wrote [cyan]{escape(str(output))}[/cyan] ({cli_detection.pointing_line(result)})")
            return
        if images:  # the user's files, in their order, without labels
            shown, choose = _files_as_dataset(images, meta), "in-order"
            start, count = 0, len(images)
        else:  # test images from --start: several classes, some mistakes
            shown, choose = _compatible_data(meta, dataset, data_dir)[0].test, "varied"
        layer = save_model_attention(
            model, shown, meta["classes"], output, device=dev, count=count, start=start, layer=layer,
            choose=choose,
        )  # fmt: skip
    console.print(f"wrote [cyan]{escape(str(output))}[/cyan] (attention of {escape(layer)})")


def _files_as_dataset(images: list[Path], meta: dict[str, Any]) -> ImageTensorDataset:
    size = tuple(meta["input_size"])
    raw = torch.stack([load_image(p, channels=meta["in_channels"], size=size, convert=True) for p in images])
    return ImageTensorDataset(
        raw, torch.full((len(images),), -1), stats=(tuple(meta["mean"]), tuple(meta["std"]))
    )


@app.command("explain")
def explain_command(
    checkpoint: Annotated[Path, typer.Option(help="A .safetensors checkpoint or a run folder.")],
    method: Annotated[
        list[str] | None,
        typer.Option(help=f"Method (repeat for several; default: {', '.join(DEFAULT_METHODS)})."),
    ] = None,
    scorecard: Annotated[
        bool, typer.Option("--scorecard", help="Score the methods: pointing, deletion, insertion, margins.")
    ] = False,
    images: Annotated[
        int | None, typer.Option(min=1, help="Test images (default: 6 for the figure, 500 for --scorecard).")
    ] = None,
    sanity: Annotated[
        bool,
        typer.Option(
            "--sanity",
            help="With --scorecard: the randomisation check (two more maps per method, ~25 % more time).",
        ),
    ] = False,
    road: Annotated[
        bool, typer.Option("--road", help="With --scorecard: ROAD too (slow: see docs).")
    ] = False,
    target: Annotated[int | None, typer.Option(help="Class to explain (default: each prediction).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Deletion and insertion steps.")] = 20,
    seed: Annotated[
        int, typer.Option(help="Seed of tie-breaking, the random map and re-initialisation.")
    ] = 0,
    output: Annotated[
        Path | None, typer.Option(help="Folder for the files (default: the run folder).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Data set (default: the checkpoint's).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding (or caching) the data.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Maps of explanation methods on test images (explain_maps.png), or with --scorecard
    their faithfulness: scorecard.csv, scorecard.json and two figures."""
    with user_errors():
        if (sanity or road) and not scorecard:
            raise ValueError("--sanity and --road are parts of the scorecard; add --scorecard")
        folder = output or (checkpoint if checkpoint.is_dir() else checkpoint.parent)
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} does not exist")
        dev = resolve_device(device)
        model, meta = load_model(checkpoint, device=dev)
        if target is not None and not 0 <= target < meta["num_classes"]:
            raise ValueError(f"--target must be a class in 0..{meta['num_classes'] - 1}, got {target}")
        test = _compatible_data(meta, dataset, data_dir)[0].test
        if cli_detection.is_detection(meta):
            if scorecard or method or target is not None:
                raise ValueError(
                    "a detector is explained per box (Grad-CAM on the box score, the attention the box "
                    "pays); --scorecard, --method and --target are for classifiers"
                )
            count = min(images or 6, len(test))
            picks = sorted({round(k * (len(test) - 1) / max(count - 1, 1)) for k in range(count)})
            written, result = cli_detection.explain_boxes(
                model, test, picks, meta["classes"], folder=folder, min_score=0.5, device=dev
            )
            console.print(escape(cli_detection.pointing_line(result)), highlight=False)
            console.print("wrote " + ", ".join(f"[cyan]{escape(str(p))}[/cyan]" for p in written))
            return
        x, boxes = scorecard_images(test, images or (500 if scorecard else 6))
        x, boxes = x.to(dev), None if boxes is None else boxes.to(dev)
        if scorecard:
            card = score_methods(
                model, x, boxes=boxes, methods=method, target=target, steps=steps, seed=seed, sanity=sanity,
                road=road,
            )  # fmt: skip
            written = write_scorecard(card, folder, stats=test.stats)
        else:
            written = [folder / "explain_maps.png"]
            maps = method_maps(model, x, method, target=target, seed=seed)
            save_method_maps(written[0], x, maps, boxes=boxes, stats=test.stats)
    if scorecard:
        rows = records(card)
        total = sum(r["seconds"] for r in rows)
        console.print(_scorecard_table(rows, f"{len(x)} test images, {steps} steps, blur, {total:.0f} s"))
        for line in _flag_lines(rows):
            console.print(escape(line), highlight=False)
    console.print("wrote " + ", ".join(f"[cyan]{escape(str(p))}[/cyan]" for p in written))


def _scorecard_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The scorecard on the console: the scores, the randomisation correlations where measured,
    and the insertion margin over the input baseline (mean +- the half width of its 95 %
    interval). The seconds per method are in the files."""
    table = Table(
        title=f"faithfulness scorecard ({title})", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    cells = {"pointing": "{:.1%}", "deletion_auc": "{:.3f}", "insertion_auc": "{:.3f}", "road": "{:.3f}",
             "sanity_rank_corr": "{:.2f}", "head_rank_corr": "{:.2f}"}  # fmt: skip
    heads = {"deletion_auc": "deletion", "insertion_auc": "insertion", "sanity_rank_corr": "r all",
             "head_rank_corr": "r head"}  # fmt: skip
    shown = [k for k in cells if any(r[k] is not None for r in rows)]
    for col in ["method", *shown, "vs input"]:
        table.add_column(
            heads.get(col, col), justify="left" if col == "method" else "right", no_wrap=True,
            min_width={"vs input": 13, "sanity_rank_corr": 5}.get(col),
        )  # fmt: skip
    for r in rows:
        over = r["margins"].get("input", {}).get("insertion_auc")
        half = "" if over is None or over["low"] is None else f"±{(over['high'] - over['low']) / 2:.3f}"
        margin = "-" if over is None else f"{over['mean']:+.3f}{half}"
        values = ["-" if r[k] is None else cells[k].format(r[k]) for k in shown]
        table.add_row(r["method"], *values, margin)
    return table


def _flag_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per raised flag, naming the methods that raise it."""
    lines = []
    for flag, why in (("fails_randomisation", "whole-model rank correlation > 0.5"),
                      ("class_agnostic", "head re-initialisation correlation >= 0.99")):  # fmt: skip
        methods = [r["method"] for r in rows if r[flag]]
        if methods:
            lines.append(f"{flag.replace('_', ' ')} ({why}): {', '.join(methods)}")
    return lines


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Option(help="A .safetensors checkpoint or a run folder.")],
    format: Annotated[str, typer.Option("--format", help="onnx or exported-program.")] = "onnx",
    output: Annotated[
        Path | None, typer.Option(help="File to write (default: next to the checkpoint).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
    tolerance: Annotated[float, typer.Option(help="Largest accepted difference from PyTorch.")] = 1e-4,
) -> None:
    """Export a checkpoint's model (dynamic batch), check the file and compare it with PyTorch."""
    with user_errors():
        try:
            report = export_checkpoint(
                checkpoint, fmt=format, output=output, force=force, tolerance=tolerance
            )
        except ExportError as err:  # the export itself is wrong: not a usage mistake
            err_console.print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False)
            raise typer.Exit(1) from None
    console.print(
        f"wrote [cyan]{escape(str(report.path))}[/cyan] ({report.format}, dynamic batch); outputs match "
        f"PyTorch at batch sizes {', '.join(map(str, report.batches))} within {report.max_abs_diff:.2g}"
    )


@app.command("models")
def models_command(
    size: Annotated[int, typer.Option(min=1, help="Input side for the multiply-add count.")] = 224,
    num_classes: Annotated[int, typer.Option(min=1, help="Classes for the parameter count.")] = 1000,
    attention: Annotated[
        str | None, typer.Option(help="Attention for every model (default: each model's).")
    ] = None,
    markdown: Annotated[bool, typer.Option(help="Print the Markdown page docs/models.md.")] = False,
) -> None:
    """The registered models: attention, parameters and multiply-adds at a chosen input size."""
    if markdown:
        print(models_markdown(size=size), end="")
        return
    table = Table(title=f"models ({num_classes} classes, GMACs of one {size}x{size} image)")
    for col in ("name", "attention", "parameters", "GMACs", "description"):
        table.add_column(col, justify="right" if col in ("parameters", "GMACs") else "left")
    with user_errors():
        if attention is not None and attention != "none":
            ATTENTION.get(attention)
    for name in MODELS.names():
        doc = escape((MODELS.get(name).__doc__ or "").strip().splitlines()[0])
        try:
            cost = model_cost(name, attention=attention, size=size, num_classes=num_classes)
        except (TypeError, ValueError) as err:  # this model cannot take that attention
            table.add_row(name, str(attention), "-", "-", escape(f"not with this attention: {err}"))
            continue
        table.add_row(name, cost.attention, f"{cost.parameters:,}", f"{cost.gmacs:.3f}", doc)
    console.print(table)


@app.command("attention")
def attention_command(
    channels: Annotated[int, typer.Option(min=1, help="Channels C for parameters and FLOPs.")] = 256,
    size: Annotated[int, typer.Option(min=2, help="Feature-map side for the FLOP count.")] = 56,
    markdown: Annotated[bool, typer.Option(help="Print the Markdown page docs/attention.md.")] = False,
) -> None:
    """The registered attention mechanisms: family, parameters, FLOPs, complexity, paper."""
    if markdown:
        print(catalog_markdown(channels=channels, size=size), end="")
        return
    table = Table(title=f"attention mechanisms (C={channels}, FLOPs at {size}x{size}, batch 1)")
    for col in ("name", "family", "parameters", "GFLOPs", "complexity", "paper"):
        table.add_column(col, justify="right" if col in ("parameters", "GFLOPs") else "left")
    for row in catalog(channels=channels, size=size):
        table.add_row(
            row.name,
            row.family,
            f"{row.parameters:,}",
            f"{row.gflops:.3f}",
            row.complexity,
            escape(row.paper),
        )
    console.print(table)


@app.command("bench")
def bench_command(
    names: Annotated[list[str] | None, typer.Argument(help="Mechanisms to measure (default: all).")] = None,
    sizes: Annotated[str, typer.Option(help="Comma-separated sides of the square feature maps.")] = "8,16,32",
    channels: Annotated[int, typer.Option(min=1, help="Channels C.")] = 64,
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 8,
    repeats: Annotated[int, typer.Option(min=1, help="Recorded rounds (the median is reported).")] = 10,
    backward: Annotated[bool, typer.Option(help="Also time forward + backward.")] = True,
    baselines: Annotated[bool, typer.Option(help="Interleave naive and timm baselines.")] = True,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write the rows to this CSV file.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Time, peak memory, FLOPs and matmul-rate share of attention mechanisms, beside naive and
    timm baselines measured in the same run (benchmarks/attention_suite.py writes the docs)."""
    from .bench import markdown, matmul_rate, run_attention_suite, write_csv

    with user_errors():
        side = [int(v) for v in sizes.split(",") if v.strip()]
        if not side or min(side) < 1:
            raise ValueError(f"--sizes must be positive integers separated by commas, got {sizes!r}")
        for name in names or []:
            ATTENTION.get(name)
        rate = matmul_rate(1024, device=device)
        rows = run_attention_suite(
            names, side, channels=channels, batch=batch, backward=backward, repeats=repeats,
            baselines=baselines, device=device, matmul_gflops=rate,
        )  # fmt: skip
        if csv_path is not None:
            write_csv(rows, csv_path)
    console.print(f"fp32 matmul rate: {rate:.1f} GFLOP/s")
    print(markdown(rows))  # a Markdown table: printed as is, never wrapped


def run() -> None:
    """Entry point of the ``visattn`` script."""
    app()
