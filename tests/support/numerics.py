"""Tolerances for floating-point comparisons in the tests: derived from the dtype, never picked by hand.

Why. Two computations of the same math (ours vs PEFT, merged vs adapter, chunked vs full loss,
a fused kernel vs its reference) round differently, and how they round depends on the CPU's
SIMD width, the BLAS kernel and the thread count, which change the order of every sum. An
absolute tolerance tuned on one machine is a sample of that machine's rounding, not a bound:
`atol=1e-6` failed on a 2-core AMD EPYC by 1.9e-6 on a tensor whose largest entry is 11.5
(1.7e-7 of it, about one fp32 epsilon). So every comparison here is

  * norm-relative: ||actual - reference|| / ||reference||, or (norm="max", for kernels, where a
    single wrong element must show) max|actual - reference| / max|reference|: the error against
    the tensor's own scale, so the same bound holds for logits of size 10 and gradients of 1e-3;
  * bounded by a rounding budget computed from torch.finfo(dtype).eps and the size of the
    computation, with the derivation in the failure message.

The budget. Rounding to nearest in a format with unit roundoff u = eps / 2 gives each result a
relative error of at most u. A result that passed through `stages` roundings in sequence (one
per stored intermediate), each of them a sum of up to `terms` products, carries about
stages * (terms + 1) roundings. Modelled as independent, mean-zero errors (Higham and Mary,
"A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019),
they add like a random walk, and the relative error is at most

    LAMBDA * (u_store * sqrt(stages) + u_accumulate * sqrt(stages * terms))

except with a probability that falls like exp(-LAMBDA**2 / 2). u_store is the unit roundoff of
the dtype the intermediates are stored in and u_accumulate that of the sums (the same for fp32
and fp64; fp32 for bf16 matmuls, which accumulate in fp32 on CPUs and GPUs alike). The bound
also assumes the computation is well conditioned (errors are not amplified on the way); a test
whose math cancels says so and scales its budget by the condition number it computes. A
comparison sees the errors of both computations: `stages` counts the longer chain, and two
independent random walks add to sqrt(2) of one, well inside LAMBDA = 4.

How tight that is, measured on this suite (worst over OMP_NUM_THREADS=1 and 2, MKL_NUM_THREADS=1
and ATEN_CPU_CAPABILITY=default/avx2/avx512): PEFT parity gradients 6.3 eps against a budget of
200 eps in fp32 and 4.2 eps64 against 200 eps64 (4.5e-14) in float64; bf16 logits 0.7 eps_bf16
against 18.6 eps_bf16; most comparisons within 5% of their budget, the closest at 35% (a bf16
kernel output one bf16 ulp off its reference, which is at most half the budget). Real bugs
(a missing term, a wrong scale, another mask) are errors of 1e-3 to 1, far beyond every budget;
in float64 a 1e-9 relative change of a single magnitude entry already fails parity 160-fold.

Float64 comparisons need models that really compute in float64: see float64_model.

Set DORA_NUMERICS_LOG=path to append one JSON line per comparison (test, what, error, budget),
to see how close each comparison comes to its budget on a new machine.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

# Standard deviations of the random-rounding model; the stage count already over-counts (it adds
# every stage's error in full, as if no later operation damped it).
LAMBDA = 4.0

# Rounded stages per decoder layer, forward (a budget's `stages`): input norm, q/k/v projections,
# their adapter (A x, then B u added and the DoRA gain), rotary embedding, scores q.k, softmax,
# weights.v, o projection and its adapter (2), residual add, post-attention norm, gate/up
# projections and their adapter (2), activation and product, down projection and its adapter
# (2), residual add: 18, rounded up to 20.
STAGES_PER_DECODER_LAYER = 20
# Outside the layers: final norm, output head, loss (log-softmax and its sum over tokens).
STAGES_OUTSIDE_LAYERS = 3


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2: the largest relative error of one rounding to nearest."""
    return torch.finfo(dtype).eps / 2


@dataclass(frozen=True)
class Budget:
    """A relative-error bound and how it was derived (shown when a comparison fails)."""

    value: float
    why: str

    def times(self, factor: float, reason: str) -> Budget:
        return Budget(self.value * factor, f"({self.why}) x {factor:.3g} [{reason}]")

    def plus(self, value: float, why: str) -> Budget:
        return Budget(self.value + value, f"{self.why} + {why}")


def budget(dtype: torch.dtype, *, stages: int, terms: int = 1, accumulate: torch.dtype | None = None) -> Budget:
    """The rounding budget of a chain of `stages` results stored in `dtype`, each a sum of up to
    `terms` products accumulated in `accumulate` (default: `dtype`). See the module docstring."""
    accumulate = accumulate or dtype
    name, acc_name = _name(dtype), _name(accumulate)
    value = LAMBDA * (unit_roundoff(dtype) * math.sqrt(stages)
                      + unit_roundoff(accumulate) * math.sqrt(stages * terms))
    why = (f"{LAMBDA:g} * (u({name}) * sqrt({stages} stages) + u({acc_name}) * sqrt({stages} stages * {terms} terms))"
           f" = {value:.3g} = {value / eps(dtype):.1f} eps({name})")
    return Budget(value, why)


def _text_config(model_or_config):
    config = getattr(model_or_config, "config", model_or_config)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_stages(model_or_config, *, backward: bool = False) -> int:
    """Rounded stages of a decoder-only transformer's forward (and backward: twice as many)."""
    config = _text_config(model_or_config)
    forward = config.num_hidden_layers * STAGES_PER_DECODER_LAYER + STAGES_OUTSIDE_LAYERS
    return 2 * forward if backward else forward


def model_terms(model_or_config) -> int:
    """The longest sum in the model: over the hidden size, the MLP width or the vocabulary
    (log-softmax and the head's gradient sum over the vocabulary)."""
    config = _text_config(model_or_config)
    intermediate = (getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
                    or 4 * config.hidden_size)
    return max(config.hidden_size, intermediate, config.vocab_size)


def model_budget(model_or_config, dtype: torch.dtype, *, backward: bool = False,
                 accumulate: torch.dtype | None = None) -> Budget:
    """The rounding budget of logits (backward=False) or adapter gradients (backward=True) of a
    decoder-only transformer computed in `dtype`."""
    stages = model_stages(model_or_config, backward=backward)
    return budget(dtype, stages=stages, terms=model_terms(model_or_config), accumulate=accumulate)


def replay_budget(model_or_config, dtype: torch.dtype = torch.float32) -> Budget:
    """How far two replays of one training run may end apart (adapter tensors, losses).

    Resume from a checkpoint, the OOM-halved micro-batch, gradient checkpointing and a stop and
    resume run the same kernels on the same inputs in one process. They agree bit for bit on
    every machine tried, but bit-exactness is not something a test may assume of every BLAS and
    thread count. If a kernel summed in another order, each step's gradient would move within
    the backward budget; AdamW's update m / sqrt(v) does not depend on the gradient's scale, so a
    relative gradient error is a relative update error of the same size, and the adapter (init
    plus the updates) stays within it. For scale: two whole 12-step fp32 runs on different SIMD
    kernel paths (ATEN_CPU_CAPABILITY=default vs avx512) end 0.8 fp32 eps apart; a wrong RNG
    state, optimizer state or batch is a difference of 1e-3 and more.

    Caveat: "does not depend on the gradient's scale" holds for a tensor, not for each of its
    components. Adam normalises every component by its own history, so one whose gradient lies
    within its rounding error of zero on the first step it gets one (Adam's eps, 1e-8, is then
    about its own size) can move by up to ~lr whatever the tensor's scale: see adam_drift. Runs that agree bit for bit
    never meet it; two runs that sum in another order over several Adam steps can (an NF4 run
    over 2 processes: tests/core/test_distributed.py), and whether they do depends on the data,
    not on the dtype (the component's rounding error and this budget scale together). So runs
    over different process counts or parallelisms are compared with it only before their first
    update; after it, in float64 with adam_replay_budget (tests/core/test_distributed.py).
    """
    return model_budget(model_or_config, dtype, backward=True)


def gradient_budget(model_or_config, dtype: torch.dtype, *, adapter_elements: int) -> Budget:
    """The clipped adapter gradient (and the grad_norm metric): the backward's rounding
    (replay_budget) plus that of the gradient norm, one more sum, over the squares of all
    `adapter_elements` (the order of which is what FSDP changes: each rank sums its shards, then
    the ranks' sums are added). Clipping scales every gradient by max_norm / norm."""
    backward = replay_budget(model_or_config, dtype)
    norm = budget(dtype, stages=1, terms=adapter_elements)
    return backward.plus(norm.value, f"gradient norm: {norm.why}")


# torch.optim.AdamW's defaults: the training loop's optimizer sets neither (dora_core/training/run.py).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8


def adam_gain(steps: int, betas: tuple[float, float] = ADAM_BETAS) -> float:
    """Sum over t <= steps and k <= t of bounds on eps * |d u_t / d g_k|: how far Adam's normalised
    update u_t = m_t^ / (sqrt(v_t^) + eps) of one parameter can move per unit change of its
    gradient g_k at an earlier or the same step, whatever the gradients are.

    With m_t^ = m_t / (1 - b1^t), v_t^ = v_t / (1 - b2^t), a_t = (1 - b1) / (1 - b1^t) and
    c_t = (1 - b2) / (1 - b2^t):  d m_t^ / d g_k = a_t b1^(t-k);  d sqrt(v_t^) / d g_k =
    c_t b2^(t-k) g_k / sqrt(v_t^), at most sqrt(c_t b2^(t-k)) since v_t^ >= c_t b2^(t-k) g_k^2;
    |m_t^| / sqrt(v_t^) <= a_t sqrt(S_t / c_t) with S_t = sum_{j<t} (b1^2 / b2)^j (Cauchy-Schwarz
    over the history); and 1 / (sqrt(v_t^) + eps) <= 1 / eps. So
        eps |d u_t / d g_k| <= a_t (b1^(t-k) + sqrt(S_t) b2^((t-k)/2)),
    reached as v_t^ -> 0: a component whose gradient is (near) zero, on the first step it gets
    one (every parameter at step 1; DoRA's lora_A, whose gradient is zero while lora_B is, at
    step 2). 2.0 for one step, 10.2 for four.
    """
    beta1, beta2 = betas
    total = 0.0
    for t in range(1, steps + 1):
        a_t = (1 - beta1) / (1 - beta1 ** t)
        s_t = sum((beta1 * beta1 / beta2) ** j for j in range(t))
        total += sum(a_t * (beta1 ** (t - k) + math.sqrt(s_t) * beta2 ** ((t - k) / 2)) for k in range(1, t + 1))
    return total


def adam_drift(gradient: Budget, *, learning_rate: float, max_grad_norm: float, steps: int,
               eps: float = ADAM_EPSILON, betas: tuple[float, float] = ADAM_BETAS) -> tuple[float, str]:
    """How far (l2, absolute) two AdamW runs' parameters can end apart when each step's clipped
    gradient differs by its rounding (relative budget `gradient`), and why: the rounding error of a
    step's gradient is at most gradient.value * max_grad_norm (clipping bounds its norm, of any
    part of the adapter), and Adam turns a gradient change into a parameter change of at most
    learning_rate * adam_gain / eps times it, component by component, hence in l2 too. First
    order: a parameter difference carried into later gradients is not counted (numerics' model:
    each step's gradient within its rounding budget). Weight decay only shrinks a difference.

    This is the worst case, a gradient component at zero: in fp32 (gradient budget ~1e-4, lr
    1e-2) it is 1e2 to 1e3 over 1 to 4 steps, more than any adapter's size, so no rounding budget exists for an fp32
    adapter after Adam steps; in float64 it is ~1e-6, a thousand times below a real bug's 1e-3."""
    gain = adam_gain(steps, betas)
    drift = learning_rate * gain * gradient.value * max_grad_norm / eps
    why = (f"Adam: lr {learning_rate:g} * gain {gain:.3g} over {steps} steps * gradient budget {gradient.value:.3g} * "
           f"max_grad_norm {max_grad_norm:g} / eps {eps:g} = {drift:.3g} absolute")
    return drift, why


def adam_replay_budget(model_or_config, dtype: torch.dtype, *, scale: float, drift: tuple[float, str]) -> Budget:
    """replay_budget for a tensor of l2 norm `scale` trained by AdamW: its own rounding plus the
    Adam drift (adam_drift) relative to its scale."""
    value, why = drift
    return replay_budget(model_or_config, dtype).plus(value / scale, f"({why}) / scale {scale:.3g}")


def float64_model(model):
    """`model.double()`, with its RMSNorm layers kept in float64 as well; returns the model.

    transformers' Llama-family RMSNorm computes "in float32" (`hidden_states.to(torch.float32)`),
    which for a float64 model is a downcast. Two float64 computations ~1e-16 apart would then
    round to fp32 values that are mostly equal but now and then one fp32 ulp (6e-8) apart: fp32
    noise in a float64 comparison, and a float64 test blind to changes below fp32's resolution.
    The replacement is the same math (x * rsqrt(mean(x^2) + eps) * weight) in the input's dtype.
    (Rotary angles are also formed in fp32, but from positions only: the same in both computations.)
    """
    model.double()
    for module in model.modules():
        original = type(module)
        if original.__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.__class__ = _float64_norm_class(original)
    return model


_FLOAT64_NORM_CLASSES: dict[type, type] = {}


def _float64_norm_class(original: type) -> type:
    if original in _FLOAT64_NORM_CLASSES.values():
        return original

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    if original not in _FLOAT64_NORM_CLASSES:
        _FLOAT64_NORM_CLASSES[original] = type(f"Float64{original.__name__}", (original,), {"forward": forward})
    return _FLOAT64_NORM_CLASSES[original]


def relative_error(actual: torch.Tensor, reference: torch.Tensor, *, norm: str = "l2") -> float:
    """||actual - reference|| / ||reference||, in float64 (l2: over all elements; max: the largest
    element error against the largest reference entry). 0 when both are exactly equal."""
    actual, reference = actual.detach().double().cpu(), reference.detach().double().cpu()
    if actual.shape != reference.shape:
        raise AssertionError(f"shapes differ: {tuple(actual.shape)} vs {tuple(reference.shape)}")
    difference = actual - reference
    order = {"l2": 2, "max": math.inf}[norm]
    error = float(torch.linalg.vector_norm(difference, ord=order))
    scale = float(torch.linalg.vector_norm(reference, ord=order))
    if error == 0.0:
        return 0.0
    return error / scale if scale > 0 else math.inf


def _log(what: str, error: float, limit: Budget) -> None:
    path = os.environ.get("DORA_NUMERICS_LOG")
    if path:
        record = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0], "what": what,
                  "error": error, "budget": limit.value, "ratio": error / limit.value}
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def assert_close_to_reference(actual: torch.Tensor, reference: torch.Tensor, limit: Budget, *, what: str = "",
                              norm: str = "l2") -> float:
    """Assert that actual equals reference up to the rounding budget `limit`; returns the error."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    error = relative_error(actual, reference, norm=norm)
    _log(what, error, limit)
    if not error <= limit.value:
        worst = (actual.detach().double().cpu() - reference.detach().double().cpu()).abs()
        index = tuple(int(i) for i in torch.unravel_index(worst.argmax(), worst.shape))
        raise AssertionError(
            f"{what}: {norm}-relative error {error:.3g} exceeds the rounding budget {limit.value:.3g}\n"
            f"  budget: {limit.why}\n  worst element {index}: {float(actual.detach()[index]):.9g} vs "
            f"{float(reference.detach()[index]):.9g} (reference scale {float(reference.detach().abs().max()):.3g})")
    return error


def assert_states_close(actual: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], limit: Budget,
                        *, what: str = "") -> None:
    """Every tensor of two state dicts (same keys) within the budget, each against its own scale."""
    assert actual.keys() == reference.keys(), f"{what}: keys differ"
    for key in reference:
        assert_close_to_reference(actual[key], reference[key], limit, what=f"{what} {key}".strip())


def assert_distinguishable(other: torch.Tensor, reference: torch.Tensor, limit: Budget, *, what: str = "") -> None:
    """The change a test relies on is beyond the budget: if `other` (e.g. the base model's logits)
    were within it of `reference`, a closeness check against `reference` would tell nothing."""
    error = relative_error(other, reference)
    assert error > limit.value, f"{what}: differs by only {error:.3g}, within the budget {limit.value:.3g}"
