"""The architecture's hyper-parameters as GGUF metadata (`<arch>.block_count`, `<arch>.rope.freq_base`, ...).

The keys are gguf-py's (`GGUFWriter.add_*`), which are the ones llama.cpp reads and transformers'
GGUF loader maps back onto a config. Rotary scaling is refused rather than half written: Llama 3's
"llama3" scaling needs a `rope_freqs` tensor and YaRN several more keys, which this export does not
write yet, and a file without them would run with the wrong positions past the original context.
"""

from __future__ import annotations

import gguf

_PLAIN_ROPE = ("default", None)


def rope_parameters(config) -> dict:
    """{"rope_theta", "rope_type", ...}: transformers >= 5 keeps them in `rope_parameters`, older
    releases in `rope_theta` and `rope_scaling`."""
    parameters = getattr(config, "rope_parameters", None)
    if parameters:
        return dict(parameters)
    scaling = getattr(config, "rope_scaling", None) or {}
    return {"rope_theta": getattr(config, "rope_theta", 10000.0), **scaling,
            "rope_type": scaling.get("rope_type", scaling.get("type", "default"))}


def hparams_problem(config) -> str | None:
    rope_type = rope_parameters(config).get("rope_type")
    if rope_type not in _PLAIN_ROPE:
        return f"the gguf output does not support rope scaling yet; this model uses '{rope_type}'"
    return None


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def add_hparams(writer: gguf.GGUFWriter, config) -> None:
    heads = config.num_attention_heads
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // heads:  # llama.cpp assumes hidden / heads otherwise
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
