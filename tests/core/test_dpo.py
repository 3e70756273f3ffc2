"""DPO: TRL's DPOTrainer is the oracle for the loss, the rewards and the gradients of one step; the
adapter-off reference is the base model; a step keeps one copy of the base weights; a run trains,
checkpoints and resumes as an SFT run does.

The oracle runs in float64 (tests/support/numerics.py): our DoRA layer and TRL's PEFT twin holding
the same adapter, TRL's reference a separately loaded base model, on TRL's own collated batch
(its completion mask as our labels). TRL computes its output head in fp32 whatever the model's
dtype, so the budgets are that head's fp32 rounding carried through the DPO logit (see the test).
"""

from __future__ import annotations

import copy
import gc
import json

import pytest
import torch

from dora_contract import DPO_METRICS
from dora_core import AdapterConfig, AdapterLinear, apply_adapter
from dora_core.data import prepare_datasets
from dora_core.data.preference import PreferenceCollator
from dora_core.reference import adapter_disabled, hold_reference_adapter
from dora_core.training import RunConfig, TrainingCallback, run_training
from dora_core.training.dpo import dpo_sums, reference_logprobs, sequence_logprobs
from tests.support.model_factories import peft_twin, perturb_adapters
from tests.support.numerics import (
    STAGES_OUTSIDE_LAYERS,
    Budget,
    assert_close_to_reference,
    budget,
    float64_model,
    model_budget,
    model_terms,
    replay_budget,
)
from tests.support.training_helpers import write_jsonl

pytestmark = pytest.mark.usefixtures("offline_hub")
BETA = 0.3
CONFIG = AdapterConfig(method="dora", rank=4, alpha=8)


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def preference_rows(count: int = 4) -> list[dict]:
    pairs = [(a, b) for a in range(4) for b in range(4)][:count]
    return [{"input": {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}]},
             "preferred_output": [{"role": "assistant", "content": f"{a + b}"}],
             "non_preferred_output": [{"role": "assistant", "content": f"I do not know {a}, sorry"}]}
            for a, b in pairs]


def _float64_pair(model_dir):
    """(base, ours): the tiny model in float64 and a copy with a perturbed DoRA adapter."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    ours = apply_adapter(copy.deepcopy(base), CONFIG)
    perturb_adapters(ours)
    return float64_model(base), float64_model(ours)


def _trl_step(base, ours, tokenizer, tmp_path):
    """TRL's DPO loss and logged metrics for one batch of 4 pairs (gradients left on the twin), and the batch."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [{"prompt": row["input"]["messages"], "chosen": row["preferred_output"],
             "rejected": row["non_preferred_output"]} for row in preference_rows()]
    twin = peft_twin(ours, base, config=CONFIG)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, per_device_train_batch_size=4, report_to=[],
                     use_cpu=True, bf16=False, max_length=None, precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=twin, ref_model=copy.deepcopy(base), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))  # (8, seq): 4 chosen, then 4 rejected
    twin.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    ours_batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)}
    return twin, float(loss.detach()), metrics, ours_batch


def test_loss_rewards_and_gradients_equal_trl(tiny_model_dir, tiny_tokenizer, tmp_path):
    base, ours = _float64_pair(tiny_model_dir)
    twin, trl_loss, trl_metrics, batch = _trl_step(base, ours, tiny_tokenizer, tmp_path)
    ours.train()
    sums = dpo_sums(ours, batch, beta=BETA)
    (sums.loss_sum / sums.pairs).backward()
    with torch.no_grad():
        logits = (sequence_logprobs(ours, batch) - sequence_logprobs(base, batch)).view(2, -1)  # (2, 4) log pi/ref
        scale = float((sequence_logprobs(ours, batch).abs() + sequence_logprobs(base, batch).abs()).view(2, -1)
                      .sum(0).max())  # the largest sum |pi_c| + |pi_r| + |ref_c| + |ref_r| of a pair
        weights = torch.sigmoid(-BETA * (logits[0] - logits[1]))  # (4,) d loss / d z of each pair
    # TRL's fused head (trl/kernels/chunked_logprob.py) computes logits and log-softmax in fp32 even
    # for a float64 model: each summed log-probability carries fp32's head rounding relative to its
    # size, so a DPO logit z = beta (pi_c - ref_c - pi_r + ref_r) is off by at most beta x head x
    # scale, and so are the loss (|d logsigmoid / dz| <= 1) and each reward; a margin twice that.
    head = budget(torch.float32, stages=STAGES_OUTSIDE_LAYERS, terms=model_terms(ours))
    absolute = BETA * head.value * scale
    mine = {"loss": float(sums.loss_sum) / sums.pairs, **sums.metrics(sums.pairs)}
    theirs = {"loss": trl_loss} | {name: trl_metrics[name] for name in mine if name != "loss"}
    assert theirs["rewards/margins"] > 0.5 and 0 < theirs["loss"] < 0.69, theirs  # the adapter moved the policy
    assert mine["rewards/accuracies"] == theirs["rewards/accuracies"]
    for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        factor = 2 if name == "rewards/margins" else 1
        limit = Budget(factor * absolute / abs(theirs[name]), f"{factor} x beta x ({head.why}) x {scale:.3g} "
                                                              f"/ |{name}|")
        assert_close_to_reference(torch.tensor(mine[name]), torch.tensor(theirs[name]), limit, what=name)
    # gradients: the fp32 head's backward, plus each pair's weight sigmoid(-z) off by up to `absolute`
    backward = budget(torch.float32, stages=2 * STAGES_OUTSIDE_LAYERS, terms=model_terms(ours)).plus(
        absolute / float(weights.min()), "the pair weights' error, relative")
    checked = 0
    for name, layer in ours.named_modules():
        if isinstance(layer, AdapterLinear):
            peft_layer = twin.base_model.model.get_submodule(name)
            for mine_p, theirs_p in ((layer.lora_A, peft_layer.lora_A["default"].weight),
                                     (layer.lora_B, peft_layer.lora_B["default"].weight),
                                     (layer.lora_magnitude_vector, peft_layer.lora_magnitude_vector["default"].weight)):
                assert mine_p.grad.abs().max() > 0, name
                assert_close_to_reference(mine_p.grad, theirs_p.grad, backward, what=f"{name} gradient")
                checked += 1
    assert checked >= 3 * 10


def test_adapter_off_reference_equals_the_base_model(tiny_model_dir, tiny_tokenizer, tmp_path):
    base, ours = _float64_pair(tiny_model_dir)
    *_, batch = _trl_step(base, ours, tiny_tokenizer, tmp_path)
    with torch.no_grad():
        expected = sequence_logprobs(base, batch)  # (8,) a separately loaded base model
        policy = sequence_logprobs(ours, batch)
    reference = reference_logprobs(ours, batch)
    assert not reference.requires_grad
    assert_close_to_reference(reference, expected, model_budget(ours, torch.float64), what="reference log-probs")
    assert (policy - expected).abs().max() > 1e-3  # the adapter is on again, and it matters
    with pytest.raises(RuntimeError), adapter_disabled(ours):
        raise RuntimeError("a failing reference forward")
    assert all(layer.adapter_enabled for layer in ours.modules() if isinstance(layer, AdapterLinear))


def _dpo_config(model_dir, train_file, **training) -> RunConfig:
    defaults = {"max_steps": 6, "micro_batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 1e-2,
                "checkpoint_interval": 3, "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_seq_len": 64,
                "sample_prompts": 0}
    return RunConfig.from_dict({"base_model": str(model_dir), "train_file": str(train_file), "dpo": {"beta": BETA},
                                "adapter": {"method": "dora", "rank": 4, "alpha": 8},
                                "training": defaults | training, "outputs": ["adapter"]})


class BaseWeightCopies(TrainingCallback):
    """At each step's end, the storages alive that hold a tensor shaped like a 2-D base weight."""

    def __init__(self, shapes):
        self.shapes, self.counts = shapes, []

    def on_step(self, metrics):
        gc.collect()
        storages = {obj.untyped_storage().data_ptr() for obj in gc.get_objects()
                    if isinstance(obj, torch.Tensor) and tuple(obj.shape) in self.shapes}
        self.counts.append(len(storages))


class StopAt(TrainingCallback):
    def __init__(self, step):
        self.step, self.seen = step, 0

    def on_step(self, metrics):
        self.seen = metrics["step"]

    def should_stop(self):
        return self.seen >= self.step


def test_dpo_run_learns_keeps_one_base_copy_and_resumes(tiny_model_dir, tmp_path):
    """A run's pair metrics, one copy of the base weights during the steps, and a stopped run
    resumed from its checkpoint ending where an uninterrupted one does."""
    from transformers import AutoModelForCausalLM

    train = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    shapes = {tuple(p.shape) for p in base.parameters() if p.ndim == 2}
    base_storages = len({p.untyped_storage().data_ptr() for p in base.parameters() if p.ndim == 2})
    del base
    gc.collect()
    copies = BaseWeightCopies(shapes)
    config = _dpo_config(tiny_model_dir, train)
    straight = run_training(config, tmp_path / "straight", callbacks=[copies], resume=False)
    assert straight.status == "completed" and straight.step == 6
    assert copies.counts and set(copies.counts) == {base_storages}, (copies.counts, base_storages)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["loss"] == pytest.approx(0.6931471805599453, rel=1e-6)  # B = 0: policy = reference
    assert records[-1]["loss"] < 0.3 and records[-1]["rewards/accuracies"] == 1.0
    assert all(r["rewards/margins"] == pytest.approx(r["rewards/chosen"] - r["rewards/rejected"]) for r in records)

    stopped = run_training(config, tmp_path / "resumed", callbacks=[StopAt(4)], resume=False)
    assert stopped.status == "stopped" and stopped.step == 4
    resumed = run_training(config, tmp_path / "resumed")
    assert resumed.resumed_from_step == 3 and resumed.step == 6
    from safetensors.torch import load_file

    limit = replay_budget(AutoModelForCausalLM.from_pretrained(tiny_model_dir).config)
    one, two = (load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors"))
                for name in ("straight", "resumed"))
    for name, tensor in one.items():
        assert_close_to_reference(two[name], tensor, limit, what=name)


def test_a_continued_runs_reference_is_the_adapter_it_started_from(tiny_model_dir, tiny_tokenizer, tmp_path):
    """DPO after a fine-tune anchors to that fine-tuned model (its starting adapter), not the base:
    a continued run's first step has policy = reference (loss log 2, margins 0), which an adapter-off
    reference would not give since the parent learned the preference; the swap restores the live adapter."""
    train = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    parent = run_training(_dpo_config(tiny_model_dir, train, max_steps=4), tmp_path / "parent", resume=False)
    parent_last = json.loads((tmp_path / "parent" / "metrics.jsonl").read_text().splitlines()[-1])
    assert parent.status == "completed" and parent_last["loss"] < 0.6  # the parent moved away from its base
    child = _dpo_config(tiny_model_dir, train, max_steps=2).with_changes(
        init_adapter=str(tmp_path / "parent" / "adapter"))
    assert run_training(child, tmp_path / "child", resume=False).status == "completed"
    first = json.loads((tmp_path / "child" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(0.6931471805599453, rel=1e-6) and first["rewards/margins"] == 0.0

    from transformers import AutoModelForCausalLM

    model = apply_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64), CONFIG)
    perturb_adapters(model)
    hold_reference_adapter(model, [p.detach().clone() for p in model.parameters() if p.requires_grad])
    batch = PreferenceCollator(tiny_tokenizer.pad_token_id)(
        [prepare_datasets(train, tiny_tokenizer, max_seq_len=64, preference=True).train[i] for i in range(2)])
    with torch.no_grad():
        started = sequence_logprobs(model, batch)  # (4,) the starting adapter's
        with adapter_disabled(model):
            base = sequence_logprobs(model, batch)
    live = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for parameter in live:
            parameter.add_(0.05)  # training moved the live adapter
    moved = [p.detach().clone() for p in live]
    reference = reference_logprobs(model, batch)
    assert torch.equal(reference, started) and (reference - base).abs().max() > 1e-3  # float64, same ops: exact
    assert all(torch.equal(p, m) for p, m in zip(live, moved, strict=True))  # the live adapter is back


class ReferenceForwards:
    """Wraps dpo.reference_logprobs (what the cache and the uncached path both call): the rows scored."""

    def __init__(self, monkeypatch):
        from dora_core.training import dpo

        self.rows = []
        monkeypatch.setattr(dpo, "reference_logprobs", self)

    def __call__(self, model, batch):
        self.rows += [tuple(row.tolist()) for row in batch["input_ids"]]
        return reference_logprobs(model, batch)  # the function itself, imported before any wrapping


def test_reference_cache_scores_each_pair_once_and_changes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    """A 2-epoch run with evaluations: with the cache each train and validation pair's reference is
    computed once (one forward row per side); without it every step and evaluation recomputes it;
    both runs end with the same metrics and adapter (the cached sums are the ones first computed)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    rows = preference_rows(12)
    config = _dpo_config(tiny_model_dir, write_jsonl(tmp_path / "pairs.jsonl", rows[:8]), max_steps=None, epochs=2.0,
                         eval_interval=2, checkpoint_interval=4)
    config = config.with_changes(validation_file=str(write_jsonl(tmp_path / "valid.jsonl", rows[8:])))
    forwards = {}
    for cached in (True, False):
        forwards[cached] = ReferenceForwards(monkeypatch)
        result = run_training(config, tmp_path / str(cached), resume=False, reference_cache=cached)
        assert result.status == "completed" and result.step == 4  # 8 pairs, 4 a step: 2 steps an epoch
    records = {cached: [json.loads(line) for line in (tmp_path / str(cached) / "metrics.jsonl").read_text()
                        .splitlines()] for cached in (True, False)}
    evaluations = sum("eval_loss" in record for record in records[False])
    assert evaluations == 2
    assert len(forwards[True].rows) == 2 * 12 and len(set(forwards[True].rows)) == 2 * 12  # each side once
    assert len(forwards[False].rows) == 2 * (2 * 8 + evaluations * 4)
    limit = replay_budget(AutoConfig.from_pretrained(tiny_model_dir))
    for mine, theirs in zip(records[True], records[False], strict=True):
        assert mine.keys() == theirs.keys() and mine["step"] == theirs["step"]
        for name in ("loss", "eval_loss", *DPO_METRICS, *(f"eval_{metric}" for metric in DPO_METRICS)):
            if name in mine:
                assert_close_to_reference(torch.tensor(mine[name]), torch.tensor(theirs[name]), limit,
                                          what=f"step {mine['step']} {name}")
    one, two = (load_file(str(tmp_path / str(cached) / "adapter" / "adapter_model.safetensors"))
                for cached in (True, False))
    for name, tensor in two.items():
        assert_close_to_reference(one[name], tensor, limit, what=name)


def test_reference_cache_scores_only_the_unseen_pairs_of_a_batch(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                  monkeypatch):
    """A batch mixing seen and unseen pairs: one forward over the unseen pairs' two sides, the seen
    ones' sums as first computed (bit for bit, same dtype), each in its batch row."""
    from transformers import AutoModelForCausalLM

    from dora_core.training.dpo import ReferenceCache

    data = prepare_datasets(write_jsonl(tmp_path / "pairs.jsonl", preference_rows(3)), tiny_tokenizer,
                            max_seq_len=64, preference=True)
    torch.manual_seed(0)
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), CONFIG)
    perturb_adapters(model)  # the policy differs from the reference: an adapter-on forward would show
    cache, forwards = ReferenceCache(), ReferenceForwards(monkeypatch)
    first = cache.logprobs(model, data.collator([data.train[0], data.train[1]]), "train", [0, 1])  # (4,)
    batch = data.collator([data.train[2], data.train[0]])
    mixed = cache.logprobs(model, batch, "train", [2, 0])  # (4,): pair 2 computed, pair 0 reused
    assert len(forwards.rows) == 4 + 2 and forwards.rows[4:] == [tuple(batch["input_ids"][r].tolist()) for r in (0, 2)]
    assert mixed.dtype == first.dtype == reference_logprobs(model, batch).dtype
    assert mixed[1] == first[0] and mixed[3] == first[2]  # pair 0's preferred and non-preferred sums
    assert_close_to_reference(mixed, reference_logprobs(model, batch), model_budget(model, torch.float32),
                              what="a mixed batch's reference")
    assert cache.logprobs(model, batch, "validation", [2, 0]) is not None and len(forwards.rows) == 6 + 4
    with pytest.raises(ValueError, match="3 example indices for a batch of 2 pairs"):
        cache.logprobs(model, batch, "train", [2, 0, 1])


def test_the_docs_example_is_a_valid_dpo_config_and_preference_row(tmp_path):
    """docs/training.md's DPO example: its row validates as a preference row, its config as a DPO run."""
    from dora_formats import PREFERENCE, validate_jsonl
    from tests.support.doc_blocks import DOCS, fenced_blocks, page_section

    blocks = dict(fenced_blocks(page_section(DOCS / "training.md", "## Preference tuning (DPO)")))
    (tmp_path / "pairs.jsonl").write_text(blocks["json"])
    result = validate_jsonl(tmp_path / "pairs.jsonl")
    assert result.is_valid and result.format == PREFERENCE and result.rows == 1
    (tmp_path / "run.yaml").write_text(blocks["yaml"])
    config = RunConfig.from_file(tmp_path / "run.yaml")
    assert config.dpo is not None and config.dpo.beta == 0.1 and config.train_file == str(tmp_path / "pairs.jsonl")


def test_pairs_train_on_the_answers_only_and_each_objective_refuses_the_others_files(tiny_tokenizer, tmp_path):
    from dora_core.data import IGNORE_INDEX, DataError, prepare_datasets

    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(3))
    data = prepare_datasets(pairs, tiny_tokenizer, max_seq_len=64, preference=True)
    assert len(data.train) == 3 and data.report["train"]["pairs"] == 3
    item = data.train[1]  # "What is 0 plus 1?" -> "1" / "I do not know 0, sorry"
    for side, answer in (("", "1"), ("rejected_", "I do not know 0, sorry")):
        ids, labels = item[f"{side}input_ids"], item[f"{side}labels"]
        trained = [token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        assert tiny_tokenizer.decode(trained) == answer + "<|end|>"  # the answer and its end of turn, no prompt
    prompt = [t for t, label in zip(item["input_ids"], item["labels"], strict=True) if label == IGNORE_INDEX]
    assert prompt == item["rejected_input_ids"][: len(prompt)]  # both sides share the prompt's tokens
    batch = data.collator([data.train[0], data.train[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"][1].tolist()[: len(item["input_ids"])] == (
        item["input_ids"])  # preferred rows first, then the non-preferred ones
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Hello"}]}])
    with pytest.raises(DataError) as refused:
        prepare_datasets(chat, tiny_tokenizer, max_seq_len=64, preference=True)
    assert refused.value.field == "train_file" and "preference rows" in refused.value.message
    with pytest.raises(DataError) as refused:
        prepare_datasets(pairs, tiny_tokenizer, max_seq_len=64)
    assert refused.value.field == "train_file" and "only DPO trains on" in refused.value.message
