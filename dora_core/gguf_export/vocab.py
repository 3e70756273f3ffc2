"""The tokenizer as GGUF metadata: llama.cpp's "gpt2" (byte-level BPE) vocabulary.

A GGUF carries no tokenizer.json: llama.cpp (and transformers' GGUF loader) rebuild the tokenizer
from the token list, each token's type, the merges and `tokenizer.ggml.pre`, the name of the
pre-tokenizer (the regex that splits text before BPE). llama.cpp's converter finds that name by
hashing how the tokenizer encodes a test string; we read it off the tokenizer's own pre-tokenizer
definition instead, and refuse one we cannot name rather than write a file that tokenizes text
differently from the model's training.

Token types follow llama.cpp's converter: special added tokens (`<|im_start|>`, `<s>`) are CONTROL
(matched whole, never split), other added tokens USER_DEFINED, ids the vocabulary leaves empty
`[PAD<id>]` UNUSED, the rest NORMAL. add_bos/add_eos are what the tokenizer really does when it
encodes text, observed, not read from a flag that may not be honoured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import gguf

from dora_core.gguf_export.tensors import GgufExportError

# The split regexes llama.cpp knows by name (llama-vocab.cpp), as tokenizer.json files write them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_NAMES = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
# normalizers that leave the byte-level text as llama.cpp sees it (Qwen2's tokenizer.json has NFC)
_ACCEPTED_NORMALIZERS = (None, "NFC")


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    token_types: list[gguf.TokenType]
    merges: list[str]  # "left right", best first
    pre: str  # tokenizer.ggml.pre
    special_ids: dict[str, int]  # bos, eos, pad, unk -> id (those the tokenizer has)
    add_bos: bool
    add_eos: bool
    chat_template: str | list[dict[str, str]] | None  # one template, or named ones ({"name", "template"})


def _steps(pre_tokenizer: dict | None) -> list[dict]:
    if pre_tokenizer is None:
        return []
    return pre_tokenizer["pretokenizers"] if pre_tokenizer["type"] == "Sequence" else [pre_tokenizer]


def pre_tokenizer_name(definition: dict) -> str | None:
    """llama.cpp's name for a byte-level BPE tokenizer.json's pre-tokenizer; None if it has none."""
    steps = _steps(definition.get("pre_tokenizer"))
    kinds = [step["type"] for step in steps]
    if not steps or kinds[-1] != "ByteLevel" or steps[-1].get("add_prefix_space"):
        return None
    byte_level_regex = steps[-1].get("use_regex", True)  # the GPT-2 split, inside ByteLevel
    if kinds == ["ByteLevel"] and byte_level_regex:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level_regex:
        return "smollm"  # SmolLM: every digit alone, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not byte_level_regex:
        split = steps[0]
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            return SPLIT_NAMES.get(split.get("pattern", {}).get("Regex"))
    return None


def _definition(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GgufExportError("the gguf output needs a fast tokenizer (tokenizer.json); this one is "
                              f"{type(tokenizer).__name__}")
    return json.loads(backend.to_str())


def vocab_problem(tokenizer) -> str | None:
    """None when the tokenizer can be written as a llama.cpp "gpt2" vocabulary, else why not."""
    try:
        definition = _definition(tokenizer)
    except GgufExportError as error:
        return str(error)
    model = definition.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = f"{model.get('type')}{' with byte fallback' if model.get('byte_fallback') else ''}"
        return ("the gguf output supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM); "
                f"this model's tokenizer is {kind} (a sentencepiece-style vocabulary)")
    normalizer = definition.get("normalizer")
    if (normalizer or {}).get("type") not in _ACCEPTED_NORMALIZERS:
        return f"the gguf output cannot write a tokenizer with a {normalizer['type']} normalizer"
    if pre_tokenizer_name(definition) is None:
        return ("the gguf output knows the GPT-2, SmolLM, Llama 3 and Qwen2 pre-tokenizers; this tokenizer's "
                f"is {json.dumps(definition.get('pre_tokenizer'))[:300]}")
    return None


def _observed_specials(tokenizer) -> tuple[bool, bool]:
    """(add_bos, add_eos): whether encoding plain text adds them."""
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return bos is not None and ids[:1] == [bos], eos is not None and ids[-1:] == [eos]


def _merges(definition: dict) -> list[str]:
    # tokenizers writes merges as ["a", "b"] pairs (>= 0.20) or as "a b" strings (older files)
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in definition["model"]["merges"]]


def build_vocab(tokenizer, vocab_size: int) -> Vocab:
    """The GGUF vocabulary of `tokenizer` for a model with `vocab_size` embedding rows."""
    problem = vocab_problem(tokenizer)
    if problem:
        raise GgufExportError(problem)
    definition = _definition(tokenizer)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise GgufExportError(f"the tokenizer has ids up to {max(by_id)}, beyond the model's {vocab_size} embeddings")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    special_ids = {name: getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad", "unk")}
    add_bos, add_eos = _observed_specials(tokenizer)
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = [{"name": name, "template": text} for name, text in template.items()]
    return Vocab(tokens=tokens, token_types=types, merges=_merges(definition), pre=pre_tokenizer_name(definition),
                 special_ids={name: index for name, index in special_ids.items() if index is not None},
                 add_bos=add_bos, add_eos=add_eos, chat_template=template)


def add_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
              "pad": writer.add_pad_token_id, "unk": writer.add_unk_token_id}
    for name, index in vocab.special_ids.items():
        adders[name](index)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
