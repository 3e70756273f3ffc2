"""Adapters on disk in PEFT's format, so `peft.PeftModel.from_pretrained` reads ours and we
read PEFT's.

Folder layout (PEFT's): `adapter_config.json` (LoraConfig fields) and
`adapter_model.safetensors` with keys `base_model.model.<module>.lora_A.weight` (r, in),
`...lora_B.weight` (out, r) and, for DoRA, `...lora_magnitude_vector` (out,).
`target_modules` is written as the full list of adapted module names, as PEFT itself
writes it after resolving "all-linear", so both sides select exactly the same layers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dora_core.atomic_io import write_atomically, write_json_atomically
from dora_core.config import AdapterConfig
from dora_core.inject import adapted_module_names, adapter_config_of, apply_adapter, is_linear, resolve_target_modules
from dora_core.layers import AdapterLinear

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
# LoraConfig fields whose non-default values change the math; we refuse them rather than
# silently load a different adapter.
UNSUPPORTED_IF_SET = ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform",
                      "layer_replication", "trainable_token_indices", "target_parameters", "exclude_modules")


class AdapterFormatError(ValueError):
    """The folder is not an adapter we can load; the message says what is wrong."""


def save_adapter(model: nn.Module, directory: str | Path, *, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's adapter in PEFT's format (fp32 tensors, atomic file writes)."""
    config = adapter_config_of(model)
    names = adapted_module_names(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in names:
        layer: AdapterLinear = model.get_submodule(name)
        tensors[f"{KEY_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().float().contiguous()
        tensors[f"{KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().float().contiguous()
        if layer.use_dora:
            magnitude = layer.lora_magnitude_vector.detach().float().contiguous()
            tensors[f"{KEY_PREFIX}{name}.lora_magnitude_vector"] = magnitude
    tensors = {key: tensor.cpu() for key, tensor in tensors.items()}
    write_atomically(directory / WEIGHTS_NAME, lambda temp: save_file(tensors, str(temp), metadata={"format": "pt"}))
    write_json_atomically(directory / CONFIG_NAME, _peft_config_dict(model, config, names, base_model_name_or_path))
    return directory


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Add the adapter saved in `directory` (by us or by PEFT) to a base model, in place."""
    directory = Path(directory)
    peft_config = read_peft_config(directory)
    names = _target_names(model, peft_config["target_modules"])
    config = AdapterConfig(
        method="dora" if peft_config.get("use_dora") else "lora",
        rank=int(peft_config["r"]),
        alpha=float(peft_config.get("lora_alpha", 8)),
        dropout=float(peft_config.get("lora_dropout") or 0.0),
        target_modules=tuple(names),
        use_rslora=bool(peft_config.get("use_rslora", False)),
    )
    with torch.random.fork_rng(devices=[]):  # adapter init must not shift the caller's RNG
        apply_adapter(model, config)
    _copy_tensors_into(model, names, _read_tensors(directory), use_dora=config.use_dora)
    return model


def load_adapter_weights(model: nn.Module, directory: str | Path) -> None:
    """Copy saved A, B (and m) into a model that already has the same adapters (a checkpoint)."""
    config = adapter_config_of(model)
    _copy_tensors_into(model, adapted_module_names(model), _read_tensors(Path(directory)), use_dora=config.use_dora)


def start_from_adapter(model: nn.Module, directory: str | Path) -> None:
    """Continued training: the model's fresh adapter takes the factors (and magnitudes) saved in
    `directory`, as trained. Its method and rank must be the run's (AdapterFormatError naming what
    differs); other target modules are refused by the tensor names."""
    directory = Path(directory)
    saved = read_peft_config(directory)
    config = adapter_config_of(model)
    differs = [f"{what} {theirs!r} (this run: {ours!r})" for what, theirs, ours in (
        ("method", "dora" if saved.get("use_dora") else "lora", config.method), ("rank", int(saved["r"]), config.rank))
        if theirs != ours]
    if differs:
        raise AdapterFormatError(f"the adapter to start from has {' and '.join(differs)}")
    with torch.no_grad():
        load_adapter_weights(model, directory)


def read_peft_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise AdapterFormatError(f"{path} not found: not an adapter folder")
    try:
        peft_config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AdapterFormatError(f"{path} is not valid JSON: {error}") from None
    if peft_config.get("peft_type") != "LORA":
        raise AdapterFormatError(f"peft_type must be 'LORA', got {peft_config.get('peft_type')!r}")
    for field_name in UNSUPPORTED_IF_SET:
        if peft_config.get(field_name):
            raise AdapterFormatError(f"{field_name}={peft_config[field_name]!r} is not supported")
    if peft_config.get("bias", "none") != "none" or peft_config.get("lora_bias"):
        raise AdapterFormatError("adapters that train biases are not supported (bias must be 'none')")
    if "r" not in peft_config or "target_modules" not in peft_config:
        raise AdapterFormatError(f"{path} lacks 'r' or 'target_modules'")
    return peft_config


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterFormatError(f"{path} not found (only safetensors adapters are loaded)")
    return {_strip_key(key): tensor for key, tensor in load_file(str(path)).items()}


def _strip_key(key: str) -> str:
    key = key.removeprefix(KEY_PREFIX)
    # PEFT < 0.12 and in-memory state dicts name the magnitude `lora_magnitude_vector.weight`.
    return re.sub(r"\.lora_magnitude_vector(\.default)?\.weight$", ".lora_magnitude_vector", key)


def _target_names(model: nn.Module, target_modules: str | list[str]) -> list[str]:
    if isinstance(target_modules, str):  # PEFT: a string is a regex that must full-match the name
        names = [n for n, m in model.named_modules() if re.fullmatch(target_modules, n) and is_linear(m)]
        if not names:
            raise AdapterFormatError(f"target_modules regex {target_modules!r} matches no linear layer")
        return names
    return resolve_target_modules(model, tuple(target_modules))


@torch.no_grad()
def _copy_tensors_into(model: nn.Module, names: list[str], tensors: dict, *, use_dora: bool) -> None:
    expected = {}
    for name in names:
        layer: AdapterLinear = model.get_submodule(name)
        expected[f"{name}.lora_A.weight"] = layer.lora_A
        expected[f"{name}.lora_B.weight"] = layer.lora_B
        if use_dora:
            expected[f"{name}.lora_magnitude_vector"] = layer.lora_magnitude_vector
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFormatError(f"adapter weights do not fit this model: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
    for key, parameter in expected.items():
        if tensors[key].shape != parameter.shape:
            raise AdapterFormatError(f"{key}: shape {tuple(tensors[key].shape)}, model needs {tuple(parameter.shape)}")
        parameter.copy_(tensors[key].to(parameter.dtype))


def _peft_config_dict(model: nn.Module, config: AdapterConfig, names: list[str], base_name: str | None) -> dict:
    if base_name is None:
        base_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    fan_in_fan_out = any(model.get_submodule(name).fan_in_fan_out for name in names)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(names),
        "use_dora": config.use_dora,
        "use_rslora": config.use_rslora,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
