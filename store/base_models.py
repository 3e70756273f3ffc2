"""The base models an operator registers (DORA_BASE_MODELS), read the same way by the API and the workers.

A registration maps the name clients use (`model` in a job request) to a source: a local folder,
a hub id, a `.gguf` file, or `package:<distribution>` for a pip package that ships one (the
worker converts GGUF sources once, dora_core/gguf_import.py). It may be given as the source
string alone, or as `{"source": ..., "public_id": ...}` when the model has a public id (the hub
id its weights came from) that the source does not show: the public id is what a downloaded
adapter's `adapter_config.json` names as `base_model_name_or_path`, so that PEFT users can load
it elsewhere; a path on the server is never written there.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dora_contract.model_sources import PACKAGE_PREFIX, GgufSourceError, gguf_file_of, is_gguf_source


class BaseModelSource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(min_length=1, description="local folder, hub id, .gguf file or package:<distribution>")
    public_id: str | None = Field(None, min_length=1, description="hub id written into adapter_config.json")


Registration = str | BaseModelSource


def registration(settings, name: str) -> BaseModelSource | None:
    """The registered source of `name`, or None when the operator has not registered it."""
    value = settings.base_models.get(name)
    if value is None:
        return None
    return value if isinstance(value, BaseModelSource) else BaseModelSource(source=value)


def public_id(name: str, registered: BaseModelSource) -> str:
    """What an adapter names as its base: the explicit public id, else a hub id source itself,
    else the registered name (a folder or file path stays on the server)."""
    if registered.public_id:
        return registered.public_id
    source = registered.source
    if is_gguf_source(source) or _looks_local(source):
        return name
    return source


def missing_local_sources(base_models: dict[str, Any]) -> list[str]:
    """What `dora up`, `dora api` and `dora worker` refuse to start with: a registration whose source
    can only be a local path (absolute, `./`, `~`, more than one `/`, or a `.gguf` file) and that
    does not exist, one message per model naming DORA_BASE_MODELS, the model and the path tried.
    A hub id or a `package:` source cannot be checked here (offline); the worker reports those."""
    problems = []
    for name, value in base_models.items():
        source = value if isinstance(value, str) else value.source
        if source.startswith(PACKAGE_PREFIX) or not _must_be_local(source):
            continue
        path = Path(source).expanduser()
        found = path.is_file() if is_gguf_source(source) else path.is_dir()
        if not found:
            what = "GGUF file" if is_gguf_source(source) else "folder"
            problems.append(f"DORA_BASE_MODELS: base model {name!r}: no such {what} {source!r} "
                            f"({path.resolve()}); build or copy the model there, or fix the path")
    return problems


def _must_be_local(source: str) -> bool:
    """A source that is no hub id ("name" or "org/name"): a path, or a `.gguf` file."""
    return is_gguf_source(source) or source.startswith(("/", ".", "~")) or source.count("/") > 1


def registered_model_config(settings, name: str) -> dict[str, Any] | None:
    """The registered model's config.json as a mapping, when the API process can read it: a local
    folder's. None for a hub id or a GGUF source (the worker converts those; their config is
    known once converted), and for an unreadable file."""
    registered = registration(settings, name)
    if registered is None or is_gguf_source(registered.source):
        return None
    config = Path(registered.source).expanduser() / "config.json"
    try:
        return json.loads(config.read_text())
    except (OSError, ValueError):
        return None


def registered_architecture(settings, name: str) -> str | None:
    """The registered model's architecture (a config's `model_type`; a GGUF's
    `general.architecture`, which llama.cpp spells the same for the architectures we export), when
    this process can read it without loading the model; None for a hub id or an unreadable file."""
    registered = registration(settings, name)
    if registered is None:
        return None
    if not is_gguf_source(registered.source):
        config = registered_model_config(settings, name)
        return config.get("model_type") if config else None
    return _gguf_architecture(registered.source)


def _gguf_architecture(source: str) -> str | None:
    """The architecture a GGUF source's header names, read once per version of its file: every job
    asking for a gguf output checks it when it is created (api/services/jobs.py), and a header
    parse is not free."""
    path = _gguf_path(source)
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return _gguf_file_architecture(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=32)
def _gguf_file_architecture(path: str, mtime_ns: int, size: int) -> str | None:
    """`general.architecture` of the file at `path` (resolved); its mtime and size are part of the
    cache key so that a file replaced in place is read again. The few registered models fit."""
    try:
        import gguf  # numpy only, no torch: in the API's dependencies
    except ImportError:
        return None
    try:
        field = gguf.GGUFReader(path).get_field("general.architecture")
    except (OSError, ValueError):
        return None
    return str(field.contents()) if field is not None else None


def _gguf_path(source: str) -> Path | None:
    """The file a GGUF source names, found as the worker finds it; None when there is none (the
    worker then fails the job with the reason)."""
    try:
        return gguf_file_of(source)
    except GgufSourceError:
        return None


def _looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()
