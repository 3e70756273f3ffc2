"""A reinforcement job's checks at creation: its grader, OpenAI's RFT knobs, and its prompts against the grader.

The grader is parsed and checked (dora_graders.check) with errors naming
`method.reinforcement.grader.<field>`. Graders the training worker cannot run are a 400 now, not a
failed job later: python unless the operator enabled it (DORA_PYTHON_GRADER_ENABLED, which the worker
reads too: it lends the training loop a sandbox then), and a score_model or label_model whose judge
`model` the caller's tenant cannot be served (`check_judges`: the completions' resolution, its
404 or 400 a 400 naming `method.reinforcement.grader.model` or `...grader.graders.<name>.model`, as
an eval run's unknown `data_source.model`); the worker asks the judge through the inference servers
(worker/training_judge.py). `reasoning_effort` is accepted only
as "default" (no model here reasons), `compute_multiplier` is the whole number of answers sampled
per prompt. Every training (and validation) row is checked with dora_graders.check_item, so a
template that references a field a row lacks is a 400 naming the file's line and the field.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from api.errors import ApiError, bad_request
from api.eval_files import lines_of
from api.services import graders, serving_models
from dora_contract.graders import LabelModelGrader, MultiGrader, ScoreModelGrader
from dora_contract.job_spec import FileRef
from dora_contract.reinforcement import MAX_SAMPLES_PER_PROMPT
from dora_formats import PROMPTS
from dora_graders import GradingContext, ItemError, PythonSandbox, check_item
from store.settings import Settings
from store.storage import Storage

RL_PREFIX = "method.reinforcement"
GRADER_PARAM = f"{RL_PREFIX}.grader"
HYPER = f"{RL_PREFIX}.hyperparameters"
# OpenAI's knob -> the contract's name in ReinforcementSettings
RL_KNOBS = {"eval_samples": "eval_samples", "beta": "beta", "max_completion_tokens": "max_completion_tokens",
            "compute_multiplier": "samples_per_prompt"}


def parse_grader(data: Any, settings: Any = None) -> Any:
    """The job's grader, checked as the graders API checks one, its errors naming `method.reinforcement.grader.*`."""
    grader = graders.parse_grader(data, where=GRADER_PARAM)
    python_enabled = bool(getattr(settings, "python_grader_enabled", False))
    graders.check_grader(grader, GradingContext(python=PythonSandbox() if python_enabled else None), where=GRADER_PARAM)
    return grader


def judges(grader: Any, where: str = GRADER_PARAM) -> list[tuple[str, str]]:
    """(param, judge model) of each score_model and label_model in the grader, a multi grader's included."""
    if isinstance(grader, MultiGrader):
        return [found for name, sub in grader.graders.items() for found in judges(sub, f"{where}.graders.{name}")]
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return [(f"{where}.model", grader.model)]
    return []


def check_judges(session: Session, storage: Storage, settings: Settings, grader: Any, *, tenant_id: str,
                 tenant_name: str) -> None:
    """Each judge model resolves for the caller's tenant (a base, their `ft:` model or checkpoint); one that
    does not is a 400 naming its field, with the completions' code (model_not_found, model_not_servable)."""
    for param, model in judges(grader):
        try:
            serving_models.resolve_model(session, storage, settings, model=model, tenant_id=tenant_id,
                                         tenant_name=tenant_name)
        except ApiError as error:  # a field of the body: a 400 naming it, whatever the completions route says
            raise bad_request(f"the grader's judge: {error.message}", param=param, code=error.code) from None


def reinforcement_settings(grader_data: Any, hyperparameters: dict[str, Any],
                           settings: Any = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(ReinforcementSettings data, where each came from); pops OpenAI's RFT knobs from `hyperparameters`."""
    grader = parse_grader(grader_data, settings)
    effort = hyperparameters.pop("reasoning_effort", None)
    if effort is not None and effort != "default":
        raise bad_request(f"reasoning_effort '{effort}' is not available: the models fine-tuned here do not reason, "
                          "so only 'default' is accepted", param=f"{HYPER}.reasoning_effort")
    values: dict[str, Any] = {"grader": grader.model_dump(mode="json", exclude_none=True)}
    params = {"grader": GRADER_PARAM}
    for knob, name in RL_KNOBS.items():
        if knob in hyperparameters:
            values[name] = hyperparameters.pop(knob)
            params[name] = f"{HYPER}.{knob}"
    multiplier = values.get("samples_per_prompt")
    if multiplier is not None:
        if float(multiplier) != int(multiplier) or not 2 <= multiplier <= MAX_SAMPLES_PER_PROMPT:
            raise bad_request(f"compute_multiplier is the number of answers sampled per prompt: a whole number from "
                              f"2 to {MAX_SAMPLES_PER_PROMPT}, got {multiplier!r}", param=f"{HYPER}.compute_multiplier")
        values["samples_per_prompt"] = int(multiplier)
    return values, params


def check_prompt_rows(storage: Storage, grader_data: dict[str, Any], files: dict[str, FileRef | None]) -> None:
    """Every row of the job's files has what the grader's templates reference (a 400 naming line and field)."""
    grader = graders.GRADER.validate_python(grader_data)
    for param, file in files.items():
        if file is None:
            continue
        for number, line in enumerate(lines_of(storage.open_range(file.storage_key)), start=1):
            if not line.strip():
                continue
            try:
                check_item(grader, json.loads(line))
            except ItemError as error:
                raise bad_request(f"File {file.id} line {number}: {error.message}", param=param) from None
            except ValueError:
                return  # not JSONL (CSV/Parquet): the worker checks each row as it grades


def check_files(request: Any, run: Any, files: dict[str, FileRef | None], storage: Storage) -> None:
    """A reinforcement job trains on prompts files, on one GPU, each row holding what its grader reads; any
    other job refuses prompts files (the worker would fail either at once: dora_core/data/prepare.py)."""
    for param, file in files.items():
        if file is None or file.format is None:
            continue
        if run.reinforcement is None and file.format == PROMPTS:
            raise bad_request(f"File {file.id} holds prompts without answers, which only a reinforcement job trains "
                              "on (method type 'reinforcement')", param=param, code="invalid_file_format")
        if run.reinforcement is not None and file.format != PROMPTS:
            raise bad_request(f"File {file.id} is in {file.format} format; a reinforcement job trains on prompts rows "
                              "('messages' ending before the answer, plus the fields its grader reads)", param=param,
                              code="invalid_file_format")
    if run.reinforcement is None:
        return
    if request.gpus > 1:
        raise bad_request("a reinforcement job runs on one GPU for now (its sampling is not under DDP yet): "
                          "use gpus: 1",
                          param="gpus")
    check_prompt_rows(storage, run.reinforcement.grader.model_dump(mode="json", exclude_none=True), files)
