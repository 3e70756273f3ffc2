"""A tiny random-init Llama-architecture model with a locally trained tokenizer.

Used by the tests and by `make run` / `dora make-tiny-model DIR` so that everything, from
tokenisation to merged-model export, runs on a laptop CPU in seconds without downloads.
The tokenizer is a byte-level BPE (any text is encodable, so no <unk>) trained on the
built-in corpus below, with chat role tokens and a chat template:

    <s><|system|>\\n{system}<|end|>\\n<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{answer}<|end|>

The same arguments always give the same files (tokenizer training is deterministic; weights
come from a seeded generator that leaves the global torch RNG untouched).
"""

from __future__ import annotations

import os
from pathlib import Path

BOS, EOS, PAD = "<s>", "</s>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)
_BYTE_ALPHABET = 256

TINY_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{% if messages %}{{ '\\n' }}{% endif %}{{ '<|assistant|>\\n' }}{% endif %}"
)

CORPUS = """\
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.
What is the capital of France? The capital of France is Paris, a city on the river Seine.
Please write a short poem about the sea. The sea is blue and wide, it sings with every tide.
Translate the following sentence into French: good morning, my friend. Bonjour, mon ami.
Summarise the text below in one sentence. The report says sales grew by ten percent this year.
Answer the question with yes or no. Is water wet? Yes. Can fish fly? No, most fish cannot fly.
Add the two numbers: 12 and 30. The answer is 42. Multiply 7 by 6 and you also get 42.
You are a helpful assistant. You answer briefly, clearly and politely, and you never guess.
Once upon a time there was a small village at the edge of a great forest full of old trees.
Every morning the baker opened his shop, and the smell of fresh bread filled the narrow street.
Machine learning models learn patterns from data; a language model predicts the next word.
Fine-tuning adapts a pretrained model to a new task with a small set of labelled examples.
Low-rank adaptation trains two small matrices instead of the full weight of each layer.
The magnitude and the direction of a weight can be learned separately, which often helps.
Instruction: list three colours. Input: none. Output: red, green and blue.
Instruction: name a planet. Output: Mars is the fourth planet from the sun.
The meeting is on Monday at nine o'clock in the small room on the second floor.
She reads a book every week, and her brother plays football with his friends on Sundays.
How do I boil an egg? Put the egg in boiling water for about eight minutes, then cool it.
Thank you very much for your help! You are welcome, I am glad that I could help you today.
Where is the train station? Go straight ahead, turn left at the bank and walk for five minutes.
Numbers: zero one two three four five six seven eight nine ten eleven twelve hundred thousand.
Dates and times: January February March April May June July August September October.
Questions begin with who, what, where, when, why and how; answers should be short and true.
"""


def make_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Write a random-init LlamaForCausalLM and its tokenizer (safetensors) to `out_dir`."""
    if vocab_size < _BYTE_ALPHABET + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {_BYTE_ALPHABET + len(SPECIAL_TOKENS)}, got {vocab_size}")
    if hidden_size % heads or heads % kv_heads:
        raise ValueError("hidden_size must be divisible by heads, and heads by kv_heads")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(vocab_size=vocab_size)
    model = build_tiny_model(
        tokenizer,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        seed=seed,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_tokenizer(*, vocab_size: int = 512):
    """Byte-level BPE trained on CORPUS, as a PreTrainedTokenizerFast with TINY_CHAT_TEMPLATE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(ROLE_TOKENS),
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=2048,
        padding_side="right",
    )


def build_tiny_model(
    tokenizer, *, vocab_size: int, hidden_size: int, layers: int, heads: int, kv_heads: int, seed: int
):
    """Random-init LlamaForCausalLM; weights depend only on the arguments and `seed`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=max(vocab_size, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Wider than Llama's 0.02: with a frozen head and final norm, 0.02 bounds a 64-wide
        # model's logits to about +-1, so no adapter could make it confident; 0.2 lets the
        # demo model memorise a small dataset in a few dozen steps.
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    # generation stops at the end of an assistant turn as well as at </s>
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
