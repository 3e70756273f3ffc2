"""The merged model's weights as GGUF tensors: llama.cpp's names, row layout and types.

Names come from gguf-py's own map (`gguf.get_tensor_name_map`: `model.layers.0.self_attn.q_proj`
-> `blk.0.attn_q`), so they are the ones llama.cpp looks up. Three things differ from the
transformers checkpoint:

- Rotary layout (llama architecture only). transformers' `rotate_half` pairs dimension i of a
  head with i + head_dim/2; llama.cpp's rope (the original Meta layout) pairs 2i with 2i + 1.
  llama.cpp's converter therefore permutes the rows of q_proj and k_proj (and their biases) head
  by head, and transformers' GGUF loader permutes them back on read; we write the same
  permutation. Qwen2 is converted without it (llama.cpp runs it in the NEOX rope mode, which
  pairs i with i + head_dim/2 like transformers).
- Tied embeddings: one tensor, `token_embd`, and no `output.weight` (llama.cpp and transformers
  both read a missing output as tied).
- Types: 1-D tensors (norms, biases) stay f32, as llama.cpp keeps them; 2-D weights are f16, bf16
  or q8_0. q8_0 quantizes each row in blocks of 32 (one f16 scale and 32 int8 values per block),
  so a weight whose rows are not a multiple of 32 long falls back to f16, as llama.cpp does.

Tensors are converted one at a time while the file is written (`TensorPlan.data`), so an export
holds one converted tensor beside the model, never a second copy of every weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np
import torch
from torch import nn

from dora_contract.architectures import GGUF_ARCHITECTURES

# gguf_type (the run contract) -> what general.file_type says, and the type of the 2-D weights
FILE_TYPES = {
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
_F32, _F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
_ROTARY_PERMUTED = {"llama"}  # GGUF architectures whose q/k rows llama.cpp's converter permutes


class GgufExportError(ValueError):
    """The model cannot be written as GGUF; the message says why, for the user."""


def gguf_architecture(model_type: str) -> gguf.MODEL_ARCH:
    name = GGUF_ARCHITECTURES[model_type]
    return next(arch for arch, arch_name in gguf.MODEL_ARCH_NAMES.items() if arch_name == name)


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: where it comes from, and how it is laid out and stored."""

    name: str  # GGUF name, e.g. blk.0.attn_q.weight
    source: torch.Tensor  # the model's parameter, (out, in) or (n,)
    qtype: gguf.GGMLQuantizationType
    rotary_heads: int | None  # permute rows for llama.cpp's rope, in this many heads; None: as is

    @property
    def byte_shape(self) -> tuple[int, ...]:
        return tuple(gguf.quant_shape_to_byte_shape(tuple(self.source.shape), self.qtype))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.byte_shape))

    def data(self) -> np.ndarray:
        """The tensor as the file stores it (numpy, row-major, shape as transformers has it)."""
        array = self.source.detach().to(device="cpu", dtype=torch.float32).numpy()
        if self.rotary_heads is not None:
            array = rotary_permute(array, self.rotary_heads)
        if self.qtype == _F32:
            return np.ascontiguousarray(array)
        if self.qtype == _F16:
            converted = array.astype(np.float16)
            if not np.isfinite(converted).all():
                raise GgufExportError(f"{self.name} has weights beyond f16's range (65504); use gguf_type bf16")
            return converted
        return gguf.quants.quantize(array, self.qtype)  # bf16, q8_0: uint8 bytes


def rotary_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from transformers' [first half | second half] rotary layout to llama.cpp's
    interleaved pairs (transformers' GGUF loader inverts exactly this). (heads * head_dim, ...)."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def tensor_type(tensor: torch.Tensor, weight_type: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    if tensor.ndim <= 1:
        return _F32
    if weight_type == gguf.GGMLQuantizationType.Q8_0:
        block, _ = gguf.GGML_QUANT_SIZES[weight_type]
        if tensor.shape[-1] % block:
            return _F16
    return weight_type


def plan_tensors(model: nn.Module, weight_type: gguf.GGMLQuantizationType) -> list[TensorPlan]:
    """Every tensor of the GGUF file, in the model's state-dict order."""
    config = model.config
    arch = gguf_architecture(config.model_type)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    heads = config.num_attention_heads
    rotary = {"q_proj": heads, "k_proj": getattr(config, "num_key_value_heads", None) or heads}
    permuted = gguf.MODEL_ARCH_NAMES[arch] in _ROTARY_PERMUTED
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plans = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # the same tensor as token_embd; llama.cpp reads no output.weight as tied
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GgufExportError(f"no GGUF name for the tensor {hf_name} of this {config.model_type} model")
        module = hf_name.rsplit(".", 2)[-2]
        heads_of = rotary.get(module) if permuted else None
        plans.append(TensorPlan(name=name, source=tensor, qtype=tensor_type(tensor, weight_type),
                                rotary_heads=heads_of))
    return plans
