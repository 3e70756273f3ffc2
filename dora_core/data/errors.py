"""The error the data pipeline raises for a dataset, or a data setting, that no run could train on.

It is the same on every attempt, so the worker fails the job at once instead of retrying it
(worker/failures.py); a bare ValueError from here would be taken for a bug. Problems found in
the rows themselves are `dora_formats.DatasetFormatError`, with line numbers.
"""

from __future__ import annotations


class DataError(ValueError):
    """The dataset and the run's settings cannot make a training set: e.g. `validation_split`
    leaves no training rows. `field` names the run setting to change (`training.validation_split`),
    None when only the data can be changed; the message is meant for the user."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field

    def __reduce__(self):  # pickled from a rank's process to the job's (dora_core/training/processes.py)
        return _rebuild, (self.message, self.field)


def _rebuild(message: str, field: str | None) -> DataError:
    return DataError(message, field=field)
