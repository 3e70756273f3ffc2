"""dora_contract: the run contract, torch-free, shared by `dora train`, the worker and the API.

Every default, bound and description of an adapter or a training setting is written here once
(pydantic models). dora_core runs it, the CLI reads it from YAML/JSON, the API builds its job
request from it and stores its dump on the job. Only pydantic is imported, so the API image
stays free of torch.
"""

from dora_contract.adapter import ALL_LINEAR, MAX_RANK, METHODS, AdapterSettings
from dora_contract.base import ContractModel
from dora_contract.errors import SettingError
from dora_contract.run import (
    DEFAULT_OUTPUTS,
    GGUF_TYPES,
    OUTPUTS,
    RunContract,
    RunSettings,
    check_one_validation_source,
)
from dora_contract.training import PRECISIONS, SCHEDULERS, TrainingSettings

__all__ = [
    "ALL_LINEAR",
    "DEFAULT_OUTPUTS",
    "GGUF_TYPES",
    "MAX_RANK",
    "METHODS",
    "OUTPUTS",
    "PRECISIONS",
    "SCHEDULERS",
    "AdapterSettings",
    "ContractModel",
    "RunContract",
    "RunSettings",
    "SettingError",
    "TrainingSettings",
    "check_one_validation_source",
]
