"""What a finished run leaves in its output folder.

  adapter/          PEFT-format adapter (peft.PeftModel.from_pretrained loads it)
  merged/           the merged model via save_pretrained (safetensors) with the tokenizer
  gguf/             the merged model as model.gguf (llama.cpp) with an Ollama Modelfile
  metrics.jsonl     one JSON object per optimiser step and per evaluation
  samples.jsonl     greedy answers to validation prompts, one object per sample and evaluation
  dataset_report.json
  manifest.json     config, dataset hashes, library versions, seed, final metrics
Folders are written under a temporary name and renamed, so a half-written output never looks
finished.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from dora_core.atomic_io import fsync_directory, write_json_atomically
from dora_core.inject import merge_adapter
from dora_core.peft_format import save_adapter


def publish_folder(out_dir: Path, name: str, write) -> Path:
    """write(temp_folder), then rename it to out_dir/name (replacing an older one)."""
    final, temp = out_dir / name, out_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    write(temp)
    fsync_directory(temp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temp, final)
    fsync_directory(out_dir)
    return final


def remove_partial_outputs(out_dir: Path) -> None:
    """Temporary folders of an output write that was killed before its rename."""
    for path in out_dir.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


def write_adapter(out_dir: Path, model, *, base_model: str) -> Path:
    return publish_folder(out_dir, "adapter",
                          lambda temp: save_adapter(model, temp, base_model_name_or_path=base_model))


def write_merged(out_dir: Path, model, tokenizer, *, dtype=None) -> Path:
    """Merges in place: call after the adapter is saved; the model is plain afterwards.

    `dtype` is the base checkpoint's (model_loading.saved_dtype): the merge is exact in the
    training dtype, then cast once, so a bf16 base is not handed back twice its size in fp32."""
    merged = merge_adapter(model)
    if dtype is not None and dtype != merged.dtype:
        merged.to(dtype)
    merged.config.use_cache = True

    def write(temp: Path) -> None:
        merged.save_pretrained(temp, safe_serialization=True)
        tokenizer.save_pretrained(temp)

    return publish_folder(out_dir, "merged", write)


def write_gguf_output(out_dir: Path, model, tokenizer, *, file_type: str) -> Path:
    """Merges in place too (the gguf output is written from the merged model, asked for or not)."""
    from dora_core.gguf_export import write_gguf  # gguf-py is only needed when this output is asked for

    merged = merge_adapter(model)
    return publish_folder(out_dir, "gguf", lambda temp: write_gguf(temp, merged, tokenizer, file_type=file_type))


def finished_outputs(out_dir: Path, *, config: dict, status: str, steps: int) -> dict[str, str] | None:
    """The outputs an earlier run of this folder already wrote for exactly this result, by name (with
    metrics and manifest), or None. The manifest is written last, so one that names the same config
    (outputs, gguf_type, ... included), status and step, with each output folder still there, means
    those outputs are complete: a resumed run that trained nothing keeps them instead of rewriting."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    same = (manifest.get("config") == config and manifest.get("status") == status and manifest.get("steps") == steps
            and set(manifest.get("outputs", ())) >= {*config.get("outputs", ()), "metrics"})
    if not same or not all((out_dir / name).is_dir() for name in config.get("outputs", ())):
        return None
    return {name: str(out_dir / name) for name in config.get("outputs", ())} | {
        "metrics": str(out_dir / "metrics.jsonl"), "manifest": str(out_dir / "manifest.json")}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("dora-tuner", "torch", "transformers", "safetensors", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def write_manifest(out_dir: Path, **fields) -> Path:
    path = out_dir / "manifest.json"
    write_json_atomically(path, {"library_versions": library_versions(), **fields})
    return path


class MetricsLog:
    """metrics.jsonl, append-only; on resume, lines past the checkpoint's step are dropped so
    the series continues at step k + 1 without duplicates. `companions` (samples.jsonl) are the
    run's other step-keyed logs, truncated with it so that every file agrees."""

    def __init__(self, path: Path, *, companions: Sequence = ()) -> None:
        self.path, self.companions = path, tuple(companions)

    def truncate_after(self, step: int) -> None:
        for companion in self.companions:
            companion.truncate_after(step)
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
