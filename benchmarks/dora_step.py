"""Training-step cost of DoRA and LoRA, ours against PEFT's, in one process.

Measured, not asserted. One JSON line per (shape, dtype, configuration) on stdout:

  floor           every weight frozen, backward for input gradients only: the floor for any adapter
  ours-dora       dora_core DoRA (fp32 adapter masters, activations in the model dtype)
  ours-lora       dora_core LoRA
  ours-dora-run   ours-dora with the training run's own loss (chunked head + cross-entropy on the
                  trained tokens, dora_core.training.loss): the step the worker runs
  peft-lora       PEFT LoRA, default (adapters autocast to fp32)
  peft-lora-bf16  PEFT LoRA with adapters in the model dtype (autocast_adapter_dtype=False)
  peft-dora       PEFT DoRA, default
  peft-dora-bf16  PEFT DoRA with adapters in the model dtype
  full-ft         every weight trains (opt-in: --configs ...,full-ft)
  ours-qdora      ours-dora on an NF4 base (training.quantization: nf4; opt-in, needs torchao)
  ours-qlora      ours-lora on an NF4 base (opt-in)

Per line: median step time (forward + loss + backward + AdamW step), bytes held for backward
(every tensor handed to autograd's saved-tensor pack hook and alive when backward starts,
unique storages; `held_activation_bytes` leaves out parameters, `held_total_bytes` counts
them), CUDA peak memory (less the shared base template the configurations are copied from), and
ratios to the floor and to PEFT LoRA from the same run.

    python benchmarks/dora_step.py --device cpu                        # tiny shapes, fp32 and bf16
    python benchmarks/dora_step.py --device cuda --shapes tinyllama-1.1b,llama3-8b
    python benchmarks/dora_step.py --dropout 0.0,0.05 --shapes small --layers 4   # adapter dropout
    python benchmarks/dora_step.py --configs peft-lora,ours-dora,ours-qdora,ours-qlora --dtypes bfloat16  # NF4

Per line also `weight_bytes`: the model's parameters and buffers (an NF4 weight counted by the
codes and scales it holds), and `adapted_weight_bytes`: the adapted layers' base weights alone.

With `--nproc N` (N > 1), each (shape, dtype) also gets one line per `--parallelisms` entry (ddp,
fsdp) measuring ours-dora-run over N processes with the same global batch: see
benchmarks/dora_step_processes.py.

    python benchmarks/dora_step.py --device cpu --shapes tiny --dtypes float32 --configs ours-dora-run --nproc 2

With `--dropout`, every adapter configuration (ours and PEFT's) uses that adapter dropout and the
ratios compare configurations at the same dropout.

Our configurations also carry the memory planner's estimate (dora_contract/memory_plan.py, for
these unpadded batches without gradient checkpointing): `plan_total_bytes` (what a worker checks
against its GPU), `plan_tensor_bytes` (the same without the margin for the CUDA context and
fragmentation: what the allocator's peak can be compared with), `plan_activation_bytes`
(activations and loss kept for backward) and `plan_weight_bytes` (base weights and adapter, to
compare with `weight_bytes`). The planner counts the run's chunked loss, so on the
lines that use it (`ours-*-run`) `held_vs_plan` = held_activation_bytes / plan_activation_bytes
and, on CUDA, `peak_vs_plan` = peak_memory_bytes / plan_tensor_bytes.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from transformers import LlamaConfig, LlamaForCausalLM

from dora_contract import TrainingSettings
from dora_contract.memory_plan import plan_memory
from dora_core import AdapterConfig, AdapterLinear, apply_adapter


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    seq: int


SHAPES = {
    "tiny": Shape(hidden=256, intermediate=688, layers=4, heads=8, kv_heads=4, vocab=4096, batch=4, seq=128),
    # The tiny Llama with Llama-2's (and TinyLlama's) 32k vocabulary: the loss's logits then weigh as
    # they do in real models, and PEFT DoRA measures 1.42x PEFT LoRA (fp32), the reference.
    "tiny-32k": Shape(hidden=256, intermediate=688, layers=4, heads=8, kv_heads=4, vocab=32000, batch=4, seq=128),
    "small": Shape(hidden=512, intermediate=1376, layers=6, heads=8, kv_heads=4, vocab=8192, batch=4, seq=256),
    "tinyllama-1.1b": Shape(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000,
                            batch=8, seq=1024),
    "llama3-8b": Shape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256,
                       batch=4, seq=1024),
}
ALL_CONFIGS = ("floor", "peft-lora", "peft-lora-bf16", "ours-lora", "ours-dora", "ours-dora-run", "peft-dora",
               "peft-dora-bf16", "full-ft", "ours-qdora", "ours-qlora")
DEFAULT_CONFIGS = ALL_CONFIGS[:-3]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_base(shape: Shape, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(shape.seq, 2048), attn_implementation="sdpa",
        # Training never reads a KV cache; building one copies k and v in every layer (and SDPA then
        # saves the copies), which is what the training run avoids too (dora_core.training).
        use_cache=False,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: an 8B model never exists in fp32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).train()


def prepare(name: str, base: LlamaForCausalLM, rank: int, dropout: float = 0.0):
    """The model for one configuration and its trainable parameters (same base weights)."""
    model = copy.deepcopy(base)
    if name == "floor":
        model.requires_grad_(False)
        return model
    if name == "full-ft":
        return model.requires_grad_(True)
    method = "dora" if "dora" in name else "lora"
    if name.startswith("ours-"):
        model.benchmark_uses_run_loss = name.endswith("-run")
        quantization = "nf4" if name.startswith("ours-q") else "none"
        return apply_adapter(model, AdapterConfig(method=method, rank=rank, alpha=2.0 * rank, dropout=dropout),
                             quantization=quantization)
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout, use_dora=method == "dora",
                             target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config, autocast_adapter_dtype=not name.endswith("-bf16"))


def adapter_dtype(model) -> str | None:
    for module in model.modules():
        if isinstance(module, AdapterLinear):
            return str(module.lora_A.dtype).removeprefix("torch.")
    for parameter_name, parameter in model.named_parameters():
        if "lora_A" in parameter_name:
            return str(parameter.dtype).removeprefix("torch.")
    return None


def make_batch(name: str, model, shape: Shape, device: str):
    generator = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=generator).to(device)
    if name != "floor":
        return {"input_ids": ids, "labels": ids}
    # Every weight frozen: gradients flow to the input embeddings only, through every layer.
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    return {"inputs_embeds": embeds, "labels": ids}


def step_loss(model, batch):
    """The model's own loss, or the training run's (summed, normalised by trained tokens)."""
    if getattr(model, "benchmark_uses_run_loss", False):
        from dora_core.training.loss import summed_loss

        sums = summed_loss(model, batch)
        return sums.loss_sum / max(sums.tokens, 1)
    return model(**batch).loss


def held_for_backward(model, batch) -> tuple[int, int]:
    """(activation bytes, total bytes incl. parameters) saved for backward, unique storages."""
    parameter_storages = {ptr for p in model.parameters() for ptr in storage_sizes(p)}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storages.update(storage_sizes(tensor))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step_loss(model, batch)
    total = sum(storages.values())
    activations = sum(n for ptr, n in storages.items() if ptr not in parameter_storages)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return activations, total


def time_steps(model, batch, device: str, *, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) per timed step. On a shared CPU the CPU time is the
    steadier figure: other load stretches wall time far more than the work a step does."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable else None
    times, cpu_times = [], []
    for index in range(warmup + steps):
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step_loss(model, batch)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        if "inputs_embeds" in batch:
            batch["inputs_embeds"].grad = None
    return times, cpu_times


def storage_sizes(tensor: torch.Tensor) -> dict[int, int]:
    """{storage pointer: bytes} of a tensor; a wrapper subclass (NF4Tensor) by its inner tensors."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        inner = [getattr(tensor, name) for name in names] + [getattr(tensor, "scaler_mean", None),
                                                             getattr(tensor, "nf4", None)]
        return {k: v for t in inner if t is not None for k, v in storage_sizes(t).items()}
    storage = tensor.untyped_storage()
    return {storage.data_ptr(): storage.nbytes()}


def tensor_bytes(model) -> int:
    """Bytes of a model's parameters and buffers (unique storages)."""
    storages: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storages.update(storage_sizes(tensor))
    return sum(storages.values())


def adapted_weight_bytes(model) -> int:
    """Bytes of the adapted layers' frozen base weights (NF4 or dense)."""
    storages: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, AdapterLinear):
            storages.update(storage_sizes(module.base_layer.weight))
    return sum(storages.values())


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, base, shape: Shape, dtype_name: str, args) -> dict:
    device = args.device
    model = prepare(name, base, args.rank, args.current_dropout)
    batch = make_batch(name, model, shape, device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    held_activations, held_total = held_for_backward(model, batch)
    times, cpu_times = ([], []) if not args.steps else time_steps(model, batch, device, warmup=args.warmup,
                                                                   steps=args.steps)
    # The base template stays resident so that every configuration starts from the same weights;
    # it is not part of any configuration's footprint.
    peak = torch.cuda.max_memory_allocated() - tensor_bytes(base) if device.startswith("cuda") else None
    result = {
        "benchmark": "dora_step", "shape": args.current_shape, "device": device, "dtype": dtype_name, "config": name,
        "adapter_dtype": adapter_dtype(model), "rank": args.rank, "dropout": args.current_dropout,
        "layers": shape.layers, "batch": shape.batch, "seq": shape.seq,
        "step_time_s": statistics.median(times) if times else None, "step_time_min_s": min(times, default=None),
        "step_cpu_s": statistics.median(cpu_times) if cpu_times else None, "steps": len(times),
        "held_activation_bytes": held_activations, "held_total_bytes": held_total, "peak_memory_bytes": peak,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "weight_bytes": tensor_bytes(model), "adapted_weight_bytes": adapted_weight_bytes(model) or None,
    } | planned(name, base, shape, DTYPES[dtype_name], args, held=held_activations, peak=peak)
    del model, batch
    gc.collect()
    return result


def planned(name: str, base, shape: Shape, dtype: torch.dtype, args, *, held: int, peak: int | None) -> dict:
    """The memory planner's estimate for one of our configurations, and measured / estimated."""
    if not name.startswith("ours-"):
        return {}
    method = "dora" if "dora" in name else "lora"
    adapter = AdapterConfig(method=method, rank=args.rank, alpha=2.0 * args.rank, dropout=args.current_dropout)
    training = TrainingSettings(micro_batch_size=shape.batch, max_seq_len=shape.seq, gradient_checkpointing=False,
                                quantization="nf4" if name.startswith("ours-q") else "none")
    plan = plan_memory(base.config.to_dict(), adapter, training, dtype_bytes=dtype.itemsize, padded_batches=False)
    tensors, activations = plan.total - plan.margin, plan.activations + plan.loss
    result = {"plan_total_bytes": plan.total, "plan_tensor_bytes": tensors, "plan_activation_bytes": activations,
              "plan_weight_bytes": plan.base_weights + plan.adapter_parameters}
    if name.endswith("-run"):
        result["held_vs_plan"] = round(held / activations, 3)
        if peak:
            result["peak_vs_plan"] = round(peak / tensors, 3)
    return result


def add_ratios(results: list[dict]) -> None:
    """Ratios within one (shape, dtype) group: to the floor and to PEFT LoRA (both adapter dtypes)."""
    by_config = {r["config"]: r for r in results}
    references = {"floor": by_config.get("floor"), "peft_lora": by_config.get("peft-lora"),
                  "peft_lora_bf16": by_config.get("peft-lora-bf16")}
    for result in results:
        for reference_name, reference in references.items():
            if reference is None or reference is result:
                continue
            if result["step_time_s"] and reference["step_time_s"]:
                result[f"time_vs_{reference_name}"] = round(result["step_time_s"] / reference["step_time_s"], 3)
            if result["step_cpu_s"] and reference["step_cpu_s"]:
                result[f"cpu_vs_{reference_name}"] = round(result["step_cpu_s"] / reference["step_cpu_s"], 3)
            if reference_name != "floor" and reference["held_activation_bytes"]:
                result[f"held_vs_{reference_name}"] = round(
                    result["held_activation_bytes"] / reference["held_activation_bytes"], 3)
                result[f"held_total_vs_{reference_name}"] = round(
                    result["held_total_bytes"] / reference["held_total_bytes"], 3)
            if result["peak_memory_bytes"] and reference["peak_memory_bytes"]:
                result[f"peak_vs_{reference_name}"] = round(
                    result["peak_memory_bytes"] / reference["peak_memory_bytes"], 3)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default=None,
                        help=f"comma list of {sorted(SHAPES)} (default: tiny,tiny-32k on cpu)")
    parser.add_argument("--dtypes", default=None, help="comma list of float32,bfloat16 (cpu default: both)")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma list of {ALL_CONFIGS}")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=None, help="override the shape's batch")
    parser.add_argument("--seq", type=int, default=None, help="override the shape's sequence length")
    parser.add_argument("--layers", type=int, default=None, help="override the shape's number of layers")
    parser.add_argument("--dropout", default="0.0", help="comma list of adapter dropout probabilities")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps; 0 measures bytes held only")
    parser.add_argument("--nproc", type=int, default=1, help="also measure ours-dora-run over N processes")
    parser.add_argument("--parallelisms", default="ddp,fsdp", help="with --nproc: comma list of ddp,fsdp")
    args = parser.parse_args(argv)
    args.parallelisms = args.parallelisms.split(",")
    on_gpu = args.device.startswith("cuda")
    args.shapes = (args.shapes or ("tinyllama-1.1b,llama3-8b" if on_gpu else "tiny,tiny-32k")).split(",")
    args.dtypes = (args.dtypes or ("bfloat16" if on_gpu else "float32,bfloat16")).split(",")
    args.configs = args.configs.split(",")
    args.dropout = [float(p) for p in args.dropout.split(",")]
    unknown = [c for c in args.configs if c not in ALL_CONFIGS] + [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown configs/shapes: {unknown}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        overrides = {"batch": args.batch, "seq": args.seq, "layers": args.layers}
        shape = Shape(**{**shape.__dict__, **{k: v for k, v in overrides.items() if v}})
        args.current_shape = shape_name
        for dtype_name in args.dtypes:
            base = build_base(shape, DTYPES[dtype_name], args.device)
            for dropout in args.dropout:
                args.current_dropout = dropout
                results = []
                for name in args.configs:
                    results.append(measure(name, base, shape, dtype_name, args))
                    print(f"# measured {shape_name} {dtype_name} p={dropout} {name}", file=sys.stderr, flush=True)
                add_ratios(results)
                if args.nproc > 1:
                    from dora_step_processes import measure_processes  # this script's folder is on sys.path

                    results += measure_processes(shape, dtype_name, args)
                for result in results:
                    print(json.dumps(result), flush=True)
            del base
            gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
