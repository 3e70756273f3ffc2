"""QDoRA / QLoRA: adapters on an NF4-quantized base (dora_core.quantization).

Every reference is built on the same dequantized weights W~ the layer computes with, so what is
compared is our arithmetic, not the quantization error; the quantization error itself is what
separates the quantized model from the unquantized one (checked to be there, and bounded).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from dora_core import AdapterConfig, AdapterConfigError, AdapterLinear, apply_adapter, merge_adapter, save_adapter
from dora_core.quantization import (
    NF4AdapterLinear,
    dequantize,
    dequantize_rows,
    quantize_nf4,
    quantized_weight_bytes,
    row_chunks,
)
from dora_core.training import TrainingCallback, run_training
from tests.support.model_factories import input_ids, perturb_adapters, tiny_gpt2, tiny_llama
from tests.support.numerics import (
    assert_close_to_reference,
    assert_distinguishable,
    assert_states_close,
    budget,
    model_budget,
    relative_error,
    replay_budget,
)
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

CONFIGS = {"dora": AdapterConfig(method="dora", rank=4, alpha=8), "lora": AdapterConfig(method="lora", rank=4, alpha=8)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_row_chunks_dequantize_to_the_same_values_as_the_whole_weight(dtype):
    """The norm's chunks are exactly torchao's dequantization, sliced (the same elementwise ops)."""
    torch.manual_seed(0)
    weight = quantize_nf4(torch.randn(96, 160, dtype=dtype))  # 160 columns: a chunk needs 2 rows per block
    whole = weight.get_original_weight()
    chunks = list(row_chunks(weight, max_elements=1000))
    assert chunks[0] == (0, 6) and chunks[-1][1] == 96 and len(chunks) == 16
    for start, stop in chunks:
        assert torch.equal(dequantize_rows(weight, start, stop), whole[start:stop]), (start, stop)
    assert torch.equal(dequantize(weight), whole)
    assert dequantize(weight).dtype == dtype


def _nf4_layer(method: str, dtype: torch.dtype, bias: bool) -> NF4AdapterLinear:
    torch.manual_seed(0)
    base = nn.Linear(128, 96, bias=bias).to(dtype).requires_grad_(False)  # frozen, as apply_adapter leaves it
    layer = NF4AdapterLinear(base, CONFIGS[method])
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape) * 0.2)
        if layer.use_dora:
            layer.lora_magnitude_vector.mul_(1 + 0.1 * torch.randn(layer.lora_magnitude_vector.shape))
    return layer


def _float64_reference(layer: NF4AdapterLinear, x: torch.Tensor):
    """The layer's math in float64 on W~ = dequant(NF4 W): plain autograd, n detached (DoRA sec. 4.3)."""
    weight = dequantize(layer.base_layer.weight).double()  # (out, in)
    params = {name: p.detach().double().requires_grad_() for name, p in layer.named_parameters() if p.requires_grad}
    bias = None if layer.bias is None else layer.bias.double()
    x = x.detach().double().requires_grad_()
    z = x @ weight.T + layer.scale * (x @ params["lora_A"].T) @ params["lora_B"].T  # (N, out)
    if layer.use_dora:
        norm = torch.linalg.vector_norm(weight + layer.scale * params["lora_B"] @ params["lora_A"], dim=1).detach()
        z = z * (params["lora_magnitude_vector"] / norm)
    y = z if bias is None else z + bias
    return y, x, params


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("method", ["dora", "lora"])
def test_nf4_layer_matches_a_float64_reference_on_the_dequantized_weight(method, dtype, bias):
    layer = _nf4_layer(method, dtype, bias).train()
    assert layer.base_layer.weight.requires_grad is False
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 128, generator=generator).to(dtype).requires_grad_()
    upstream = torch.randn(2, 5, 96, generator=generator)
    y = layer(x)
    (y.float() * upstream).sum().backward()
    reference, x64, params = _float64_reference(layer, x)
    (reference * upstream.double()).sum().backward()

    # bf16 storage with fp32 accumulation, fp32 throughout otherwise: x and W~ (2 roundings), A x,
    # B u added, the gain and the output (4); backward: dz, dz B, then each gradient (4 more)
    accumulate = torch.float32
    forward_limit = budget(dtype, stages=6, terms=128, accumulate=accumulate)
    assert_close_to_reference(y, reference, forward_limit, what=f"{method} {dtype} forward")
    backward_limit = budget(dtype, stages=10, terms=128, accumulate=accumulate)
    assert_close_to_reference(x.grad, x64.grad, backward_limit, what="dx")
    for name, parameter in layer.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad.dtype == torch.float32  # fp32 masters
            assert_close_to_reference(parameter.grad, params[name].grad, backward_limit, what=f"d{name}")
    assert layer.base_layer.weight.grad is None  # the frozen NF4 base gets no gradient


def test_nf4_layer_saves_the_quantized_weight_and_no_dense_copy():
    """The lean backward is kept: besides LoRA's x and A x and DoRA's output, the layer saves
    the NF4 weight itself; no dense (out, in) weight (bf16 or fp32) is held for backward."""
    layer = _nf4_layer("dora", torch.bfloat16, bias=False).train()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    x = torch.randn(4, 128, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    weights = [t for t in saved if tuple(t.shape) == (96, 128)]
    assert len(weights) == 1 and weights[0] is layer.base_layer.weight, [type(t).__name__ for t in weights]
    assert type(weights[0]).__name__ == "NF4Tensor"
    assert any(t is x for t in saved) and y.grad_fn.name() == "DoraLinearFunctionBackward"


def _qdora_pair(method: str = "dora"):
    """(unquantized base, the QDoRA model with perturbed adapters, the base with W~ written in)."""
    base = tiny_llama()
    quantized = apply_adapter(copy.deepcopy(base), CONFIGS[method], quantization="nf4")
    perturb_adapters(quantized)
    dequantized_base = copy.deepcopy(base)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, NF4AdapterLinear):
                dequantized_base.get_submodule(name).weight.copy_(dequantize(module.base_layer.weight))
    return base, quantized.eval(), dequantized_base.eval()


def test_magnitude_starts_at_the_unquantized_row_norms():
    base = tiny_llama()
    model = apply_adapter(copy.deepcopy(base), CONFIGS["dora"], quantization="nf4")
    layer = model.model.layers[0].mlp.down_proj
    original = base.model.layers[0].mlp.down_proj.weight
    assert torch.equal(layer.lora_magnitude_vector.detach(), torch.linalg.vector_norm(original, dim=1))
    quantized_norm = torch.linalg.vector_norm(dequantize(layer.base_layer.weight), dim=1)
    assert_distinguishable(quantized_norm, layer.lora_magnitude_vector, budget(torch.float32, stages=2, terms=48),
                           what="the quantized rows' norms are not the unquantized ones")


@pytest.mark.parametrize("method", ["dora", "lora"])
def test_merge_equals_the_adapter_on_the_dequantized_base(method):
    """merge_adapter dequantizes and writes W' = m (W~ + sBA) / ||W~ + sBA||: plain Linear weights
    equal to a float64 merge on W~, and the merged model computes what the quantized one did."""
    _, quantized, dequantized_base = _qdora_pair(method)
    ids = input_ids()
    with torch.no_grad():
        expected_logits = quantized(ids).logits
    expected = {}
    for name, layer in quantized.named_modules():
        if isinstance(layer, NF4AdapterLinear):
            w64 = dequantized_base.get_submodule(name).weight.double()
            dense = w64 + layer.scale * layer.lora_B.double() @ layer.lora_A.double()  # (out, in)
            if layer.use_dora:
                dense = dense * (layer.lora_magnitude_vector.double() / torch.linalg.vector_norm(dense, dim=1))[:, None]
            expected[name] = dense
    merged = merge_adapter(quantized)
    assert not any(isinstance(m, AdapterLinear) for m in merged.modules())
    for name, dense in expected.items():
        weight = merged.get_submodule(name).weight
        assert type(weight) is nn.Parameter and weight.dtype == torch.float32 and not weight.requires_grad
        assert_close_to_reference(weight, dense, budget(torch.float32, stages=4, terms=4), what=f"{name} W'")
    with torch.no_grad():
        merged_logits = merged(ids).logits
    assert_close_to_reference(merged_logits, expected_logits, model_budget(merged, torch.float32), what="logits")


def test_peft_loads_the_adapter_on_the_unquantized_base(tmp_path):
    """The adapter file is PEFT's: on the base with W~ written in PEFT computes our quantized
    model; on the unquantized base it loads the same tensors and differs by the quantization error."""
    from peft import PeftModel

    base, quantized, dequantized_base = _qdora_pair()
    save_adapter(quantized, tmp_path / "adapter")
    ids = input_ids()
    with torch.no_grad():
        ours = quantized(ids).logits
        base_gap = relative_error(base(ids).logits, dequantized_base(ids).logits)  # before PEFT wraps either
        on_dequantized = PeftModel.from_pretrained(dequantized_base, tmp_path / "adapter").eval()(ids).logits
        on_original = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
        original_logits = on_original(ids).logits
    assert_close_to_reference(on_dequantized, ours, model_budget(base, torch.float32), what="PEFT on W~ vs ours")
    state = on_original.state_dict()
    layer = quantized.model.layers[1].self_attn.v_proj
    prefix = "base_model.model.model.layers.1.self_attn.v_proj"
    assert torch.equal(state[f"{prefix}.lora_A.default.weight"], layer.lora_A.detach())
    assert torch.equal(state[f"{prefix}.lora_magnitude_vector.default.weight"], layer.lora_magnitude_vector.detach())
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    # on the unquantized base: the quantization error, beyond rounding and no larger than between
    # the two bases themselves (measured 0.014 against 0.070: m carries the unquantized row norms)
    gap = relative_error(original_logits, ours)
    assert model_budget(base, torch.float32).value < gap < base_gap, (gap, base_gap)


def test_quantized_weights_hold_about_a_quarter_of_bf16():
    """4 bits a weight plus one int8 scale per 64 and an fp32 factor per 256 scales: 0.258 of bf16."""
    config = LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    adapted = apply_adapter(model, CONFIGS["dora"], quantization="nf4")
    held, bf16 = quantized_weight_bytes(adapted)
    dense = sum(m.base_layer.weight.numel() * 2 for m in adapted.modules() if isinstance(m, NF4AdapterLinear))
    assert bf16 == dense == 2 * (2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 512)
    assert 0.25 < held / bf16 < 0.26, held / bf16  # measured 0.2579


def test_layers_nf4_cannot_hold_are_refused_naming_the_setting():
    with pytest.raises(AdapterConfigError) as conv1d:
        apply_adapter(tiny_gpt2(), CONFIGS["dora"], quantization="nf4")
    assert conv1d.value.field == "training.quantization" and "Conv1D" in conv1d.value.message
    with pytest.raises(AdapterConfigError) as odd:
        NF4AdapterLinear(nn.Linear(10, 3), CONFIGS["lora"])
    assert odd.value.field == "training.quantization" and "(3, 10)" in odd.value.message
    with pytest.raises(AdapterConfigError) as unknown:
        apply_adapter(tiny_llama(), CONFIGS["dora"], quantization="int3")
    assert unknown.value.field == "training.quantization"


def test_a_tiny_qdora_run_learns_and_writes_a_dense_merged_model(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train = write_jsonl(tmp_path / "train.jsonl", dataset_rows("prompt_completion"))
    # gradient checkpointing on: its recomputed forwards run through the NF4 layers too
    config = run_config(tiny_model_dir, train, quantization="nf4", max_steps=16, gradient_checkpointing=True,
                        outputs=["adapter", "merged"])
    events = []

    class Events(TrainingCallback):
        def on_event(self, message, **kwargs):
            events.append(message)

    result = run_training(config, tmp_path / "out", callbacks=[Events()], device="cpu")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert result.status == "completed" and len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4, losses
    assert any(message.startswith("nf4 base: adapted weights hold") for message in events), events
    assert "gradient checkpointing on" in events
    adapter = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    assert any(key.endswith("lora_magnitude_vector") for key in adapter)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    weights = [m.weight for m in merged.modules() if isinstance(m, nn.Linear)]
    assert weights and all(type(w) is nn.Parameter and w.is_floating_point() for w in weights)


class StopAfter(TrainingCallback):
    """should_stop once `step` steps are done (no checkpoint on stop: the run resumes from the last one)."""

    def __init__(self, step: int) -> None:
        self.step, self.done = step, 0

    def on_step(self, metrics):
        self.done = metrics["step"]

    def should_stop(self):
        return self.done >= self.step


def test_a_stopped_qdora_run_resumes_to_the_uninterrupted_adapter(tmp_path, tiny_model_dir, monkeypatch):
    """Resume quantizes the base again (deterministic) and loads the checkpoint's adapter into it."""
    from transformers import AutoConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train = write_jsonl(tmp_path / "train.jsonl", dataset_rows("chat"))
    config = run_config(tiny_model_dir, train, quantization="nf4", max_steps=8, checkpoint_interval=4)
    run_training(config, tmp_path / "straight", device="cpu")
    assert run_training(config, tmp_path / "resumed", callbacks=[StopAfter(6)], device="cpu").status == "stopped"
    resumed = run_training(config, tmp_path / "resumed", device="cpu")
    assert resumed.status == "completed" and resumed.resumed_from_step == 4
    expected = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    actual = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert_states_close(actual, expected, replay_budget(AutoConfig.from_pretrained(tiny_model_dir)),
                        what="resumed QDoRA adapter")
