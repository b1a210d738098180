"""Training configuration: defaults < YAML file < command-line flags, validated before any
work starts.

Every problem is reported at once, in one message, so a user fixes a config in one go.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..attention import ATTENTION
from ..data import DATASETS
from ..data.detection_sets import DETECTION_DATASETS
from ..registry import MODELS, TASKS
from ..tasks import TASKS as _TASKS  # noqa: F401 - registers the tasks


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem."""


class TrainConfig(BaseModel):
    """Everything a training run depends on. Saved as ``config.yaml`` in the run folder, from
    which the run can be repeated with ``visattn train --config``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)

    # what to train
    task: str = Field("classification", description="What is learned (see visattn.tasks)")
    model: str = Field(
        None,
        description="Model name (see `visattn models`); unset: the task's (attention_cnn; detection: fcos)",
    )
    attention: str | None = Field(
        None, description="Attention name (see `visattn attention`), 'none', or unset: the model's own"
    )
    attention_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the attention module, a YAML mapping: '{heads: 2}'"
    )
    model_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the model, a YAML mapping: '{widths: [8, 16]}'"
    )
    # data
    dataset: str = Field(
        None,
        description=f"Data set: {', '.join(DATASETS.names())}; detection: "
        f"{', '.join(DETECTION_DATASETS.names())}; unset: the task's (cluttered-mnist; detection: "
        "cluttered-mnist-detection)",
    )
    data_dir: Path | None = Field(None, description="Folder holding (or caching) the data")
    augment: Literal["none", "basic", "trivial"] | None = Field(
        None, description="Augmentation (basic: crop + flip); unset: the data set's default"
    )
    img_size: int | None = Field(
        None, ge=1, description="Image folders: side of the training images; unset: chosen from the images"
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Image folders without val/: held-out share")
    max_bad_fraction: float = Field(0.05, ge=0, le=1, description="Image folders: unusable files allowed")
    workers: int = Field(
        0, ge=0, description="Data-loading worker processes", json_schema_extra={"short": "-j"}
    )
    # optimisation
    epochs: int = Field(12, ge=1, description="Number of epochs")
    batch_size: int = Field(
        64,
        ge=1,
        description="Global batch per step, split over the processes (detection: 32)",
        json_schema_extra={"short": "-b"},
    )
    grad_accum_steps: int = Field(1, ge=1, description="Batches accumulated per optimizer step")
    opt: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer (sgd: with Nesterov momentum)")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.05, ge=0, description="Weight decay (not on biases and norms)")
    sched: Literal["cosine", "step"] = Field("cosine", description="Schedule after the linear warm-up")
    warmup: float = Field(0.15, ge=0, lt=1, description="Fraction of the steps spent warming up")
    step_every: int = Field(3, ge=1, description="Step schedule: epochs between decays")
    step_gamma: float = Field(0.1, gt=0, le=1, description="Step schedule: decay factor")
    smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing")
    clip_grad: float | None = Field(
        None, gt=0, description="Clip the gradient norm to this value; unset: no clipping"
    )
    model_ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an EMA of the weights with this decay and evaluate it; unset: none",
    )
    # numerics and speed
    amp: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision (auto: bf16 on CUDA)"
    )
    channels_last: bool = Field(False, description="Channels-last memory format for images and weights")
    compile: bool = Field(False, description="torch.compile the model")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Device (auto: CUDA, MPS, then CPU)"
    )
    deterministic: bool = Field(False, description="Deterministic kernels only (slower on CUDA)")
    sync_bn: bool = Field(False, description="SyncBatchNorm under torchrun (CUDA only)")
    # run management
    seed: int = Field(0, description="Random seed")
    output: Path = Field(Path("runs"), description="Parent folder of the run folders")
    checkpoint_every: int = Field(
        0, ge=0, description="Also checkpoint every N optimizer steps (0: epochs only)"
    )
    keep: int = Field(2, ge=0, description="Step checkpoints kept besides last and best")
    nan: Literal["stop", "skip"] = Field("stop", description="On a non-finite loss: stop, or skip the step")
    tensorboard: bool = Field(False, description="Also write TensorBoard scalars")
    scorecard_images: int = Field(
        200, ge=0, description="Test images of the closing quick scorecard (0: none)"
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        return _registered(TASKS.names(), v, "task")

    @field_validator("attention_options", "model_options", mode="before")
    @classmethod
    def _yaml_mapping(cls, v: Any) -> Any:
        """A mapping given as text (a command-line flag) is read as YAML."""
        if not isinstance(v, str):
            return v
        try:
            parsed = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ValueError("is not valid YAML; give a mapping such as '{heads: 2}'") from None
        return {} if parsed is None else parsed

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, values: Any) -> Any:
        """Unset settings in ``Task.config_defaults`` (model, data set, ...) take the task's value."""
        if not isinstance(values, dict) or values.get("task", "classification") not in TASKS:
            return values
        filled = dict(values)
        for key, default in TASKS.get(values.get("task", "classification")).config_defaults.items():
            if filled.get(key) is None:
                filled[key] = default
        return filled

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str, info: ValidationInfo) -> str:
        kind = _task_of(info)
        return _registered((kind.models if kind else MODELS).names(), v, _what("model", kind))

    @field_validator("attention")
    @classmethod
    def _known_attention(cls, v: str | None) -> str | None:
        return v if v is None else _registered([*ATTENTION.names(), "none"], v, "attention")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str, info: ValidationInfo) -> str:
        kind = _task_of(info)
        return _registered((kind.datasets if kind else DATASETS).names(), v, _what("dataset", kind))

    @field_validator("data_dir")
    @classmethod
    def _existing_dir(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"{v} does not exist or is not a folder")
        return v

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, v: bool) -> bool:
        if v and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("needs the tensorboard package (pip install tensorboard)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of "
                f"grad_accum_steps ({self.grad_accum_steps})"
            )
        return self

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword options for ``create_model`` besides the class and channel counts."""
        kwargs = dict(self.model_options)
        if self.attention is not None:  # unset: the model's own attention
            kwargs["attention"] = None if self.attention == "none" else self.attention
        if self.attention_options:
            kwargs["attention_options"] = dict(self.attention_options)
        return kwargs

    def data_kwargs(self) -> dict[str, Any]:
        """Keyword options for ``load_dataset``."""
        # ``img_size`` unset: the data set chooses (``DataBundle.image_size``, ``size_note``).
        return {
            "data_dir": self.data_dir, "augment": self.augment, "image_size": self.img_size,
            "val_fraction": self.val_fraction, "max_bad_fraction": self.max_bad_fraction, "seed": self.seed,
        }  # fmt: skip

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _task_of(info: ValidationInfo) -> Any:
    """The task class of the config being validated (``None`` if its name was invalid)."""
    return TASKS.get(info.data["task"]) if "task" in info.data else None


def _what(noun: str, kind: Any) -> str:
    return noun if kind is None or kind.name == "classification" else f"{kind.name} {noun}"


def _registered(names: list[str], value: str, what: str) -> str:
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(names)}")
    return value


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping stored in a YAML config file; ``ConfigError`` if it is not one."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def resolve_config(path: Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (``None`` values are
    ignored, so unset command-line flags do not mask the file)."""
    values = read_yaml(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError("invalid config: " + "; ".join(_describe(e) for e in err.errors())) from None


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {error.get('input')!r})"


#: Settings that may differ when a run is resumed: they do not change what is computed.
RESUME_FREE = ("device", "workers", "tensorboard", "output", "scorecard_images")


def resume_config(run_dir: Path, **overrides: Any) -> TrainConfig:
    """The configuration of the run in ``run_dir``, for ``--resume``. Overrides may only
    change settings in ``RESUME_FREE``; any other flag that differs from the run's own
    config is an error, since the continued run would no longer be the same run."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    original = resolve_config(saved)
    given = {k: v for k, v in overrides.items() if v is not None}
    changed = resolve_config(saved, **given)
    conflicts = [k for k in given if k not in RESUME_FREE and getattr(changed, k) != getattr(original, k)]
    if conflicts:
        raise ConfigError(
            f"--resume continues {run_dir} with its own config; these flags differ from it: "
            f"{', '.join(conflicts)} (start a new run to change them)"
        )
    return original.model_copy(update={k: getattr(changed, k) for k in RESUME_FREE})
