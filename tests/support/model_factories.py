"""Tiny transformers models built from a config (never downloaded), and PEFT twins of ours."""

from __future__ import annotations

import copy

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from dora_core import AdapterConfig, AdapterLinear, apply_adapter
from tests.support.numerics import float64_model

VOCAB = 96


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


MODEL_MAKERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def input_ids(batch: int = 2, length: int = 9, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


@torch.no_grad()
def perturb_adapters(model, seed: int = 2) -> None:
    """Move B and m away from init so gradients and outputs exercise every term."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, AdapterLinear):
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.2)
            if module.use_dora:
                noise = torch.randn(module.lora_magnitude_vector.shape, generator=generator)
                module.lora_magnitude_vector.mul_(1 + 0.1 * noise)


def peft_twin(ours, base, *, config: AdapterConfig):
    """A PEFT model on a copy of `base` holding exactly our adapter's A, B and m."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             use_dora=config.use_dora, use_rslora=config.use_rslora,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    twin = get_peft_model(copy.deepcopy(base), peft_config)
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, AdapterLinear):
                peft_layer = twin.base_model.model.get_submodule(name)
                peft_layer.lora_A["default"].weight.copy_(module.lora_A)
                peft_layer.lora_B["default"].weight.copy_(module.lora_B)
                if module.use_dora:
                    peft_layer.lora_magnitude_vector["default"].weight.copy_(module.lora_magnitude_vector)
    return twin


def adapted_pair(kind: str, config: AdapterConfig, *, dtype: torch.dtype = torch.float32):
    """(base, ours with perturbed adapters, PEFT twin) for a tiny model of `kind`, in `dtype`.

    Built in fp32 and then converted, so the float64 models hold exactly the fp32 models'
    values (and an adapter saved in PEFT's fp32 format loses nothing); float64 models compute
    in float64 throughout (numerics.float64_model)."""
    base = MODEL_MAKERS[kind]()
    ours = apply_adapter(copy.deepcopy(base), config)
    perturb_adapters(ours)
    convert = float64_model if dtype == torch.float64 else (lambda model: model.to(dtype))
    base, ours = convert(base), convert(ours)
    return base, ours, peft_twin(ours, base, config=config)
