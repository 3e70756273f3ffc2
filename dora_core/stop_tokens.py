"""The token ids that end a generated answer, for every place that generates: the serving engine
(and through it reinforcement fine-tuning's sampling) and a training run's validation samples.

One list so that what the server stops at and what a run samples and trains on never drift apart.
"""

from __future__ import annotations

from typing import Any


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence and end-of-turn ids, in order, once each: the generation config's eos (an
    int, a list or a tuple; an instruct model lists its end-of-turn token there) and the tokenizer's eos."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(configured) if isinstance(configured, list | tuple) else [configured]
    ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids if i is not None))
