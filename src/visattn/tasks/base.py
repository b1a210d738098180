"""The task interface: everything the training loop needs to know about what is learned.

A task says what a batch is (how the loader collates it and how it reaches the device), how
the training loss and its running metrics are computed, how a model is evaluated (with the
one score that picks ``best.safetensors``), what a checkpoint must record to rebuild the
model, and which figures a finished run writes. The loop in ``train/loop.py`` calls nothing
else, so a new task -- detection, dense prediction -- is a new file here, not a change there.

Detection, for example, fits as: a batch is ``(images, targets)`` with ``targets`` a list of
``{"boxes": (n, 4), "labels": (n,)}`` tensors (``collate`` keeps them a list); the loss is the
sum of the detector's loss dict, whose entries become the running metrics; the evaluation is
COCO mAP (pycocotools) with ``score = "map"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..data import DataBundle
from ..registry import Registry


@dataclass
class StepOutput:
    """What one micro-batch of training gives the loop.

    Attributes:
        loss: the scalar to back-propagate (fp32).
        count: samples in the micro-batch; it weights the running means.
        values: per-batch means of the running training metrics, named as in
            ``Task.train_metrics`` (detached scalars).
    """

    loss: torch.Tensor
    count: int
    values: dict[str, torch.Tensor] = field(default_factory=dict)


class Evaluation(Protocol):
    """The result of ``Task.evaluate`` on the test split."""

    @property
    def score(self) -> float:
        """The number that decides the best epoch; higher is better."""
        ...

    def row(self) -> dict[str, str]:
        """The task's ``metrics.csv`` columns (``Task.eval_columns``), formatted."""
        ...


class Task(ABC):
    """One kind of learning problem over a data set.

    Args:
        bundle: the data set's splits and geometry, as ``load_dataset`` returns them.

    The loop builds a task with ``from_config``, which reads the task's own settings (such
    as ``smoothing``) off the run configuration.

    Class attributes:
        score: name of ``Evaluation.score``; the run records ``best_test_<score>``.
        train_metrics: running training metrics, written as ``train_<name>`` columns.
        eval_columns: evaluation columns of ``metrics.csv``, after the training ones.
    """

    name: str
    score: str
    train_metrics: tuple[str, ...]
    eval_columns: tuple[str, ...]
    #: the registries of the models it trains and of its data sets
    models: Registry
    datasets: Registry
    #: run settings whose default is the task's (``model`` and ``dataset`` at least)
    config_defaults: dict[str, Any]

    def __init__(self, bundle: DataBundle) -> None:
        self.bundle = bundle

    @classmethod
    def from_config(cls, bundle: DataBundle, config: Any) -> Task:
        """The task for ``bundle`` with its settings taken from ``config`` (a ``TrainConfig``)."""
        return cls(bundle)

    @classmethod
    @abstractmethod
    def load_data(cls, name: str, **options: Any) -> DataBundle:
        """The data set ``name`` of ``datasets`` (options: ``visattn.data.DataOptions``)."""

    @classmethod
    @abstractmethod
    def rebuild(cls, meta: dict[str, Any]) -> nn.Module:
        """The model a checkpoint describes (``meta``: ``describe()`` plus ``model`` and
        ``model_kwargs``), with fresh weights."""

    def model_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """The options model ``name`` is built with: ``options`` plus what the task reads off the
        data (they are stored in checkpoints, so the model is rebuilt without the data)."""
        return dict(options)

    def epoch_warnings(self, train: dict[str, float], evaluation: Evaluation) -> list[str]:
        """Problems seen after an epoch (training means, evaluation) that the log must show."""
        return []

    @abstractmethod
    def build_model(self, name: str, options: dict[str, Any]) -> nn.Module:
        """The registered model ``name`` shaped for this data (classes, channels)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts a checkpoint needs to rebuild and feed the model."""

    @abstractmethod
    def collate(self, batch: Any) -> Any:
        """The ``collate_fn`` of the training loader."""

    @abstractmethod
    def to_device(self, batch: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
        """Move a collated batch to ``device``; images in ``memory_format``."""

    @abstractmethod
    def training_loss(self, forward: Callable[..., Any], batch: Any) -> StepOutput:
        """Forward ``batch`` through ``forward`` (the possibly wrapped model) and return the
        loss; called inside the loop's autocast and DDP contexts."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, *, device: torch.device, rank: int, world: int, channels_last: bool
    ) -> Evaluation:
        """Evaluate ``model`` on the test split; under DDP each rank takes its share and the
        result is the same on every rank."""

    @abstractmethod
    def summary(self, evaluation: Evaluation) -> dict[str, Any]:
        """What ``summary.json`` records of the final evaluation (JSON values)."""

    @abstractmethod
    def write_figures(
        self, model: nn.Module, evaluation: Evaluation, run_dir: Path, *, device: torch.device
    ) -> dict[str, Any]:
        """Write the run's figures (and closing explanation scores) into ``run_dir`` (main
        process only); returns the ``summary.json`` entries naming them."""


def as_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` with exactly the strides ``memory_format`` gives its shape.

    ``Tensor.contiguous`` is not enough: it ignores the strides of size-1 dimensions, so a
    one-channel batch stored channel-last, ``(B, 1, H, W)`` with strides ``(HW, 1, W, 1)``,
    counts as contiguous and is passed on as it is. Convolution then takes it for a
    channels-last input and returns the first layer's weight gradient channels-last, which
    DDP's gradient buckets (laid out like the parameter) do not expect: every rank warns
    "Grad strides do not match bucket view strides" and copies that gradient at every step.

    Args:
        x: a 4-D image batch ``(B, C, H, W)``; other ranks are returned unchanged.
        memory_format: ``torch.contiguous_format`` or ``torch.channels_last``.
    """
    if x.ndim != 4:
        return x
    _, c, h, w = x.shape
    want = (c * h * w, 1, w * c, c) if memory_format == torch.channels_last else (c * h * w, h * w, w, 1)
    return x if x.stride() == want else x.clone(memory_format=memory_format)
