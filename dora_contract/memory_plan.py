"""How many bytes of GPU memory one training process needs: a torch-free memory planner.

From a Hugging Face config (`config.json` as a mapping), the adapter and training settings and the
compute dtype, `plan_memory` adds up what a step of `dora_core`'s training loop holds at its peak,
term by term (`MemoryPlan`). Pure Python, so the API can refuse a job that fits no worker when it
is created (api/services/memory_check.py) and dora_core can decide `gradient_checkpointing: auto`
from the same numbers before the first step (dora_core/training/settings.py).

Where each term comes from (T = micro_batch_size x max_seq_len tokens, b = bytes of the compute
dtype, r = rank; d, I, q = heads x head_dim, kv = kv_heads x head_dim from the config):

- base weights: every parameter of the model in the compute dtype, counted from the config's
  shapes exactly (embeddings, each layer's projections and norms, the final norm, an untied head).
  With `quantization: nf4` the adapted layers' weights are torchao's NF4Tensor instead
  (dora_core/quantization.py): 4 bits a weight, an int8 scale per 64 weights and one scale of the
  compute dtype per block of up to 256 scales. Sharded (FSDP) over N processes: 1/N of them.
- adapter parameters: per adapted linear layer A (r x in) and B (out x r), plus m (out) for DoRA,
  as fp32 masters (dora_core/layers.py), whatever the compute dtype.
- gradients: one fp32 tensor per adapter parameter (their dtype); optimizer: AdamW's exp_avg and
  exp_avg_sq, two more.
- activations: the tensors autograd keeps for backward, as our lean layers keep them
  (dora_core/dora_math.py): an adapted layer keeps its input x and u = A x (T x r), DoRA also its
  output y and two (out,) factors; y costs nothing where the next op keeps that very tensor (the
  gate and up projections, whose outputs SiLU and the product keep; v when attention takes it
  as it is). The base model's own saved tensors are counted per architecture (`_llama_layer`,
  `_gpt2_layer`), measured against `torch.autograd.graph.saved_tensors_hooks` in
  tests/core/test_memory_plan.py. With gradient checkpointing (transformers' non-reentrant
  checkpoint around each decoder layer) a layer keeps only its input (T x d), and backward
  recomputes one layer at a time: one layer's activations more at the peak.
- loss: the chunked head and cross-entropy (dora_core/chunked_cross_entropy.py) keeps the loss's
  gradient with respect to the hidden states (T x d) instead of the logits, and while it runs holds
  two fp32 (chunk x vocabulary) buffers; architectures it does not support keep the full logits.
- transient: what exists only while one op runs; the larger of the loss chunk and a layer's
  backward (four T x max(I, q) buffers in flight), plus, with nf4, one dequantized weight.
- margin: the CUDA context, cuBLAS workspaces and the caching allocator's fragmentation are not
  tensors; `MARGIN_FIXED_BYTES` plus `MARGIN_FRACTION` of everything else.

Every example is assumed to fill max_seq_len (packing does; otherwise this is the worst case a
micro-batch can reach) and batches to be padded, which is when attention keeps its mask and
full-head copies of k and v (transformers' SDPA path with a mask does not use GQA).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from dora_contract.adapter import ALL_LINEAR, AdapterSettings
from dora_contract.training import TrainingSettings

GIB = 1024**3
FP32_BYTES = 4
# The CUDA context (300-600 MiB on recent GPUs, outside PyTorch's allocator but inside the GPU's
# total memory), cuBLAS workspaces and NCCL buffers: a fixed allowance.
MARGIN_FIXED_BYTES = GIB
# The caching allocator rounds blocks up and fragments: a share of the tensors' bytes.
MARGIN_FRACTION = 0.10
# Rows of the chunked cross-entropy (dora_core/chunked_cross_entropy.DEFAULT_CHUNK_TOKENS).
LOSS_CHUNK_TOKENS = 1024
# torchao's NF4Tensor as dora_core/quantization.py builds it
NF4_BLOCK_SIZE = 64
NF4_MAX_SCALER_BLOCK = 256
NF4_TABLE_ENTRIES = 16
# Architectures whose logits are exactly lm_head(final hidden state), so the training loss is the
# chunked one (dora_core/training/loss.py imports this set).
CHUNKED_LOSS_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "gpt2"})
GPT2_TYPES = frozenset({"gpt2"})
Sharding = Literal["none", "fsdp"]
# `parallelism: auto` shards (FSDP) when the base weights would take more than this share of one
# GPU: the rest is for activations, the adapter, its gradients and AdamW's two moments.
DDP_MAX_WEIGHT_SHARE = 0.5


def auto_sharding(*, processes: int, weight_bytes: int | None, memory_bytes: int) -> Sharding:
    """What `parallelism: auto` picks for a run of `processes` on GPUs of `memory_bytes` each:
    FSDP when the weights alone would crowd one GPU, else DDP (every rank holds the whole model)."""
    if processes > 1 and weight_bytes is not None and weight_bytes > DDP_MAX_WEIGHT_SHARE * memory_bytes:
        return "fsdp"
    return "none"


class UnsupportedConfigError(ValueError):
    """The config lacks the shapes the planner needs (e.g. a multimodal or encoder-decoder model)."""


@dataclass(frozen=True)
class Linear:
    """One projection of a decoder layer, as apply_adapter sees it (GPT-2's Conv1D included)."""

    name: str  # relative to the layer, e.g. "self_attn.q_proj"
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class ModelShape:
    """The shapes of a decoder-only model, read from its config."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    layer_prefix: str  # module path of layer i without the index: "model.layers"
    linears: tuple[Linear, ...]
    norm_parameters_per_layer: int
    other_parameters: int  # embeddings, positions, final norm (and the head, when untied)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        model_type = str(config.get("model_type") or "llama")
        if model_type in GPT2_TYPES:
            return _gpt2_shape(config)
        return _llama_shape(config, model_type)

    def layer_names(self) -> list[str]:
        """Every projection's full module name, e.g. "model.layers.3.mlp.up_proj"."""
        return [f"{self.layer_prefix}.{i}.{linear.name}" for i in range(self.layers) for linear in self.linears]

    @property
    def linear_parameters_per_layer(self) -> int:
        return sum(lin.in_features * lin.out_features + lin.bias * lin.out_features for lin in self.linears)

    @property
    def parameters(self) -> int:
        per_layer = self.linear_parameters_per_layer + self.norm_parameters_per_layer
        return self.layers * per_layer + self.other_parameters


def _get(config: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    if default is None:
        raise UnsupportedConfigError(f"the model's config has no {' / '.join(names)}")
    return default


def _llama_shape(config: Mapping[str, Any], model_type: str) -> ModelShape:
    """Llama, Mistral, Qwen2/3 and their like: q/k/v/o and a gated MLP, RMSNorm, rotary positions."""
    d = int(_get(config, "hidden_size"))
    heads = int(_get(config, "num_attention_heads"))
    kv_heads = int(_get(config, "num_key_value_heads", default=heads))
    head_dim = int(_get(config, "head_dim", default=d // heads))
    intermediate = int(_get(config, "intermediate_size"))
    vocab = int(_get(config, "vocab_size"))
    qkv_bias = model_type == "qwen2" or bool(config.get("attention_bias", False))
    o_bias = model_type != "qwen2" and bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    q, kv = heads * head_dim, kv_heads * head_dim
    linears = (
        Linear("self_attn.q_proj", d, q, qkv_bias), Linear("self_attn.k_proj", d, kv, qkv_bias),
        Linear("self_attn.v_proj", d, kv, qkv_bias), Linear("self_attn.o_proj", q, d, o_bias),
        Linear("mlp.gate_proj", d, intermediate, mlp_bias), Linear("mlp.up_proj", d, intermediate, mlp_bias),
        Linear("mlp.down_proj", intermediate, d, mlp_bias),
    )
    tied = bool(config.get("tie_word_embeddings", False))
    norms = 2 * d + (2 * head_dim if model_type == "qwen3" else 0)  # Qwen3 adds q_norm and k_norm
    return ModelShape(model_type=model_type, hidden=d, intermediate=intermediate,
                      layers=int(_get(config, "num_hidden_layers")), heads=heads, kv_heads=kv_heads,
                      head_dim=head_dim, vocab=vocab, tied=tied, layer_prefix="model.layers", linears=linears,
                      norm_parameters_per_layer=norms, other_parameters=vocab * d * (1 if tied else 2) + d)


def _gpt2_shape(config: Mapping[str, Any]) -> ModelShape:
    """GPT-2: fused c_attn (Conv1D), learned positions, LayerNorm with biases, a tied head."""
    d = int(_get(config, "n_embd", "hidden_size"))
    heads = int(_get(config, "n_head", "num_attention_heads"))
    intermediate = int(_get(config, "n_inner", default=4 * d))
    vocab = int(_get(config, "vocab_size"))
    positions = int(_get(config, "n_positions", "max_position_embeddings"))
    linears = (Linear("attn.c_attn", d, 3 * d, True), Linear("attn.c_proj", d, d, True),
               Linear("mlp.c_fc", d, intermediate, True), Linear("mlp.c_proj", intermediate, d, True))
    tied = bool(config.get("tie_word_embeddings", True))
    return ModelShape(model_type="gpt2", hidden=d, intermediate=intermediate,
                      layers=int(_get(config, "n_layer", "num_hidden_layers")), heads=heads, kv_heads=heads,
                      head_dim=d // heads, vocab=vocab, tied=tied, layer_prefix="transformer.h", linears=linears,
                      norm_parameters_per_layer=4 * d,
                      other_parameters=vocab * d * (1 if tied else 2) + positions * d + 2 * d)


def adapted_names(shape: ModelShape, target_modules: str | tuple[str, ...]) -> list[str]:
    """The projections an adapter wraps, matched as dora_core/inject.py matches them ("all-linear":
    every projection, the output head never; a name: itself or a dotted suffix)."""
    names = shape.layer_names()
    if target_modules == ALL_LINEAR:
        return names
    return [n for n in names if any(n == t or n.endswith("." + t) for t in target_modules)]


def nf4_bytes(numel: int, dtype_bytes: int) -> int:
    """Bytes of one torchao NF4Tensor of `numel` weights: packed 4-bit codes, an int8 scale per
    64-weight block, one scale factor per block of gcd(blocks, 256) scales, the scales' mean and
    the 16-entry code table (the last three in the weight's dtype)."""
    blocks = numel // NF4_BLOCK_SIZE
    scaler_blocks = blocks // math.gcd(blocks, NF4_MAX_SCALER_BLOCK)
    return numel // 2 + blocks + (scaler_blocks + 1 + NF4_TABLE_ENTRIES) * dtype_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per process at the peak of a training step, by term (see the module docstring)."""

    base_weights: int
    adapter_parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    loss: int
    transient: int
    margin: int
    gradient_checkpointing: bool
    micro_batch_size: int

    @property
    def total(self) -> int:
        return (self.base_weights + self.adapter_parameters + self.gradients + self.optimizer_states
                + self.activations + self.loss + self.transient + self.margin)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total": self.total}

    def describe(self) -> str:
        """One line for events and error messages: total and the largest terms, in GiB."""
        terms = {"weights": self.base_weights, "adapter + gradients + AdamW": self.adapter_parameters
                 + self.gradients + self.optimizer_states, "activations": self.activations + self.loss,
                 "transient + margin": self.transient + self.margin}
        parts = ", ".join(f"{name} {gib(value)}" for name, value in terms.items())
        return f"{gib(self.total)} GiB ({parts})"


def gib(value: int) -> str:
    return f"{value / GIB:.1f}"


def precision_bytes(precision: str, *, on_gpu: bool = True) -> int:
    """Bytes per element of the compute dtype a run will use: `auto` is bf16 on a GPU (the workers'
    GPUs are taken to support it), fp32 on a CPU, as dora_core/training/run.py resolves it."""
    if precision == "auto":
        return 2 if on_gpu else FP32_BYTES
    return {"fp32": FP32_BYTES, "bf16": 2, "fp16": 2}[precision]


def plan_memory(
    config: Mapping[str, Any],
    adapter: AdapterSettings,
    training: TrainingSettings,
    *,
    dtype_bytes: int,
    gradient_checkpointing: bool | None = None,
    micro_batch_size: int | None = None,
    processes: int = 1,
    sharding: Sharding = "none",
    padded_batches: bool = True,
) -> MemoryPlan:
    """The plan of one process. `gradient_checkpointing` and `micro_batch_size` override the
    settings (needed when the setting is "auto"); `processes` > 1 with `sharding="fsdp"` divides the
    weights, adapter and optimizer states between them (FSDP's full sharding, which all-gathers one
    layer's weights at a time, two with prefetching); without sharding each process holds
    everything and DDP's gradient buckets add a copy of the gradients. `padded_batches=False`
    plans batches without padding (attention then needs no mask and takes GQA's k and v as they
    are), as benchmarks/dora_step.py feeds them."""
    checkpointing = training.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    if checkpointing == "auto":
        raise ValueError("plan_memory needs gradient_checkpointing as a bool; resolve 'auto' first")
    batch = micro_batch_size or training.micro_batch_size
    shape = ModelShape.from_config(config)
    adapted = set(adapted_names(shape, adapter.target_modules))
    nf4 = training.quantization == "nf4"
    by_name = {f"{shape.layer_prefix}.{i}.{lin.name}": lin for i in range(shape.layers) for lin in shape.linears}

    weights = _base_weight_bytes(shape, by_name, adapted, dtype_bytes, nf4=nf4)
    adapter_bytes = FP32_BYTES * sum(
        adapter.rank * (lin.in_features + lin.out_features) + (lin.out_features if adapter.use_dora else 0)
        for name, lin in by_name.items() if name in adapted)
    tokens = batch * training.max_seq_len
    act = _Activations(config, shape, adapter, adapted, batch=batch, seq=training.max_seq_len, b=dtype_bytes,
                       padded=padded_batches)
    layer_bytes = [act.layer(i) for i in range(shape.layers)]
    if checkpointing:
        activations = shape.layers * tokens * shape.hidden * dtype_bytes + max(layer_bytes) + act.final_norm()
    else:
        activations = sum(layer_bytes) + act.final_norm()
    loss_saved, loss_transient = act.loss()
    widest = max(shape.intermediate, shape.heads * shape.head_dim, shape.hidden)
    transient = max(loss_transient, 4 * tokens * widest * dtype_bytes)
    if nf4:
        transient += max(lin.in_features * lin.out_features for lin in shape.linears) * dtype_bytes

    shards = processes if sharding == "fsdp" else 1
    gradients = adapter_bytes
    if sharding == "fsdp" and processes > 1:
        largest_layer = shape.linear_parameters_per_layer * dtype_bytes
        weights = -(-weights // shards) + 2 * largest_layer
        adapter_bytes, gradients = -(-adapter_bytes // shards), -(-gradients // shards)
    elif processes > 1:
        gradients *= 2  # DDP's buckets hold a flat copy of the gradients
    optimizer = 2 * adapter_bytes
    tensors = weights + adapter_bytes + gradients + optimizer + activations + loss_saved + transient
    return MemoryPlan(base_weights=weights, adapter_parameters=adapter_bytes, gradients=gradients,
                      optimizer_states=optimizer, activations=activations, loss=loss_saved, transient=transient,
                      margin=MARGIN_FIXED_BYTES + int(MARGIN_FRACTION * tensors),
                      gradient_checkpointing=bool(checkpointing), micro_batch_size=batch)


def _base_weight_bytes(shape: ModelShape, by_name: dict[str, Linear], adapted: set[str], b: int, *,
                       nf4: bool) -> int:
    if not nf4:
        return shape.parameters * b
    dense = shape.parameters * b
    for name in adapted:  # their weights become NF4 (biases stay in the compute dtype)
        numel = by_name[name].in_features * by_name[name].out_features
        dense += nf4_bytes(numel, b) - numel * b
    return dense


class _Activations:
    """Bytes autograd keeps per decoder layer, by architecture (what each op saves is in comments)."""

    def __init__(self, config: Mapping[str, Any], shape: ModelShape, adapter: AdapterSettings, adapted: set[str], *,
                 batch: int, seq: int, b: int, padded: bool) -> None:
        self.config, self.shape, self.adapter, self.adapted = config, shape, adapter, adapted
        self.padded = padded
        self.batch, self.seq, self.b = batch, seq, b
        self.tokens = batch * seq

    def adapters(self, index: int, shared_outputs: set[str]) -> int:
        """What our adapted layers keep beyond their inputs: u = A x (T x r), the dropout mask (one
        byte per input element) when p > 0, and for DoRA two (out,) factors and the output y
        unless the next op keeps that same tensor (`shared_outputs`; never with a bias, since
        then the pre-bias output is kept)."""
        total = 0
        for lin in self.shape.linears:
            if f"{self.shape.layer_prefix}.{index}.{lin.name}" not in self.adapted:
                continue
            total += self.tokens * self.adapter.rank * self.b
            if self.adapter.dropout > 0:
                total += self.tokens * lin.in_features
            if self.adapter.use_dora:
                total += lin.out_features * (self.b + FP32_BYTES)
                if lin.bias or lin.name not in shared_outputs:
                    total += self.tokens * lin.out_features * self.b
        return total

    def is_adapted(self, index: int, *names: str) -> bool:
        return any(f"{self.shape.layer_prefix}.{index}.{name}" in self.adapted for name in names)

    def attention(self, q_dim: int, kv_saved_dim: int) -> int:
        """SDPA keeps q, k, v, its output and the log-sum-exp (fp32, per head and token), and with
        a padding mask the mask in the activation dtype (a copy per layer)."""
        s = self.shape
        mask = self.batch * self.seq * self.seq * self.b if self.padded else 0
        return (self.tokens * (2 * q_dim + 2 * kv_saved_dim) * self.b + self.batch * s.heads * self.seq * FP32_BYTES
                + mask)

    def layer(self, index: int) -> int:
        return _gpt2_layer(self, index) if self.shape.model_type in GPT2_TYPES else _llama_layer(self, index)

    def final_norm(self) -> int:
        if self.shape.model_type in GPT2_TYPES:
            return self.tokens * (self.shape.hidden + 2) * self.b
        return self.tokens * (self.shape.hidden + 1) * FP32_BYTES

    def loss(self) -> tuple[int, int]:
        """(kept for backward, held only while the loss runs)."""
        s = self.shape
        if s.model_type in CHUNKED_LOSS_MODEL_TYPES:
            chunk = min(LOSS_CHUNK_TOKENS, self.tokens)
            # d loss / d hidden (T x d) and the trained-token mask; two fp32 (chunk x V) buffers
            return self.tokens * (s.hidden * self.b + 1), 2 * chunk * s.vocab * FP32_BYTES
        # full logits: the head's output, an fp32 copy of the trained positions and log-softmax's output
        return self.tokens * s.vocab * FP32_BYTES, self.tokens * s.vocab * (self.b + 2 * FP32_BYTES)


def _llama_layer(act: _Activations, index: int) -> int:
    """A Llama-style layer, from transformers' modeling code:

    - each RMSNorm keeps its input in fp32 (an upcast copy in bf16) and the rsqrt per token; the
      first layer's input norm keeps nothing (the frozen embeddings give it no gradient to pass);
    - the norm's output is kept by the adapted projections that read it (one tensor for q/k/v,
      one for gate/up); o_proj reads attention's output, which attention keeps anyway;
    - rotary keeps cos and sin only (once per model: negligible); attention keeps q after rotary,
      and k and v repeated to all heads (the masked SDPA path; v_proj's output itself when there
      are as many kv heads as heads), its output and the log-sum-exp;
    - the MLP keeps gate's output (for SiLU), SiLU's output and up's output (for the product),
      and the product itself when down_proj is adapted;
    - Qwen3's q_norm and k_norm keep q and k in fp32 too.
    """
    s, b, tokens = act.shape, act.b, act.tokens
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    norm = tokens * (s.hidden + 1) * FP32_BYTES
    total = norm * (1 if index == 0 else 2)
    total += act.attention(q, q if act.padded else kv)
    total += 3 * tokens * s.intermediate * b
    if act.is_adapted(index, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        total += tokens * s.hidden * b
    if act.is_adapted(index, "mlp.gate_proj", "mlp.up_proj"):
        total += tokens * s.hidden * b
    if act.is_adapted(index, "mlp.down_proj"):
        total += tokens * s.intermediate * b
    if s.model_type == "qwen3":
        total += tokens * (q + kv + s.heads + s.kv_heads) * FP32_BYTES
    v_kept_as_is = s.kv_heads == s.heads or not act.padded  # not repeated to all heads
    shared = {"mlp.gate_proj", "mlp.up_proj"} | ({"self_attn.v_proj"} if v_kept_as_is else set())
    return total + act.adapters(index, shared_outputs=shared)


def _gpt2_layer(act: _Activations, index: int) -> int:
    """A GPT-2 block. LayerNorm keeps its input and two statistics per token (the first block's
    ln_1 nothing: the frozen embeddings pass it no gradient). Without attention dropout SDPA keeps
    q, k and v, which are views of c_attn's output (one T x 3d storage), its output, the
    log-sum-exp and the mask; with it (attn_pdrop, 0.1 in GPT-2's configs) SDPA takes its math path
    on the CPU, which keeps q, k and v in fp32, three fp32 (B x H x S x S) tensors (the
    probabilities, the dropout mask, the dropped probabilities) and its output; a GPU's fused
    kernels keep less, so there this term is an upper bound. Each residual dropout (resid_pdrop)
    keeps its mask; gelu_new
    (0.5 x (1 + tanh(...))) keeps four (T x I) tensors. An adapted c_attn or c_fc keeps its norm's
    output, an adapted mlp.c_proj gelu's output; attn.c_proj reads attention's output, kept
    already. Every projection has a bias, so all of DoRA's outputs are extra."""
    s, b, tokens = act.shape, act.b, act.tokens
    d = act.shape.hidden
    norm = tokens * (d + 2) * b
    total = norm * (1 if index == 0 else 2)
    if float(act.config.get("attn_pdrop", 0.1)) > 0:  # SDPA's math path (measured on the CPU)
        total += 3 * tokens * d * FP32_BYTES + 3 * act.batch * s.heads * act.seq * act.seq * FP32_BYTES + tokens * d * b
    else:
        total += act.attention(d, d) - tokens * d * b  # q, k and v are views of one (T x 3d) storage
    if float(act.config.get("resid_pdrop", 0.1)) > 0:
        total += 2 * tokens * d * b
    total += 4 * tokens * s.intermediate * b
    inputs = {"attn.c_attn": d, "attn.c_proj": 0, "mlp.c_fc": d, "mlp.c_proj": s.intermediate}
    total += sum(tokens * width * b for name, width in inputs.items() if act.is_adapted(index, name))
    return total + act.adapters(index, shared_outputs=set())


def checkpointing_needed(config: Mapping[str, Any], adapter: AdapterSettings, training: TrainingSettings, *,
                         dtype_bytes: int, memory_bytes: int, processes: int = 1,
                         sharding: Sharding = "none") -> bool:
    """`gradient_checkpointing: auto`: on exactly when the plan without it exceeds `memory_bytes`
    (recomputing each layer's forward costs about a third more time per step, so it is only worth
    paying when the memory is not there)."""
    plan = plan_memory(config, adapter, training, dtype_bytes=dtype_bytes, gradient_checkpointing=False,
                       processes=processes, sharding=sharding)
    return plan.total > memory_bytes


def largest_fitting_micro_batch(config: Mapping[str, Any], adapter: AdapterSettings, training: TrainingSettings, *,
                                dtype_bytes: int, memory_bytes: int, gradient_checkpointing: bool,
                                processes: int = 1, sharding: Sharding = "none") -> int:
    """The largest micro-batch (at most the asked one) whose plan fits `memory_bytes`; 0 if none."""
    low, high = 0, training.micro_batch_size
    while low < high:  # the plan grows with the micro-batch
        middle = (low + high + 1) // 2
        plan = plan_memory(config, adapter, training, dtype_bytes=dtype_bytes, micro_batch_size=middle,
                           gradient_checkpointing=gradient_checkpointing, processes=processes, sharding=sharding)
        low, high = (middle, high) if plan.total <= memory_bytes else (low, middle - 1)
    return low

