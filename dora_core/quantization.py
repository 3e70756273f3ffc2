"""QDoRA and QLoRA: adapters on a base whose adapted linear weights are stored 4-bit (NF4).

`training.quantization: nf4` replaces each adapted layer by `NF4AdapterLinear`: the magnitude is
initialised from the *unquantized* weight's row norms (as Answer.AI's QDoRA does, before
quantizing), so at step 0 every adapted row has the original model's norm and the quantized
weight contributes its direction only; then the frozen base weight is quantized to NF4 (QLoRA's
4-bit NormalFloat with double-quantized block scales, Dettmers et al. 2023) and the bf16 weight is
freed. The adapter parameters stay fp32 masters and never see quantization.

What a step computes, per adapted layer, with W~ = dequant(NF4(W)):

- the factored norm n = ||W~ + s B A||_row from W~ A^T (out, r) and ||W~||^2 (out,), both built
  from dequantized row chunks of at most NORM_CHUNK_ELEMENTS (`dora_math.row_norm_from_products`):
  the dense matrix W~ + s B A is never formed, and ||W~||^2 is computed once and cached;
- the lean autograd functions of dora_math unchanged: they save the NF4 weight itself (4 bits a
  weight) and dequantize one layer's W~ for the forward matmul and again for dx in backward
  (`dora_math.dense_weight`), as torchtune's `linear_nf4` does. At no point is the whole model
  held in bf16; the frozen base gets no gradient.

Merging dequantizes each layer, writes W' = m (W~ + s B A) / ||W~ + s B A||_row in the dtype the
base was loaded in (bf16 on a GPU; an fp32 CPU run stays fp32, so a merged model is never of mixed
dtypes) and puts a plain dense weight back: the merged model is a standard transformers checkpoint.
The adapter (PEFT format) holds A, B and m only, so PEFT loads it on the *unquantized* base; there
it computes the same formula with W instead of W~, i.e. it differs from the trained model by the
quantization error of W, as every QLoRA adapter does.

Why torchao's NF4Tensor and not bitsandbytes' 4-bit: it is pure PyTorch (the same code on a CPU,
where the tests run it, and on any GPU, with no compiled library to match the CUDA build), it is a
tensor subclass that implements FSDP2's all-gather hooks (sharding a quantized base over GPUs
later needs no other format), and torchtune's QDoRA is built on it. What bitsandbytes would give
is PEFT's own DoRA on its Linear4bit; but our layer is not PEFT's (its lean backward is the point),
and the adapter file is the same either way, so nothing is lost for PEFT users.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torchao.quantization import NF4Tensor, to_nf4

from dora_contract import SettingError
from dora_core.config import AdapterConfig
from dora_core.dora_math import dense_adapted_weight, row_norm_from_products, squared_row_norms
from dora_core.layers import AdapterLinear, is_conv1d

# QLoRA's block of 64 weights per absmax scale; the scales are quantized again (double
# quantization) in blocks of up to 256 scales (torchao's default; fewer when a small tensor has
# fewer blocks, which only tiny models do).
NF4_BLOCK_SIZE = 64
MAX_SCALER_BLOCK_SIZE = 256
# Weights dequantized at once for the factored norm: 2^24 (32 MiB in bf16), a few rows of the
# largest projections, so the norm's transient memory does not grow with the layer.
NORM_CHUNK_ELEMENTS = 1 << 24


def quantize_nf4(weight: torch.Tensor) -> NF4Tensor:
    """NF4 of a (out, in) weight, dequantizing to the weight's dtype; a frozen copy, no grad."""
    if weight.numel() % NF4_BLOCK_SIZE:
        raise SettingError("training.quantization", f"nf4 needs each adapted weight to hold a multiple of "
                           f"{NF4_BLOCK_SIZE} values; a {tuple(weight.shape)} weight does not")
    blocks = weight.numel() // NF4_BLOCK_SIZE
    return to_nf4(weight.detach().contiguous(), NF4_BLOCK_SIZE, math.gcd(blocks, MAX_SCALER_BLOCK_SIZE))


# What torchao splits when FSDP2 shards an NF4 weight along its rows (each must divide evenly).
NF4_SHARDED_PARTS = ("quantized_scalers", "quantization_factor", "quantized_data")


def nf4_sharding_problem(model: nn.Module, shards: int) -> str | None:
    """Why FSDP cannot shard this model's NF4 weights over `shards` processes, or None. torchao
    splits each NF4 weight's rows and its packed values, block scales and scales of scales into
    equal parts; a weight whose parts do not divide (a tiny model's, or an odd process count)
    would fail inside FSDP with an assertion a user cannot act on."""
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, NF4Tensor):
            continue
        uneven = [part for part in NF4_SHARDED_PARTS if getattr(weight, part).numel() % shards]
        if weight.shape[0] % shards or uneven:
            return (f"the nf4 weight of {name} {tuple(weight.shape)} does not split into {shards} equal shards "
                    f"({', '.join(uneven) or 'rows'}); use training.parallelism: ddp, or a process count that "
                    "divides it")
    return None


def row_chunks(weight: NF4Tensor, max_elements: int = NORM_CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges covering the weight, each starting on a quantization block."""
    rows, columns = weight.shape
    align = NF4_BLOCK_SIZE // math.gcd(columns, NF4_BLOCK_SIZE)  # rows per whole number of blocks
    step = max(align, max_elements // columns // align * align)
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def dequantize_rows(weight: NF4Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of dequant(weight), (stop - start, in) in the weight's dtype: the same
    values as `weight.get_original_weight()[start:stop]` (the same elementwise operations on a
    slice), without dequantizing the rest. `start` must begin a quantization block (row_chunks)."""
    columns = weight.shape[1]
    first, last = start * columns, stop * columns  # flat element range
    block_size = weight.block_size
    if first % block_size or last % block_size:
        raise ValueError(f"rows [{start}, {stop}) do not start and end on {block_size}-value blocks")
    block_ids = torch.arange(first // block_size, last // block_size, device=weight.device)  # (blocks,)
    factors = weight.quantization_factor[block_ids // weight.scaler_block_size]  # (blocks,)
    scales = (weight.quantized_scalers[block_ids] / factors).to(weight.dtype) + weight.scaler_mean  # (blocks,)
    packed = weight.quantized_data[first // 2:last // 2]  # two 4-bit codes a byte, high nibble first
    codes = torch.stack([packed >> 4, packed & 0b1111], dim=-1).view(-1).long()  # (elements,)
    values = weight.nf4[codes].view(-1, block_size) * scales.unsqueeze(1)  # (blocks, block_size)
    return values.view(stop - start, columns)


def dequantize(weight: NF4Tensor) -> torch.Tensor:
    """The whole dequantized (out, in) weight, built chunk by chunk: one layer, for a merge."""
    return torch.cat([dequantize_rows(weight, start, stop) for start, stop in row_chunks(weight)])


def nf4_bytes(weight: NF4Tensor) -> int:
    """Bytes an NF4 weight holds: the codes, the quantized scales, their factors, the mean and the table."""
    inner, _ = weight.__tensor_flatten__()
    tensors = [getattr(weight, name) for name in inner] + [weight.scaler_mean, weight.nf4]
    return sum(t.numel() * t.element_size() for t in tensors)


class NF4AdapterLinear(AdapterLinear):
    """AdapterLinear whose frozen base weight is stored as NF4 (see the module docstring).

    Only nn.Linear bases: GPT-2's Conv1D stores W transposed, which NF4's row chunks do not follow.
    """

    quantized = True

    def __init__(self, base_layer: nn.Module, config: AdapterConfig) -> None:
        if is_conv1d(base_layer):
            raise SettingError("training.quantization", "nf4 supports nn.Linear layers; GPT-2's Conv1D is not "
                               "supported")
        super().__init__(base_layer, config)  # m = ||W||_row of the unquantized weight
        base_layer.weight = nn.Parameter(quantize_nf4(base_layer.weight), requires_grad=False)
        self._dequantized_sq_norm: torch.Tensor | None = None

    def weight_sq_norm(self) -> torch.Tensor:
        """||W~||_row^2 (fp32, (out,)), from dequantized chunks once: the NF4 weight never changes."""
        weight = self.base_layer.weight
        cached = self._dequantized_sq_norm
        if cached is None or cached.device != weight.device:
            cached = torch.cat([squared_row_norms(dequantize_rows(weight, start, stop))
                                for start, stop in row_chunks(weight)])  # (out,)
            self._dequantized_sq_norm = cached
        return cached

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """n = ||W~ + s B A||_row (fp32, detached, (out,)): W~ A^T from dequantized row chunks."""
        weight = self.base_layer.weight
        a_t = self.lora_A.to(weight.dtype).T  # (in, r)
        weight_times_a = torch.cat([dequantize_rows(weight, start, stop) @ a_t
                                    for start, stop in row_chunks(weight)])  # (out, r)
        return row_norm_from_products(weight_times_a, self.lora_A, self.lora_B, self.scale, self.weight_sq_norm())

    @torch.no_grad()
    def merged_base_layer(self) -> nn.Module:
        """The base layer with a dense W' (in the dtype the base was loaded in) instead of NF4."""
        weight = self.base_layer.weight
        merged = dense_adapted_weight(dequantize(weight), self.lora_A, self.lora_B, self.scale,
                                      self.lora_magnitude_vector)  # (out, in), at least fp32
        self.base_layer.weight = nn.Parameter(merged.to(weight.dtype), requires_grad=False)
        self._dequantized_sq_norm = None
        return self.base_layer

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base=nf4"


def quantized_weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes the adapted layers' NF4 weights hold, bytes the same weights take in bf16)."""
    weights = [m.base_layer.weight for m in model.modules() if isinstance(m, NF4AdapterLinear)]
    return sum(nf4_bytes(w) for w in weights), sum(2 * w.numel() for w in weights)
