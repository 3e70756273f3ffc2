"""The layer's own contract: exact backward, init identity, merge, zero rows, bf16, config."""

import copy

import pytest
import torch
from torch import nn

from dora_core import AdapterConfig, AdapterConfigError, AdapterLinear, adapted_module_names, apply_adapter, merge_adapter
from dora_core.dora_math import DoraLinearFunction, LoraLinearFunction, factored_row_norm, squared_row_norms
from tests.core.model_factories import MODEL_MAKERS, input_ids, perturb_adapters


@pytest.mark.parametrize("with_bias", [False, True])
def test_custom_backward_matches_numerical_gradients(with_bias):
    """gradcheck in float64 checks the backward derivation itself, independent of PEFT."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64) if with_bias else None
    lora_a = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    lora_b = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    magnitude = torch.rand(5, dtype=torch.float64).add(0.5).requires_grad_()
    norm = factored_row_norm(weight, lora_a, lora_b, 0.7, squared_row_norms(weight)).double()

    def function(x, a, b, m):
        return DoraLinearFunction.apply(x, weight, bias, a, b, m, norm, 0.7)

    assert torch.autograd.gradcheck(function, (x, lora_a, lora_b, magnitude))


@pytest.mark.parametrize("with_bias", [False, True])
def test_lora_backward_matches_numerical_gradients(with_bias):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True) if with_bias else None
    lora_a = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    lora_b = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    inputs = (x, lora_a, lora_b) + ((bias,) if with_bias else ())

    def function(x, a, b, *maybe_bias):
        return LoraLinearFunction.apply(x, weight, maybe_bias[0] if maybe_bias else None, a, b, 0.7)

    assert torch.autograd.gradcheck(function, inputs)


def test_factored_norm_equals_dense_norm():
    torch.manual_seed(0)
    weight, lora_a, lora_b = torch.randn(40, 24), torch.randn(4, 24), torch.randn(40, 4)
    dense = torch.linalg.vector_norm(weight + 1.5 * lora_b @ lora_a, dim=1)
    factored = factored_row_norm(weight, lora_a, lora_b, 1.5, squared_row_norms(weight))
    torch.testing.assert_close(factored, dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["dora", "lora"])
def test_adapted_model_equals_base_at_init(kind, method):
    base = MODEL_MAKERS[kind]()
    ours = apply_adapter(copy.deepcopy(base), AdapterConfig(method=method, rank=4, alpha=8))
    ids = input_ids()
    torch.testing.assert_close(ours(ids).logits, base(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["dora", "lora"])
def test_merge_gives_plain_model_with_same_logits(kind, method):
    base = MODEL_MAKERS[kind]()
    ours = apply_adapter(copy.deepcopy(base), AdapterConfig(method=method, rank=4, alpha=8))
    perturb_adapters(ours)
    ids = input_ids()
    expected = ours(ids).logits
    assert (expected - base(ids).logits).abs().max() > 1e-3, "perturbed adapter must change the output"
    merged = merge_adapter(ours)
    assert type(merged) is type(base)
    assert adapted_module_names(merged) == []
    assert not any(isinstance(m, AdapterLinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(base.state_dict())
    assert (merged(ids).logits - expected).abs().max() < 1e-5


def test_all_linear_excludes_head_and_counts_parameters():
    model = MODEL_MAKERS["llama"]()
    total_before = sum(p.numel() for p in model.parameters())
    apply_adapter(model, AdapterConfig(rank=4, alpha=8))
    names = adapted_module_names(model)
    assert len(names) == 2 * 7 and "lm_head" not in names
    expected = sum(4 * (l.in_features + l.out_features) + l.out_features for l in map(model.get_submodule, names))
    summary = model.dora_adapter_summary
    assert summary.trainable_parameters == expected
    assert summary.total_parameters == total_before + expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_target_list_selects_only_named_layers():
    model = apply_adapter(MODEL_MAKERS["llama"](), AdapterConfig(rank=2, alpha=2, target_modules=["q_proj", "v_proj"]))
    assert sorted(n.rsplit(".", 1)[-1] for n in adapted_module_names(model)) == ["q_proj", "q_proj", "v_proj", "v_proj"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"method": "qlora"}, "method"), ({"rank": 0}, "rank"), ({"rank": 2.5}, "rank"), ({"rank": 5000}, "rank"),
     ({"alpha": -1}, "alpha"), ({"alpha": float("nan")}, "alpha"), ({"dropout": 1.0}, "dropout"),
     ({"target_modules": []}, "target_modules"), ({"target_modules": "q_proj"}, "target_modules"),
     ({"target_modules": ["q_proj", ""]}, "target_modules"), ({"use_rslora": "yes"}, "use_rslora")],
)
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(AdapterConfigError) as error:
        AdapterConfig.from_data(kwargs)
    assert error.value.field == field and field in str(error.value)


def test_unknown_target_module_is_a_clear_error():
    with pytest.raises(AdapterConfigError, match="target_modules.*no_such_proj"):
        apply_adapter(MODEL_MAKERS["llama"](), AdapterConfig(target_modules=["no_such_proj"]))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_zero_rows_of_w_stay_finite(kind):
    base = MODEL_MAKERS[kind]()
    with torch.no_grad():
        for module in base.modules():
            if isinstance(module, nn.Linear) and module is not base.get_output_embeddings():
                module.weight[:3].zero_()
            elif type(module).__name__ == "Conv1D":
                module.weight[:, :3].zero_()
    model = apply_adapter(base, AdapterConfig(rank=4, alpha=8))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        logits = model(input_ids()).logits
        assert torch.isfinite(logits).all()
        logits.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        optimizer.zero_grad()
    merged = merge_adapter(model)
    assert all(torch.isfinite(p).all() for p in merged.parameters())


def test_bf16_base_keeps_fp32_adapter_and_bf16_activations():
    base = MODEL_MAKERS["llama"]()
    reference = apply_adapter(copy.deepcopy(base), AdapterConfig(rank=4, alpha=8))
    perturb_adapters(reference)
    model = copy.deepcopy(reference).to(torch.bfloat16)
    for module in model.modules():  # adapters back to fp32 masters, base stays bf16
        if isinstance(module, AdapterLinear):
            module.float()
            module.base_layer.to(torch.bfloat16)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.lora_A.dtype == torch.float32 and layer.base_layer.weight.dtype == torch.bfloat16

    saved_dtypes, inside_adapter = [], [False]

    def pack(tensor):  # records what the adapter layers (not the base model's norms) save
        if inside_adapter[0]:
            saved_dtypes.append((tensor.dtype, tensor.numel(), isinstance(tensor, nn.Parameter)))
        return tensor

    for module in model.modules():
        if isinstance(module, AdapterLinear):
            module.register_forward_pre_hook(lambda *_: inside_adapter.__setitem__(0, True))
            module.register_forward_hook(lambda *_: inside_adapter.__setitem__(0, False))

    ids = input_ids()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids).logits
    assert logits.dtype == torch.bfloat16
    activation_size = ids.numel() * 32
    assert len(saved_dtypes) >= 14 * 3
    fp32_activations = [s for s in saved_dtypes if s[0] == torch.float32 and not s[2] and s[1] >= activation_size]
    assert not fp32_activations, f"fp32 activations saved: {fp32_activations}"
    logits.float().square().mean().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and torch.isfinite(layer.lora_A.grad).all()
    expected = reference(ids).logits
    assert (logits.float() - expected).abs().max() < 0.05 * expected.abs().max()
