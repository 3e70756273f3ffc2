"""Request fields made from the run contract, so the API states no default or bound of its own.

Every field of a request's `hyperparameters` is the contract's field made optional: the same
type and bounds (a 400 names the field) and the same description, with the contract's default
appended; a value left out (null) takes that default when the job is resolved
(api/services/methods.py). The API keeps OpenAI's names for the two settings OpenAI has too.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from dora_contract import AdapterSettings, TrainingSettings

# contract name -> the API's (OpenAI's) name for it
API_NAMES = {"epochs": "n_epochs", "micro_batch_size": "batch_size"}
CONTRACT_NAMES = {api: contract for contract, api in API_NAMES.items()}
# adapter settings a request may give in `method.<kind>` or in `method.<kind>.hyperparameters`
ADAPTER_FIELDS = tuple(name for name in AdapterSettings.model_fields if name != "method")
# training settings a request gives in `hyperparameters` (the seed is the job's top-level `seed`)
TRAINING_FIELDS = tuple(name for name in TrainingSettings.model_fields if name != "seed")


def contract_type(model: type[BaseModel], name: str) -> Any:
    """The field's type with its bounds attached, as pydantic validates it in the contract."""
    info = model.model_fields[name]
    return Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return repr(info.default_factory())
    return "null" if info.default is None else repr(info.default)


def optional_field(model: type[BaseModel], name: str) -> tuple[Any, FieldInfo]:
    """(type | None, Field(None, description)) for create_model."""
    info = model.model_fields[name]
    description = f"{info.description or name}. Default: {_default_text(info)}"
    return contract_type(model, name) | None, Field(None, description=description)


def adapter_fields() -> dict[str, tuple[Any, FieldInfo]]:
    return {name: optional_field(AdapterSettings, name) for name in ADAPTER_FIELDS}


def training_fields() -> dict[str, tuple[Any, FieldInfo]]:
    return {API_NAMES.get(name, name): optional_field(TrainingSettings, name) for name in TRAINING_FIELDS}
