"""Serving adapters unmerged on a shared base model: slot tensors, an adapter LRU, a batching engine.

See engine.py for the engine's interface, adapter_slots.py for the layer math.
"""

from dora_core.peft_format import AdapterFormatError
from dora_core.serving.adapter_cache import AdapterCache, AllSlotsBusyError
from dora_core.serving.adapter_slots import (
    BASE_SLOT,
    AdapterMismatchError,
    AdapterSlots,
    MultiAdapterLinear,
    PreparedAdapter,
)
from dora_core.serving.engine import (
    Completion,
    Engine,
    Event,
    Failed,
    Finished,
    GenerationHandle,
    GenerationParams,
    TextDelta,
    TokenLogprob,
    TopLogprob,
)
from dora_core.serving.errors import RequestError, UnsupportedModelError
from dora_core.serving.prompts import context_length, render_chat, render_text

__all__ = [
    "BASE_SLOT",
    "AdapterCache",
    "AdapterFormatError",
    "AdapterMismatchError",
    "AdapterSlots",
    "AllSlotsBusyError",
    "Completion",
    "Engine",
    "Event",
    "Failed",
    "Finished",
    "GenerationHandle",
    "GenerationParams",
    "MultiAdapterLinear",
    "PreparedAdapter",
    "RequestError",
    "TextDelta",
    "TokenLogprob",
    "TopLogprob",
    "UnsupportedModelError",
    "context_length",
    "render_chat",
    "render_text",
]
