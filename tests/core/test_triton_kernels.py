"""The fused Triton kernels against the PyTorch reference, on the CPU through Triton's interpreter
(TRITON_INTERPRET=1 is set for the whole session in tests/conftest.py)."""

import copy

import pytest
import torch

from dora_core import AdapterConfig, AdapterLinear, apply_adapter
from dora_core.kernels import force_triton
from tests.core.model_factories import input_ids, perturb_adapters, tiny_llama

pytest.importorskip("triton", reason="triton is a dev dependency on linux x86_64")


@pytest.fixture
def kernels():
    from dora_core.kernels import dora_epilogue

    return dora_epilogue


def _ulp_tolerance(dtype):
    return {"rtol": 1e-6, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2 ** -7, "atol": 2 ** -7}


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
    torch.testing.assert_close(actual.float(), expected.float(), **_ulp_tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_prologue_matches_reference(kernels, dtype):
    generator = torch.Generator().manual_seed(3)
    dy = torch.randn(77, 65, generator=generator).to(dtype)
    y = torch.randn(77, 65, generator=generator).to(dtype)
    gain = torch.rand(65, generator=generator) + 0.5
    dz, column_sums = kernels.dora_backward_prologue(dy, y, gain)
    torch.testing.assert_close(dz.float(), (dy.float() * gain).to(dtype).float(), **_ulp_tolerance(dtype))
    torch.testing.assert_close(column_sums, (dy.float() * y.float()).sum(dim=0), rtol=1e-5, atol=1e-4)


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
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    pairs = [(m, r) for m, r in zip(fused.modules(), reference.modules()) if isinstance(m, AdapterLinear)]
    for mine, theirs in pairs:
        for name in ("lora_A", "lora_B", "lora_magnitude_vector"):
            torch.testing.assert_close(getattr(mine, name).grad, getattr(theirs, name).grad, rtol=1e-4, atol=1e-6)
