"""A whole fine-tuning run: settings, the loop, checkpoints with exact resume, outputs."""

from dora_core.training.callbacks import CallbackList, TrainingCallback
from dora_core.training.errors import TrainingError
from dora_core.training.run import RunResult, run_training
from dora_core.training.settings import RunConfig, TrainingSettings

__all__ = ["CallbackList", "RunConfig", "RunResult", "TrainingCallback", "TrainingError", "TrainingSettings",
           "run_training"]
