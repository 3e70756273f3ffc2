"""The error a run raises for a problem the user can fix, in a module of its own.

Both the loop (run.py) and the multi-process layer (distributed.py) raise it, and the worker and
`dora train` tell it from a crash; a leaf module lets each import it without importing the other.
"""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot go on; the message is meant for the user (it becomes the job's error)."""
