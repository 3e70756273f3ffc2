"""The gguf output in llama.cpp itself: each file loaded by llama-cpp-python, its logits and its
tokenization of a chat prompt compared with the merged transformers model's. One JSON line per file.

    pip install --no-deps llama-cpp-python diskcache     # builds llama.cpp from source (CPU): minutes
    .venv/bin/python benchmarks/gguf_llama_cpp.py [--real] [--types f16,bf16,q8_0]

Not part of the test suite, which reads every file back with transformers' GGUF loader instead
(tests/core/test_gguf_export.py): building llama.cpp takes about 15 minutes on a 2-core machine.
The tiny models are the tests' (tests/support/gguf_models.py: llama, qwen2, mistral, a perturbed
DoRA adapter merged in); --real adds SmolLM2-135M-Instruct (the packaged GGUF, converted).
llama.cpp multiplies q8_0 weights with activations quantized to 8 bits as well, so its q8_0 error
is larger than transformers' (which dequantizes the weights to float32).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dora_core.gguf_export import write_gguf
from tests.support.gguf_models import CHAT, base_and_merged, chat_ids, chat_tokenizer, logits
from tests.support.numerics import relative_error


def check(label: str, model, tokenizer, messages, gguf_type: str) -> dict:
    import llama_cpp

    with tempfile.TemporaryDirectory() as folder:
        path = write_gguf(folder, model, tokenizer, file_type=gguf_type)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False)
        ids = chat_ids(tokenizer, messages)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        llm.eval(ids)
        ours = torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)
        return {"model": label, "gguf_type": gguf_type, "llama_cpp": llama_cpp.__version__,
                "logits_relative_l2_error": relative_error(ours, logits(model, ids)),
                "tokens_equal": llm.tokenize(text.encode(), add_bos=False, special=True) == ids,
                "chat_template_kept": llm.metadata.get("tokenizer.chat_template") == tokenizer.chat_template}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="f16,bf16,q8_0")
    parser.add_argument("--real", action="store_true", help="also SmolLM2-135M-Instruct")
    args = parser.parse_args()
    types = args.types.split(",")
    for kind in ("llama", "qwen2", "mistral"):
        _, merged = base_and_merged(kind)
        for gguf_type in types:
            print(json.dumps(check(f"tiny-{kind}", merged, chat_tokenizer(), CHAT, gguf_type)), flush=True)
    if args.real:
        from dora_core.model_loading import load_base_model, load_tokenizer
        from tests.support.real_model import real_model_dir

        source = real_model_dir()
        model = load_base_model(source, dtype=torch.float32, device="cpu").eval()
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        for gguf_type in types:
            print(json.dumps(check("SmolLM2-135M-Instruct", model, load_tokenizer(source), messages, gguf_type)),
                  flush=True)


if __name__ == "__main__":
    main()
