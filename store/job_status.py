"""A fine-tuning job's status names: the one place they are spelled (store/jobs.py re-exports them).

Kept apart from store/jobs.py so store/models.py can use them without importing the state
machine (which imports the models). The values are what the database stores and the API
shows (OpenAI's names), so changing one needs a data migration.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """queued -> running -> succeeded | failed | cancelled; queued -> cancelled; running -> queued (released)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset(JobStatus) - TERMINAL
