"""Session-wide test settings that must hold before any test module is imported.

TRITON_INTERPRET=1: the fused-kernel parity tests (tests/core/test_triton_kernels.py) run Triton
kernels on the CPU through Triton's interpreter. Triton reads the variable when its own
standard-library functions are defined, i.e. when `triton` is first imported, and some of
our dependencies import it early; so it is set here, first. There is no GPU in CI.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
