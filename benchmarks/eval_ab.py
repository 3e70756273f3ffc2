"""The worked A/B on the real model: base vs LoRA r=8 vs DoRA r=8, one eval, through the official openai client.

Why: whether DoRA beats LoRA depends on the data, so the service's answer is to measure on held-out
items of your own. This script does what docs/service.md ("A/B: LoRA against DoRA on your own data")
shows, end to end against a running service: it uploads the 3-digit addition set of the real-model
walkthrough (the same 300 training and 40 validation rows), trains a LoRA r=8 and a DoRA r=8 job on
smollm2-135m-instruct with the walkthrough's steps and the same seed, creates one eval (item schema
{question, answer}, a string_check `eq` of the output against the answer) and runs it on the base
model and both fine-tuned models over 100 held-out items (none of them a training or validation
question), sent inline as `file_content`.

    OMP_NUM_THREADS=1 python benchmarks/eval_ab.py                 # starts `dora up --demo` in a temp folder
    python benchmarks/eval_ab.py --api http://127.0.0.1:8000 --key "$(cat var/demo-api-key)"

Output: one JSON line per run on stdout (label, model, passed, total, pass rate, the 95 % Wilson
interval, the eval and run ids), then one summary line (DoRA minus LoRA, whether the intervals
overlap, the comparison page, training seconds per job, the date and the machine).

The Wilson interval is computed here (`wilson_interval`): neither scipy nor statsmodels is a
dependency of the project, and the formula is four lines.

Cost on the 2-core development machine, shared with other test runs (load average 7-14), with
OMP_NUM_THREADS=1 (on a busy CPU two threads wait on each other: at 2 threads the first step had
not finished after 5 minutes): 386 s training LoRA, 420 s DoRA, ~4.5 minutes for the 300
completions, 18.5 minutes in all (2026-12-07; docs/service.md quotes the numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai

MODEL = "smollm2-135m-instruct"
SYSTEM = "Answer with the number only."
METHODS = ("lora", "dora")
LABELS = {"base": "base", "lora": "LoRA r=8", "dora": "DoRA r=8"}
# the walkthrough's job (docs/service.md, "A real model"): only the method differs between the two jobs
HYPERPARAMETERS = {"rank": 8, "learning_rate": 0.001, "batch_size": 16, "max_steps": 15, "eval_interval": 5,
                   "sample_prompts": 4, "max_seq_len": 64}
SEED = 0
HELD_OUT_SEED = 1  # draws the held-out items from the pairs the walkthrough did not sample
MAX_COMPLETION_TOKENS = 8  # a 4-digit sum and the end of the turn
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile
CRITERION = {"type": "string_check", "name": "exact match", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "eq"}
ITEM_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
               "required": ["question", "answer"]}
TERMINAL_JOB = ("succeeded", "failed", "cancelled")
TERMINAL_RUN = ("completed", "failed", "canceled")


# -- the data ------------------------------------------------------------------------------------
def _grid() -> list[tuple[int, int]]:
    return [(a, b) for a in range(100, 1000, 7) for b in range(100, 1000, 11)]


def walkthrough_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The walkthrough's training (300) and validation (40) pairs, drawn exactly as its bash block draws them."""
    rows = random.Random(0).sample(_grid(), 340)
    return rows[:300], rows[300:]


def held_out_items(count: int) -> list[dict]:
    """`count` eval items whose pairs are neither training nor validation pairs: {"item": {question, answer}}."""
    train, validation = walkthrough_pairs()
    seen = set(train) | set(validation)
    pairs = random.Random(HELD_OUT_SEED).sample([pair for pair in _grid() if pair not in seen], count)
    return [{"item": {"question": f"{a} + {b} = ?", "answer": str(a + b)}} for a, b in pairs]


def chat_jsonl(pairs: list[tuple[int, int]]) -> bytes:
    return b"".join(json.dumps({"messages": [{"role": "system", "content": SYSTEM},
                                             {"role": "user", "content": f"{a} + {b} = ?"},
                                             {"role": "assistant", "content": str(a + b)}]}).encode() + b"\n"
                    for a, b in pairs)


# -- the numbers ---------------------------------------------------------------------------------
def wilson_interval(passed: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (Wilson 1927; what scipy's
    binomtest(...).proportion_ci(method="wilson") returns): unlike the normal approximation it
    stays inside [0, 1] and is not empty at 0 or `total` passes, which small models often score."""
    if total <= 0:
        raise ValueError("total must be positive")
    p, n = passed / total, total
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if passed == 0 else max(0.0, center - half)  # exactly 0 there (rounding leaves ~1e-18)
    return low, 1.0 if passed == total else min(1.0, center + half)


def run_line(label: str, model: str, passed: int, total: int, **extra) -> dict:
    low, high = wilson_interval(passed, total)
    return {"kind": "run", "label": label, "model": model, "passed": passed, "total": total,
            "pass_rate": round(passed / total, 4), "wilson_95": [round(low, 4), round(high, 4)], **extra}


def summary_line(runs: list[dict], **extra) -> dict:
    """DoRA minus LoRA (and each minus the base) in points, and whether the 95 % intervals overlap:
    overlapping intervals mean the items do not tell the two apart."""
    by_label = {run["label"]: run for run in runs}
    lora, dora, base = by_label[LABELS["lora"]], by_label[LABELS["dora"]], by_label[LABELS["base"]]

    def points(a: dict, b: dict) -> float:
        return round(100 * (a["pass_rate"] - b["pass_rate"]), 2)

    overlap = lora["wilson_95"][0] <= dora["wilson_95"][1] and dora["wilson_95"][0] <= lora["wilson_95"][1]
    return {"kind": "summary", "pass_rates": {run["label"]: run["pass_rate"] for run in runs},
            "dora_minus_lora_points": points(dora, lora), "lora_minus_base_points": points(lora, base),
            "dora_minus_base_points": points(dora, base), "lora_dora_intervals_overlap": overlap, **extra}


# -- the service ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(check, *, timeout: float, what: str, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def demo_service(folder: Path) -> Iterator[tuple[str, str]]:
    """`dora up --demo` (what `make run` runs) in `folder`, on free ports, no DORA_* variable of the
    caller's: (API URL, demo key) while it runs; stopped (SIGTERM, as Ctrl-C) at the end."""
    port = _free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("DORA_")} | {
        "DORA_PORT": str(port), "DORA_SERVE_PORT": str(_free_port())}
    dora = Path(sys.executable).parent / "dora"
    log = (folder / "dora-up.out").open("wb")  # closed in the finally below
    process = subprocess.Popen([str(dora), "up", "--demo"], cwd=folder, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url, key_file = f"http://127.0.0.1:{port}", folder / "var" / "demo-api-key"

    def answering() -> str | None:
        if process.poll() is not None:
            raise RuntimeError(f"dora up exited ({process.returncode}): {(folder / 'dora-up.out').read_text()}")
        key = key_file.read_text().strip() if key_file.is_file() else ""
        with contextlib.suppress(httpx.HTTPError):
            if key and httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200:
                return key
        return None

    try:
        yield url, _wait(answering, timeout=300, what=f"dora up's API at {url}", interval=0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()  # dora up stops its processes on SIGTERM as on Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


# -- the A/B -------------------------------------------------------------------------------------
def _say(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def train(client: openai.OpenAI, *, steps: int) -> dict[str, tuple[str, float]]:
    """Both jobs on the same files and seed: {method: (fine-tuned model, seconds from its start to done)}."""
    train_pairs, validation_pairs = walkthrough_pairs()
    training = client.files.create(file=("addition-train.jsonl", chat_jsonl(train_pairs)), purpose="fine-tune")
    validation = client.files.create(file=("addition-validation.jsonl", chat_jsonl(validation_pairs)),
                                     purpose="fine-tune")
    jobs = {}
    for method in METHODS:
        hyperparameters = HYPERPARAMETERS | {"max_steps": steps}
        jobs[method] = client.fine_tuning.jobs.create(
            model=MODEL, training_file=training.id, validation_file=validation.id, seed=SEED, suffix=method,
            method={"type": method, method: {"hyperparameters": hyperparameters}})  # type: ignore[misc, dict-item]
        _say(f"{method} job {jobs[method].id} queued")
    done = {}
    for method, job in jobs.items():  # one CPU worker trains them one after the other
        finished = _wait(lambda j=job.id: (lambda got: got if got.status in TERMINAL_JOB else None)(
            client.fine_tuning.jobs.retrieve(j)), timeout=3600, what=f"the {method} job", interval=5)
        if finished.status != "succeeded":
            raise RuntimeError(f"the {method} job {job.id} ended {finished.status}: {finished.error}")
        done[method] = (finished.fine_tuned_model, float(finished.finished_at - _started_at(client, finished)))
        _say(f"{method} job succeeded: {finished.fine_tuned_model}")
    return done


def _started_at(client: openai.OpenAI, job) -> int:
    """When the job's first attempt started (its event), else when it was queued: the second job waits
    for the first on a one-worker service, which is not its training time."""
    events = [event for event in client.fine_tuning.jobs.list_events(job.id, limit=100)
              if event.message.startswith("Attempt 1 ")]
    return min((event.created_at for event in events), default=job.created_at)


def wait_until_served(client: openai.OpenAI) -> None:
    """The inference server loads the base model at its start; the eval runs need it answering."""
    def answered() -> bool | None:
        with contextlib.suppress(openai.APIError):
            client.chat.completions.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "1"}])
            return True
        return None

    _wait(answered, timeout=600, what=f"the inference server to answer for {MODEL}", interval=3)


def evaluate(client: openai.OpenAI, models: dict[str, str], items: list[dict]) -> tuple[str, list[dict]]:
    """One eval, one run per model over the same items: (eval id, one run line per model, in `models` order)."""
    evaluation = client.evals.create(
        name="3-digit addition, exact match", testing_criteria=[CRITERION],  # type: ignore[list-item]
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True})
    runs = {}
    for label, model in models.items():
        runs[label] = client.evals.runs.create(evaluation.id, name=label, data_source={
            "type": "completions", "model": model,
            "input_messages": {"type": "template", "template": [
                {"role": "system", "content": SYSTEM}, {"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": MAX_COMPLETION_TOKENS},
            "source": {"type": "file_content", "content": items}})
        _say(f"run {runs[label].id} on {model} ({label}) queued")
    lines = []
    for label, run in runs.items():
        finished = _wait(lambda r=run.id: (lambda got: got if got.status in TERMINAL_RUN else None)(
            client.evals.runs.retrieve(r, eval_id=evaluation.id)), timeout=1800, what=f"the run on {label}")
        if finished.status != "completed":
            raise RuntimeError(f"the run on {label} ended {finished.status}: {finished.error}")
        counts = finished.result_counts
        lines.append(run_line(label, models[label], counts.passed, counts.total, errored=counts.errored,
                              eval_id=evaluation.id, run_id=run.id, report_url=finished.report_url))
    return evaluation.id, lines


def _machine() -> str:
    """"x86_64, 2 CPU cores, AMD EPYC ..." (the CPU's model name where Linux tells it)."""
    cpu = platform.processor() or platform.system()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {cpu}"


def ab(url: str, key: str, *, items: int, steps: int) -> list[dict]:
    client = openai.OpenAI(api_key=key, base_url=f"{url}/v1", max_retries=2, timeout=120)
    started = time.monotonic()
    trained = train(client, steps=steps)
    wait_until_served(client)
    models = {LABELS["base"]: MODEL} | {LABELS[method]: trained[method][0] for method in METHODS}
    eval_id, runs = evaluate(client, models, held_out_items(items))
    summary = summary_line(
        runs, eval_id=eval_id, comparison_page=f"{url}/ui/#/evals/{eval_id}", steps=steps,
        train_seconds={LABELS[method]: trained[method][1] for method in METHODS},
        total_seconds=round(time.monotonic() - started, 1), date=f"{datetime.now(UTC):%Y-%m-%d}",
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        machine=_machine(),
        openai=openai.__version__)
    return [*runs, summary]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default=None, help="a running service's URL (without /v1); default: start "
                                                    "`dora up --demo` in a temporary folder")
    parser.add_argument("--key", default=None, help="an API key of that service (required with --api)")
    parser.add_argument("--items", type=int, default=100, help="held-out items per run (default 100)")
    parser.add_argument("--steps", type=int, default=HYPERPARAMETERS["max_steps"],
                        help=f"training steps of each job (default {HYPERPARAMETERS['max_steps']}, the walkthrough's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.api and not args.key:
        parser.error("--api needs --key")
    if args.items < 1 or args.steps < 1:
        parser.error("--items and --steps must be positive")
    return args


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # the client warns on every evals call that OpenAI's hosted Evals API is shut down; this service keeps its shape
    warnings.filterwarnings("ignore", "The Evals API is deprecated", DeprecationWarning)
    # a SIGTERM (or a SIGINT that a background shell set to ignore) still stops the service it started
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    if args.api:
        lines = ab(args.api.rstrip("/"), args.key, items=args.items, steps=args.steps)
    else:
        folder = Path(tempfile.mkdtemp(prefix="dora-eval-ab-"))  # kept when something fails: var/logs tells why
        with demo_service(folder) as (url, key):
            _say(f"dora up --demo at {url} in {folder}")
            lines = ab(url, key, items=args.items, steps=args.steps)
        shutil.rmtree(folder, ignore_errors=True)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
