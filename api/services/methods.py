"""From the request's `method` to the run contract a worker executes (`JobSpec.run` in jobs.settings).

Every value a request leaves out takes the run contract's default (dora_contract), the same one
`dora train` uses; operator limits are applied on top (services/limits.py). OpenAI's `supervised`
method is a DoRA run: n_epochs and batch_size carry over, learning_rate = multiplier x the
contract's default learning rate. A `dora` or `lora` method takes every setting, the adapter's
either beside `hyperparameters` or (OpenAI's convention for a method's own knobs) inside it.
OpenAI's `dpo` method is a DoRA (or, with `adapter: "lora"`, LoRA) run with `dpo` set: its
hyperparameters are those of `dora` plus `beta`, and OpenAI's four may be "auto" (the contract's
default; beta's is DEFAULT_DPO_BETA, 0.1). OpenAI's `reinforcement` method is the same with
`reinforcement` set: its grader (checked here: api/services/reinforcement.py) and OpenAI's RFT knobs
(compute_multiplier = answers sampled per prompt, eval_samples, eval_interval; reasoning_effort
only "default"), plus beta and max_completion_tokens of the contract.

The resolved `RunSettings` is stored as the job spec's `run` (dora_contract/job_spec.py): the
worker adds the local paths and hands it to dora_core unchanged. The job shows the same values
under the API's names (`method.<kind>.hyperparameters`), so a client sees exactly what will run;
OpenAI's top-level `hyperparameters` are derived from it when shown, never stored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

from api.errors import bad_request
from api.present import DEFAULT_LEARNING_RATE, openai_hyperparameters
from api.schemas.jobs import JobCreate, SupervisedMethod
from api.schemas.run_fields import ADAPTER_FIELDS, API_NAMES, CONTRACT_NAMES, TRAINING_FIELDS
from api.services.limits import apply_operator_limits
from api.services.reinforcement import GRADER_PARAM, reinforcement_settings
from dora_contract import RunSettings, SettingError, check_one_validation_source
from store.settings import Settings


def _given(model: BaseModel | None, *, exclude: set[str] = frozenset()) -> dict[str, Any]:
    """The fields a client set (null means "the default", like leaving it out)."""
    return {} if model is None else model.model_dump(exclude_none=True, exclude=exclude)


def _auto(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value != "auto"}


class _Request:
    """One request's settings in contract names, and where each came from (for error params)."""

    def __init__(self) -> None:
        self.adapter: dict[str, Any] = {}
        self.training: dict[str, Any] = {}
        self.dpo: dict[str, Any] | None = None  # a dpo method's settings (beta)
        self.reinforcement: dict[str, Any] | None = None  # a reinforcement method's settings (grader, ...)
        self.adapter_method = "dora"
        self.params: dict[tuple[str, str], str] = {}
        self.default_prefix = ""

    def param(self, section: str, name: str) -> str:
        api_name = API_NAMES.get(name, name)
        return self.params.get((section, name), f"{self.default_prefix}.{api_name}")

    def take_training(self, hp: dict[str, Any], prefix: str) -> None:
        multiplier = hp.pop("learning_rate_multiplier", None)
        for api_name, value in hp.items():
            name = CONTRACT_NAMES.get(api_name, api_name)
            self.training[name] = value
            self.params["training", name] = f"{prefix}.{api_name}"
        if multiplier is not None:
            self.training["learning_rate"] = DEFAULT_LEARNING_RATE * multiplier
            self.params["training", "learning_rate"] = f"{prefix}.learning_rate_multiplier"

    def take_adapter(self, values: dict[str, Any], prefix: str) -> None:
        for name, value in values.items():
            self.adapter[name] = value
            self.params["adapter", name] = f"{prefix}.{name}"


def _from_supervised(request: JobCreate) -> _Request:
    method = request.method
    supervised = (method.supervised if method else None) or SupervisedMethod(hyperparameters=request.hyperparameters)
    prefix = "method.supervised.hyperparameters" if method else "hyperparameters"
    given = _Request()
    given.default_prefix = prefix
    given.take_training(_auto(_given(supervised.hyperparameters)), prefix)
    return given


def _from_adapter_method(request: JobCreate, kind: str, *, hyperparameters: dict[str, Any] | None = None) -> _Request:
    block = getattr(request.method, kind)
    prefix = f"method.{kind}"
    beside = _given(block, exclude={"hyperparameters", "adapter", "grader"})
    inside = hyperparameters if hyperparameters is not None else _given(
        block.hyperparameters if block is not None else None)
    both = [name for name in ADAPTER_FIELDS if name in beside and name in inside]
    if both:
        name = both[0]
        raise bad_request(f"'{prefix}.{name}' and '{prefix}.hyperparameters.{name}' are both given: "
                          f"give {name} in one place", param=f"{prefix}.hyperparameters.{name}",
                          code="conflicting_parameters")
    given = _Request()
    given.default_prefix = f"{prefix}.hyperparameters"
    given.take_adapter(beside, prefix)
    given.take_adapter({name: inside.pop(name) for name in ADAPTER_FIELDS if name in inside},
                       f"{prefix}.hyperparameters")
    given.take_training(inside, f"{prefix}.hyperparameters")
    return given


def _from_dpo(request: JobCreate) -> _Request:
    """OpenAI's dpo block: its knobs ("auto" = default) and beta, plus the dora method's settings."""
    block = request.method.dpo
    prefix = "method.dpo.hyperparameters"
    hyperparameters = _auto(_given(block.hyperparameters if block is not None else None))
    beta = hyperparameters.pop("beta", None)
    given = _from_adapter_method(request, "dpo", hyperparameters=hyperparameters)
    given.dpo = {} if beta is None else {"beta": beta}
    given.params["dpo", "beta"] = f"{prefix}.beta"
    if block is not None and block.adapter is not None:
        given.adapter_method = block.adapter
    return given


def _from_reinforcement(request: JobCreate, settings: Settings | None) -> _Request:
    """OpenAI's reinforcement block: the grader, its knobs ("auto" = default), plus the dora method's settings."""
    block = request.method.reinforcement
    if block is None:
        raise bad_request("a reinforcement job needs method.reinforcement.grader (the reward)", param=GRADER_PARAM)
    hyperparameters = _auto(_given(block.hyperparameters))
    reinforcement, params = reinforcement_settings(block.grader, hyperparameters, settings)
    given = _from_adapter_method(request, "reinforcement", hyperparameters=hyperparameters)
    given.reinforcement = reinforcement
    given.params |= {("reinforcement", name): param for name, param in params.items()}
    if block.adapter is not None:
        given.adapter_method = block.adapter
    return given


def _from_request(request: JobCreate, kind: str, settings: Settings | None = None) -> _Request:
    if kind == "supervised":
        return _from_supervised(request)
    if kind == "reinforcement":
        return _from_reinforcement(request, settings)
    return _from_dpo(request) if kind == "dpo" else _from_adapter_method(request, kind)


def param_of(request: JobCreate, section: str, name: str) -> str:
    """Where the request gives (or would give) a setting, for an error naming it:
    e.g. "method.dora.hyperparameters.batch_size" for ("training", "micro_batch_size")."""
    kind = request.method.type if request.method else "supervised"
    return _from_request(request, kind).param(section, name)


def resolve(*, request: JobCreate, settings: Settings, seed: int) -> tuple[dict[str, Any], RunSettings]:
    """(method as shown on the job, the resolved run its spec stores)."""
    kind = request.method.type if request.method else "supervised"
    given = _from_request(request, kind, settings)
    apply_operator_limits({"adapter": given.adapter, "training": given.training}, settings, given.param)
    try:
        check_one_validation_source(has_validation_file=request.validation_file is not None,
                                    validation_split=given.training.get("validation_split", 0.0))
        adapter_method = kind if kind in ("dora", "lora") else given.adapter_method
        run = RunSettings.from_data({
            "adapter": {"method": adapter_method} | given.adapter,
            "training": given.training | {"seed": seed},
            "outputs": request.outputs,
        } | ({"gguf_type": request.gguf_type} if request.gguf_type is not None else {})
          | ({"dpo": given.dpo} if given.dpo is not None else {})
          | ({"reinforcement": given.reinforcement} if given.reinforcement is not None else {}))
    except SettingError as error:
        section, _, name = error.field.partition(".")
        raise bad_request(error.message, param=given.param(section, name) if name else error.field) from None
    except PydanticCustomError as error:  # check_one_validation_source
        raise bad_request(str(error), param=given.param("training", "validation_split")) from None
    return shown_method(kind, run), run


def shown_method(kind: str, run: RunSettings) -> dict[str, Any]:
    """Every resolved setting under the API's names, in `method.<kind>.hyperparameters`.

    One place only: a client that sends the shown method back gets the same run, not a 400
    for a value given twice. `supervised` jobs show OpenAI's block and the DoRA run it became.
    """
    adapter = run.adapter.model_dump(mode="json", include=set(ADAPTER_FIELDS))
    training = run.training.model_dump(mode="json", include=set(TRAINING_FIELDS))
    hyperparameters = adapter | {API_NAMES.get(name, name): value for name, value in training.items()}
    if kind == "supervised":
        return {"type": "supervised", "supervised": {"hyperparameters": openai_hyperparameters(run)},
                "dora": {"hyperparameters": hyperparameters}}
    if kind == "dpo":  # OpenAI's four knobs resolved; the learning rate as its multiplier only (one place)
        hyperparameters.pop("learning_rate")
        hyperparameters |= openai_hyperparameters(run) | {"beta": run.dpo.beta}
        return {"type": "dpo", "dpo": {"adapter": run.adapter.method, "hyperparameters": hyperparameters}}
    if kind == "reinforcement":  # OpenAI's RFT knobs resolved, as for dpo
        rl = run.reinforcement
        hyperparameters.pop("learning_rate")
        hyperparameters |= openai_hyperparameters(run) | {
            "compute_multiplier": rl.samples_per_prompt, "eval_samples": rl.eval_samples,
            "reasoning_effort": "default", "beta": rl.beta, "max_completion_tokens": rl.max_completion_tokens}
        return {"type": "reinforcement", "reinforcement": {
            "grader": rl.grader.model_dump(mode="json", exclude_none=True), "adapter": run.adapter.method,
            "hyperparameters": hyperparameters}}
    return {"type": kind, kind: {"hyperparameters": hyperparameters}}
