"""Checkpoints that survive a crash at any instant, and the exact state to resume from.

A checkpoint is a folder `checkpoints/step-000120/` holding
  adapter_config.json, adapter_model.safetensors   the adapter, in PEFT's format (loadable as is)
  optimizer.pt                                     optimizer, LR scheduler, grad-scaler states
  rng.pt                                           torch CPU and CUDA generator states
  state.json                                       step, batch sizes, early-stopping state
It is written into a temporary folder, every file fsynced, then renamed into place: a
process killed mid-write leaves a `.tmp-*` folder (removed at the next start) and the
previous checkpoint untouched. The data position is the step number (see schedule.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dora_core.atomic_io import fsync_directory
from dora_core.peft_format import load_adapter_weights, save_adapter

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{6,})$")


@dataclass
class RunState:
    """What the loop needs besides tensors to continue where it stopped."""

    step: int = 0
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    best_eval_loss: float | None = None
    evaluations_without_improvement: int = 0
    oom_retries: int = 0
    fingerprint: str | None = None  # RunConfig.fingerprint of the run that wrote it
    early_stopped: bool = False  # a resumed early-stopped run must not train on


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return sorted(found)


def remove_partial_checkpoints(folder: Path) -> None:
    """Leftovers of a write that was killed before its rename."""
    if folder.is_dir():
        for path in folder.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(folder: Path, *, model: nn.Module, optimizer, scheduler, scaler, state: RunState,
                    base_model_name: str, keep: int, rng: dict | None = None) -> Path:
    """`rng`: the generators' states to resume with (rng_state()), when not the current ones (a
    run stopped inside a step has drawn from them since the step began)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(state.step)
    temp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    save_adapter(model, temp, base_model_name_or_path=base_model_name)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None}, temp / "optimizer.pt")
    torch.save(rng or rng_state(), temp / "rng.pt")
    (temp / "state.json").write_text(json.dumps(asdict(state), indent=2))
    for path in temp.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_directory(temp)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(temp, final)
    fsync_directory(folder)
    for _, old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@torch.no_grad()
def load_checkpoint(path: Path, *, model: nn.Module, optimizer, scheduler, scaler) -> RunState:
    """Restore adapter, optimizer, scheduler, scaler and RNG in place; return the run state."""
    load_adapter_weights(model, path)
    states = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    if scaler is not None and states["scaler"] is not None:
        scaler.load_state_dict(states["scaler"])
    _restore_rng(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))
    return read_run_state(path)


def read_run_state(path: Path) -> RunState:
    return RunState(**json.loads((path / "state.json").read_text()))


def rng_state() -> dict:
    """The torch CPU and (when in use) CUDA generators' states, as a checkpoint keeps them."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
