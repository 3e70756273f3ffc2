"""What a user reads when a job fails: a code, one readable line, and whether it is retried."""

from __future__ import annotations

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded

from dora_core.config import AdapterConfigError
from dora_core.model_loading import ModelNotFoundError
from dora_core.training import TrainingError
from dora_formats import DatasetFormatError
from dora_formats.records import ValidationIssue
from worker.failures import describe, exhausted


def test_failures_that_would_repeat_are_final_and_say_what_to_change():
    oom = describe(TrainingError("CUDA out of memory at micro-batch size 1: use a smaller max_seq_len, "
                                 "gradient_checkpointing, or a GPU with more memory"))
    assert (oom.code, oom.retry) == ("training_failed", False) and "micro-batch size 1" in oom.message
    bad = describe(DatasetFormatError([ValidationIssue(3, "messages must be a list", "messages")], source="/w/x"),
                   training_file="file-abc")
    assert bad.code == "invalid_training_file" and not bad.retry
    assert bad.message == ("The training file file-abc cannot be used for training: 1 problem(s): "
                           "line 3: messages must be a list") and "/w/x" not in bad.message
    assert describe(ModelNotFoundError("no such model")).code == "model_not_found"
    assert describe(AdapterConfigError("training.max_steps", "must be at least 1")).message == \
        "Invalid setting 'training.max_steps': must be at least 1"
    assert describe(SoftTimeLimitExceeded(), time_limit=7200).message == \
        "The job ran past the time limit of 2 hours and was stopped"
    assert describe(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")).code == "out_of_memory"


def test_anything_else_is_retried_and_the_last_attempt_names_the_error_in_one_line():
    failure = describe(OSError("disk\nfull"))
    assert failure.retry and failure.code == "internal_error" and failure.message == "OSError: disk full"
    final = exhausted(failure, attempts=3)
    assert final.code == "attempts_exhausted" and not final.retry
    assert final.message == "The job failed on all 3 attempts; the last error was: OSError: disk full"


def test_a_dataset_the_tokenizer_cannot_take_fails_the_job_at_once_naming_the_line(tmp_path, tiny_model_dir,
                                                                                    monkeypatch):
    """A row the tokenizer raises on (a lone surrogate: TypeError from the Rust tokenizer) was an
    internal error, retried on every attempt; now it fails the job at once, naming the line."""
    import importlib

    from dora_core.data import prepare_datasets
    from dora_core.model_loading import load_tokenizer
    from dora_formats import Example, Segment, read_jsonl_examples

    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "good"}\n{"text": "also good"}\n{"text": "bad"}\n')
    examples, result = read_jsonl_examples(path)
    poisoned = [*examples[:2], Example(line=3, format="text", segments=(Segment("text", "a\ud800b", True),))]
    # a row today's validation refuses, as a file stored before it (or a gap in it) would bring
    monkeypatch.setattr(importlib.import_module("dora_core.data.prepare"), "read_examples",
                        lambda *args, **kw: (poisoned, result))
    tokenizer = load_tokenizer(tiny_model_dir, local_files_only=True)
    with pytest.raises(DatasetFormatError) as caught:
        prepare_datasets(path, tokenizer, max_seq_len=32)
    failure = describe(caught.value, training_file="file-abc")
    assert (failure.code, failure.retry, failure.param) == ("invalid_training_file", False, "training_file")
    assert failure.message.startswith("The training file file-abc cannot be used for training: 1 problem(s): "
                                      "line 3: the tokenizer cannot encode this row (TypeError: "), failure.message


def test_a_validation_split_that_leaves_no_training_rows_fails_at_once_naming_the_setting():
    """N6: dora_core raised a bare ValueError here, which the worker took for a bug and retried
    on every attempt, then reported attempts_exhausted. It is a DataError now: final at once."""
    import pickle

    from dora_core.data import DataError, split_examples

    with pytest.raises(DataError) as caught:
        split_examples(["the only row"], fraction=0.5, seed=0)
    assert caught.value.field == "training.validation_split"
    for error in (caught.value, pickle.loads(pickle.dumps(caught.value))):  # noqa: S301 - our own bytes: as a rank's error file
        failure = describe(error, training_file="file-abc")
        assert (failure.code, failure.retry, failure.param) == ("invalid_hyperparameters", False, "method")
        assert failure.message == ("Invalid setting 'training.validation_split': validation_split=0.5 of 1 rows "
                                   "leaves no training rows; use a smaller fraction, more rows, or a validation file")
