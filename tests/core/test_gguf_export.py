"""The gguf output (dora_core/gguf_export): a merged model written as GGUF and read back by
transformers' GGUF loader and by gguf-py's GGUFReader, for llama, qwen2 and mistral in f16, bf16 and
q8_0, and the real SmolLM2-135M-Instruct.

Two comparisons per file. (1) Faithful: the read-back model's logits equal those of the merged model
with its 2-D weights rounded through the file's type (tests/support/gguf_models.rounded_as_stored),
within float32's forward budget: the names, the rotary permutation and every hyper-parameter must be
right for this to hold, whatever the type costs. (2) What the type costs, against the merged model
itself: l2-relative logit error <= 1e-2 for f16 and bf16; q8_0's bound is derived in its test.
"""

from __future__ import annotations

import gguf
import pytest
import torch

from dora_contract.architectures import GGUF_ARCHITECTURES, gguf_unsupported_reason
from dora_core.gguf_export import GGUF_FILE, MODELFILE, GgufExportError, gguf_export_problem, write_gguf
from dora_core.gguf_export.modelfile import CHATML_TEMPLATE
from dora_core.training import TrainingError, run_training
from tests.support.gguf_models import (
    CHAT,
    TIED,
    base_and_merged,
    chat_ids,
    chat_tokenizer,
    logits,
    read_back_model,
    read_back_tokenizer,
    rounded_as_stored,
)
from tests.support.model_factories import tiny_gpt2
from tests.support.numerics import assert_close_to_reference, model_budget, relative_error
from tests.support.real_model import real_model_dir
from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

KINDS = ("llama", "qwen2", "mistral")
TYPE_COST = 1e-2  # f16 and bf16: l2-relative logit error against the merged float32 model
# q8_0, derived: a block of 32 weights is stored as round(w / d) * d with d = max|w| / 127, an error
# uniform in +-d/2, so of rms d / sqrt(12) = max|w| / 440. For Gaussian weights max|w| over 32 is
# about 2.5 sigma: a relative rms error of 2.5 / 440 = 5.7e-3 per weight, against bf16's
# 2^-9 / sqrt(3) = 1.1e-3 (f16: 8x less). Logit errors grow with the per-weight error, so q8_0's
# is about 5x bf16's: bf16's bound times 5.
Q8_0_COST = 5 * TYPE_COST
GGML = gguf.GGMLQuantizationType
WEIGHT_TYPES = {"f16": GGML.F16, "bf16": GGML.BF16, "q8_0": GGML.Q8_0}


def export(tmp_path, kind: str, file_type: str):
    base, merged = base_and_merged(kind)
    folder = tmp_path / f"{kind}-{file_type}"
    write_gguf(folder, merged, chat_tokenizer(), file_type=file_type, name=f"tiny-{kind}")
    return base, merged, folder


@pytest.mark.parametrize("file_type", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("kind", KINDS)
def test_transformers_reads_back_the_merged_model(tmp_path, kind, file_type):
    """Measured (l2-relative logit error against the merged model; llama, qwen2, mistral): f16 7.9e-4,
    5.5e-4, 8.0e-4; bf16 6.7e-3, 4.3e-3, 5.6e-3; q8_0 1.9e-2, 1.1e-2, 2.3e-2 (2.6x to 4.1x bf16's, inside
    the 5x of Q8_0_COST). The faithful comparison measures 0: the read-back weights are bit for bit
    the rounded merged weights. Base against merged: 0.73 to 1.3."""
    base, merged, folder = export(tmp_path, kind, file_type)
    ids = chat_ids(chat_tokenizer())
    back = read_back_model(folder)
    assert back.config.tie_word_embeddings == TIED[kind]

    actual, reference = logits(back, ids), logits(merged, ids)
    assert_close_to_reference(actual, logits(rounded_as_stored(merged, file_type), ids),
                              model_budget(merged, torch.float32), what=f"{kind} {file_type} faithful")
    cost = Q8_0_COST if file_type == "q8_0" else TYPE_COST
    error = relative_error(actual, reference)
    assert error <= cost, f"{kind} {file_type}: logits {error:.3g} from the merged model's, over {cost:g}"
    # the merge matters: a file of the base model's weights would be far outside that bound
    assert relative_error(logits(base, ids), reference) > 5 * cost


@pytest.mark.parametrize("file_type", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_file_holds_llama_cpp_metadata_and_types(tmp_path, kind, file_type):
    _, merged, folder = export(tmp_path, kind, file_type)
    reader = gguf.GGUFReader(folder / GGUF_FILE)
    field = lambda key: reader.fields[key].contents()  # noqa: E731 - a one-line reader, beside its uses
    arch = GGUF_ARCHITECTURES[kind]
    config = merged.config
    assert field("general.architecture") == arch == ("qwen2" if kind == "qwen2" else "llama")
    assert field("general.file_type") == {"f16": 1, "bf16": 32, "q8_0": 7}[file_type]  # llama.cpp's LlamaFileType
    assert (field(f"{arch}.block_count"), field(f"{arch}.embedding_length"), field(f"{arch}.feed_forward_length"),
            field(f"{arch}.attention.head_count"), field(f"{arch}.attention.head_count_kv"),
            field(f"{arch}.context_length"), field(f"{arch}.vocab_size")) == (2, 64, 80, 4, 2, 256, config.vocab_size)
    assert field(f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(config.rms_norm_eps, rel=1e-6)
    assert field(f"{arch}.rope.freq_base") == pytest.approx(config.rope_parameters["rope_theta"])

    tensors = {tensor.name: tensor for tensor in reader.tensors}
    assert ("output.weight" in tensors) == (not TIED[kind])
    assert ("blk.0.attn_q.bias" in tensors) == (kind == "qwen2")
    assert len(tensors) == len(merged.state_dict()) - TIED[kind]
    for tensor in reader.tensors:  # GGUF shapes list the row length first
        if len(tensor.shape) == 1:
            expected = GGML.F32
        elif file_type == "q8_0" and tensor.shape[0] % 32:
            expected = GGML.F16
        else:
            expected = WEIGHT_TYPES[file_type]
        assert tensor.tensor_type == expected, (tensor.name, tensor.tensor_type.name)
    # the 80-wide MLP's down projection is the q8_0 file's f16 fallback
    down = tensors["blk.0.ffn_down.weight"].tensor_type
    assert down == (GGML.F16 if file_type == "q8_0" else WEIGHT_TYPES[file_type])


@pytest.mark.parametrize("kind", KINDS)
def test_the_tokenizer_and_chat_template_survive(tmp_path, kind):
    _, _, folder = export(tmp_path, kind, "f16")
    original, back = chat_tokenizer(), read_back_tokenizer(folder)
    assert back.chat_template == original.chat_template
    assert chat_ids(back) == chat_ids(original)
    assert chat_ids(back, CHAT[:2]) == chat_ids(original, CHAT[:2])
    text = "Numbers 12 and 30, émigré café; tabs\tand  spaces."
    assert back(text)["input_ids"] == original(text)["input_ids"]  # add_bos: the tiny tokenizer adds <s>
    reader = gguf.GGUFReader(folder / GGUF_FILE)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # ByteLevel's own GPT-2 split
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert reader.fields["tokenizer.ggml.bos_token_id"].contents() == original.bos_token_id


def test_the_modelfile_of_a_non_chatml_template_leaves_the_template_to_ollama(tmp_path):
    _, _, folder = export(tmp_path, "llama", "f16")
    lines = (folder / MODELFILE).read_text().splitlines()
    assert lines[0] == f"FROM ./{GGUF_FILE}"
    assert not any(line.startswith(("TEMPLATE", "SYSTEM")) for line in lines)
    # the generation config's end-of-turn token as well as </s>
    assert [line for line in lines if line.startswith("PARAMETER stop")] == [
        'PARAMETER stop "</s>"', 'PARAMETER stop "<|end|>"']


def test_an_unsupported_architecture_is_refused_by_name(tmp_path):
    message = gguf_unsupported_reason("gpt2")
    assert message == ("the gguf output supports the llama, mistral, qwen2 architectures; "
                       "this model's architecture is 'gpt2'")
    assert "unknown" in gguf_unsupported_reason(None) and gguf_unsupported_reason("qwen2") is None
    with pytest.raises(GgufExportError, match="supports the llama, mistral, qwen2 architectures.*'gpt2'"):
        write_gguf(tmp_path / "out", tiny_gpt2(), chat_tokenizer())
    assert not (tmp_path / "out" / GGUF_FILE).exists()


def test_a_run_asking_for_gguf_on_an_unsupported_model_fails_before_training(tmp_path):
    model_dir = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(model_dir)
    chat_tokenizer().save_pretrained(model_dir)
    data = write_jsonl(tmp_path / "train.jsonl", dataset_rows("chat"))
    with pytest.raises(TrainingError, match="the gguf output cannot be written.*'gpt2'"):
        run_training(run_config(model_dir, data, max_steps=2, outputs=["adapter", "gguf"]), tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_run_writes_the_gguf_output_without_merged(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", dataset_rows("chat"))
    config = run_config(tiny_model_dir, data, max_steps=2, outputs=["adapter", "gguf"]).with_changes(gguf_type="q8_0")
    result = run_training(config, tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out" / "gguf").iterdir()) == [MODELFILE, GGUF_FILE]
    assert result.outputs["gguf"] == str(tmp_path / "out" / "gguf") and "merged" not in result.outputs
    assert not (tmp_path / "out" / "merged").exists()
    reader = gguf.GGUFReader(tmp_path / "out" / "gguf" / GGUF_FILE)
    assert reader.fields["general.file_type"].contents() == 7  # q8_0


def test_the_real_smollm2_round_trips_in_f16(tmp_path):
    """SmolLM2-135M-Instruct (the packaged GGUF, converted to bf16 safetensors): 30 layers, 9 query and
    3 key/value heads, tied embeddings, ChatML. Measured logit error 0.0: its bf16 weights fit f16
    exactly, so this also shows the file's hyper-parameters and layout are the model's to the bit."""
    from dora_core.model_loading import load_base_model, load_tokenizer

    source = real_model_dir()
    model, tokenizer = load_base_model(source, dtype=torch.float32, device="cpu").eval(), load_tokenizer(source)
    assert gguf_export_problem(model.config, tokenizer) is None
    write_gguf(tmp_path, model, tokenizer, file_type="f16")

    back_tokenizer = read_back_tokenizer(tmp_path)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = chat_ids(tokenizer, messages)
    assert chat_ids(back_tokenizer, messages) == ids and back_tokenizer.chat_template == tokenizer.chat_template
    back = read_back_model(tmp_path)
    assert back.config.tie_word_embeddings and back.config.num_hidden_layers == 30
    error = relative_error(logits(back, ids), logits(model, ids))
    assert error <= TYPE_COST, f"logits {error:.3g} from the source model's"

    modelfile = (tmp_path / MODELFILE).read_text()
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
