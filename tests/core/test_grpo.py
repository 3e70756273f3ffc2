"""GRPO (reinforcement fine-tuning): the loss pieces against a hand computation in float64 and TRL's
GRPOTrainer._compute_loss, and a short run on the tiny model (its mechanics: metrics, samples with
rewards, checkpoint/resume)."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from dora_core.training.grpo import ADVANTAGE_EPS, group_advantages, per_token_loss

BETA = 0.04


def test_advantages_and_loss_equal_a_hand_computation_in_float64():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5], dtype=torch.float64)  # 3 prompts x G = 2
    advantages, std = group_advantages(rewards, 2)
    std_01 = math.sqrt(0.5)  # [1, 0]: mean 0.5, unbiased std sqrt((0.25 + 0.25) / 1)
    expected = [0.5 / (std_01 + ADVANTAGE_EPS), -0.5 / (std_01 + ADVANTAGE_EPS)]
    assert advantages.tolist()[:2] == pytest.approx(expected, rel=1e-15)
    assert advantages.tolist()[4:] == [0.0, 0.0] and std.tolist()[2] == 0.0  # a tied group: no signal

    logps = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.5, -2.0, -0.1], dtype=torch.float64)
    adv = torch.tensor([0.7, 0.7, -1.2], dtype=torch.float64)
    loss, kl = per_token_loss(logps, ref, adv, BETA)
    d = (ref - logps).detach()
    hand_kl = [math.exp(x) - x - 1 for x in d.tolist()]
    assert kl.tolist() == pytest.approx(hand_kl, rel=1e-15)
    hand_loss = [-a + BETA * k for a, k in zip(adv.tolist(), hand_kl, strict=True)]
    assert loss.tolist() == pytest.approx(hand_loss, rel=1e-15)
    loss.sum().backward()
    # d/dlogp: -A + beta * (1 - exp(ref - logp))
    assert logps.grad.tolist() == pytest.approx([-a + BETA * (1 - math.exp(x)) for a, x in
                                                 zip(adv.tolist(), d.tolist(), strict=True)], rel=1e-14)


def test_the_loss_equals_trl_grpo_trainers_dapo_loss():
    """TRL 1.16's GRPOTrainer._compute_loss (loss_type dapo, one iteration) on the same per-token
    log-probabilities, reference and advantages, with its model forward replaced by ours."""
    from trl import GRPOTrainer

    torch.manual_seed(0)
    rows, width = 4, 5
    logits = torch.randn(rows, width, 7, dtype=torch.float64, requires_grad=True)  # (rows, width, vocab): the policy
    logps = torch.log_softmax(logits, dim=-1)[..., 0]  # (rows, width)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float64)
    ref = logps.detach() + 0.1 * torch.randn(rows, width, dtype=torch.float64)
    advantages = torch.tensor([0.5, -0.5, 1.5, -1.5], dtype=torch.float64)
    args = SimpleNamespace(use_bias_correction_kl=False, delta=None)
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=BETA, loss_type="dapo", epsilon_low=0.2, epsilon_high=0.2, args=args,
        use_vllm=False, vllm_importance_sampling_correction=False, model=SimpleNamespace(training=False),
        accelerator=SimpleNamespace(num_processes=1), current_gradient_accumulation_steps=1,
        _metrics={"eval": defaultdict(list)}, _entropy_bonus_enabled=False)
    trainer.accelerator.gather = trainer.accelerator.gather_for_metrics = lambda t: t
    trainer.accelerator.reduce = lambda t, reduction: t
    inputs = {"prompt_ids": torch.zeros(rows, 1, dtype=torch.long), "prompt_mask": torch.ones(rows, 1),
              "completion_ids": torch.zeros(rows, width, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    try:
        theirs = GRPOTrainer._compute_loss(trainer, None, inputs)
    except (AttributeError, KeyError) as missing:  # TRL's bookkeeping after the loss changed
        pytest.skip(f"TRL's _compute_loss needs more of the trainer: {missing}")
    (their_grad,) = torch.autograd.grad(theirs, logits, retain_graph=True)
    trained = mask.bool()
    ours_tokens, _ = per_token_loss(logps[trained], ref[trained], advantages[:, None].expand(rows, width)[trained],
                                    BETA)
    ours = ours_tokens.sum() / mask.sum()  # the run's normalisation: the step's completion tokens
    (our_grad,) = torch.autograd.grad(ours, logits)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-12)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-12, atol=1e-15)
