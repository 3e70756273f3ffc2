"""What a run is asked to do, as dora_core runs it: the run contract plus local-file helpers.

The settings (every default, bound and description) are `dora_contract`'s models, shared with
the API and the worker; `RunConfig` adds what only a process with the files needs: reading a
JSON/YAML file, resolving paths relative to it, and the fingerprint that ties a checkpoint to
the run that wrote it. Every invalid value raises `SettingError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dora_contract import OUTPUTS, PRECISIONS, SCHEDULERS, RunContract, TrainingSettings
from dora_contract.model_sources import PACKAGE_PREFIX, is_gguf_source

__all__ = ["OUTPUTS", "PRECISIONS", "SCHEDULERS", "RunConfig", "TrainingSettings"]

# Bookkeeping settings that do not change what a run computes (samples only read the model;
# parallelism only changes how the same update is spread over processes): a checkpoint of a run
# that differs from this one only in these still resumes it.
BOOKKEEPING = ("checkpoint_interval", "keep_checkpoints", "sample_prompts", "sample_max_new_tokens", "parallelism")


class RunConfig(RunContract):
    """Everything one training run needs; paths are local (the worker downloads first)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from plain data (a parsed JSON/YAML file or a job's stored settings)."""
        return cls.from_data(data)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import io

            import yaml

            stream = io.StringIO(text)
            stream.name = str(path)  # yaml's errors then say `in "<path>", line L, column C`, not "<unicode string>"
            data = yaml.safe_load(stream)
        else:
            data = json.loads(text)
        return cls.from_dict(data).with_paths_relative_to(path.parent)

    def with_paths_relative_to(self, folder: Path) -> RunConfig:
        """Dataset paths in a config file are relative to that file; so is a local base model."""

        def resolve(value: str | None) -> str | None:
            if value is None or Path(value).is_absolute():
                return value
            return str((folder / value).resolve())

        base = self.base_model
        if not Path(base).is_absolute() and (folder / base).exists():
            base = str((folder / base).resolve())
        return self.with_changes(base_model=base, train_file=resolve(self.train_file),
                                 validation_file=resolve(self.validation_file))

    @property
    def public_base_model_id(self) -> str:
        """What adapter_config.json names as the base (`base_model_name_or_path`): base_model_id,
        else base_model when it is a hub id, else the local folder's or file's name, so that a path
        on this machine is never handed out with the adapter."""
        if self.base_model_id:
            return self.base_model_id
        base = self.base_model.removeprefix(PACKAGE_PREFIX)
        if is_gguf_source(self.base_model) or Path(base).expanduser().exists() or Path(base).is_absolute():
            return Path(base).name
        return self.base_model

    def fingerprint(self, dataset_hashes: tuple[str | None, ...]) -> str:
        """Identifies what a checkpoint's state depends on: resuming under another config
        or dataset would mix two runs. Bookkeeping settings (checkpointing, outputs) are left out."""
        training = self.training.model_dump(mode="json", exclude=set(BOOKKEEPING))
        identity = {"base_model": self.base_model, "adapter": self.adapter.model_dump(mode="json"),
                    "training": training, "datasets": list(dataset_hashes)}
        if self.dpo is not None:  # only then: an SFT run's fingerprint stays what its checkpoints hold
            identity["dpo"] = self.dpo.model_dump(mode="json")
        if self.reinforcement is not None:
            identity["reinforcement"] = self.reinforcement.model_dump(mode="json")
        if self.init_adapter is not None:  # a continued run: the adapter it started from, by content (not path)
            weights = Path(self.init_adapter) / "adapter_model.safetensors"
            identity["init_adapter"] = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
