"""Training tasks: what a batch is, the loss, the metrics and the figures of a run.

Each task registers itself in ``TASKS``; ``TrainConfig.task`` names one.
"""

from ..registry import TASKS
from .base import Evaluation, StepOutput, Task, as_memory_format
from .classification import Classification
from .detection import Detection, DetectionEval
from .evaluate import EvalResult, evaluate

__all__ = [
    "TASKS",
    "Classification",
    "Detection",
    "DetectionEval",
    "EvalResult",
    "Evaluation",
    "StepOutput",
    "Task",
    "as_memory_format",
    "evaluate",
]
