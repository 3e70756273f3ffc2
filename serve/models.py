"""The base models one `dora serve` holds: each loaded once at start, with its adapter slots and engine.

A registration is resolved as the worker resolves it (worker/job.py `base_model_source`): a GGUF
source is converted once into the model cache, then transformers loads safetensors only, never
code from the repository (dora_core/model_loading.py). Its linear layers get DORA_SERVE_ADAPTER_SLOTS
adapter slots (plus slot 0, the base), an LRU decides which adapters sit in them, and one engine
thread decodes the batch.

`ServedModel.reserve` bounds what one model takes in: DORA_SERVE_MAX_BATCH sequences decode at once
and as many again may wait in the engine's queue (QUEUED_BATCHES of them); a request beyond that
is refused at once (503 server_busy) so the API can try another server instead of queueing here.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dora_core.serving import AdapterCache, AdapterSlots, Engine
from serve.settings import ServeSettings
from store.base_models import registration

log = logging.getLogger(__name__)

QUEUED_BATCHES = 1  # sequences allowed to wait per model, in batches of DORA_SERVE_MAX_BATCH


@dataclass
class ServedModel:
    name: str
    model: Any
    tokenizer: Any
    slots: AdapterSlots
    adapters: AdapterCache
    engine: Engine
    capacity: int  # sequences running plus waiting
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def reserve(self, sequences: int) -> bool:
        """Count `sequences` more in flight if they fit within the capacity; release() gives them back."""
        with self._lock:
            if self._in_flight + sequences > self.capacity:
                return False
            self._in_flight += sequences
            return True

    def release(self, sequences: int = 1) -> None:
        with self._lock:
            self._in_flight -= sequences

    @property
    def in_flight(self) -> int:
        return self._in_flight


def serve_device(settings: ServeSettings) -> str | None:
    """The device to load on (None: the first CUDA GPU when there is one, else the CPU)."""
    return None if settings.serve_device == "auto" else settings.serve_device


def load_model(settings: ServeSettings, name: str) -> ServedModel:
    """Resolve, load and prepare base model `name`, and start its engine."""
    from dora_core.gguf_import import resolve_model_source
    from dora_core.model_loading import load_base_model, load_tokenizer

    registered = registration(settings, name)
    if registered is None:
        raise KeyError(f"base model {name!r} is not in DORA_BASE_MODELS")
    local = resolve_model_source(registered.source, cache_dir=settings.model_cache_dir)
    model = load_base_model(local, dtype="auto", device=serve_device(settings))
    tokenizer = load_tokenizer(local)
    slots = AdapterSlots.install(model, slots=settings.serve_adapter_slots + 1,  # + slot 0, the base
                                 max_rank=settings.serve_max_adapter_rank)
    engine = Engine(model, tokenizer, slots, max_batch=settings.serve_max_batch)
    engine.start()
    log.info("base model %s loaded from %s on %s (%s), %d adapter slots, batch %d", name, local,
             next(model.parameters()).device, next(model.parameters()).dtype, settings.serve_adapter_slots,
             settings.serve_max_batch)
    return ServedModel(name=name, model=model, tokenizer=tokenizer, slots=slots, adapters=AdapterCache(slots),
                       engine=engine, capacity=settings.serve_max_batch * (1 + QUEUED_BATCHES))


def load_models(settings: ServeSettings, failed: dict[str, str] | None = None) -> dict[str, ServedModel]:
    """Every model this server serves (DORA_SERVE_BASE_MODELS, or all registered), loaded in turn.

    A model that cannot be loaded (a hub id not cached while offline, a broken file) is logged, put in
    `failed` with the reason, and not registered: the others are served, the API answers 503 for that
    base alone, and a server beside the worker and the API (`dora up`) does not take them down with it,
    as a job on that model fails alone at the worker."""
    loaded: dict[str, ServedModel] = {}
    try:
        for name in settings.served_models():
            try:
                loaded[name] = load_model(settings, name)
            except Exception as error:  # noqa: BLE001 - any loading failure leaves this one model out
                log.error("base model %s is not served: it could not be loaded: %s", name, error)
                if failed is not None:
                    failed[name] = str(error)[:500]
    except BaseException:
        stop_models(loaded)
        raise
    return loaded


def stop_models(models: dict[str, ServedModel]) -> None:
    for served in models.values():
        served.engine.stop()


def adapter_cache_dir(settings: ServeSettings) -> Path:
    """Where downloaded adapters are kept: `adapters/` under the model cache."""
    from dora_core.gguf_import import cache_root

    return cache_root(settings.model_cache_dir) / "adapters"
