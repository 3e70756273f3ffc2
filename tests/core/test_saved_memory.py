"""What the DoRA layer keeps for backward: LoRA's tensors plus, at most, each layer's output.

Byte counts are deterministic (unlike timings), so this contract is a test; the ratios
against PEFT at real shapes are measured in benchmarks/dora_step.py.
"""

import copy
import subprocess
import sys
import json
from pathlib import Path

import torch

from dora_core import AdapterConfig, AdapterLinear, apply_adapter
from tests.core.model_factories import input_ids, perturb_adapters, tiny_llama

REPO = Path(__file__).resolve().parents[2]


def _saved_activation_bytes(model) -> int:
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = input_ids(batch=4, length=16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss
    return sum(storages.values())


def _adapter_output_bytes(model) -> int:
    total = [0]

    def hook(module, inputs, output):
        total[0] += output.numel() * output.element_size() + 2 * module.out_features * 4

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, AdapterLinear)]
    ids = input_ids(batch=4, length=16)
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    return total[0]


def test_dora_keeps_only_lora_tensors_plus_layer_outputs():
    base = tiny_llama()
    lora = apply_adapter(copy.deepcopy(base), AdapterConfig(method="lora", rank=4, alpha=8)).train()
    dora = apply_adapter(copy.deepcopy(base), AdapterConfig(method="dora", rank=4, alpha=8)).train()
    perturb_adapters(dora)
    extra = _saved_activation_bytes(dora) - _saved_activation_bytes(lora)
    assert 0 < extra <= _adapter_output_bytes(dora)


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
