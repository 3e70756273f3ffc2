"""Adapter files in PEFT's format: PEFT loads ours, we load PEFT's, logits agree both ways."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from dora_core import AdapterConfig, AdapterFormatError, apply_adapter, load_adapter, save_adapter
from tests.support.model_factories import MODEL_MAKERS, adapted_pair, input_ids, perturb_adapters
from tests.support.numerics import assert_close_to_reference, float64_model, model_budget

CONFIGS = [AdapterConfig(method="dora", rank=4, alpha=8),
           AdapterConfig(method="lora", rank=4, alpha=16, use_rslora=True)]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("config", CONFIGS, ids=["dora", "lora-rslora"])
def test_peft_loads_what_we_save(tmp_path, kind, config):
    from peft import PeftModel

    # built in fp32, compared in float64: the saved fp32 tensors are exactly the float64 model's
    base = MODEL_MAKERS[kind]()
    ours = apply_adapter(copy.deepcopy(base), config)
    perturb_adapters(ours)
    base, ours = float64_model(base), float64_model(ours)
    save_adapter(ours, tmp_path, base_model_name_or_path="tiny-test-model")

    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["peft_type"] == "LORA" and written["use_dora"] is config.use_dora
    assert written["r"] == 4 and written["base_model_name_or_path"] == "tiny-test-model"
    keys = load_file(str(tmp_path / "adapter_model.safetensors")).keys()
    assert all(k.startswith("base_model.model.") for k in keys)
    assert any(k.endswith("lora_magnitude_vector") for k in keys) is config.use_dora

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    ids = input_ids()
    peft_logits = peft_model(input_ids=ids).logits
    assert peft_logits.dtype == torch.float64
    assert_close_to_reference(peft_logits, ours(ids).logits, model_budget(base, torch.float64), what="logits")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("config", CONFIGS, ids=["dora", "lora-rslora"])
def test_we_load_what_peft_saves(tmp_path, kind, config):
    base, ours, twin = adapted_pair(kind, config, dtype=torch.float64)
    twin.save_pretrained(tmp_path)
    loaded = float64_model(load_adapter(copy.deepcopy(base), tmp_path))  # A and B are created fp32: to float64
    ids = input_ids()
    limit = model_budget(base, torch.float64)
    assert_close_to_reference(loaded(ids).logits, twin(input_ids=ids).logits, limit, what="logits")
    assert loaded.dora_adapter_config.use_dora is config.use_dora


def test_load_does_not_disturb_the_global_rng(tmp_path):
    _, ours, _ = adapted_pair("llama", CONFIGS[0])
    save_adapter(ours, tmp_path)
    torch.manual_seed(5)
    load_adapter(MODEL_MAKERS["llama"](), tmp_path)
    after_load = torch.rand(3)
    torch.manual_seed(5)
    MODEL_MAKERS["llama"]()
    assert torch.equal(after_load, torch.rand(3))


def test_adapter_for_another_model_is_rejected(tmp_path):
    _, ours, _ = adapted_pair("llama", CONFIGS[0])
    save_adapter(ours, tmp_path)
    with pytest.raises(Exception, match="target_modules|no linear layer"):
        load_adapter(MODEL_MAKERS["gpt2"](), tmp_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [(lambda c: c.update(peft_type="IA3"), "peft_type"),
     (lambda c: c.update(rank_pattern={"q_proj": 8}), "rank_pattern"),
     (lambda c: c.update(bias="all"), "bias"), (lambda c: c.pop("r"), "'r'")],
)
def test_unsupported_adapter_configs_are_refused(tmp_path, mutate, message):
    _, ours, _ = adapted_pair("llama", CONFIGS[0])
    save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    mutate(config)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match=message):
        load_adapter(MODEL_MAKERS["llama"](), tmp_path)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    _, ours, _ = adapted_pair("llama", CONFIGS[0])
    save_adapter(ours, tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterFormatError, match="adapter_model.safetensors not found"):
        load_adapter(MODEL_MAKERS["llama"](), tmp_path)
