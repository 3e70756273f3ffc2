"""Tiny chat models of each architecture the GGUF export supports, merged from a trained-looking DoRA
adapter, with the byte-level BPE chat tokenizer of dora_core/tiny_model.py; and reading a GGUF back.

The models are built from a config (never downloaded). Every 1-D parameter (norm weights, Qwen2's
q/k/v biases, which start at 0 and 1) is moved off its init, and the adapter's B and magnitude are
perturbed before the merge, so a tensor written under the wrong name, left out, or laid out wrong
changes the logits. The MLP is 80 wide: its down projection's rows (80) are not a multiple of q8_0's
block of 32, so q8_0 files hold the f16 fallback too.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from dora_core import AdapterConfig, apply_adapter, merge_adapter
from dora_core.gguf_export import GGUF_FILE
from dora_core.tiny_model import build_tiny_tokenizer
from tests.support.model_factories import perturb_adapters

ARCHITECTURES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                 "mistral": (MistralConfig, MistralForCausalLM)}
TIED = {"llama": False, "qwen2": True, "mistral": False}  # Qwen2's small models tie the head
CHAT = [{"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the capital of France? Answer in one word, please."},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And the river through it?"}]


@cache
def chat_tokenizer():
    return build_tiny_tokenizer()


def _base(kind: str, seed: int):
    tokenizer = chat_tokenizer()
    config_class, model_class = ARCHITECTURES[kind]
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=TIED[kind],
                          initializer_range=0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.ndim == 1:
                    parameter.add_(torch.randn_like(parameter) * (0.5 if name.endswith("bias") else 0.1))
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    return model


def base_and_merged(kind: str, seed: int = 0):
    """(base model, the same model with a perturbed DoRA adapter merged in), float32, eval mode."""
    base = _base(kind, seed)
    merged = _base(kind, seed)
    apply_adapter(merged, AdapterConfig(method="dora", rank=4, alpha=8))
    perturb_adapters(merged, seed=seed + 2)
    return base, merge_adapter(merged).eval()


def chat_ids(tokenizer, messages=CHAT) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


@torch.no_grad()
def logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0]  # (tokens, vocab)


def read_back_model(folder: Path):
    """What transformers makes of the file: dequantized to float32."""
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32).eval()


def read_back_tokenizer(folder: Path):
    return AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)


def q8_0_row_fits(parameter: torch.Tensor) -> bool:
    """q8_0 blocks run along a row, 32 values each (llama.cpp writes f16 for other rows)."""
    return parameter.shape[-1] % 32 == 0


@torch.no_grad()
def rounded_as_stored(model, file_type: str):
    """A copy of `model` whose 2-D weights went through the file's type and back (1-D ones stay f32):
    the model a faithful file describes, so its logits and the read-back model's may differ by
    float32 rounding only. Rows are permuted whole, and q8_0 blocks lie within a row, so rounding
    before or after llama.cpp's rotary permutation gives the same values."""
    f16 = lambda w: w.half().float()  # noqa: E731 - a one-line rounding, beside its uses
    q8_0 = gguf.GGMLQuantizationType.Q8_0
    rounders = {"f16": f16, "bf16": lambda w: w.bfloat16().float(),
                "q8_0": lambda w: torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), q8_0), q8_0)
                                                   .reshape(w.shape).astype(np.float32))}
    copy = type(model)(model.config).eval()
    copy.load_state_dict(model.state_dict())
    for parameter in copy.parameters():
        if parameter.ndim == 2:
            rounder = rounders[file_type] if file_type != "q8_0" or q8_0_row_fits(parameter) else f16
            parameter.copy_(rounder(parameter.detach().clone()))
    return copy
