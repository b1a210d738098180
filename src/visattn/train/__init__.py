"""Training: validated configs, the loop, checkpoints and evaluation."""

from ..tasks import EvalResult, evaluate
from .checkpoint import CheckpointError, load_model, read_checkpoint, save_weights
from .config import ConfigError, TrainConfig, resolve_config
from .loop import TrainingError, resolve_device, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EvalResult",
    "TrainConfig",
    "TrainingError",
    "evaluate",
    "load_model",
    "read_checkpoint",
    "resolve_config",
    "resolve_device",
    "save_weights",
    "train",
]
