"""Cross-entropy through a frozen output head without materialising the logits.

A 128k-token vocabulary makes the logits the largest tensor of a step: for 4 x 1024 tokens,
(4096, 128256) in fp32 is 2 GiB, plus softmax and gradient buffers of the same size. Here the
head's matmul and the loss run chunk by chunk of tokens: each chunk's logits exist only while
that chunk is processed. Because the loss is a scalar, its gradient with respect to the hidden
states can be computed in the forward pass (d loss / d h_t = (softmax(l_t) - onehot(y_t)) W for
token t) and saved instead of the logits; backward only scales it by the incoming gradient.

Saved for backward: grad_hidden (tokens, d) in the activation dtype, instead of the
(tokens, vocab) fp32 logits and the log-softmax output. The head weight must be frozen (it is
for DoRA/LoRA: "all-linear" excludes the output head).
"""

from __future__ import annotations

import torch

# tokens per chunk; written in the torch-free memory planner, which counts the chunk's logits
from dora_contract.memory_plan import LOSS_CHUNK_TOKENS as DEFAULT_CHUNK_TOKENS


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """(sum over tokens of CE(h W^T, y), number of argmax hits) for hidden h (T, d), W (V, d)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens):
        needs_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty_like(hidden) if needs_grad else None  # (T, d)
        loss = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
        weight_act = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        exact = torch.promote_types(hidden.dtype, torch.float32)  # fp32 logits, fp64 stays fp64
        for start in range(0, hidden.shape[0], chunk_tokens):
            chunk = slice(start, start + chunk_tokens)
            logits = (hidden[chunk] @ weight_act.T).to(exact)  # (c, V) fp32
            target = targets[chunk]  # (c,)
            log_normaliser = torch.logsumexp(logits, dim=-1)  # (c,)
            target_logit = logits.gather(1, target[:, None]).squeeze(1)  # (c,)
            loss += (log_normaliser - target_logit).sum()
            correct += (logits.argmax(dim=-1) == target).sum()
            if needs_grad:
                probabilities = logits.sub_(log_normaliser[:, None]).exp_()  # softmax, in place: (c, V)
                probabilities[torch.arange(target.numel(), device=target.device), target] -= 1.0
                grad_hidden[chunk] = probabilities.to(hidden.dtype) @ weight_act  # (c, d)
        if needs_grad:
            ctx.save_for_backward(grad_hidden)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE loss (fp32 scalar, differentiable w.r.t. hidden) and argmax hit count.

    hidden (T, d), weight (V, d) frozen, targets (T,) with no ignored entries.
    """
    if weight.requires_grad:
        raise ValueError("chunked cross-entropy needs a frozen output head (its weight gradient is not computed)")
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens)
