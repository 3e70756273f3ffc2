"""dora_contract: the run contract, torch-free, shared by `dora train`, the worker and the API.

Every default, bound and description of an adapter or a training setting is written here once
(pydantic models). dora_core runs it, the CLI reads it from YAML/JSON, the API builds its job
request from it and stores a `JobSpec` (job_spec.py) on the job, which the worker reads back.
Only pydantic is imported, so the API image stays free of torch.
"""

from dora_contract.adapter import ALL_LINEAR, MAX_RANK, METHODS, AdapterSettings
from dora_contract.base import ContractModel
from dora_contract.errors import SettingError
from dora_contract.job_spec import JOB_SPEC_VERSION, BaseModelRef, FileRef, JobSpec
from dora_contract.preference import DEFAULT_DPO_BETA, DPO_METRICS, DpoSettings
from dora_contract.reinforcement import DEFAULT_GRPO_BETA, RFT_METRICS, ReinforcementSettings
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
    "DEFAULT_DPO_BETA",
    "DEFAULT_GRPO_BETA",
    "DEFAULT_OUTPUTS",
    "DPO_METRICS",
    "GGUF_TYPES",
    "JOB_SPEC_VERSION",
    "MAX_RANK",
    "METHODS",
    "OUTPUTS",
    "PRECISIONS",
    "RFT_METRICS",
    "SCHEDULERS",
    "AdapterSettings",
    "BaseModelRef",
    "ContractModel",
    "DpoSettings",
    "FileRef",
    "JobSpec",
    "ReinforcementSettings",
    "RunContract",
    "RunSettings",
    "SettingError",
    "TrainingSettings",
    "check_one_validation_source",
]
