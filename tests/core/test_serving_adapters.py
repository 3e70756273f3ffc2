"""Adapter slots and their LRU: which adapter is loaded where, evictions, and refused adapter folders."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from dora_core.serving import AdapterCache, AdapterFormatError, AdapterMismatchError, AdapterSlots, AllSlotsBusyError
from tests.support.model_factories import tiny_llama
from tests.support.serving import load_tiny, random_adapter


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lru-adapters")
    base = load_tiny(tiny_model_dir)
    return {name: random_adapter(base, root / name, method="dora" if i % 2 else "lora", rank=2 + i, seed=i)
            for i, name in enumerate(["a", "b", "c", "d"])}


@pytest.fixture
def cache(tiny_model_dir):
    """Two adapter slots (1 and 2) on the tiny model."""
    return AdapterCache(AdapterSlots.install(load_tiny(tiny_model_dir), slots=3, max_rank=8))


class Fetches:
    """fetch_dir callables that count their calls per key."""

    def __init__(self, folders) -> None:
        self.folders, self.counts = folders, {}

    def __call__(self, key):
        def fetch():
            self.counts[key] = self.counts.get(key, 0) + 1
            return self.folders[key]
        return fetch


def _slot_b(cache: AdapterCache, slot: int) -> torch.Tensor:
    layer = next(iter(cache.slots.layers.values()))
    return layer.slot_B[slot].clone()


def test_the_least_recently_used_idle_adapter_is_evicted(cache, folders):
    fetch = Fetches(folders)
    slot_a = cache.acquire("a", fetch("a"))
    slot_b = cache.acquire("b", fetch("b"))
    assert {slot_a, slot_b} == {1, 2}
    assert cache.acquire("a", fetch("a")) == slot_a  # loaded: no second fetch
    assert fetch.counts == {"a": 1, "b": 1} and cache.users("a") == 2
    cache.release("a")
    cache.release("a")
    cache.release("b")
    cache.acquire("a", fetch("a"))  # a is now the most recently used
    cache.release("a")
    assert cache.acquire("c", fetch("c")) == slot_b  # b, the least recently used idle one, makes room
    assert cache.slot_of("b") is None and cache.slot_of("a") == slot_a
    assert cache.acquire("b", fetch("b")) == slot_a  # a is idle, c is busy: a goes
    assert fetch.counts == {"a": 1, "b": 2, "c": 1}
    with pytest.raises(AllSlotsBusyError, match="all 2 adapter slots are in use"):
        cache.acquire("d", fetch("d"))
    assert cache.slot_of("c") == slot_b and cache.slot_of("b") == slot_a  # nothing busy was evicted
    cache.release("c")
    assert cache.acquire("d", fetch("d")) == slot_b


def test_a_busy_slot_is_never_evicted_and_an_evicted_slot_is_rewritten(cache, folders, tiny_model_dir):
    fetch = Fetches(folders)
    slot_a = cache.acquire("a", fetch("a"))
    slot_b = cache.acquire("b", fetch("b"))
    a_tensors = _slot_b(cache, slot_a)
    cache.release("b")
    slot_c = cache.acquire("c", fetch("c"))
    assert slot_c == slot_b
    assert torch.equal(_slot_b(cache, slot_a), a_tensors)  # a, in use, untouched
    # slot c holds exactly c: the same values as a fresh set of slots loading c
    fresh = AdapterSlots.install(load_tiny(tiny_model_dir), slots=2, max_rank=8)
    fresh.load(1, folders["c"])
    for name, layer in cache.slots.layers.items():
        assert torch.equal(layer.slot_A[slot_c], fresh.layers[name].slot_A[1])
        assert torch.equal(layer.slot_B[slot_c], fresh.layers[name].slot_B[1])
        assert torch.equal(layer.slot_gain[slot_c], fresh.layers[name].slot_gain[1])


def test_concurrent_acquires_share_one_load_and_a_failed_load_frees_its_slot(cache, folders):
    fetch = Fetches(folders)
    started, release = threading.Event(), threading.Event()

    def slow_fetch():
        started.set()
        release.wait(10)
        return fetch("a")()

    results = []
    first = threading.Thread(target=lambda: results.append(cache.acquire("a", slow_fetch)))
    first.start()
    started.wait(10)
    second = threading.Thread(target=lambda: results.append(cache.acquire("a", fetch("a"))))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert results[0] == results[1] and fetch.counts == {"a": 1} and cache.users("a") == 2

    def broken():
        raise OSError("storage unreachable")

    with pytest.raises(OSError, match="storage unreachable"):
        cache.acquire("b", broken)
    assert cache.slot_of("b") is None
    assert cache.acquire("b", fetch("b")) not in (None, results[0])  # the slot came back
    with pytest.raises(ValueError, match="without a matching acquire"):
        cache.release("nobody")


def _edit_config(folder, tmp_path, **changes):
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config.update(changes)
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


def test_adapters_that_do_not_fit_are_refused_with_the_reason(tiny_model_dir, folders, tmp_path):
    slots = AdapterSlots.install(load_tiny(tiny_model_dir), slots=2, max_rank=4)
    with pytest.raises(AdapterMismatchError, match="rank 5 exceeds this server's max_rank 4"):
        slots.prepare(folders["d"])  # rank 5
    with pytest.raises(AdapterMismatchError, match=r"\['nonexistent_proj'\] name no adaptable layer"):
        slots.prepare(_edit_config(folders["a"], tmp_path, target_modules=["q_proj", "nonexistent_proj"]))
    other_base = tiny_llama()  # hidden size 32, not 64
    with pytest.raises(AdapterMismatchError, match="shape"):
        slots.prepare(random_adapter(other_base, tmp_path / "other", rank=2))
    with pytest.raises(AdapterFormatError, match="adapter_config.json not found"):
        slots.prepare(tmp_path / "nowhere")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "adapter_config.json").write_text((folders["a"] / "adapter_config.json").read_text())
    with pytest.raises(AdapterFormatError, match="only safetensors"):
        slots.prepare(tmp_path / "no-weights")
    assert issubclass(AdapterMismatchError, AdapterFormatError)


def test_a_partial_adapter_leaves_its_other_layers_at_zero(tiny_model_dir, tmp_path):
    base = load_tiny(tiny_model_dir)
    slots = AdapterSlots.install(load_tiny(tiny_model_dir), slots=2, max_rank=8)
    prepared = slots.load(1, random_adapter(base, tmp_path / "q", method="dora", rank=3, targets=("q_proj",)))
    assert prepared.rank == 3 and prepared.method == "dora"
    for name, layer in slots.layers.items():
        if name.endswith("q_proj"):
            assert layer.slot_A[1, :3].abs().sum() > 0 and layer.slot_A[1, 3:].abs().sum() == 0
            assert not torch.equal(layer.slot_gain[1], torch.ones_like(layer.slot_gain[1]))
        else:
            assert layer.slot_A[1].abs().sum() == 0 and layer.slot_B[1].abs().sum() == 0
            assert torch.equal(layer.slot_gain[1], torch.ones_like(layer.slot_gain[1]))
