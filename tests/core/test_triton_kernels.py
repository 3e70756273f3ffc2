"""The fused Triton kernels against the PyTorch reference, on the CPU through Triton's interpreter
(TRITON_INTERPRET=1 is set for the whole session in tests/conftest.py)."""

import copy

import pytest
import torch

from dora_core import AdapterConfig, AdapterLinear, apply_adapter
from dora_core.kernels import force_triton
from tests.support.model_factories import input_ids, perturb_adapters, tiny_llama
from tests.support.numerics import assert_close_to_reference, budget, model_budget

pytest.importorskip("triton", reason="triton is a dev dependency on linux x86_64")


@pytest.fixture
def kernels():
    from dora_core.kernels import dora_epilogue

    return dora_epilogue


def _assert_kernel_close(actual, expected, limit, what):
    """Element by element against the tensor's largest entry (norm="max"): a kernel bug such as a
    wrong tail block shows in a few elements, which an l2 norm over the whole tensor could hide."""
    assert_close_to_reference(actual, expected, limit, what=what, norm="max")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "cols", "rank"), [(70, 90, 5), (64, 64, 16), (3, 130, 33)])
def test_forward_epilogue_matches_reference(kernels, dtype, rows, cols, rank):
    generator = torch.Generator().manual_seed(rows + cols + rank)
    y = torch.randn(rows, cols, generator=generator).to(dtype)
    u = torch.randn(rows, rank, generator=generator).to(dtype)
    lora_b = torch.randn(cols, rank, generator=generator).to(dtype)
    gain = torch.rand(cols, generator=generator) + 0.5
    expected = (gain * (y.float() + 0.7 * (u.float() @ lora_b.float().T))).to(dtype)
    actual = kernels.dora_epilogue_(y.clone(), u, lora_b, gain, 0.7)
    # fp32 inside, stored in dtype: the product (rank terms), the add, the gain
    limit = budget(dtype, stages=3, terms=rank, accumulate=torch.float32)
    _assert_kernel_close(actual, expected, limit, "epilogue output")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_prologue_matches_reference(kernels, dtype):
    generator = torch.Generator().manual_seed(3)
    dy = torch.randn(77, 65, generator=generator).to(dtype)
    y = torch.randn(77, 65, generator=generator).to(dtype)
    gain = torch.rand(65, generator=generator) + 0.5
    dz, column_sums = kernels.dora_backward_prologue(dy, y, gain)
    # dz = dy * g: one fp32 product stored in dtype
    _assert_kernel_close(dz, (dy.float() * gain).to(dtype), budget(dtype, stages=1, accumulate=torch.float32), "dz")
    # column sums in fp32 over 77 rows (products of two bf16 values are exact in fp32)
    limit = budget(torch.float32, stages=2, terms=77)
    _assert_kernel_close(column_sums, (dy.float() * y.float()).sum(dim=0), limit, "column sums")


def test_fused_layer_gives_the_reference_logits_and_gradients():
    reference = apply_adapter(tiny_llama(), AdapterConfig(rank=4, alpha=8))
    perturb_adapters(reference)
    fused = copy.deepcopy(reference)
    ids = input_ids()
    expected = reference(ids).logits
    expected.square().mean().backward()
    force_triton(True)
    try:
        actual = fused(ids).logits
        actual.square().mean().backward()
    finally:
        force_triton(False)
    assert_close_to_reference(actual, expected, model_budget(reference, torch.float32), what="logits")
    limit = model_budget(reference, torch.float32, backward=True)
    pairs = [(m, r) for m, r in zip(fused.modules(), reference.modules(), strict=True) if isinstance(m, AdapterLinear)]
    for mine, theirs in pairs:
        for name in ("lora_A", "lora_B", "lora_magnitude_vector"):
            mine_grad, theirs_grad = getattr(mine, name).grad, getattr(theirs, name).grad
            assert_close_to_reference(mine_grad, theirs_grad, limit, what=f"{name} gradient")
