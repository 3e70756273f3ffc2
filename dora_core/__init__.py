"""dora_core: the ML half of dora-tuner (DoRA/LoRA layers, injection, merge, PEFT files).

No web, SQL or Celery imports here: the worker calls into this package, never the reverse.
"""

import dora_core.library_noise  # noqa: F401 - first: its log filters must be in place before torchao is imported
from dora_core.config import AdapterConfig, AdapterConfigError
from dora_core.inject import AdapterSummary, adapted_module_names, apply_adapter, merge_adapter
from dora_core.layers import AdapterLinear
from dora_core.peft_format import AdapterFormatError, load_adapter, save_adapter

__all__ = [
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterFormatError",
    "AdapterLinear",
    "AdapterSummary",
    "adapted_module_names",
    "apply_adapter",
    "load_adapter",
    "merge_adapter",
    "save_adapter",
]
