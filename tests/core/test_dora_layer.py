"""The layer's own contract: exact backward, init identity, merge, zero rows, bf16, config."""

import copy

import pytest
import torch
from torch import nn

from dora_core import (
    AdapterConfig,
    AdapterConfigError,
    AdapterLinear,
    adapted_module_names,
    apply_adapter,
    merge_adapter,
)
from dora_core.dora_math import DoraLinearFunction, LoraLinearFunction, factored_row_norm, squared_row_norms
from tests.support.model_factories import MODEL_MAKERS, input_ids, perturb_adapters
from tests.support.numerics import (
    assert_close_to_reference,
    assert_distinguishable,
    budget,
    float64_model,
    model_budget,
    model_stages,
    model_terms,
)


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_factored_norm_equals_dense_norm(dtype):
    """The factored n^2 = ||W||^2 + 2s<W, BA> + s^2 ||BA||^2 adds terms that can cancel: its
    rounding error is relative to the terms' sizes, i.e. the budget times the condition number
    (||W||^2 + 2s|<W, BA>| + s^2 ||BA||^2) / n^2, halved by the square root."""
    torch.manual_seed(0)
    weight, lora_a, lora_b = torch.randn(40, 24), torch.randn(4, 24), torch.randn(40, 4)
    weight, lora_a, lora_b, scale = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype), 1.5
    dense = torch.linalg.vector_norm(weight + scale * lora_b @ lora_a, dim=1)
    factored = factored_row_norm(weight, lora_a, lora_b, scale, squared_row_norms(weight))
    assert factored.dtype == dtype
    exact = torch.linalg.vector_norm((weight + scale * lora_b @ lora_a).double(), dim=1)
    terms = (weight.double().square().sum(1) + 2 * scale * (weight.double() * (lora_b @ lora_a).double()).sum(1).abs()
             + scale**2 * (lora_b @ lora_a).double().square().sum(1))
    condition = float((terms / exact.square()).max()) / 2
    # both sides: squared row norms (24 terms), W A^T (24), the B-weighted sums (4), A A^T (24),
    # three adds, the square root; the dense side's B A (4 terms), add, squared sum (24), root
    limit = budget(dtype, stages=8, terms=24).times(max(condition, 1.0), "cancellation in the factored sum")
    assert_close_to_reference(factored, dense, limit, what="row norms")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["dora", "lora"])
def test_adapted_model_equals_base_at_init(kind, method):
    """B = 0 and m = ||W||_row make the adapted layer compute W x again. In float64, with the
    adapter applied to the float64 model (m = its row norms, not fp32-rounded ones)."""
    base = float64_model(MODEL_MAKERS[kind]())
    ours = float64_model(apply_adapter(copy.deepcopy(base), AdapterConfig(method=method, rank=4, alpha=8)))
    ids = input_ids()
    assert_close_to_reference(ours(ids).logits, base(ids).logits, model_budget(base, torch.float64), what="logits")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["dora", "lora"])
def test_merge_gives_plain_model_with_same_logits(kind, method):
    """In float64, so the only rounding left is the merge's: W' is formed and stored in fp32
    (dense_adapted_weight) whatever the model dtype, so the budget is fp32's for the forward."""
    base = MODEL_MAKERS[kind]()
    ours = apply_adapter(copy.deepcopy(base), AdapterConfig(method=method, rank=4, alpha=8))
    perturb_adapters(ours)
    base, ours = float64_model(base), float64_model(ours)
    limit = model_budget(base, torch.float32)
    ids = input_ids()
    expected = ours(ids).logits
    assert_distinguishable(base(ids).logits, expected, limit, what="the perturbed adapter must change the output")
    merged = merge_adapter(ours)
    assert type(merged) is type(base)
    assert adapted_module_names(merged) == []
    assert not any(isinstance(m, AdapterLinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(base.state_dict())
    assert_close_to_reference(merged(ids).logits, expected, limit, what="merged logits")


def test_all_linear_excludes_head_and_counts_parameters():
    model = MODEL_MAKERS["llama"]()
    total_before = sum(p.numel() for p in model.parameters())
    apply_adapter(model, AdapterConfig(rank=4, alpha=8))
    names = adapted_module_names(model)
    assert len(names) == 2 * 7 and "lm_head" not in names
    layers = map(model.get_submodule, names)
    expected = sum(4 * (layer.in_features + layer.out_features) + layer.out_features for layer in layers)
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
    # bf16 storage, fp32 accumulation (CPU and GPU bf16 matmuls): two bf16 roundings per stage,
    # the weight's (the bf16 copy of the fp32 model) and the stored result's
    stages = 2 * model_stages(model)
    limit = budget(torch.bfloat16, stages=stages, terms=model_terms(model), accumulate=torch.float32)
    assert_close_to_reference(logits, expected, limit, what="bf16 logits against the fp32 model")
    assert_distinguishable(base(ids).logits, expected, limit, what="the adapter must matter at bf16's budget")
