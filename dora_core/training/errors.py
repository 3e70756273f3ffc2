"""The errors a run raises for a problem the user can fix, in a module of its own.

Both the loop (run.py) and the multi-process layer (distributed.py) raise TrainingError, and the
worker and `dora train` tell it from a crash; a leaf module lets each import it without importing
the other. DataError (a dataset and settings that make no training set, e.g. a validation_split
that leaves no training rows) is the data pipeline's own (dora_core/data/errors.py, which cannot
import this package), re-exported here so the two are found together. Neither would go
differently on another attempt.
"""

from __future__ import annotations

from dora_core.data.errors import DataError

__all__ = ["DataError", "TrainingError"]


class TrainingError(RuntimeError):
    """A run that cannot go on; the message is meant for the user (it becomes the job's error)."""
