"""A whole fine-tuning run: settings, the loop, checkpoints with exact resume, outputs."""

from dora_core.training.callbacks import CallbackList, TrainingCallback
from dora_core.training.run import RunResult, TrainingError, run_training
from dora_core.training.settings import RunConfig, TrainingSettings

__all__ = ["CallbackList", "RunConfig", "RunResult", "TrainingCallback", "TrainingError", "TrainingSettings",
           "run_training"]
