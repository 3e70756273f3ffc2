"""From the request's `method` to the run settings a worker executes (stored in jobs.settings).

OpenAI's `supervised` method becomes a DoRA run with the service defaults: n_epochs and
batch_size carry over, learning_rate = multiplier x DORA_DEFAULT_LEARNING_RATE. A `dora` or
`lora` method sets the adapter and any training setting directly. Every value is resolved here,
once, so the worker never guesses and the job shows exactly what will run.

`run_config` is in the shape of `dora_core.training.RunConfig.from_dict` (minus the local
paths, which the worker adds after downloading), so the worker passes it straight through;
names are mapped here (n_epochs -> epochs, batch_size -> micro_batch_size) because the API
keeps OpenAI's names and must not import dora_core.
"""

from __future__ import annotations

from typing import Any

from api.errors import bad_request
from api.schemas.jobs import AdapterMethod, JobCreate, Method, SupervisedMethod, TrainingHyperparameters
from store.settings import Settings

TRAINING_ORDER = ("n_epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate",
                  "lr_scheduler", "warmup_ratio", "weight_decay", "max_grad_norm", "max_seq_len", "packing",
                  "train_on_inputs", "gradient_checkpointing", "precision", "eval_interval", "checkpoint_interval",
                  "keep_checkpoints", "early_stopping_patience", "validation_split")
TRAINING_DEFAULTS: dict[str, Any] = {
    "max_steps": None, "gradient_accumulation_steps": 1, "lr_scheduler": "cosine", "warmup_ratio": 0.03,
    "weight_decay": 0.0, "max_grad_norm": 1.0, "packing": False, "train_on_inputs": False,
    "gradient_checkpointing": False, "precision": "auto", "eval_interval": None, "checkpoint_interval": 50,
    "keep_checkpoints": 2,
    "early_stopping_patience": None, "validation_split": None,
}


def _auto(value: Any) -> Any:
    return None if value == "auto" else value


def _from_supervised(method: Method | None, request: JobCreate) -> AdapterMethod:
    supervised = (method.supervised if method else None) or SupervisedMethod(hyperparameters=request.hyperparameters)
    hp = supervised.hyperparameters
    if hp is None:
        return AdapterMethod()
    return AdapterMethod(hyperparameters=TrainingHyperparameters(
        n_epochs=_auto(hp.n_epochs), batch_size=_auto(hp.batch_size),
        learning_rate_multiplier=_auto(hp.learning_rate_multiplier)))


def _check_range(value: int | None, low: int, high: int, *, param: str, what: str) -> None:
    if value is not None and not low <= value <= high:
        raise bad_request(f"{what} must be between {low} and {high} on this server (got {value})", param=param,
                          code="out_of_range")


def _training(hp: TrainingHyperparameters, settings: Settings, prefix: str) -> dict[str, Any]:
    given = hp.model_dump(exclude_none=True)
    _check_range(hp.n_epochs, 1, settings.max_epochs, param=f"{prefix}.n_epochs", what="n_epochs")
    _check_range(hp.max_steps, 1, settings.max_steps_limit, param=f"{prefix}.max_steps", what="max_steps")
    _check_range(hp.batch_size, 1, settings.max_batch_size, param=f"{prefix}.batch_size", what="batch_size")
    _check_range(hp.max_seq_len, 8, settings.max_seq_len_limit, param=f"{prefix}.max_seq_len", what="max_seq_len")
    multiplier = given.pop("learning_rate_multiplier", None)
    run = TRAINING_DEFAULTS | {"n_epochs": settings.default_n_epochs, "batch_size": settings.default_batch_size,
                               "max_seq_len": settings.default_max_seq_len,
                               "learning_rate": settings.default_learning_rate * (multiplier or 1.0)}
    run |= given
    return {key: run[key] for key in TRAINING_ORDER}


def _adapter(adapter: AdapterMethod, kind: str, settings: Settings, prefix: str) -> dict[str, Any]:
    _check_range(adapter.rank, settings.min_rank, settings.max_rank, param=f"{prefix}.rank", what="rank")
    rank = adapter.rank or min(max(settings.default_rank, settings.min_rank), settings.max_rank)
    return {
        "adapter": kind, "rank": rank,
        "alpha": adapter.alpha if adapter.alpha is not None else settings.default_alpha * rank / settings.default_rank,
        "dropout": adapter.dropout if adapter.dropout is not None else settings.default_dropout,
        "target_modules": adapter.target_modules or "all-linear",
        "use_rslora": bool(adapter.use_rslora),
    }


def resolve(*, request: JobCreate, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method as shown on the job, resolved run settings)."""
    method = request.method
    kind = method.type if method else "supervised"
    if kind == "supervised":
        adapter, prefix, adapter_kind = _from_supervised(method, request), "method.supervised.hyperparameters", "dora"
    else:
        adapter, prefix, adapter_kind = getattr(method, kind) or AdapterMethod(), f"method.{kind}", kind
    adapter_settings = _adapter(adapter, adapter_kind, settings, prefix)
    training = _training(adapter.hyperparameters or TrainingHyperparameters(), settings,
                         prefix if kind == "supervised" else f"{prefix}.hyperparameters")
    openai_hp = {"n_epochs": training["n_epochs"], "batch_size": training["batch_size"],
                 "learning_rate_multiplier": training["learning_rate"] / settings.default_learning_rate}
    shown_adapter = adapter_settings | {"hyperparameters": training}
    shown_adapter.pop("adapter")
    if kind == "supervised":
        shown = {"type": "supervised", "supervised": {"hyperparameters": openai_hp}, "dora": shown_adapter}
    else:
        shown = {"type": kind, kind: shown_adapter}
    run = {"run_config": run_config(adapter_settings, training, outputs=list(request.outputs)),
           "outputs": list(request.outputs), "openai_hyperparameters": openai_hp}
    return shown, run


CORE_NAMES = {"n_epochs": "epochs", "batch_size": "micro_batch_size"}


def run_config(adapter: dict[str, Any], training: dict[str, Any], *, outputs: list[str]) -> dict[str, Any]:
    """dora_core's RunConfig.from_dict shape, without base_model/train_file/validation_file."""
    core_training = {CORE_NAMES.get(k, k): v for k, v in training.items()}
    if core_training.get("validation_split") is None:
        core_training["validation_split"] = 0.0
    core_adapter = {"method": adapter["adapter"]} | {k: v for k, v in adapter.items() if k != "adapter"}
    return {"adapter": core_adapter, "training": core_training, "outputs": outputs}
