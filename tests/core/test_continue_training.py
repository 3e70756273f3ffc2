"""Continued training (issue #26): a run given `init_adapter` starts from that adapter's factors and
magnitudes as trained, and refuses an adapter of another method or rank."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dora_core.peft_format import AdapterFormatError, save_adapter
from dora_core.training import run_training
from dora_core.training.callbacks import CallbackList
from dora_core.training.run import TrainingRun
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def parent(tmp_path, tiny_model_dir):
    """A trained DoRA adapter of rank 4 (3 steps: its B and m are no longer their initial values)."""
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows("chat"))
    run_training(run_config(tiny_model_dir, data, max_steps=3), tmp_path / "parent", device="cpu")
    return data, tmp_path / "parent" / "adapter"


def _prepared(config, out_dir) -> TrainingRun:
    run = TrainingRun(config, out_dir, CallbackList([]), "cpu")
    run.prepare_data()
    run.prepare_model()
    return run


def test_the_run_starts_from_the_adapter_as_trained(tmp_path, tiny_model_dir, parent):
    data, adapter = parent
    config = run_config(tiny_model_dir, data, max_steps=3).with_changes(init_adapter=str(adapter))
    run = _prepared(config, tmp_path / "child")
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    loaded = load_file(str(save_adapter(run.model, tmp_path / "loaded") / "adapter_model.safetensors"))
    assert loaded.keys() == saved.keys() and any("magnitude" in key for key in saved)
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)  # copied, same dtype: exact
    fresh = _prepared(run_config(tiny_model_dir, data, max_steps=3), tmp_path / "fresh")
    fresh_b = load_file(str(save_adapter(fresh.model, tmp_path / "fresh-adapter") / "adapter_model.safetensors"))
    assert any(not torch.equal(fresh_b[key], saved[key]) for key in saved)  # the check can tell them apart
    assert config.fingerprint(("x",)) != run_config(tiny_model_dir, data, max_steps=3).fingerprint(("x",))


@pytest.mark.parametrize(("adapter", "words"), [({"method": "dora", "rank": 8, "alpha": 16}, "rank 4 (this run: 8)"),
                                                ({"method": "lora", "rank": 4, "alpha": 8},
                                                 "method 'dora' (this run: 'lora')")])
def test_an_adapter_of_another_method_or_rank_is_refused(tmp_path, tiny_model_dir, parent, adapter, words):
    data, folder = parent
    config = run_config(tiny_model_dir, data, max_steps=3, adapter=adapter).with_changes(init_adapter=str(folder))
    with pytest.raises(AdapterFormatError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _prepared(config, tmp_path / "child")
