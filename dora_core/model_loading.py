"""Loading the base model and tokenizer, by local path or Hugging Face Hub id, safely.

Safe by construction: safetensors weights only (`use_safetensors=True`: no pickle) and never
code from the model repository (`trust_remote_code=False`). A name that exists on disk is
loaded from there; otherwise it is a hub id, looked up in the local cache and then on the hub
(unless `local_files_only` or `HF_HUB_OFFLINE=1`; an unreachable hub costs about 45 s of
retries, so offline deployments should set HF_HUB_OFFLINE=1). Failures raise ModelNotFoundError
or ModelLoadError naming what was tried, instead of transformers' generic OSError.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model or tokenizer was found but could not be loaded (e.g. only pickle weights)."""


class ModelNotFoundError(ModelLoadError):
    """Neither a local directory nor a reachable hub repository provides the model."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or the first CUDA GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """ "auto": bf16 on a CUDA GPU that supports it, else fp32 (fp16 weights are left to an
    explicit choice: they overflow where bf16 does not)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_base_model(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> Any:
    """AutoModelForCausalLM from a local directory or hub id, on `device` in `dtype`.

    `local_files_only=None` follows the environment (HF_HUB_OFFLINE).
    """
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    options = _hub_options(revision, local_files_only)
    options.update(dtype=resolve_dtype(dtype, target), use_safetensors=True, device_map={"": str(target)})
    if local_files_only:  # transformers does not pass it on to its PEFT-adapter probe, which then goes online
        options["adapter_kwargs"] = {"local_files_only": True}
    model = _load("model", AutoModelForCausalLM.from_pretrained, name_or_path, options)
    model.eval()  # the training loop switches to train(); dropout stays off until then
    return model


def base_model_skeleton(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "auto",
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> Any:
    """The base model's modules built from its config on the meta device: shapes, no storage, no
    file read but config.json. What the ranks of a sharded run build while rank 0 alone loads the
    weights (dora_core.training.distributed fills them in after sharding), so host memory holds
    one copy of the model, not one per rank. Same classes and options as load_base_model, and
    the same generation config: validation samples stop at its eos ids, and under FSDP every
    rank must run as many forwards as rank 0."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    options = _hub_options(revision, local_files_only)
    config = _load("config", AutoConfig.from_pretrained, name_or_path, options)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    model.to(resolve_dtype(dtype, torch.device("cpu")))  # meta: no memory moves
    try:
        files = {key: value for key, value in options.items() if key in ("revision", "local_files_only")}
        model.generation_config = GenerationConfig.from_pretrained(os.fspath(name_or_path), **files)
    except OSError:  # no generation_config.json: from_pretrained keeps the one made from the config too
        pass
    model.eval()
    return model


def saved_dtype(name_or_path: str | os.PathLike[str], *, revision: str | None = None,
                local_files_only: bool | None = None) -> torch.dtype | None:
    """The dtype the checkpoint's config says its weights are stored in (None when it says none).

    Read before loading, since loading in another dtype rewrites the config's: it is the dtype a
    merged model is saved back in, so a bf16 base gives a bf16 merged model even when training
    ran in fp32 on a CPU."""
    from transformers import AutoConfig

    config = _load("config", AutoConfig.from_pretrained, name_or_path, _hub_options(revision, local_files_only))
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = _DTYPES.get(stored) or getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else None


def load_tokenizer(
    name_or_path: str | os.PathLike[str], *, revision: str | None = None, local_files_only: bool | None = None
) -> Any:
    """AutoTokenizer with right padding and a pad token (eos when the tokenizer has none)."""
    from transformers import AutoTokenizer

    tokenizer = _load(
        "tokenizer", AutoTokenizer.from_pretrained, name_or_path, _hub_options(revision, local_files_only)
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer of {os.fspath(name_or_path)!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _hub_options(revision: str | None, local_files_only: bool | None) -> dict[str, Any]:
    options: dict[str, Any] = {"trust_remote_code": False}
    if revision is not None:
        options["revision"] = revision
    if local_files_only is not None:
        options["local_files_only"] = local_files_only
    return options


def _load(what: str, loader: Any, name_or_path: str | os.PathLike[str], options: dict[str, Any]) -> Any:
    """Call a from_pretrained loader, turning its errors into ours with what was tried."""
    name = os.fspath(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        try:
            return loader(str(local), **options)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"{what} in local directory {str(local)!r} could not be loaded "
                f"(safetensors only, trust_remote_code=False): {error}"
            ) from error
    if _looks_like_path(name):
        raise ModelNotFoundError(f"{what} {name!r}: no such local directory ({local.resolve()}), and not a hub id")
    try:
        return loader(name, **options)
    except (OSError, ValueError) as error:  # hub HTTP errors and HFValidationError are among these
        hub = "the local cache only (offline)" if options.get("local_files_only") else "the hub cache and the hub"
        raise ModelNotFoundError(
            f"{what} {name!r} not found: it is not a local directory ({local.resolve()}), and as a hub id "
            f"it could not be loaded from {hub} (safetensors only, trust_remote_code=False): {error}"
        ) from error


def _looks_like_path(name: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else that does not exist is a mistyped path."""
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
        or not _valid_hub_id(name)
    )


def _valid_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def locate_model(source: str | os.PathLike[str], *, setting: str = "base_model",
                 relative_to: str | os.PathLike[str] | None = None) -> str:
    """Where a configured base model is, found in seconds, or ModelNotFoundError naming `setting`
    and the path tried (a hub that cannot be reached would otherwise cost about a minute of retries
    before the load fails).

    A relative path is taken relative to `relative_to` (a config file's folder; default: the working
    directory). Returns a local folder or `.gguf` file as an absolute path, a `package:` source or a
    hub id as given. A hub id must be in the hub cache or on a reachable hub: with HF_HUB_OFFLINE
    set, or the hub not answering one quick request (no retries), one that is not cached fails now.
    """
    from dora_contract.model_sources import PACKAGE_PREFIX, GgufSourceError, gguf_file_of, is_gguf_source

    text = os.fspath(source)
    if text.startswith(PACKAGE_PREFIX):
        try:
            gguf_file_of(text)
        except GgufSourceError as error:
            raise ModelNotFoundError(f"{setting} {text!r}: {error}") from None
        return text
    local = (Path(relative_to or ".") / Path(text).expanduser()).resolve()  # an absolute text stays itself
    if is_gguf_source(text):
        if not local.is_file():
            raise ModelNotFoundError(f"{setting} {text!r}: no such GGUF file ({local})")
        return str(local)
    if local.is_dir():
        return str(local)
    if _looks_like_path(text):
        raise ModelNotFoundError(f"{setting} {text!r}: no such local folder ({local})")
    if not _in_hub_cache(text) and (reason := hub_unavailable()) is not None:
        raise ModelNotFoundError(f"{setting} {text!r}: no such local folder ({local}); as a hub id it is not in the "
                                 f"hub cache and cannot be downloaded: {reason}")
    return text


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except (OSError, ValueError):
        return False


def hub_unavailable(timeout: float = 3.0) -> str | None:
    """Why no model can be downloaded from the hub now (offline mode, or no answer to one request
    within `timeout` seconds, without retries), or None when it answers."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return "offline mode (HF_HUB_OFFLINE is set)"
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)  # any HTTP answer means it is reachable
    except Exception as error:  # noqa: BLE001 - DNS, refused, timeout, proxy: all mean unreachable
        return f"the hub ({constants.ENDPOINT}) is unreachable: {error}"
    return None
