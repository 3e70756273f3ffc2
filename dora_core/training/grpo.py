"""GRPO (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300): sample, grade, group-relative policy gradient.

For each prompt of a step, G = samples_per_prompt answers are sampled from the model being
trained, by the serving engine's batched decoding (dora_core/serving/engine.py) run in this thread
on the training model itself (`Engine(model, tokenizer, None).generate`: no slots, its AdapterLinear
or NF4AdapterLinear layers are the policy), so no weight is copied, no second model is kept, and
the sampled policy is exactly the one differentiated. Temperature 1, no top-k/top-p, one seed per
answer drawn from the run's CPU generator (checkpointed: a resumed step samples the same answers);
eval mode under no_grad, the model's own mode back after. Each answer is graded
(dora_graders.grade), and its advantage is group-relative, as TRL's GRPOTrainer (scale_rewards="group"):

    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)        std unbiased, as TRL's nanstd

One update per batch of samples (TRL's num_iterations = 1), so the importance ratio
pi / pi_old is exp(logp - logp.detach()) = 1 with gradient grad logp, and its clipping never
binds. Per completion token t of answer i:

    loss_it = -exp(logp_it - sg(logp_it)) * A_i + beta * (exp(ref_it - logp_it) - (ref_it - logp_it) - 1)

(the KL is Schulman's k3 estimator, DeepSeekMath's eq. 4; ref = the model as the run started:
its adapter off, or a continued run's starting adapter, dora_core/reference.py, without
gradients). The step's loss is the sum over every completion token of the step divided by their
count: TRL's "dapo" loss type (its default in TRL 1.16), a token-level mean over the whole batch,
so a long answer is not down-weighted as "grpo"'s per-sequence mean would. A completion ends at
its first stop token, which is trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dora_contract import RFT_METRICS
from dora_contract.reinforcement import SAMPLING_TEMPERATURE
from dora_core.data.collator import DataCollator
from dora_core.data.errors import DataError
from dora_core.reference import reference_policy
from dora_core.serving import Completion, Engine, GenerationParams, UnsupportedModelError
from dora_core.training.errors import TrainingError
from dora_core.training.loss import IGNORE_INDEX, model_inputs
from dora_core.training.samples import clip_end, clip_start
from dora_graders import GraderSpecError, GradingContext, ItemError, grade

ADVANTAGE_EPS = 1e-4  # TRL's: (r - mean) / (std + 1e-4)
SEED_BOUND = 2**63 - 1  # an answer's seed is drawn from [0, SEED_BOUND): what torch.randint's int64 holds


@dataclass
class Rollout:
    """One sampled answer to one prompt, graded."""

    prompt_ids: list[int]
    completion_ids: list[int]  # up to and including its first stop token
    text: str  # decoded without special tokens, what the grader reads as sample.output_text
    reward: float
    advantage: float = 0.0


def group_advantages(rewards: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (prompts * group,), a prompt's samples adjacent -> (advantages (same), per-group std (prompts,))."""
    grouped = rewards.view(-1, group)  # (prompts, group)
    mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True)  # std unbiased, as TRL
    return ((grouped - mean) / (std + ADVANTAGE_EPS)).reshape(-1), std.squeeze(1)


def per_token_loss(logps: torch.Tensor, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
                   beta: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss per token, kl per token or None): every argument (tokens,); advantages per token (its answer's)."""
    loss = -torch.exp(logps - logps.detach()) * advantages
    if ref_logps is None or beta == 0:
        return loss, None
    delta = ref_logps - logps
    kl = torch.exp(delta) - delta - 1
    return loss + beta * kl, kl


def sample_answers(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, count: int,
                   max_new_tokens: int, max_seq_len: int, greedy: bool = False) -> list[Completion]:
    """`count` answers per prompt (adjacent) from the serving engine on the training model itself,
    each with its ids up to and including its first stop token (dora_core.stop_tokens) and its text,
    prompt + answer within max_seq_len. Sampling at temperature 1 with no top-k/top-p, each answer
    seeded from the run's CPU generator, so a resumed step samples the same answers; greedy=True
    takes the argmax (count 1)."""
    requests = [list(prompt) for prompt in prompts for _ in range(count)]
    if greedy:
        params = [GenerationParams(max_tokens=max_new_tokens, temperature=0.0)] * len(requests)
    else:
        seeds = torch.randint(SEED_BOUND, (len(requests),)).tolist()  # the default (checkpointed) CPU generator
        params = [GenerationParams(max_tokens=max_new_tokens, temperature=SAMPLING_TEMPERATURE, top_p=1.0, seed=seed)
                  for seed in seeds]
    try:
        engine = Engine(model, tokenizer, None, max_batch=len(requests), max_seq_len=max_seq_len)
    except UnsupportedModelError as error:
        raise TrainingError(f"reinforcement fine-tuning samples with the serving engine, which cannot run "
                            f"this model: {error}") from None
    return engine.generate(requests, params)


class GroupSampler:
    """Samples, grades and scores the groups of one run (its grader, tokenizer and settings)."""

    def __init__(self, settings: Any, tokenizer: Any, context: GradingContext, *, max_seq_len: int) -> None:
        self.settings, self.tokenizer, self.context = settings, tokenizer, context
        self.group, self.max_seq_len = settings.samples_per_prompt, max_seq_len

    def answer_budget(self, prompts: Sequence[Sequence[int]]) -> int:
        """New tokens a batch may sample: max_completion_tokens, and within max_seq_len with its longest prompt
        (what the memory plan assumes; a prompts row is shorter than max_seq_len, data/prompts.py)."""
        return max(1, min(self.settings.max_completion_tokens, self.max_seq_len - max(len(p) for p in prompts)))

    def reward(self, text: str, example: Any) -> float:
        try:
            return grade(self.settings.grader, output_text=text, item=example.item, context=self.context).reward
        except ItemError as error:
            raise DataError(f"line {example.line}: {error.message}", field="train_file") from None
        except GraderSpecError as error:  # e.g. python where this process lends no sandbox
            raise TrainingError(f"the grader cannot run here: {error.field}: {error.message}") from None

    def rollouts(self, model: Any, items: Sequence[Mapping[str, Any]], examples: Sequence[Any]) -> list[Rollout]:
        """G graded answers per item (adjacent), their group-relative advantages set."""
        prompts = [item["input_ids"] for item in items]
        answers = sample_answers(model, self.tokenizer, prompts, count=self.group,
                                 max_new_tokens=self.answer_budget(prompts), max_seq_len=self.max_seq_len)
        rollouts = []
        for index, answer in enumerate(answers):
            item = items[index // self.group]
            rollouts.append(Rollout(list(item["input_ids"]), list(answer.token_ids), answer.text,
                                    self.reward(answer.text, examples[item["row"]])))
        advantages, _ = group_advantages(torch.tensor([r.reward for r in rollouts], dtype=torch.float64), self.group)
        for rollout, advantage in zip(rollouts, advantages.tolist(), strict=True):
            rollout.advantage = advantage
        return rollouts


@dataclass
class GrpoSums:
    loss_sum: torch.Tensor  # () >= fp32, differentiable: the sum of loss_it over the micro-batch's completion tokens
    tokens: int
    kl_sum: float  # sum of kl_it (detached); 0 when beta is 0


def rollout_batch(rollouts: Sequence[Rollout], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Prompt + answer rows right-padded: `input_ids`, `labels` (-100 but on the answer), `attention_mask`,
    `advantages` (rows,)."""
    rows = [{"input_ids": r.prompt_ids + r.completion_ids,
             "labels": [IGNORE_INDEX] * len(r.prompt_ids) + r.completion_ids} for r in rollouts]
    batch = DataCollator(pad_token_id)(rows)
    batch["advantages"] = torch.tensor([r.advantage for r in rollouts], dtype=torch.float32)
    return batch


def token_logprobs(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities of the answer tokens (tokens,) >= fp32, their row (tokens,))."""
    inputs = model_inputs({k: v for k, v in batch.items() if k != "advantages"})
    logits = model(**inputs).logits  # (rows, seq, vocab)
    labels = batch["labels"][:, 1:]  # (rows, seq - 1)
    trained = labels != IGNORE_INDEX
    selected = logits[:, :-1][trained]  # (tokens, vocab)
    selected = selected.to(torch.promote_types(selected.dtype, torch.float32))
    logps = selected.log_softmax(dim=-1).gather(1, labels[trained][:, None]).squeeze(1)  # (tokens,)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[trained]  # (tokens,)
    return logps, rows


def grpo_sums(model: Any, batch: Mapping[str, torch.Tensor], *, beta: float) -> GrpoSums:
    """The summed GRPO loss of one micro-batch of rollouts (see the module's docstring)."""
    ref = None
    if beta:
        with torch.no_grad(), reference_policy(model):
            ref, _ = token_logprobs(model, batch)
    logps, rows = token_logprobs(model, batch)
    advantages = batch["advantages"].to(logps.device, logps.dtype)[rows]  # (tokens,)
    loss, kl = per_token_loss(logps, None if ref is None else ref.to(logps.dtype), advantages, beta)
    return GrpoSums(loss_sum=loss.sum(), tokens=int(logps.numel()),
                    kl_sum=0.0 if kl is None else float(kl.detach().sum()))


def step_metrics(rollouts: Sequence[Rollout], group: int, *, kl_sum: float, tokens: int) -> dict[str, float]:
    """RFT_METRICS of one step: mean reward, mean of the groups' reward std, mean KL per token, mean length."""
    rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float64)
    _, std = group_advantages(rewards, group)
    values = (float(rewards.mean()), float(std.mean()), kl_sum / max(tokens, 1), tokens / max(len(rollouts), 1))
    return dict(zip(RFT_METRICS, values, strict=True))


@torch.no_grad()
def validation_rewards(model: Any, sampler: GroupSampler, items: Sequence[Mapping[str, Any]],
                       examples: Sequence[Any], *, step: int, batch_size: int,
                       sample_count: int) -> tuple[float, list[dict]]:
    """(mean reward of one greedy answer per validation item, the first `sample_count` as samples).

    Greedy, so that the same prompts give comparable answers from one evaluation to the next; a
    sample's `expected` says its reward ("reward 0.75") where the samples page shows it."""
    rewards, samples = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        prompts = [item["input_ids"] for item in chunk]
        answers = sample_answers(model, sampler.tokenizer, prompts, count=1,
                                 max_new_tokens=sampler.answer_budget(prompts), max_seq_len=sampler.max_seq_len,
                                 greedy=True)
        for item, answer in zip(chunk, answers, strict=True):
            example = examples[item["row"]]
            text = answer.text
            reward = sampler.reward(text, example)
            if len(samples) < sample_count:
                prompt = sampler.tokenizer.decode(item["input_ids"], skip_special_tokens=False)
                samples.append({"step": step, "index": len(samples), "line": example.line,
                                "prompt": clip_end(prompt), "expected": f"reward {reward:.4g}",
                                "answer": clip_start(text)})
            rewards.append(reward)
    return sum(rewards) / max(len(rewards), 1), samples
