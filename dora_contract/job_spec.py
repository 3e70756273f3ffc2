"""What a job carries from the API to the worker: `jobs.settings`, typed (`JobSpec`).

The API writes `JobSpec(...).model_dump(mode="json")` into the job row; the worker and the
presenter read it back with `JobSpec.from_data(job.settings)` and nothing else, so a missing or
misspelled key is one SettingError naming the field, not a KeyError deep in the worker. Each
value is stored once: the outputs only in `run` (RunSettings, with its default); OpenAI's
`hyperparameters` are not stored, the API derives them from `run` when it shows the job.

Older rows are upgraded on read (a versioned reader), not by a migration: the rows stay as they
were written, the upgrade is a pure function tested here without a database, it behaves the same
on SQLite and PostgreSQL, and a migration would have to copy the new shape into a script that
cannot follow later changes of the contract. Version 0 is the shape without `version`:
`run_config`, `outputs` a second time at the top level, `openai_hyperparameters`, and
`base_model` {name, path, public_id}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dora_contract.base import ContractModel
from dora_contract.integrations import MAX_INTEGRATIONS, Integration, check_integrations
from dora_contract.run import RunSettings, check_one_validation_source

JOB_SPEC_VERSION = 1
MAX_JOB_EVALS = 8  # evals one job may name (each runs on every checkpoint: a run per eval and checkpoint)


class FileRef(ContractModel):
    """An uploaded file as the job saw it when it was created (the worker downloads storage_key)."""

    id: str = Field(min_length=1)
    storage_key: str = Field(min_length=1)
    format: str | None = None
    rows: int | None = Field(None, ge=0)


class BaseModelRef(ContractModel):
    """The base model registered under the job's model name when the job was created."""

    source: str = Field(min_length=1, description="folder, hub id, .gguf file or package:<distribution>; the "
                                                  "worker prefers the model's current registration")
    public_id: str | None = Field(None, min_length=1, description="what an adapter names as its base; null in jobs "
                                  "stored before registrations had one (the worker derives it then)")


class JobEval(ContractModel):
    """An eval the job runs on each checkpoint it saves and on its final model (issue #24).

    An eval has no data source of its own, so the job copies one when it is created: the
    `completions` data source of the eval's most recent completions run (its prompt template,
    sampling params and items), without its model; the worker adds each checkpoint's model."""

    eval_id: str = Field(min_length=1)
    template_run_id: str = Field(min_length=1, description="the run whose data source was copied")
    data_source: dict[str, Any] = Field(description="a completions data source without `model`")


class ParentRef(ContractModel):
    """The adapter a continued job starts from (issue #26): a fine-tuned model or a checkpoint of the
    same tenant, on the same base (the job's `model` is that base, so its `ft:` name shows it)."""

    model: str = Field(min_length=1, description="the id the job was created with: ft:... or ft:...:ckpt-step-<n>")
    job_id: str = Field(min_length=1, description="the job that trained it")
    step: int | None = Field(None, ge=0, description="the checkpoint's step; null: that job's final adapter")
    storage_prefix: str = Field(min_length=1, description="the folder of its PEFT files in the artifact storage")


class JobSpec(ContractModel):
    """One job's settings as the worker runs them (jobs.settings holds its JSON dump)."""

    version: Literal[JOB_SPEC_VERSION] = JOB_SPEC_VERSION  # the shape; older ones are upgraded on read
    run: RunSettings
    base_model: BaseModelRef
    training_file: FileRef
    validation_file: FileRef | None = None
    evals: tuple[JobEval, ...] = Field((), max_length=MAX_JOB_EVALS)  # absent in rows stored before #24
    parent: ParentRef | None = None  # continued training; absent in rows stored before #26
    # experiment tracking (W&B, MLflow: dora_contract/integrations.py); absent in rows stored before #26
    integrations: tuple[Integration, ...] = Field((), max_length=MAX_INTEGRATIONS)

    @field_validator("integrations")
    @classmethod
    def _one_of_each(cls, value: tuple[Integration, ...]) -> tuple[Integration, ...]:
        return check_integrations(value)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """A stored dump carries its version; without one, `run_config` marks version 0 (code that
        builds a JobSpec may leave the version out: it gets the current one)."""
        if isinstance(data, Mapping) and "version" not in data and "run_config" in data:
            return _from_version_0(data)
        return data

    @model_validator(mode="after")
    def _one_validation_source(self) -> JobSpec:
        check_one_validation_source(has_validation_file=self.validation_file is not None,
                                    validation_split=self.run.training.validation_split)
        return self


def _from_version_0(stored: Mapping[str, Any]) -> dict[str, Any]:
    """Version 0 as version 1, keeping a missing key missing (so its error says "is required").
    The top-level outputs were written from run_config's, so they only fill a run_config without
    any; the stored OpenAI hyperparameters and base model name (the job's `model`) are dropped."""
    upgraded: dict[str, Any] = {"version": JOB_SPEC_VERSION, "run": stored["run_config"]}
    if isinstance(upgraded["run"], Mapping) and "outputs" not in upgraded["run"] and "outputs" in stored:
        upgraded["run"] = {**upgraded["run"], "outputs": stored["outputs"]}
    base = stored.get("base_model")
    if isinstance(base, Mapping):
        upgraded["base_model"] = {new: base[old] for old, new in (("path", "source"), ("public_id", "public_id"))
                                  if base.get(old) is not None}
    elif base is not None:
        upgraded["base_model"] = base
    return upgraded | {key: stored[key] for key in ("training_file", "validation_file") if key in stored}
