"""The DoRA computation: a factored weight norm and a memory-lean autograd function.

DoRA (Liu et al., ICML 2024, arXiv 2402.09353, eq. 5 and sec. 4.3) writes an adapted weight as

    W' = m * (W + s B A) / n,        n = ||W + s B A||_row   (norm over the input dimension)

and, treating n as a constant during backpropagation (sec. 4.3), computes a layer's output as

    y = g * (W x + s B (A x)) + bias,      g = m / n   (one gain per output feature)

With adapter dropout (training only) the dropout acts on the adapter branch's input alone,
x_d = dropout(x), and the gain multiplies the undropped base output (torchtune's DoRALinear):

    y = g * (W x + s B (A x_d)) + bias

See `DoraLinearFunction` for why this, and not PEFT's form, is the one computed here.

Shapes used throughout: x (N, in) tokens flattened, W (out, in) frozen, A (r, in), B (out, r),
m (out,), n (out,), y (N, out).
"""

from __future__ import annotations

import torch

from dora_core.kernels import use_triton

# A row whose norm is below this is treated as having norm EPS: W + sBA = 0 gives g = m / EPS
# with m = 0 (m starts at ||W_row|| = 0), i.e. a zero output instead of 0/0 = NaN.
NORM_EPS = 1e-12


@torch.no_grad()
def squared_row_norms(weight: torch.Tensor) -> torch.Tensor:
    """||W_j||^2 for every output row j, in fp32: (out, in) -> (out,).

    W is frozen, so callers cache this; it is the only term of n that touches all of W.
    """
    return torch.linalg.vector_norm(weight, dim=1, dtype=at_least_fp32(weight.dtype)).square()


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16/fp32, fp64 stays fp64 (gradcheck runs in fp64)."""
    return torch.promote_types(dtype, torch.float32)


def dense_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The frozen weight as a plain tensor in `dtype`, for a matmul.

    A quantized weight (a tensor subclass, e.g. torchao's NF4Tensor) is dequantized here, one
    layer's weight at a time and only for as long as the matmul needs it: the autograd functions
    save the quantized weight, never this dense copy, and dequantize again in backward.
    """
    if type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.dtype == dtype:
        return weight
    return weight.to(dtype)


def draw_dropout_seed() -> int:
    """A seed for one layer's dropout mask, drawn from torch's default (CPU) generator.

    Drawing it from the default generator keeps runs reproducible under `torch.manual_seed`,
    restored by checkpoints (rng.pt) and replayed by gradient checkpointing, which stashes and
    restores the CPU RNG state before recomputing a forward.
    """
    return int(torch.randint(0, 2**62, (1,)).item())


# A mask entry is a 16-bit draw: torch.randint fills int64 words, each viewed as four int16 draws,
# about 7x faster on a CPU than bernoulli_ (what nn.Dropout pays per layer and step). The drop
# probability is p rounded to a multiple of 1/65536 (|error| <= 7.6e-6), and the kept inputs are
# scaled by 1 / (1 - that probability), so the dropped input stays unbiased.
DRAW_LEVELS = 65536


@torch.no_grad()
def dropout_keep_mask(like: torch.Tensor, p: float, seed: int) -> tuple[torch.Tensor, float]:
    """(keep, scale): a bool mask shaped like `like` (True: kept) and 1 / (1 - p), made from `seed`
    alone (its own generator, on `like`'s device), so a run is reproducible under torch's seed."""
    generator = torch.Generator(device=like.device).manual_seed(seed)
    count = like.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, generator=generator,
                          device=like.device)  # (ceil(count / 4),)
    draws = words.view(torch.int16)[:count].view(like.shape)  # uniform over the 65536 int16 values
    dropped_levels = round(p * DRAW_LEVELS)
    keep = draws >= dropped_levels - DRAW_LEVELS // 2  # P(keep) = 1 - dropped_levels / 65536
    return keep, DRAW_LEVELS / (DRAW_LEVELS - dropped_levels)


@torch.no_grad()
def dropout_keep_scale(like: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """mask / (1 - p) in `like`'s dtype: x_d = x * this (for references and tests)."""
    keep, scale = dropout_keep_mask(like, p, seed)
    return keep.to(like.dtype).mul_(scale)


@torch.no_grad()
def factored_row_norm(
    weight: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: float,
    weight_sq_norm: torch.Tensor,
) -> torch.Tensor:
    """n = ||W + s B A||_row without materialising the dense (out, in) matrix W + sBA.

    n_j^2 = ||W_j||^2 + 2 s <W_j, (BA)_j> + s^2 ||(BA)_j||^2, and
      <W_j, (BA)_j> = sum_k B_jk (W A^T)_jk      W A^T: (out, r), one skinny matmul
      ||(BA)_j||^2  = B_j (A A^T) B_j^T           A A^T: (r, r)
    so the cost is O(out * in * r) work and O(out * r) memory. Returns fp32 (out,).
    Rounding can push n_j^2 slightly below zero when W_j + s(BA)_j ~ 0: clamped.
    """
    weight_times_a = weight @ lora_A.to(weight.dtype).T  # (out, r)
    return row_norm_from_products(weight_times_a, lora_A, lora_B, scale, weight_sq_norm)


@torch.no_grad()
def row_norm_from_products(
    weight_times_a: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: float,
    weight_sq_norm: torch.Tensor,
) -> torch.Tensor:
    """factored_row_norm given W A^T (out, r) and ||W||^2 (out,): the two terms that touch W, which
    a quantized weight computes from dequantized row chunks (dora_core.quantization)."""
    exact = at_least_fp32(weight_sq_norm.dtype)
    weight_times_a = weight_times_a.to(exact)  # (out, r)
    a32, b32 = lora_A.to(exact), lora_B.to(exact)  # (r, in), (out, r)
    cross = (b32 * weight_times_a).sum(dim=1)  # (out,)
    adapter_sq = ((b32 @ (a32 @ a32.T)) * b32).sum(dim=1)  # (out,)
    squared = weight_sq_norm + (2.0 * scale) * cross + (scale * scale) * adapter_sq
    return squared.clamp_min(0.0).sqrt()


@torch.no_grad()
def dense_adapted_weight(
    weight: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: float,
    magnitude: torch.Tensor | None,
) -> torch.Tensor:
    """W' in at least fp32, (out, in): W + sBA for LoRA, m * (W + sBA) / n for DoRA. Merge only.
    (fp32 for bf16/fp32 weights, float64 kept for a float64 model.)"""
    exact = at_least_fp32(weight.dtype)
    dense = weight.to(exact) + scale * (lora_B.to(exact) @ lora_A.to(exact))  # (out, in)
    if magnitude is None:
        return dense
    norm = torch.linalg.vector_norm(dense, dim=1).clamp_min(NORM_EPS)  # (out,)
    return dense * (magnitude.to(exact) / norm).unsqueeze(1)


class DoraLinearFunction(torch.autograd.Function):
    """y = g * (W x + s B (A x)) [+ bias] with g = m / n and n detached.

    Why a custom function: plain autograd would keep, per layer, x, A x, the unscaled sum
    z = W x + s B A x and g, plus temporaries, i.e. one (N, out) tensor more than LoRA and
    fp32 copies when the adapter is fp32. Here the forward keeps only what LoRA keeps
    (x and u = A x) and the layer's output y, which downstream ops of a Llama (v, gate, up
    projections) save anyway, so it often costs nothing extra.

    Backward (n is a constant, g = m / n, z = W x + s B u, u = A x, upstream gradient dy):
        dz = g * dy                                    (N, out)
        dx = dz W + s (dz B) A                         (N, in)
        dB = s dz^T u                                  (out, r)
        dA = s (dz B)^T x                              (r, in)
        dm_j = sum_N dy_j z_j / n_j = sum_N dy_j y_j / (g_j n_j)
    The last line recovers z from the saved output: z = y / g, exact up to rounding in the
    activation dtype. A row with g_j = 0 (m_j = 0, e.g. a zero row of W at init) has z_j
    unrecoverable from y; its B row then receives zero gradient too (dB_j = s g_j ...), so
    z_j = W_j x stays 0 for a zero row and dm_j = 0 is the exact value. When the layer has a
    bias we save the pre-bias output instead (recovering it by subtraction would cancel).

    Dropout (p > 0, training) follows torchtune's semantics, y = g * (W x + s B A x_d) with
    x_d = dropout(x) feeding the adapter branch only. PEFT and the paper's code instead apply
    the DoRA correction to the dropped input, y = W x + (g - 1) W x_d + g s B A x_d, which
    needs a second full GEMM W x_d per layer, and its output no longer determines z, so the
    magnitude's gradient needs more saved tensors (PEFT pays 1.5x LoRA's step time and bytes
    for it at p = 0.05). Here the output is still y = g z: the backward above holds as it is,
    with u = A x_d and dA = s (dz B)^T x_d, and dx gains the mask on its adapter term,
        dx = dz W + keep * (s (dz B) A),      keep = mask / (1 - p)   (N, in).
    What is saved beyond p = 0 is the mask alone, one byte per input element (a quarter of an
    fp32 x; PEFT keeps the dropped copy of x as well). x_d is made again from x and the mask,
    and 1 / (1 - p) is applied to the small (N, r) and (r, in) products, not to (N, in) tensors.
    The mask comes from a seed drawn from torch's generator (see `dropout_keep_mask`). The two
    forms agree at p = 0 and in eval mode (no dropout), i.e. at inference and in the merged model.

    All matmuls run in the activation dtype (bf16 on a GPU); parameters stay fp32 and their
    gradients are returned in fp32. On CUDA the two elementwise stages (the forward epilogue
    g * (W x + s B u) and the backward's g * dy with the column sums for dm) run as fused
    Triton kernels (dora_core/kernels), one pass over (N, out) each instead of two or three.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, magnitude, norm, scale, dropout_p=0.0, dropout_seed=0):
        act_dtype = x.dtype
        fused = use_triton(x)
        weight_act = dense_weight(weight, act_dtype)  # (out, in); transient for a quantized weight
        exact = at_least_fp32(magnitude.dtype)
        gain = magnitude.detach().to(exact) / norm.to(exact).clamp_min(NORM_EPS)  # (out,) fp32
        # the gain actually applied: fp32 inside the fused kernel, activation dtype otherwise
        gain_used = gain if fused else gain.to(act_dtype)  # (out,)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        u, keep, ctx.keep_scale = _adapter_input_times_a(x2, lora_A.to(act_dtype), dropout_p, dropout_seed)  # A x_d
        y = x2 @ weight_act.T  # (N, out)   W x
        if fused:
            from dora_core.kernels.dora_epilogue import dora_epilogue_

            dora_epilogue_(y, u, lora_B.to(act_dtype), gain, scale)  # (N, out)   g * (W x + s B u), one pass
        else:
            y.addmm_(u, lora_B.to(act_dtype).T, alpha=scale)  # (N, out)   z = W x + s B u
            y.mul_(gain_used)  # (N, out)   g * z, in place: no second (N, out) buffer
        out = y if bias is None else y + bias.to(act_dtype)
        # z = y / gain_used, and dm = sum dy * z / n, so one (out,) factor 1 / (gain_used * n):
        inv_gain_norm = torch.where(
            gain_used != 0, 1.0 / (gain_used.to(exact) * norm.to(exact).clamp_min(NORM_EPS)), torch.zeros_like(gain)
        )  # (out,) fp32
        ctx.save_for_backward(x, u, y, weight, lora_A, lora_B, gain_used, inv_gain_norm, keep)
        ctx.scale = scale
        ctx.fused = fused
        ctx.magnitude_dtype = magnitude.dtype
        ctx.bias_needs_grad = bias is not None and bias.requires_grad
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_output):
        x, u, y, weight, lora_A, lora_B, gain_used, inv_gain_norm, keep = ctx.saved_tensors
        scale = ctx.scale
        act_dtype = y.dtype
        dy = grad_output.reshape(-1, grad_output.shape[-1]).to(act_dtype)  # (N, out)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        a_act, b_act = lora_A.to(act_dtype), lora_B.to(act_dtype)  # (r, in), (out, r)
        if ctx.fused:
            from dora_core.kernels.dora_epilogue import dora_backward_prologue

            dz, dy_dot_y = dora_backward_prologue(dy, y, gain_used)  # (N, out), (out,)
        else:
            dz = dy * gain_used  # (N, out)
            dy_dot_y = _columnwise_dot(dy, y) if ctx.needs_input_grad[5] else None  # (out,)
        dz_b = dz @ b_act  # (N, r)
        keep = keep if keep.numel() else None  # (N, in) bool, or None without dropout

        grad_x = grad_a = grad_b = grad_m = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(dz, dz_b, weight, a_act, scale, keep, ctx.keep_scale).view(x.shape)  # (N, in)
        if ctx.needs_input_grad[3]:
            grad_a = _a_grad(dz_b, x2, keep, scale * ctx.keep_scale).to(lora_A.dtype)  # (r, in)
        if ctx.needs_input_grad[4]:
            grad_b = (dz.T @ u).to(lora_B.dtype).mul_(scale)  # (out, r)
        if ctx.needs_input_grad[5]:
            grad_m = (dy_dot_y * inv_gain_norm).to(ctx.magnitude_dtype)  # (out,)
        if ctx.bias_needs_grad:
            grad_bias = dy.sum(dim=0, dtype=at_least_fp32(dy.dtype)).to(ctx.bias_dtype)
        return grad_x, None, grad_bias, grad_a, grad_b, grad_m, None, None, None, None


def _adapter_input_times_a(x2, a_act, dropout_p: float, seed: int):
    """(u = A x_d, keep, 1 / (1 - p)): x_d = x * keep / (1 - p), the 1 / (1 - p) applied to the
    (N, r) product rather than to the (N, in) input. keep is the bool mask (an empty tensor without
    dropout: save_for_backward takes tensors only), kept for backward at one byte per input element."""
    if dropout_p == 0.0:
        return x2 @ a_act.T, x2.new_empty(0, dtype=torch.bool), 1.0
    keep, keep_scale = dropout_keep_mask(x2, dropout_p, seed)  # (N, in) bool
    return ((x2 * keep) @ a_act.T).mul_(keep_scale), keep, keep_scale  # (N, r)


def _input_grad(dz, dz_b, weight, a_act, scale, keep, keep_scale):
    """dx = dz W + s (dz B) A, the adapter term masked like the forward's x_d: (N, in)."""
    act_dtype = dz.dtype
    weight_act = dense_weight(weight, act_dtype)  # (out, in)
    grad_x = dz @ weight_act  # (N, in)
    if keep is None:
        return grad_x.addmm_(dz_b, a_act, alpha=scale)
    return grad_x.add_((dz_b @ a_act).mul_(keep), alpha=scale * keep_scale)


def _a_grad(dz_b, x2, keep, factor: float):
    """dA = factor (dz B)^T x_d, with x_d's mask applied to x again (never saved): (r, in)."""
    dropped = x2 if keep is None else x2 * keep  # (N, in)
    return (dz_b.T @ dropped).mul_(factor)


def _columnwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over rows of a * b, accumulated in fp32: (N, out), (N, out) -> (out,).

    The product stays in the activation dtype (one (N, out) temporary, not two fp32 copies).
    """
    return (a * b).sum(dim=0, dtype=at_least_fp32(a.dtype))


def dora_linear(x, weight, bias, lora_A, lora_B, magnitude, norm, scale, dropout_p=0.0, dropout_seed=0):
    """Functional entry point for the lean DoRA layer; dropout_p > 0 drops the adapter input
    with the mask that `dropout_seed` generates (see DoraLinearFunction)."""
    return DoraLinearFunction.apply(x, weight, bias, lora_A, lora_B, magnitude, norm, scale, float(dropout_p),
                                    int(dropout_seed))


class LoraLinearFunction(torch.autograd.Function):
    """y = W x + s B (A x) [+ bias]: LoRA with fp32 adapter masters and no saved casts.

    Plain autograd on `F.linear(x, A.to(bf16))` would save the bf16 copies of A and B per
    layer; here only x and u = A x are saved and the casts are redone in backward.
    Backward: dx = dy W + s (dy B) A,  dB = s dy^T u,  dA = s (dy B)^T x.
    With dropout, y = W x + s B A x_d (PEFT's LoRA exactly); only the one-byte mask is saved
    beyond p = 0, and x_d is made again from x in backward, as in DoraLinearFunction.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scale, dropout_p=0.0, dropout_seed=0):
        act_dtype = x.dtype
        weight_act = dense_weight(weight, act_dtype)  # (out, in)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        u, keep, ctx.keep_scale = _adapter_input_times_a(x2, lora_A.to(act_dtype), dropout_p, dropout_seed)  # A x_d
        y = x2 @ weight_act.T  # (N, out)
        y.addmm_(u, lora_B.to(act_dtype).T, alpha=scale)
        if bias is not None:
            y.add_(bias.to(act_dtype))
        ctx.save_for_backward(x, u, weight, lora_A, lora_B, keep)
        ctx.scale = scale
        ctx.bias_needs_grad = bias is not None and bias.requires_grad
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_output):
        x, u, weight, lora_A, lora_B, keep = ctx.saved_tensors
        scale, act_dtype = ctx.scale, x.dtype
        dy = grad_output.reshape(-1, grad_output.shape[-1]).to(act_dtype)  # (N, out)
        dy_b = dy @ lora_B.to(act_dtype)  # (N, r)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        keep = keep if keep.numel() else None  # (N, in) bool, or None without dropout
        grad_x = grad_a = grad_b = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(dy, dy_b, weight, lora_A.to(act_dtype), scale, keep,
                                 ctx.keep_scale).view(x.shape)  # (N, in)
        if ctx.needs_input_grad[3]:
            grad_a = _a_grad(dy_b, x2, keep, scale * ctx.keep_scale).to(lora_A.dtype)  # (r, in)
        if ctx.needs_input_grad[4]:
            grad_b = (dy.T @ u).to(lora_B.dtype).mul_(scale)  # (out, r)
        if ctx.bias_needs_grad:
            grad_bias = dy.sum(dim=0, dtype=at_least_fp32(dy.dtype)).to(ctx.bias_dtype)
        return grad_x, None, grad_bias, grad_a, grad_b, None, None, None


def lora_linear(x, weight, bias, lora_A, lora_B, scale, dropout_p=0.0, dropout_seed=0):
    """Functional entry point for the lean LoRA layer (dropout as in dora_linear)."""
    return LoraLinearFunction.apply(x, weight, bias, lora_A, lora_B, scale, float(dropout_p), int(dropout_seed))
