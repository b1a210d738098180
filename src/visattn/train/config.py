"""Training configuration: defaults < YAML file < command-line flags, validated before any
work starts.

Every problem is reported at once, in one message, so a user fixes a config in one go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..attention import ATTENTION
from ..data import DATASETS
from ..registry import MODELS


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem."""


class TrainConfig(BaseModel):
    """Everything a training run depends on. Saved as ``config.yaml`` in the run folder, from
    which the run can be repeated with ``visattn train --config``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)

    model: str = "attention_cnn"
    attention: str = Field("mhsa", description="registered attention name, or 'none'")
    attention_options: dict[str, Any] = Field(default_factory=dict)
    model_options: dict[str, Any] = Field(default_factory=dict)
    dataset: str = "cluttered-mnist"
    data_dir: Path | None = None
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup: float = Field(0.15, ge=0, lt=1, description="fraction of the steps spent warming up")
    seed: int = 0
    output: Path = Path("runs")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    workers: int = Field(0, ge=0, description="data-loading worker processes")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return _registered(MODELS.names(), v, "model")

    @field_validator("attention")
    @classmethod
    def _known_attention(cls, v: str) -> str:
        return _registered([*ATTENTION.names(), "none"], v, "attention")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        return _registered(DATASETS.names(), v, "dataset")

    @field_validator("data_dir")
    @classmethod
    def _existing_dir(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"{v} does not exist or is not a folder")
        return v

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword options for ``create_model`` besides the class and channel counts."""
        kwargs = dict(self.model_options)
        kwargs["attention"] = None if self.attention == "none" else self.attention
        if self.attention_options:
            kwargs["attention_options"] = dict(self.attention_options)
        return kwargs

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


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
