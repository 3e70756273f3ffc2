"""Importing the training stack prints nothing: torchao's `Failed to load ..._C_*.so` lines and the
`_pytree.py ... deprecated` warnings for its enums are dropped (dora_core/library_noise.py), while
anything else those loggers say still gets through."""

from __future__ import annotations

import subprocess
import sys

# after the import (what every torch command does first): the same loggers' other records still show
PROBE = """
import enum, logging
import dora_core.training
import torchao  # noqa: F401 - imported by transformers already; here only loaded first
from torch.utils import _pytree
class Ours(enum.Enum):
    A = 1
logging.getLogger("torchao").warning("torchao says something else")
_pytree.log.warning("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value "
                    "type. Calling register_constant() on Enum subclasses is deprecated", Ours)
"""


def test_importing_the_training_stack_prints_no_torchao_noise_and_keeps_other_warnings():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Failed to load" not in done.stderr and "torchao/_C" not in done.stderr, done.stderr
    assert "KernelPreference" not in done.stderr and "ScaleCalculationMode" not in done.stderr, done.stderr
    assert "torchao says something else" in done.stderr
    assert "<enum 'Ours'> is an Enum subclass" in done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        line for line in done.stderr.splitlines() if "something else" in line or "'Ours'" in line], done.stderr
