"""Operator limits, applied on top of the run contract in this one place.

The contract bounds what can run at all (rank <= 1024); an operator narrows that for their
service with `DORA_*` settings (rank range, epochs, steps, batch, sequence length). A value the
client gave outside the operator's range is a 400 naming the field; a contract default outside
it is clamped into it, so a request that gives nothing is never refused for a value it did not send.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api.errors import bad_request
from dora_contract import AdapterSettings, TrainingSettings
from store.settings import Settings

# (contract section, field) -> (Settings attribute of the lowest allowed value or None, of the highest)
OPERATOR_LIMITS: dict[tuple[str, str], tuple[str | None, str]] = {
    ("adapter", "rank"): ("min_rank", "max_rank"),
    ("training", "epochs"): (None, "max_epochs"),
    ("training", "max_steps"): (None, "max_steps_limit"),
    ("training", "micro_batch_size"): (None, "max_batch_size"),
    ("training", "max_seq_len"): (None, "max_seq_len_limit"),
}
SECTIONS = {"adapter": AdapterSettings, "training": TrainingSettings}


def apply_operator_limits(given: dict[str, dict[str, Any]], settings: Settings,
                          param_of: Callable[[str, str], str]) -> None:
    """Check the given values and clamp the defaults, in place: given = {"adapter": {...}, "training": {...}}."""
    for (section, name), (low_attr, high_attr) in OPERATOR_LIMITS.items():
        low = getattr(settings, low_attr) if low_attr else None
        high = getattr(settings, high_attr)
        values = given[section]
        if name in values:
            value = values[name]
            if value is not None and not ((low is None or value >= low) and value <= high):
                bounds = f"between {low} and {high}" if low is not None else f"at most {high}"
                raise bad_request(f"{param_of(section, name).rsplit('.', 1)[-1]} must be {bounds} on this server "
                                  f"(got {value})", param=param_of(section, name), code="out_of_range")
            continue
        default = SECTIONS[section].model_fields[name].default
        if default is not None:
            clamped = min(max(default, low), high) if low is not None else min(default, high)
            if clamped != default:
                values[name] = type(default)(clamped)


def check_gpus(settings: Settings, gpus: int) -> None:
    """A job asking for more GPUs than any worker has would wait in its queue forever: a 400 now.
    One host only: torch.distributed's rendezvous could span hosts, but a run's outputs and
    checkpoints are files of rank 0's host (dora_core/training/distributed.py)."""
    if gpus > settings.max_job_gpus:
        raise bad_request(f"gpus must be at most {settings.max_job_gpus} on this server (got {gpus}): no worker has "
                          f"more GPUs (DORA_MAX_JOB_GPUS), and a job runs on one host", param="gpus",
                          code="out_of_range")
