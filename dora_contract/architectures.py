"""The model architectures the GGUF output supports, keyed by the Hugging Face config's `model_type`.

Torch-free, so the API can refuse a job asking for `gguf` on a base model it cannot export when
the job is created, and dora_core can refuse it before training instead of after. The value is
the architecture name llama.cpp writes in `general.architecture`: Mistral is written as "llama"
(llama.cpp runs it as a Llama with the same tensors; only its sliding window, which llama.cpp
ignores for this architecture, sets it apart), Qwen2 as "qwen2" (q/k/v biases, no rotary
permutation of q and k).
"""

from __future__ import annotations

GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
}


def gguf_unsupported_reason(model_type: str | None) -> str | None:
    """None when a model of this `model_type` can be exported as GGUF, else a message for the user
    that names the supported architectures (model_type None: the config did not say)."""
    if model_type in GGUF_ARCHITECTURES:
        return None
    supported = ", ".join(sorted(GGUF_ARCHITECTURES))
    found = f"'{model_type}'" if model_type else "unknown (its config names no model_type)"
    return f"the gguf output supports the {supported} architectures; this model's architecture is {found}"
