"""GRPO (reinforcement fine-tuning): the loss pieces against a hand computation in float64 and TRL's
GRPOTrainer._compute_loss, and a short run on the tiny model (its mechanics: metrics, samples with
rewards, checkpoint/resume)."""

from __future__ import annotations

import json
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


def _prompt_rows(count: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"say something {i}"}], "target": "e"} for i in range(count)]


def _rft_config(model_dir, train_file, *, steps: int, **training):
    from dora_core.training import RunConfig

    defaults = {"max_steps": steps, "micro_batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 2e-2,
                "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_seq_len": 64, "checkpoint_interval": 2,
                "validation_split": 0.25, "eval_interval": steps, "sample_prompts": 2}
    grader = {"type": "string_check", "name": "has_e", "input": "{{sample.output_text}}",
              "reference": "{{item.target}}", "operation": "like"}
    return RunConfig.from_dict({"base_model": str(model_dir), "train_file": str(train_file), "outputs": ["adapter"],
                                "reinforcement": {"grader": grader, "samples_per_prompt": 4,
                                                  "max_completion_tokens": 4, "eval_samples": 2},
                                "adapter": {"method": "dora", "rank": 4, "alpha": 8},
                                "training": defaults | training})


def test_a_short_run_reports_rewards_keeps_one_base_copy_and_resumes(tiny_model_dir, tmp_path):
    """Mechanics on the tiny model: each step's reward metrics (KL 0 at step 1: adapter off = on at
    init), eval_reward before and after with samples carrying their rewards, one storage per 2-D base
    weight while sampling and training, and a run stopped at step 3 and resumed from its step-2
    checkpoint ending with the same adapter (sampling draws from the checkpointed generators)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from dora_contract import RFT_METRICS
    from dora_core.training import run_training
    from tests.core.test_dpo import BaseWeightCopies, StopAt
    from tests.support.training_helpers import write_jsonl

    train = write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(8))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    shapes = {tuple(p.shape) for p in base.parameters() if p.ndim == 2}
    base_storages = len({p.untyped_storage().data_ptr() for p in base.parameters() if p.ndim == 2})
    del base
    copies = BaseWeightCopies(shapes)
    config = _rft_config(tiny_model_dir, train, steps=4)
    straight = run_training(config, tmp_path / "straight", callbacks=[copies], resume=False)
    assert straight.status == "completed" and straight.step == 4
    assert copies.counts and set(copies.counts) == {base_storages}, (copies.counts, base_storages)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(set(RFT_METRICS) <= set(r) for r in steps)
    assert steps[0]["kl"] == 0.0 and all(0.0 <= r["reward"] <= 1.0 for r in steps)
    assert [r["step"] for r in records if "eval_reward" in r] == [0, 4]
    samples = [json.loads(line) for line in (tmp_path / "straight" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {0, 4} and all(s["expected"].startswith("reward ") for s in samples)

    stopped = run_training(config, tmp_path / "resumed", callbacks=[StopAt(3)], resume=False)
    assert stopped.status == "stopped"
    resumed = run_training(config, tmp_path / "resumed")
    assert resumed.resumed_from_step == 2 and resumed.step == 4
    again = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again if "eval_reward" in r] == [0, 4]  # step 0's once, kept across the resume
    run_training(config, tmp_path / "resumed", callbacks=[StopAt(1)], resume=False)  # over again in that folder
    over = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in over if "eval_reward" in r] == [0]  # not a second step-0 record
    one, two = (load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors"))
                for name in ("straight", "resumed"))
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=0, atol=0)  # same ops, same order on one CPU


def test_an_nf4_base_trains_a_step(tiny_model_dir, tmp_path):
    """QDoRA reinforcement: the engine samples on the NF4AdapterLinear layers themselves, the step trains
    the adapter (B leaves zero)."""
    from safetensors.torch import load_file

    from dora_core.training import run_training
    from tests.support.training_helpers import write_jsonl

    train = write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(4))
    config = _rft_config(tiny_model_dir, train, steps=1, quantization="nf4", validation_split=0.0)
    result = run_training(config, tmp_path / "out", resume=False, device="cpu")
    assert result.status == "completed" and result.step == 1
    step = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()][-1]
    assert step["step"] == 1 and step["completions/mean_length"] > 0 and 0.0 <= step["reward"] <= 1.0
    trained = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    assert any(name.endswith("lora_B.weight") and tensor.abs().max() > 0 for name, tensor in trained.items())


def test_the_docs_example_is_a_valid_reinforcement_config_and_prompts_row(tmp_path):
    """docs/training.md's example: its row validates as a prompts row the grader can read, its config
    as a reinforcement run with the documented defaults."""
    from dora_contract import DEFAULT_GRPO_BETA
    from dora_core.training import RunConfig
    from dora_formats import PROMPTS, read_jsonl_examples
    from dora_graders import check_item
    from tests.support.doc_blocks import DOCS, fenced_blocks, page_section

    blocks = dict(fenced_blocks(page_section(DOCS / "training.md", "## Reinforcement fine-tuning (GRPO)")))
    (tmp_path / "prompts.jsonl").write_text(blocks["json"])
    examples, result = read_jsonl_examples(tmp_path / "prompts.jsonl")
    assert result.is_valid and result.format == PROMPTS and result.rows == 1
    (tmp_path / "run.yaml").write_text(blocks["yaml"])
    config = RunConfig.from_file(tmp_path / "run.yaml")
    assert config.reinforcement.beta == DEFAULT_GRPO_BETA and config.reinforcement.samples_per_prompt == 4
    check_item(config.reinforcement.grader, examples[0].item)  # the row has what the grader reads


def test_prompts_rows_are_their_own_format_and_each_objective_refuses_the_others_files(tiny_tokenizer, tmp_path):
    """A `messages` row ending before the answer is a prompts row (the whole row its grader item); its prompt
    is rendered with the generation prompt; an SFT run refuses a prompts file and a reinforcement run a chat file."""
    from dora_core.data import DataError, prepare_datasets
    from dora_formats import CHAT, PROMPTS, validate_jsonl
    from tests.support.training_helpers import write_jsonl

    prompts = write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(3) + [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "target": "x"}])
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Hello"}]}])
    assert validate_jsonl(prompts).format == PROMPTS and validate_jsonl(chat).format == CHAT
    data = prepare_datasets(prompts, tiny_tokenizer, max_seq_len=64, reinforcement=True)
    assert len(data.train) == 4 and data.train_examples[3].item["target"] == "x"
    rendered = tiny_tokenizer.decode(data.train[0]["input_ids"])
    assert rendered.endswith("say something 0<|end|>\n<|assistant|>\n"), rendered  # the generation prompt
    with pytest.raises(DataError) as sft:
        prepare_datasets(prompts, tiny_tokenizer, max_seq_len=64)
    assert sft.value.field == "train_file" and "only reinforcement fine-tuning" in str(sft.value)
    with pytest.raises(DataError) as rft:
        prepare_datasets(chat, tiny_tokenizer, max_seq_len=64, reinforcement=True)
    assert rft.value.field == "train_file" and "trains on prompts rows" in str(rft.value)


def test_a_python_grader_rewards_through_the_sandbox_the_worker_lends(tiny_tokenizer):
    """The worker lends a PythonSandbox where DORA_PYTHON_GRADER_ENABLED; without one a python grader is a
    TrainingError saying why (the API refuses such a job where it is disabled)."""
    from dora_contract import ReinforcementSettings
    from dora_core.training.errors import TrainingError
    from dora_core.training.grpo import GroupSampler
    from dora_formats import Example
    from dora_graders import GradingContext, PythonSandbox

    source = "def grade(sample, item):\n    return 1.0 if item['target'] in sample['output_text'] else 0.0"
    settings = ReinforcementSettings.from_data({"grader": {"type": "python", "name": "p", "source": source}})
    example = Example(line=1, format="prompts", segments=(), item={"target": "e"})
    sampler = GroupSampler(settings, tiny_tokenizer, GradingContext(python=PythonSandbox()), max_seq_len=64)
    assert (sampler.reward("hello", example), sampler.reward("xyz", example)) == (1.0, 0.0)
    bare = GroupSampler(settings, tiny_tokenizer, GradingContext(), max_seq_len=64)
    with pytest.raises(TrainingError, match="python"):
        bare.reward("hello", example)


def test_the_reward_goes_up_on_a_learnable_task(tiny_model_dir, tmp_path):
    """The tiny random model rewarded for an "e" anywhere in a 4-token answer (string_check like): over 12
    steps of 4 prompts x 8 samples the sampled reward's mean rises (0.46 over steps 1-4 -> 0.95 over
    9-12 here) and the greedy validation reward goes from 0.25 to 1.00 (seeded: the same numbers each run
    on one torch build; the margins asserted are looser)."""
    from dora_core.training import RunConfig, run_training
    from tests.support.training_helpers import write_jsonl

    train = write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(16))
    grader = {"type": "string_check", "name": "e", "input": "{{sample.output_text}}", "reference": "{{item.target}}",
              "operation": "like"}
    config = RunConfig.from_dict({
        "base_model": str(tiny_model_dir), "train_file": str(train), "outputs": ["adapter"],
        "reinforcement": {"grader": grader, "samples_per_prompt": 8, "max_completion_tokens": 4, "beta": 0.04,
                          "eval_samples": 4},
        "adapter": {"method": "dora", "rank": 4, "alpha": 8},
        "training": {"max_steps": 12, "micro_batch_size": 4, "learning_rate": 5e-2, "warmup_ratio": 0.0,
                     "lr_scheduler": "constant", "max_seq_len": 64, "validation_split": 0.25, "eval_interval": 12,
                     "checkpoint_interval": 12, "sample_prompts": 2}})
    assert run_training(config, tmp_path / "out", resume=False).status == "completed"
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records if "reward" in r]
    assert len(rewards) == 12 and sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.05, rewards
    evaluations = [r["eval_reward"] for r in records if "eval_reward" in r]
    assert evaluations[-1] > evaluations[0], evaluations


def test_a_continued_runs_kl_is_to_the_adapter_it_started_from(tiny_model_dir, tmp_path, monkeypatch):
    """A reinforcement run continued from a trained adapter measures its KL to that adapter: 0 at step 1
    (policy = reference, the same forward twice), where the adapter-off base gives > 0."""
    from dora_core.training import run as run_module
    from dora_core.training import run_training
    from tests.support.training_helpers import dataset_rows, run_config, write_jsonl

    chat = write_jsonl(tmp_path / "chat.jsonl", dataset_rows("chat"))
    assert run_training(run_config(tiny_model_dir, chat, max_steps=3, learning_rate=5e-2),
                        tmp_path / "parent", device="cpu").status == "completed"
    train = write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(8))
    config = _rft_config(tiny_model_dir, train, steps=1, gradient_accumulation_steps=1, validation_split=0.0)
    continued = config.with_changes(init_adapter=str(tmp_path / "parent" / "adapter"))

    def first_kl(name: str) -> float:
        assert run_training(continued, tmp_path / name, device="cpu", resume=False).status == "completed"
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return next(r["kl"] for r in records if "kl" in r)

    held = first_kl("continued")
    monkeypatch.setattr(run_module, "hold_reference_adapter", lambda *args: None)  # the reference: adapter off
    assert held == 0.0 and first_kl("to_the_base") > 1e-6


def test_a_model_grader_without_a_judge_is_refused_before_anything_loads(tiny_model_dir, tmp_path):
    """`dora train` lends no judge: a score_model grader there would reward every answer 0, so it is refused."""
    from dora_core.training import run_training
    from dora_core.training.errors import TrainingError

    judged = {"type": "score_model", "name": "judge", "model": "tiny-llama",
              "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}]}
    config = _rft_config(tiny_model_dir, tmp_path / "absent.jsonl", steps=1)
    config = config.with_changes(reinforcement=config.reinforcement.model_dump() | {"grader": judged})
    with pytest.raises(TrainingError, match="needs a judge model"):
        run_training(config, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out" / "dataset_report.json").exists()
