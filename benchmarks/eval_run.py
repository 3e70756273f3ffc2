"""An eval run's throughput through a real `dora serve`: the executor's code path against one-by-one.

Measured, not asserted. For each model (the tiny test model, SmolLM2-135M-Instruct from the packaged
GGUF) a `dora serve` process is started on a fresh SQLite database, then the same `--items` chat
completions (greedy, `--tokens` at most each, one distinct question per item) are sent twice:

  executor    an eval run (completions data source, a string_check criterion) executed by
              worker/eval_run.py's run_eval, as `dora evals` runs it: the lease, batches of
              DORA_EVAL_BATCH_ITEMS, DORA_EVAL_COMPLETION_CONCURRENCY completions in flight (the
              server batches them), grading, each batch stored in one fenced transaction;
  sequential  the same requests through the same InferenceClient, one after the other, nothing
              stored: what a loop over the completions endpoint would get.

One JSON line per (model, mode) on stdout, then one per model with `speedup` (executor items/s over
sequential items/s). Greedy answers are the same both ways, so both generate the same tokens.

    python benchmarks/eval_run.py                        # both models, 50 items, 16 tokens
    python benchmarks/eval_run.py --models tiny --items 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/eval_run.py` from anywhere
    sys.path.insert(0, str(ROOT))

from dora_contract.serving import ChatMessage, GenerationRequest  # noqa: E402 - after the path set-up above
from store import evals as eval_store  # noqa: E402 - after the path set-up above
from store.db import session_scope  # noqa: E402 - after the path set-up above
from store.eval_execution import RESOLVED_KEY  # noqa: E402 - after the path set-up above
from store.inference_client import InferenceClient  # noqa: E402 - after the path set-up above
from store.migrate import upgrade  # noqa: E402 - after the path set-up above
from store.models import EvalRun  # noqa: E402 - after the path set-up above
from store.storage import open_storage  # noqa: E402 - after the path set-up above
from store.tenants import create_api_key  # noqa: E402 - after the path set-up above
from tests.support.serve_process import serve_process  # noqa: E402 - after the path set-up above
from worker.eval_items import sampling  # noqa: E402 - after the path set-up above
from worker.eval_run import run_eval  # noqa: E402 - after the path set-up above
from worker.settings import EvalRunnerSettings  # noqa: E402 - after the path set-up above

SYSTEM = "Answer in one short sentence."
CRITERION = {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}",
             "reference": "{{item.expected}}", "operation": "ilike"}


def model_dir(name: str, work: Path) -> Path:
    if name == "tiny":
        from dora_core.tiny_model import make_tiny_model

        return make_tiny_model(work / "tiny")
    from tests.support.real_model import real_model_dir

    return real_model_dir()


def questions(count: int) -> list[dict]:
    return [{"question": f"What is {i} plus {i + 1}?", "expected": str(2 * i + 1)} for i in range(count)]


def data_source(name: str, items: list[dict], tokens: int) -> dict:
    return {"type": "completions", "model": name,
            "input_messages": {"type": "template", "template": [{"role": "system", "content": SYSTEM},
                                                                {"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": tokens},
            "source": {"type": "file_content", "content": [{"item": item} for item in items]},
            RESOLVED_KEY: {"base_model": name, "adapter": None}}


def executor(settings: EvalRunnerSettings, client: InferenceClient, tenant_id: str, source: dict) -> dict:
    with session_scope(settings) as session:
        eval_row = eval_store.create_eval(session, tenant_id=tenant_id, name="bench", metadata=None,
                                          data_source_config={"type": "custom"}, testing_criteria=[CRITERION])
        run_id = eval_store.create_run(session, eval_row=eval_row, name=None, data_source=source,
                                       model=source["model"], metadata=None).id
    started = time.perf_counter()
    outcome = run_eval(run_id, settings=settings, client=client, storage=open_storage(settings.storage_url),
                       owner="bench")
    seconds = time.perf_counter() - started
    with session_scope(settings) as session:
        run = session.get(EvalRun, run_id)
        counts, [usage] = run.result_counts, run.per_model_usage
    assert outcome == "completed" and counts["errored"] == 0, (outcome, counts)
    return {"seconds": seconds, "items": counts["total"], "completion_tokens": usage["completion_tokens"]}


def sequential(client: InferenceClient, source: dict, items: list[dict]) -> dict:
    params = sampling(source)
    started, tokens = time.perf_counter(), 0
    for item in items:
        request = GenerationRequest(base_model=source["model"], sampling=params, messages=[
            ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=item["question"])])
        tokens += client.generate(request, route_key=source["model"]).completion_tokens
    return {"seconds": time.perf_counter() - started, "items": len(items), "completion_tokens": tokens}


def bench(name: str, work: Path, args: argparse.Namespace) -> None:
    root = work / name
    root.mkdir()
    url = f"sqlite:///{root / 'dora.db'}"
    upgrade(EvalRunnerSettings(database_url=url))
    items = questions(args.items)
    source = data_source(name, items, args.tokens)
    with serve_process(root / "serve", database_url=url, base_models={name: str(model_dir(name, work))},
                       extra_env={"DORA_SERVE_DEVICE": args.device}) as server:
        settings = EvalRunnerSettings(database_url=url, storage_url=str(root / "artifacts"),
                                      inference_secret=server.secret, eval_server_wait_seconds=30,
                                      inference_first_event_timeout_seconds=600)
        with session_scope(settings) as session:
            tenant_id = create_api_key(session, tenant_name="bench").tenant_id
        with InferenceClient(settings, lambda: session_scope(settings),
                             connections=settings.eval_completion_concurrency) as client:
            sequential(client, source, items[:2])  # warm-up: the model's first requests
            lines = {"sequential": sequential(client, source, items),
                     "executor": executor(settings, client, tenant_id, source)}
    common = {"benchmark": "eval_run", "model": name, "device": args.device, "tokens": args.tokens,
              "batch_items": settings.eval_batch_items, "completion_concurrency": settings.eval_completion_concurrency,
              "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    for mode, line in lines.items():
        print(json.dumps(common | {"mode": mode, **line, "seconds": round(line["seconds"], 2),
                                   "items_per_s": round(line["items"] / line["seconds"], 3)}), flush=True)
    rate = {mode: line["items"] / line["seconds"] for mode, line in lines.items()}
    print(json.dumps(common | {"speedup": round(rate["executor"] / rate["sequential"], 2)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=16, help="max_completion_tokens of each item")
    parser.add_argument("--device", default="cpu", help="the inference server's device (DORA_SERVE_DEVICE)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dora-eval-bench-"))
    for name in args.models:
        bench(name, work, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
