"""The memory planner (dora_contract/memory_plan.py) against real tiny models built from configs.

Parameter and adapter bytes must be exact; the activation term is checked against what autograd
really keeps (saved_tensors_hooks) on a padded batch through the training run's own loss, within
ACTIVATION_FACTOR; the rest (checkpointing, nf4, auto decisions) on real model configs' shapes.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from dora_contract import AdapterSettings, TrainingSettings
from dora_contract.memory_plan import (
    GIB,
    ModelShape,
    checkpointing_needed,
    largest_fitting_micro_batch,
    plan_memory,
)
from dora_core import apply_adapter
from dora_core.training import RunConfig, TrainingCallback, run_training
from dora_core.training.loss import summed_loss
from dora_core.training.memory import device_memory_bytes, recommended_gradient_checkpointing
from tests.support.saved_tensors import saved_activation_bytes
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

# measured/estimated activation bytes stay within this factor either way (measured: 1.001 for the
# Llama family, where only cos/sin are left out, and 1.02-1.03 for GPT-2)
ACTIVATION_FACTOR = 1.1
VOCAB, BATCH, SEQ = 512, 2, 32
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Llama-3-8B's config.json shapes: plans at the sizes the planner is for, without building the model
LLAMA3_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
             "tie_word_embeddings": False}


def _llama(**overrides):
    config = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128) | overrides
    return LlamaForCausalLM(LlamaConfig(**config))


def _qwen2():
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                        tie_word_embeddings=True))


def _gpt2(**overrides):
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                      bos_token_id=0, eos_token_id=0, **overrides))


MODELS = {"llama-gqa": _llama, "llama-mha": lambda: _llama(num_key_value_heads=4),
          "llama-bias": lambda: _llama(attention_bias=True, mlp_bias=True), "qwen2-tied": _qwen2, "gpt2": _gpt2,
          "gpt2-no-attention-dropout": lambda: _gpt2(attn_pdrop=0.0)}
TARGETS = {"llama-gqa": ("q_proj", "v_proj"), "llama-mha": ("layers.1.mlp.down_proj",),
           "llama-bias": ("o_proj", "up_proj"), "qwen2-tied": ("k_proj", "gate_proj"), "gpt2": ("c_attn",),
           "gpt2-no-attention-dropout": ("mlp.c_proj",)}


def _build(kind: str, dtype: torch.dtype):
    torch.manual_seed(0)
    return MODELS[kind]().to(dtype)


def _parameter_bytes(model) -> int:
    unique = {p.untyped_storage().data_ptr(): p for p in model.parameters()}  # a tied head counts once
    return sum(p.numel() * p.element_size() for p in unique.values())


def _training(**values) -> TrainingSettings:
    return TrainingSettings(**{"micro_batch_size": BATCH, "max_seq_len": SEQ, "gradient_checkpointing": False}
                            | values)


def _padded_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    attention_mask[1, SEQ * 2 // 3:] = 0
    labels = ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": ids, "labels": labels, "attention_mask": attention_mask}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MODELS)
def test_base_weight_bytes_are_the_models_parameter_bytes(kind, dtype):
    model = _build(kind, DTYPES[dtype])
    plan = plan_memory(model.config.to_dict(), AdapterSettings(), _training(), dtype_bytes=DTYPES[dtype].itemsize)
    assert plan.base_weights == _parameter_bytes(model)
    assert ModelShape.from_config(model.config.to_dict()).parameters == model.num_parameters()


@pytest.mark.parametrize("method", ["dora", "lora"])
@pytest.mark.parametrize("targets", ["all-linear", "listed"])
@pytest.mark.parametrize("kind", MODELS)
def test_adapter_bytes_are_what_apply_adapter_creates(kind, targets, method):
    adapter = AdapterSettings(method=method, rank=4,
                              target_modules="all-linear" if targets == "all-linear" else TARGETS[kind])
    model = apply_adapter(_build(kind, torch.bfloat16), adapter)
    created = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    plan = plan_memory(model.config.to_dict(), adapter, _training(), dtype_bytes=2)
    assert plan.adapter_parameters == created
    assert plan.gradients == created and plan.optimizer_states == 2 * created  # fp32 grads, AdamW's two moments


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["dora", "lora"])
@pytest.mark.parametrize("kind", MODELS)
def test_activation_estimate_is_within_a_factor_of_what_autograd_keeps(kind, method, dtype):
    """Through the run's loss (chunked head and cross-entropy) on a padded micro-batch, every
    adapter parameter moved off its init (B = 0 would let no op need some inputs)."""
    adapter = AdapterSettings(method=method, rank=4)
    model = apply_adapter(_build(kind, DTYPES[dtype]), adapter).train()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    batch = _padded_batch()
    measured = saved_activation_bytes(model, lambda: summed_loss(model, batch))
    plan = plan_memory(model.config.to_dict(), adapter, _training(), dtype_bytes=DTYPES[dtype].itemsize)
    estimated = plan.activations + plan.loss
    assert 1 / ACTIVATION_FACTOR <= measured / estimated <= ACTIVATION_FACTOR, (measured, estimated)


@pytest.mark.parametrize("method", ["dora", "lora"])
@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2-tied"])
def test_unpadded_batches_plan_attention_without_mask_or_repeated_heads(kind, method):
    """Without padding SDPA takes no mask and GQA's k and v as they are (what dora_step.py feeds)."""
    adapter = AdapterSettings(method=method, rank=4)
    model = apply_adapter(_build(kind, torch.float32), adapter).train()
    ids = _padded_batch()["input_ids"]
    measured = saved_activation_bytes(model, lambda: summed_loss(model, {"input_ids": ids, "labels": ids}))
    unpadded = plan_memory(model.config.to_dict(), adapter, _training(), dtype_bytes=4, padded_batches=False)
    padded = plan_memory(model.config.to_dict(), adapter, _training(), dtype_bytes=4)
    assert 1 / ACTIVATION_FACTOR <= measured / (unpadded.activations + unpadded.loss) <= ACTIVATION_FACTOR
    assert unpadded.activations < padded.activations


def test_dora_keeps_more_than_lora_and_a_listed_target_less_than_all_linear():
    config = _build("llama-gqa", torch.float32).config.to_dict()

    def activations(**adapter):
        return plan_memory(config, AdapterSettings(**adapter), _training(), dtype_bytes=2).activations

    assert activations(method="lora") < activations(method="dora")
    assert activations(target_modules=("q_proj",)) < activations()


def test_gradient_checkpointing_keeps_one_input_per_layer_and_one_layer_more():
    adapter, training = AdapterSettings(), _training(micro_batch_size=4, max_seq_len=1024)
    without = plan_memory(LLAMA3_8B, adapter, training, dtype_bytes=2, gradient_checkpointing=False)
    with_checkpointing = plan_memory(LLAMA3_8B, adapter, training, dtype_bytes=2, gradient_checkpointing=True)
    layer_inputs = 32 * 4 * 1024 * 4096 * 2  # layers x tokens x hidden x bf16
    assert with_checkpointing.activations < without.activations / 4
    assert layer_inputs + without.activations / 32 * 0.9 < with_checkpointing.activations
    assert with_checkpointing.activations < layer_inputs + without.activations / 32 * 1.1
    assert with_checkpointing.total < without.total
    assert with_checkpointing.base_weights == without.base_weights == 8_030_261_248 * 2  # Llama-3-8B's parameters


def test_nf4_stores_the_adapted_weights_in_about_a_quarter_of_bf16():
    adapter = AdapterSettings()
    bf16 = plan_memory(LLAMA3_8B, adapter, _training(), dtype_bytes=2)
    nf4 = plan_memory(LLAMA3_8B, adapter, _training(quantization="nf4"), dtype_bytes=2)
    shape = ModelShape.from_config(LLAMA3_8B)
    linear_bf16 = shape.layers * shape.linear_parameters_per_layer * 2
    unquantized = bf16.base_weights - linear_bf16  # embeddings, head and norms stay bf16
    ratio = (nf4.base_weights - unquantized) / linear_bf16
    assert 0.25 < ratio < 0.25 * (1 + 1 / 32 + 1 / 1000)  # 4 bits plus an int8 scale per 64 weights
    assert nf4.adapter_parameters == bf16.adapter_parameters and nf4.activations == bf16.activations


def test_nf4_weight_bytes_are_exact_on_a_quantized_tiny_model():
    adapter = AdapterSettings(rank=4, target_modules=("q_proj", "gate_proj", "down_proj"))
    model = _llama(hidden_size=128, intermediate_size=256).to(torch.bfloat16)
    config = model.config.to_dict()
    apply_adapter(model, adapter, quantization="nf4")
    stored = 0
    for parameter in model.parameters():
        if parameter.requires_grad:
            continue
        inner, _ = parameter.__tensor_flatten__() if hasattr(parameter, "__tensor_flatten__") else ([], None)
        tensors = [getattr(parameter, n) for n in inner] if inner else [parameter]
        stored += sum(t.numel() * t.element_size() for t in tensors)
    plan = plan_memory(config, adapter, _training(quantization="nf4"), dtype_bytes=2)
    assert plan.base_weights == stored


def test_auto_checkpointing_turns_on_exactly_when_the_plan_without_it_does_not_fit():
    adapter, training = AdapterSettings(), _training(micro_batch_size=4, max_seq_len=2048)
    needed = plan_memory(LLAMA3_8B, adapter, training, dtype_bytes=2, gradient_checkpointing=False).total
    assert checkpointing_needed(LLAMA3_8B, adapter, training, dtype_bytes=2, memory_bytes=needed - 1)
    assert not checkpointing_needed(LLAMA3_8B, adapter, training, dtype_bytes=2, memory_bytes=needed)


@pytest.mark.parametrize("memory_gib", [24, 40, 80])
def test_the_largest_fitting_micro_batch_fits_and_one_more_does_not(memory_gib):
    adapter, training = AdapterSettings(), _training(micro_batch_size=64, max_seq_len=2048)
    memory = memory_gib * GIB
    batch = largest_fitting_micro_batch(LLAMA3_8B, adapter, training, dtype_bytes=2, memory_bytes=memory,
                                        gradient_checkpointing=True)
    assert 1 <= batch < 64

    def total(micro_batch):
        return plan_memory(LLAMA3_8B, adapter, training, dtype_bytes=2, gradient_checkpointing=True,
                           micro_batch_size=micro_batch).total

    assert total(batch) <= memory < total(batch + 1)


def test_an_8b_model_does_not_fit_a_16_gib_gpu_at_all():
    adapter, training = AdapterSettings(), _training(micro_batch_size=1, max_seq_len=512)
    assert largest_fitting_micro_batch(LLAMA3_8B, adapter, training, dtype_bytes=2, memory_bytes=16 * GIB,
                                       gradient_checkpointing=True) == 0


def test_fsdp_divides_the_weights_between_processes():
    adapter, training = AdapterSettings(), _training()
    one = plan_memory(LLAMA3_8B, adapter, training, dtype_bytes=2)
    four = plan_memory(LLAMA3_8B, adapter, training, dtype_bytes=2, processes=4, sharding="fsdp")
    assert one.base_weights / 4 < four.base_weights < one.base_weights / 3
    assert four.activations == one.activations
    ddp = plan_memory(LLAMA3_8B, adapter, training, dtype_bytes=2, processes=4)
    assert ddp.base_weights == one.base_weights and ddp.gradients == 2 * one.gradients


def test_the_config_json_the_api_reads_plans_as_the_loaded_model(tmp_path):
    """The API plans from a registered folder's config.json, dora_core from the loaded model's config."""
    model = _build("qwen2-tied", torch.float32)
    model.config.save_pretrained(tmp_path)
    from_json = json.loads((tmp_path / "config.json").read_text())
    assert plan_memory(from_json, AdapterSettings(), _training(), dtype_bytes=4) == plan_memory(
        model.config.to_dict(), AdapterSettings(), _training(), dtype_bytes=4)


def _run_config(**training) -> RunConfig:
    return RunConfig.from_dict({"base_model": "m", "train_file": "t.jsonl", "training": training})


@pytest.mark.parametrize(("memory_gib", "micro_batch", "seq", "expected"), [
    (80, 4, 2048, True), (141, 1, 512, False), (24, 1, 2048, True), (40, 1, 2048, False)])
def test_dora_core_turns_checkpointing_on_when_the_plan_without_it_does_not_fit(memory_gib, micro_batch, seq,
                                                                                expected):
    on, why = recommended_gradient_checkpointing(LLAMA3_8B, _run_config(micro_batch_size=micro_batch, max_seq_len=seq),
                                                 dtype_bytes=2, memory_bytes=memory_gib * GIB)
    assert on is expected
    assert f"of {memory_gib}.0 GiB" in why and ("checkpointing on" in why) is expected


def test_auto_checkpointing_plans_for_the_longest_example_not_max_seq_len():
    """Batches pad to their longest example: 4 x 2048 needs checkpointing on 80 GiB (above), but
    short rows under the same max_seq_len do not; packed rows do fill max_seq_len."""
    config = _run_config(micro_batch_size=4, max_seq_len=2048)
    assert recommended_gradient_checkpointing(LLAMA3_8B, config, dtype_bytes=2, memory_bytes=80 * GIB,
                                              longest_sequence=2048)[0] is True
    assert recommended_gradient_checkpointing(LLAMA3_8B, config, dtype_bytes=2, memory_bytes=80 * GIB,
                                              longest_sequence=60)[0] is False
    packed = _run_config(micro_batch_size=4, max_seq_len=2048, packing=True)
    assert recommended_gradient_checkpointing(LLAMA3_8B, packed, dtype_bytes=2, memory_bytes=80 * GIB,
                                              longest_sequence=60)[0] is True


class _Events(TrainingCallback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_event(self, message, **kwargs) -> None:
        self.events.append(message)


def test_a_tiny_run_on_the_cpu_plans_its_memory_and_trains_without_checkpointing(tmp_path, tiny_model_dir):
    """auto on the CPU: the plan is set against the machine's memory; a tiny model fits."""
    data = write_jsonl(tmp_path / "train.jsonl", dataset_rows("chat"))
    events = _Events()
    run_training(run_config(tiny_model_dir, data, max_steps=1), tmp_path / "out", callbacks=[events], device="cpu")
    plans = [e for e in events.events if e.startswith("memory plan without gradient checkpointing")]
    assert len(plans) == 1 and plans[0].endswith("fits: gradient checkpointing off")
    assert "gradient checkpointing on" not in events.events
    assert device_memory_bytes(torch.device("cpu")) > GIB
