"""What the DoRA layer keeps for backward: LoRA's tensors plus, at most, each layer's output.

Byte counts are deterministic (unlike timings), so this contract is a test; the ratios
against PEFT at real shapes are measured in benchmarks/dora_step.py.
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import torch

from dora_core import AdapterConfig, AdapterLinear, apply_adapter
from tests.support.model_factories import input_ids, perturb_adapters, tiny_llama

REPO = Path(__file__).resolve().parents[2]


def _saved_activation_bytes(model, **forward_kwargs) -> int:
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = input_ids(batch=4, length=16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids, **forward_kwargs)
    return sum(storages.values())


def _adapter_output_bytes(model, only_names: tuple[str, ...] | None = None) -> int:
    """Outputs of the adapted layers (all, or those whose name ends in one of only_names), plus
    the two fp32 (out,) factors every DoRA layer keeps."""
    total = [0]

    def hook_for(name: str):
        def hook(module, inputs, output):
            if only_names is None or name.endswith(only_names):
                total[0] += output.numel() * output.element_size()
            total[0] += 2 * module.out_features * 4
        return hook

    handles = [module.register_forward_hook(hook_for(name))
               for name, module in model.named_modules() if isinstance(module, AdapterLinear)]
    ids = input_ids(batch=4, length=16)
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    return total[0]


def _lora_and_dora():
    """The same tiny Llama adapted with LoRA and with DoRA (B and m moved off their init)."""
    base = tiny_llama()
    lora = apply_adapter(copy.deepcopy(base), AdapterConfig(method="lora", rank=4, alpha=8)).train()
    dora = apply_adapter(copy.deepcopy(base), AdapterConfig(method="dora", rank=4, alpha=8)).train()
    perturb_adapters(dora)
    return lora, dora


def test_dora_keeps_only_lora_tensors_plus_layer_outputs():
    lora, dora = _lora_and_dora()
    extra = _saved_activation_bytes(dora) - _saved_activation_bytes(lora)
    assert 0 < extra <= _adapter_output_bytes(dora)


def test_outputs_that_downstream_ops_save_are_shared_not_copied():
    """Training runs without a KV cache; then SDPA saves v and the MLP saves gate and up as the
    very tensors our layers return, so DoRA's extra bytes are exactly the q, k, o and down outputs
    (which no downstream op keeps) and the per-feature factors."""
    lora, dora = _lora_and_dora()
    extra = _saved_activation_bytes(dora, use_cache=False) - _saved_activation_bytes(lora, use_cache=False)
    unshared = ("q_proj", "k_proj", "o_proj", "down_proj")
    assert extra == _adapter_output_bytes(dora, only_names=unshared)


def test_benchmark_prints_one_json_line_per_configuration():
    command = [sys.executable, str(REPO / "benchmarks" / "dora_step.py"), "--device", "cpu", "--shapes", "tiny",
               "--batch", "1", "--seq", "16", "--steps", "1", "--warmup", "0", "--dtypes", "float32"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, check=True)
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    by_config = {line["config"]: line for line in lines}
    assert set(by_config) == {"floor", "peft-lora", "peft-lora-bf16", "ours-lora", "ours-dora", "ours-dora-run",
                              "peft-dora", "peft-dora-bf16"}
    assert by_config["ours-dora-run"]["held_activation_bytes"] < by_config["ours-dora"]["held_activation_bytes"]
    ours, peft = by_config["ours-dora"], by_config["peft-dora"]
    assert ours["step_time_s"] > 0 and "time_vs_floor" in ours and "held_vs_peft_lora" in ours
    assert ours["held_activation_bytes"] < peft["held_activation_bytes"]
    assert ours["trainable_params"] == peft["trainable_params"]
