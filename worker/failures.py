"""What a user reads when a job fails: a code and one readable message, never a traceback.

Failures that would repeat on every attempt (a bad dataset, a dataset the settings make no
training set of, a missing model, an invalid setting, CUDA out of memory at micro-batch 1) fail
the job at once. Anything else (a storage or database error, a bug) may be transient: the
attempt is released and retried, up to the job's attempt cap. The full traceback goes to the worker's log only.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_MESSAGE = 1000


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    retry: bool
    param: str | None = None


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _dataset_message(error, file_id: str | None) -> str:
    shown = "; ".join(str(issue) for issue in error.errors[:5])
    more = error.error_count - min(5, len(error.errors))
    tail = f" (and {more} more)" if more > 0 else ""
    what = f"The training file {file_id}" if file_id else "The training file"
    return f"{what} cannot be used for training: {error.error_count} problem(s): {shown}{tail}"


def describe(error: BaseException, *, training_file: str | None = None, time_limit: int | None = None) -> Failure:
    """The user-facing failure for an exception raised while running a job."""
    from celery.exceptions import SoftTimeLimitExceeded

    from dora_core.config import AdapterConfigError
    from dora_core.model_loading import ModelLoadError, ModelNotFoundError
    from dora_core.peft_format import AdapterFormatError
    from dora_core.training.errors import DataError, TrainingError
    from dora_formats import DatasetFormatError

    if isinstance(error, DatasetFormatError):
        return Failure("invalid_training_file", _clip(_dataset_message(error, training_file)), False, "training_file")
    if isinstance(error, ModelNotFoundError):
        return Failure("model_not_found", _clip(f"The base model could not be found on the worker: {error}"), False,
                       "model")
    if isinstance(error, ModelLoadError):
        return Failure("model_load_failed", _clip(f"The base model could not be loaded: {error}"), False, "model")
    if isinstance(error, AdapterConfigError):
        return Failure("invalid_hyperparameters", _clip(f"Invalid setting '{error.field}': {error.message}"), False,
                       "method")
    if isinstance(error, DataError):  # the data with the run's settings: the same on every attempt
        if error.field is None:
            what = f"The training file {training_file}" if training_file else "The training file"
            return Failure("invalid_training_file", _clip(f"{what} cannot be used for training: {error.message}"),
                           False, "training_file")
        return Failure("invalid_hyperparameters", _clip(f"Invalid setting '{error.field}': {error.message}"), False,
                       "method")
    if isinstance(error, AdapterFormatError):  # a continued job's starting adapter does not fit
        return Failure("invalid_model", _clip(f"The adapter to continue from cannot be used: {error}"), False, "model")
    if isinstance(error, TrainingError):
        return Failure("training_failed", _clip(str(error)), False)
    if isinstance(error, SoftTimeLimitExceeded):
        hours = f" of {time_limit / 3600:g} hours" if time_limit else ""
        return Failure("time_limit_exceeded", f"The job ran past the time limit{hours} and was stopped", False)
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError outside the training loop
        return Failure("out_of_memory", _clip(f"Out of GPU memory: {error}"), False)
    return Failure("internal_error", _clip(f"{type(error).__name__}: {error}"), True)


def exhausted(failure: Failure, *, attempts: int) -> Failure:
    """The final failure of a job whose last allowed attempt failed with a retryable error."""
    return Failure("attempts_exhausted",
                   _clip(f"The job failed on all {attempts} attempts; the last error was: {failure.message}"), False)
