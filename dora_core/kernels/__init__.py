"""Fused GPU kernels (Triton) for the DoRA layer's elementwise passes.

Used only on CUDA tensors when Triton imports; the plain PyTorch path in dora_math.py stays the
reference and the CPU implementation. Tests run the kernels on the CPU through Triton's
interpreter (TRITON_INTERPRET=1), which must be set before this package's kernels are imported.
"""

from __future__ import annotations

import importlib.util
import os

_FORCED = False


def force_triton(enabled: bool) -> None:
    """Tests: use the kernels on any device (with TRITON_INTERPRET=1 on the CPU)."""
    global _FORCED
    _FORCED = enabled


def use_triton(tensor) -> bool:
    """Whether the DoRA layer should run its fused kernels for this activation."""
    if os.environ.get("DORA_DISABLE_TRITON") == "1":
        return False
    if _FORCED:
        return True
    return tensor.is_cuda and importlib.util.find_spec("triton") is not None
