"""Our CUDA path (bf16 base, fp32 adapters, fused Triton kernels) against our CPU fp32 reference,
and merged-model latency against the base model. Measured, not asserted: JSON lines out.

    python benchmarks/gpu_parity.py --device cuda

parity lines: max |logit difference| relative to max |logit|, and for each adapter gradient
the relative L2 error, with the Triton kernels on and off (DORA_DISABLE_TRITON=1).
bf16 tolerance we document: relative logit error <= 2e-2, gradient relative L2 error <= 5e-2
(bf16 keeps 8 significand bits: 2^-8 = 0.4 % per rounding, compounded over layers).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dora_core import AdapterConfig, AdapterLinear, apply_adapter, merge_adapter


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)
    return LlamaForCausalLM(config).eval()


@torch.no_grad()
def perturb(model) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, AdapterLinear):
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.05)
            module.lora_magnitude_vector.mul_(1 + 0.05 * torch.randn(module.lora_magnitude_vector.shape,
                                                                      generator=generator))


def forward_backward(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    logits.float().square().mean().backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach().float().cpu(), grads


def to_device_bf16_base(model, device):
    model = copy.deepcopy(model).to(device).to(torch.bfloat16)
    for module in model.modules():
        if isinstance(module, AdapterLinear):
            module.float()
            module.base_layer.to(torch.bfloat16)
    return model


def parity(device: str) -> list[dict]:
    reference = apply_adapter(tiny_llama(), AdapterConfig(rank=16, alpha=32))
    perturb(reference)
    ids = torch.randint(0, 2048, (4, 128), generator=torch.Generator().manual_seed(2))
    expected_logits, expected_grads = forward_backward(reference, ids)
    results = []
    for fused in (True, False):
        os.environ["DORA_DISABLE_TRITON"] = "0" if fused else "1"
        logits, grads = forward_backward(to_device_bf16_base(reference, device), ids.to(device))
        errors = [float((grads[n] - g).norm() / g.norm().clamp_min(1e-12)) for n, g in expected_grads.items()]
        results.append({"benchmark": "gpu_parity", "device": device, "triton": fused,
                        "logits_max_rel_error": float((logits - expected_logits).abs().max()
                                                      / expected_logits.abs().max()),
                        "grad_rel_l2_error_max": max(errors), "grad_rel_l2_error_median": statistics.median(errors)})
    os.environ.pop("DORA_DISABLE_TRITON", None)
    return results


def merged_latency(device: str, repeats: int = 20) -> dict:
    """Forward latency of the base model and of a merged DoRA model (same architecture)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from dora_step import SHAPES, build_base

    shape = SHAPES["tinyllama-1.1b"]
    base = build_base(shape, torch.bfloat16, device).eval()
    merged = merge_adapter(apply_adapter(copy.deepcopy(base), AdapterConfig(rank=16, alpha=32))).eval()
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq), device=device)

    def timed(model) -> float:
        times = []
        with torch.no_grad():
            for index in range(repeats + 3):
                torch.cuda.synchronize()
                start = time.perf_counter()
                model(input_ids=ids)
                torch.cuda.synchronize()
                if index >= 3:
                    times.append(time.perf_counter() - start)
        return statistics.median(times)

    base_s, merged_s = timed(base), timed(merged)
    return {"benchmark": "merged_latency", "device": device, "shape": "tinyllama-1.1b", "base_forward_s": base_s,
            "merged_forward_s": merged_s, "merged_vs_base": round(merged_s / base_s, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    for line in parity(args.device):
        print(json.dumps(line), flush=True)
    if args.device.startswith("cuda"):
        print(json.dumps(merged_latency(args.device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
