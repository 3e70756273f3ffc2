"""serve/generation.py in this process on the tiny model: what a full server answers (503
server_busy, for the engine's queue and for the adapter slots), and that cancelled choices give
their slot and reservation back. A model that never chooses EOS keeps its choices running for
seconds, long enough to hold what they hold."""

from __future__ import annotations

import pytest

from dora_contract.serving import AdapterRef, GenerationRequest
from serve.adapter_files import AdapterFiles
from serve.generation import RejectedError, prepare
from serve.models import load_model
from serve.settings import ServeSettings
from store.storage import LocalStorage
from tests.support.jobs import wait_for
from tests.support.serving import load_tiny, random_adapter, save_endless_model


@pytest.fixture(scope="module")
def endless_dir(tiny_model_dir, tmp_path_factory):
    return save_endless_model(tiny_model_dir, tmp_path_factory.mktemp("endless") / "endless")


@pytest.fixture(scope="module")
def storage_root(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    base = load_tiny(tiny_model_dir)
    for name, seed in (("a", 1), ("b", 2)):
        random_adapter(base, root / "adapters" / name, rank=4, seed=seed)
    return root


@pytest.fixture(scope="module")
def served(endless_dir, tmp_path_factory):
    settings = ServeSettings(_env_file=None, base_models={"endless": str(endless_dir)}, serve_device="cpu",
                             serve_max_batch=2, serve_adapter_slots=1, serve_max_adapter_rank=8,
                             model_cache_dir=str(tmp_path_factory.mktemp("cache")))
    model = load_model(settings, "endless")
    yield model
    model.engine.stop()


def _request(adapter: str | None = None, n: int = 1) -> GenerationRequest:
    ref = AdapterRef(key=f"ft:{adapter}", storage_prefix=f"adapters/{adapter}") if adapter else None
    return GenerationRequest(base_model="endless", prompt="hello", n=n, adapter=ref,
                             sampling={"temperature": 0})


def _busy(call) -> str:
    with pytest.raises(RejectedError) as caught:
        call()
    assert (caught.value.error.status, caught.value.error.code) == (503, "server_busy"), caught.value.error
    return caught.value.error.message


def test_a_full_queue_and_busy_adapter_slots_are_503_and_cancelled_choices_free_them(served, storage_root,
                                                                                        tmp_path):
    files = AdapterFiles(LocalStorage(storage_root), tmp_path / "adapters")
    running = prepare(served, _request("a", n=2), files)  # the one adapter slot, 2 of the 4 sequences
    assert served.in_flight == 2 and served.adapters.users("ft:a@adapters/a") == 2
    assert "adapter" in _busy(lambda: prepare(served, _request("b"), files))  # no slot for a second adapter
    assert served.in_flight == 2  # the refused request gave its reservation back
    base = prepare(served, _request(n=2), files)  # the base needs no slot: 4 of 4
    assert "queue" in _busy(lambda: prepare(served, _request(), files))
    running.cancel()
    base.cancel()
    wait_for(lambda: served.in_flight == 0, timeout=10, what="the cancelled choices to leave")
    assert served.adapters.users("ft:a@adapters/a") == 0
    other = prepare(served, _request("b"), files)  # the idle slot is evicted for the new adapter
    assert served.adapters.slot_of("ft:b@adapters/b") is not None and served.adapters.slot_of("ft:a@adapters/a") is None
    other.cancel()
    wait_for(lambda: served.in_flight == 0, timeout=10, what="the last choice to leave")


def test_an_unset_max_tokens_gets_the_operators_bound_within_the_context():
    from types import SimpleNamespace

    from serve.generation import completion_budget

    served = SimpleNamespace(context_length=100)
    assert completion_budget(served, 30, None) == 70  # no bound: what the context leaves
    assert completion_budget(served, 30, None, 16) == 16  # the operator's DORA_MAX_COMPLETION_TOKENS
    assert completion_budget(served, 90, None, 16) == 10  # the smaller of the two
    assert completion_budget(served, 30, 70, 16) == 70  # a client's own max_tokens is checked by the API, not cut
    with pytest.raises(RejectedError) as refused:
        completion_budget(served, 30, 71, 16)
    assert refused.value.error.param == "max_tokens"


def test_a_deleted_adapters_local_copy_is_forgotten_and_the_others_kept(tmp_path):
    """A model deleted from storage (DELETE /v1/models) leaves this server's cache at the next sweep."""
    from dora_contract.serving import ADAPTER_FILES, AdapterRef

    storage = LocalStorage(tmp_path / "artifacts")
    for name in ("gone", "kept"):
        for path in ADAPTER_FILES:
            storage.put_stream(f"sweep/{name}/{path}", [f"{name} {path}".encode()])
    files = AdapterFiles(storage, tmp_path / "adapters")
    gone, kept = (files.local_dir(AdapterRef(key=f"ft:{n}", storage_prefix=f"sweep/{n}")) for n in ("gone", "kept"))
    assert files.forget_deleted() == [] and gone.is_dir()
    storage.delete_prefix("sweep/gone")
    assert files.forget_deleted() == ["sweep/gone"]
    assert not gone.exists() and sorted(p.name for p in (tmp_path / "adapters").iterdir()) == sorted(
        [kept.name, f"{kept.name}.prefix"])
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == {p: f"kept {p}".encode() for p in ADAPTER_FILES}
    assert files.forget_deleted() == []
