"""What a run is asked to do: base model, data, adapter, training settings, outputs.

One `RunConfig` is what the CLI reads from JSON/YAML and what the worker builds from a job
row; every invalid value raises `AdapterConfigError` naming the field (the API maps it to a 400).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dora_core.config import AdapterConfig, AdapterConfigError

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OUTPUTS = ("adapter", "merged")


@dataclass(frozen=True)
class TrainingSettings:
    """Optimisation settings. A step is one optimiser update over micro_batch_size x
    gradient_accumulation_steps examples (the global batch)."""

    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    eval_interval: int | None = None  # steps; evaluation also runs at the end when there is a validation set
    checkpoint_interval: int = 50  # steps
    keep_checkpoints: int = 2
    gradient_checkpointing: bool | str = "auto"  # "auto": see recommended_gradient_checkpointing
    precision: str = "auto"  # auto = bf16 on a CUDA GPU that supports it, else fp32
    early_stopping_patience: int | None = None  # evaluations without eval-loss improvement
    max_seq_len: int = 1024
    train_on_inputs: bool = False
    packing: bool = False
    validation_split: float = 0.0

    def __post_init__(self) -> None:
        _positive_number(self, "epochs")
        _optional_int(self, "max_steps", minimum=1)
        for name in ("micro_batch_size", "gradient_accumulation_steps", "checkpoint_interval", "keep_checkpoints"):
            _optional_int(self, name, minimum=1, required=True)
        _optional_int(self, "eval_interval", minimum=1)
        _optional_int(self, "early_stopping_patience", minimum=1)
        _optional_int(self, "max_seq_len", minimum=8, required=True)
        _optional_int(self, "seed", minimum=0, required=True)
        _positive_number(self, "learning_rate")
        _in_range(self, "warmup_ratio", 0.0, 1.0)
        _in_range(self, "weight_decay", 0.0, 10.0)
        _in_range(self, "validation_split", 0.0, 0.5)
        if self.max_grad_norm is not None:
            _positive_number(self, "max_grad_norm")
        _choice(self, "lr_scheduler", SCHEDULERS)
        _choice(self, "precision", PRECISIONS)
        if self.gradient_checkpointing != "auto" and not isinstance(self.gradient_checkpointing, bool):
            raise AdapterConfigError("gradient_checkpointing",
                                     f"must be true, false or 'auto', got {self.gradient_checkpointing!r}")
        for name in ("train_on_inputs", "packing"):
            if not isinstance(getattr(self, name), bool):
                raise AdapterConfigError(name, f"must be true or false, got {getattr(self, name)!r}")


# Parameters from which activations, not weights, decide whether a step fits: at 7B+ a
# micro-batch of 4 x 2048 tokens needs tens of GiB of activations without checkpointing.
CHECKPOINTING_PARAMETER_THRESHOLD = 6_000_000_000


def recommended_gradient_checkpointing(*, parameters: int, device_memory_bytes: int | None) -> bool:
    """The default for gradient_checkpointing="auto".

    On for models of 6B parameters and more (Llama-3-8B, Mistral-7B: PEFT and TRL recommend it
    there), and for any model whose bf16 weights take over a third of the GPU (little room left
    for activations). Off otherwise, including on the CPU for small models: recomputing the
    forward costs about a third more time per step.
    """
    if parameters >= CHECKPOINTING_PARAMETER_THRESHOLD:
        return True
    return device_memory_bytes is not None and 2 * parameters > device_memory_bytes / 3


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; paths are local (the worker downloads first)."""

    base_model: str
    train_file: str
    validation_file: str | None = None
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    outputs: tuple[str, ...] = OUTPUTS

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise AdapterConfigError("base_model", "must be a model path or hub id")
        if not isinstance(self.train_file, str) or not self.train_file.strip():
            raise AdapterConfigError("train_file", "must be a dataset path")
        outputs = tuple(self.outputs)
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown:
            raise AdapterConfigError("outputs", f"unknown outputs {unknown}; choose from {list(OUTPUTS)}")
        object.__setattr__(self, "outputs", outputs)
        if self.validation_file and self.training.validation_split:
            raise AdapterConfigError("validation_split", "give a validation_file or a validation_split, not both")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from plain data (a parsed JSON/YAML file or a job's stored settings)."""
        if not isinstance(data, dict):
            raise AdapterConfigError("config", "must be a mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterConfigError(unknown[0], f"unknown setting; known: {sorted(known)}")
        for required in ("base_model", "train_file"):
            if required not in data:
                raise AdapterConfigError(required, "is required")
        data = dict(data)
        data["adapter"] = _build(AdapterConfig, data.get("adapter", {}), "adapter")
        data["training"] = _build(TrainingSettings, data.get("training", {}), "training")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        config = cls.from_dict(data)
        return config.with_paths_relative_to(path.parent)

    def with_paths_relative_to(self, folder: Path) -> RunConfig:
        """Dataset paths in a config file are relative to that file."""

        def resolve(value: str | None) -> str | None:
            if value is None or Path(value).is_absolute():
                return value
            return str((folder / value).resolve())

        base = self.base_model
        if not Path(base).is_absolute() and (folder / base).exists():
            base = str((folder / base).resolve())
        return dataclasses.replace(self, base_model=base, train_file=resolve(self.train_file),
                                   validation_file=resolve(self.validation_file))

    def fingerprint(self, dataset_hashes: tuple[str | None, ...]) -> str:
        """Identifies what a checkpoint's state depends on: resuming under another config
        or dataset would mix two runs. Bookkeeping settings (checkpointing, outputs) are left out."""
        import hashlib

        training = {k: v for k, v in dataclasses.asdict(self.training).items()
                    if k not in ("checkpoint_interval", "keep_checkpoints")}
        identity = {"base_model": self.base_model, "adapter": dataclasses.asdict(self.adapter), "training": training,
                    "datasets": list(dataset_hashes)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outputs"] = list(self.outputs)
        return data


def _build(kind, values: Any, prefix: str):
    if isinstance(values, kind):
        return values
    if not isinstance(values, dict):
        raise AdapterConfigError(prefix, "must be a mapping")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AdapterConfigError(f"{prefix}.{unknown[0]}", f"unknown setting; known: {sorted(known)}")
    try:
        return kind(**values)
    except AdapterConfigError as error:
        raise AdapterConfigError(f"{prefix}.{error.field}", error.message) from None


def _optional_int(settings, name: str, *, minimum: int, required: bool = False) -> None:
    value = getattr(settings, name)
    if value is None and not required:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdapterConfigError(name, f"must be an integer, got {value!r}")
    if value < minimum:
        raise AdapterConfigError(name, f"must be at least {minimum}, got {value}")


def _positive_number(settings, name: str) -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise AdapterConfigError(name, f"must be a positive number, got {value!r}")


def _in_range(settings, name: str, low: float, high: float) -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise AdapterConfigError(name, f"must be a number in [{low}, {high}], got {value!r}")


def _choice(settings, name: str, choices: tuple[str, ...]) -> None:
    if getattr(settings, name) not in choices:
        raise AdapterConfigError(name, f"must be one of {list(choices)}, got {getattr(settings, name)!r}")
