"""The tiny model maker, `dora make-tiny-model`, and loading models/tokenizers with clear errors."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from dora_core.model_loading import (
    ModelLoadError,
    ModelNotFoundError,
    base_model_skeleton,
    load_base_model,
    load_tokenizer,
    resolve_dtype,
)
from dora_core.tiny_model import ROLE_TOKENS, build_tiny_model, build_tiny_tokenizer, make_tiny_model
from tests.support.numerics import assert_close_to_reference, model_budget


def test_tiny_model_folder_holds_safetensors_llama_and_a_chat_tokenizer(tiny_model_dir: Path):
    names = {path.name for path in tiny_model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2 and config["num_key_value_heads"] == 2
    tokenizer = load_tokenizer(tiny_model_dir, local_files_only=True)
    assert len(tokenizer) == config["vocab_size"] == 512
    for token in ("<s>", "</s>", "<|pad|>", *ROLE_TOKENS):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    assert rendered == "<s><|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>"
    assert (
        tokenizer.decode(tokenizer("Any text, even ünïcödé 😀!")["input_ids"], skip_special_tokens=True)
        == "Any text, even ünïcödé 😀!"
    )


def test_make_tiny_model_is_fast_and_deterministic(tmp_path: Path, tiny_model_dir: Path):
    started = time.perf_counter()
    again = make_tiny_model(tmp_path / "again")
    assert time.perf_counter() - started < 5.0
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()


def test_reloaded_model_gives_the_same_logits_as_the_one_built(tiny_model_dir: Path):
    tokenizer = build_tiny_tokenizer(vocab_size=512)
    built = build_tiny_model(tokenizer, vocab_size=512, hidden_size=64, layers=2, heads=4, kv_heads=2, seed=0).eval()
    model = load_base_model(tiny_model_dir, local_files_only=True)
    loaded_tokenizer = load_tokenizer(tiny_model_dir, local_files_only=True)
    text = "What is the capital of France? Paris."
    ids = loaded_tokenizer(text, return_tensors="pt")["input_ids"]  # (1, seq)
    assert ids.tolist() == tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training
    # The weights come back bit for bit (no arithmetic on the way: exact by construction) ...
    loaded, made = model.state_dict(), built.state_dict()
    assert loaded.keys() == made.keys() and all(torch.equal(loaded[k], made[k]) for k in made)
    # ... but the logits need not: the loaded weights live in the memory-mapped safetensors file,
    # 8-byte aligned rather than at the 64-byte alignment of fresh tensors, and a BLAS may take
    # another kernel (another summation order) for another alignment. Same fp32 math, so fp32's
    # forward budget.
    with torch.no_grad():
        assert_close_to_reference(model(ids).logits, built(ids).logits, model_budget(model, torch.float32),
                                  what="logits")


def test_the_skeleton_has_the_loaded_models_layout_and_generation_config_and_no_storage(tiny_model_dir: Path):
    # what the ranks of a sharded run build while rank 0 loads (dora_core/training/distributed.py)
    loaded = load_base_model(tiny_model_dir, dtype=torch.float32, local_files_only=True)
    skeleton = base_model_skeleton(tiny_model_dir, dtype=torch.float32, local_files_only=True)
    layout = [(name, tuple(t.shape), t.dtype) for name, t in [*loaded.named_parameters(), *loaded.named_buffers()]]
    assert layout == [(name, tuple(t.shape), t.dtype)
                      for name, t in [*skeleton.named_parameters(), *skeleton.named_buffers()]]
    assert {t.device.type for t in [*skeleton.parameters(), *skeleton.buffers()]} == {"meta"}
    # the tiny model's eos ids are a list that config.json does not have: the samples' stop ids
    assert skeleton.generation_config.eos_token_id == loaded.generation_config.eos_token_id
    assert isinstance(skeleton.generation_config.eos_token_id, list) and not skeleton.training
    assert skeleton.config._attn_implementation == loaded.config._attn_implementation  # same kernels


def test_dtype_auto_is_fp32_on_cpu_and_bf16_on_a_capable_gpu(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    assert (
        load_base_model(tiny_model_dir, dtype="bfloat16", device="cpu", local_files_only=True).dtype == torch.bfloat16
    )


def test_missing_models_raise_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelNotFoundError) as caught:
        load_base_model("dora-tuner-tests/no-such-model", local_files_only=True)
    message = str(caught.value)
    assert "'dora-tuner-tests/no-such-model' not found" in message
    assert "not a local directory" in message and "local cache only (offline)" in message
    with pytest.raises(ModelNotFoundError, match="tokenizer 'dora-tuner-tests/no-such-model' not found"):
        load_tokenizer("dora-tuner-tests/no-such-model", local_files_only=True)
    missing_dir = tmp_path / "not-here"
    with pytest.raises(ModelNotFoundError, match="no such local directory"):
        load_base_model(str(missing_dir))  # a path is never looked up on the hub


def test_pickle_only_weights_are_refused(tmp_path: Path, tiny_model_dir: Path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors only") as caught:
        load_base_model(folder, local_files_only=True)
    assert not isinstance(caught.value, ModelNotFoundError)


def test_tokenizer_without_pad_token_gets_eos(tmp_path: Path):
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path, local_files_only=True)
    assert loaded.pad_token == "</s>" and loaded.pad_token_id == loaded.eos_token_id
    assert loaded.padding_side == "right"


def test_cli_make_tiny_model(tmp_path: Path):
    from dora_cli.main import main

    assert main(["make-tiny-model", str(tmp_path / "cli"), "--layers", "1", "--seed", "3"]) == 0
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    assert (tmp_path / "cli" / "model.safetensors").is_file()
