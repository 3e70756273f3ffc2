"""Two fused passes of the DoRA layer (see dora_math.DoraLinearFunction for the math).

forward epilogue, in place on y = W x (cuBLAS):   y <- g * (y + s * u B^T)
    replaces addmm_ + mul_, i.e. two read-write passes over the (N, out) output, by one; the
    rank-r product u B^T is computed per tile in registers (r is small).
backward prologue:   dz = g * dy   and   S_j = sum_n dy_nj * y_nj   (for the magnitude gradient)
    replaces a multiply, a product and a column sum (three passes) by one read of dy and y.
The column sums are written per row-block and summed afterwards: deterministic, no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N = 64, 64


def _rank_block(rank: int) -> int:
    return max(16, triton.next_power_of_2(rank))  # tl.dot needs K >= 16


@triton.jit
def _epilogue_kernel(y_ptr, u_ptr, b_ptr, gain_ptr, n_rows, n_cols, rank, scale,
                     stride_ym, stride_yn, stride_um, stride_ur, stride_bn, stride_br,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    ranks = tl.arange(0, BLOCK_R)  # (BR,)
    row_ok, col_ok, rank_ok = rows < n_rows, cols < n_cols, ranks < rank
    u = tl.load(u_ptr + rows[:, None] * stride_um + ranks[None, :] * stride_ur,
                mask=row_ok[:, None] & rank_ok[None, :], other=0.0)  # (BM, BR)
    b = tl.load(b_ptr + cols[:, None] * stride_bn + ranks[None, :] * stride_br,
                mask=col_ok[:, None] & rank_ok[None, :], other=0.0)  # (BN, BR)
    adapter = tl.dot(u.to(tl.float32), tl.trans(b.to(tl.float32)), input_precision="ieee")  # (BM, BN)
    tile = y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yn
    tile_ok = row_ok[:, None] & col_ok[None, :]
    base = tl.load(tile, mask=tile_ok, other=0.0).to(tl.float32)  # (BM, BN)
    gain = tl.load(gain_ptr + cols, mask=col_ok, other=0.0)  # (BN,) fp32
    out = gain[None, :] * (base + scale * adapter)
    tl.store(tile, out.to(y_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _backward_kernel(dy_ptr, y_ptr, gain_ptr, dz_ptr, partial_ptr, n_rows, n_cols,
                     stride_m, stride_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    block_m = tl.program_id(0)
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    tile_ok = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    offsets = rows[:, None] * stride_m + cols[None, :] * stride_n
    dy = tl.load(dy_ptr + offsets, mask=tile_ok, other=0.0).to(tl.float32)  # (BM, BN)
    y = tl.load(y_ptr + offsets, mask=tile_ok, other=0.0).to(tl.float32)  # (BM, BN)
    gain = tl.load(gain_ptr + cols, mask=cols < n_cols, other=0.0)  # (BN,)
    tl.store(dz_ptr + offsets, (dy * gain[None, :]).to(dz_ptr.dtype.element_ty), mask=tile_ok)
    tl.store(partial_ptr + block_m * n_cols + cols, tl.sum(dy * y, axis=0), mask=cols < n_cols)


def dora_epilogue_(y: torch.Tensor, u: torch.Tensor, lora_b: torch.Tensor, gain: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """In place: y (N, out) <- gain * (y + scale * u @ lora_b^T); u (N, r), lora_b (out, r), gain (out,) fp32."""
    n_rows, n_cols = y.shape
    grid = (triton.cdiv(n_rows, BLOCK_M), triton.cdiv(n_cols, BLOCK_N))
    _epilogue_kernel[grid](y, u, lora_b, gain.float().contiguous(), n_rows, n_cols, u.shape[1], float(scale),
                           y.stride(0), y.stride(1), u.stride(0), u.stride(1), lora_b.stride(0), lora_b.stride(1),
                           BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_R=_rank_block(u.shape[1]))
    return y


def dora_backward_prologue(dy: torch.Tensor, y: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dz = gain * dy, S = column sums of dy * y in fp32): dy, y (N, out) contiguous, gain (out,)."""
    dy, y = dy.contiguous(), y.contiguous()
    n_rows, n_cols = y.shape
    dz = torch.empty_like(y)
    row_blocks = triton.cdiv(n_rows, BLOCK_M)
    partial = torch.empty((row_blocks, n_cols), dtype=torch.float32, device=y.device)
    _backward_kernel[(row_blocks, triton.cdiv(n_cols, BLOCK_N))](
        dy, y, gain.float().contiguous(), dz, partial, n_rows, n_cols, y.stride(0), y.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    return dz, partial.sum(dim=0)
