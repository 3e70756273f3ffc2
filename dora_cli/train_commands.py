"""`dora` sub-commands of the ML side: `make-tiny-model` and `train`.

Heavy imports (torch, transformers) happen inside the run functions, so `dora --help` and
the service commands stay fast. Mistakes a user can make (a bad config value, a malformed
dataset, a missing model) end with a message on stderr and exit code 2, never a traceback;
Ctrl-C exits 130 and keeps the checkpoints, so the same command resumes. `--nproc N` runs the
same training in N processes of this host (dora_core/training/distributed.py), started by torch's
elastic launcher as children of this command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from dora_cli.arguments import positive_int
from dora_contract import OUTPUTS

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM
# What run_training writes into --out; `--no-resume --overwrite` removes exactly these.
RUN_FILES = ("checkpoints", "metrics.jsonl", "manifest.json", "dataset_report.json", *OUTPUTS)
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `dora` parser."""
    _register_make_tiny_model(subparsers)
    _register_train(subparsers)


def _register_make_tiny_model(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-tiny-model",
        help="write a tiny random-init Llama model and tokenizer (for tests and demos)",
        description="Write a tiny random-init Llama-architecture model with a locally trained "
        "byte-level BPE tokenizer and a chat template to DIR (safetensors).",
    )
    parser.add_argument("dir", metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=_run_make_tiny_model)


def _run_make_tiny_model(args: argparse.Namespace) -> int:
    from dora_core.tiny_model import make_tiny_model

    out = make_tiny_model(
        args.dir,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        seed=args.seed,
    )
    print(f"tiny model written to {out}")
    return 0


# -- dora train ----------------------------------------------------------------------------------
def _register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model with DoRA/LoRA from a JSON or YAML run config",
        description="Train an adapter as described by CONFIG (a RunConfig in JSON or YAML; dataset paths "
        "are relative to the config file) and write adapter/, merged/, metrics.jsonl and manifest.json "
        "to --out. If --out holds checkpoints of an earlier run, training resumes from the newest one.",
    )
    parser.add_argument("config", metavar="CONFIG", help="run config, .json or .yaml")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over instead of resuming; refuses if DIR already holds a run (see --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --no-resume: delete the earlier run's checkpoints, metrics and outputs in DIR first")
    parser.add_argument("--log-every", type=positive_int, default=10, metavar="N",
                        help="off a terminal, print one line every N steps (and the first and last); default 10")
    parser.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                        help="train in N processes of this host (one per GPU, or gloo on the CPU) with the same "
                        "global batch and result; training.parallelism picks DDP or FSDP; default 1")
    parser.add_argument("--nnodes", type=positive_int, default=1, metavar="N",
                        help="hosts taking part; only 1 is supported for now")
    parser.set_defaults(run=_run_train)


class UsageError(Exception):
    """A mistake in the command line or the config file the user can fix; printed, exit 2."""


def _run_train(args: argparse.Namespace) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    out_dir = Path(args.out)
    try:
        return _train(args, out_dir)
    except KeyboardInterrupt:
        _print_interrupted(out_dir)
        return EXIT_INTERRUPTED
    except SignalException as error:  # --nproc: the launcher was signalled and has stopped every rank
        _print_interrupted(out_dir)
        return EXIT_INTERRUPTED if error.sigval == signal.SIGINT else EXIT_TERMINATED
    except ChildFailedError as error:  # --nproc: the failing rank printed why; the launcher stopped the others
        rank, failure = error.get_first_failure()
        if failure.exitcode != EXIT_USAGE:
            print(f"error: training failed in rank {rank} (exit code {failure.exitcode}); see its output above",
                  file=sys.stderr, flush=True)
        return EXIT_USAGE if failure.exitcode == EXIT_USAGE else 1
    except Exception as error:
        text = _user_error_text(error, args.config)
        if text is None:
            raise
        return _fail(text)


def _user_error_text(error: Exception, config_path: str) -> str | None:
    """The message for a mistake the user can fix (exit 2), None for anything else."""
    from dora_core.config import AdapterConfigError
    from dora_core.data.errors import DataError
    from dora_core.model_loading import ModelLoadError
    from dora_core.training import TrainingError
    from dora_formats import DatasetFormatError

    if isinstance(error, AdapterConfigError):
        return f"invalid config {config_path}: setting '{error.field}': {error.message}"
    if isinstance(error, DataError):  # the data and the settings cannot make a training set
        where = f"setting '{error.field}': " if error.field else ""
        return f"invalid config {config_path}: {where}{error.message}"
    if isinstance(error, DatasetFormatError):
        return _dataset_error_text(error)
    if isinstance(error, TrainingError):
        return f"training failed: {error}"
    if isinstance(error, ModelLoadError | UsageError):
        return str(error)
    return None


def _train(args: argparse.Namespace, out_dir: Path) -> int:
    from dora_cli.progress import make_progress
    from dora_core.training import run_training

    config = _located_base_model(_load_config(Path(args.config)), Path(args.config))
    device = _device(args.device)
    _check_processes(args, device)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder")
    if args.overwrite and not args.no_resume:
        raise UsageError("--overwrite only applies with --no-resume (starting over deletes the earlier run)")
    if args.no_resume:
        _clear_earlier_run(out_dir, overwrite=args.overwrite)
    elif (out_dir / "manifest.json").exists():
        print(f"note: {out_dir} already holds a finished run; continuing from its newest checkpoint, if any "
              "(its outputs are rewritten only if it trains further; use --no-resume --overwrite to start over)",
              flush=True)
    if args.nproc > 1:
        from dora_core.training.distributed import launch

        _quiet_launcher_logs()
        result = launch(args.nproc, _train_rank, config, str(out_dir), device, not args.no_resume, args.log_every,
                        args.config, nnodes=args.nnodes)[0]
        return _print_result(result)
    progress = make_progress(log_every=args.log_every)
    with _quiet_library_progress_bars():
        try:
            result = run_training(config, out_dir, callbacks=[progress], device=device, resume=not args.no_resume)
        finally:
            progress.close()
    return _print_result(result)


def _quiet_launcher_logs() -> None:
    """The elastic launcher logs every rank's exit, with its own traceback, and its shutdown steps;
    a rank that fails prints why itself (a user mistake as one process prints it), so those logs only
    repeat it. Its loggers each hold their own level, so each is set."""
    import logging

    import torch.distributed.elastic.agent.server.api  # creates the launcher's loggers
    import torch.distributed.launcher.api  # noqa: F401 - imported for its loggers, like the line above

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _train_rank(config, out_dir: str, device: str | None, resume: bool, log_every: int, config_path: str):
    """One rank of `dora train --nproc N` (a child process): rank 0 shows the progress; a user
    mistake is printed as one process prints it and ends the rank with exit code 2."""
    import torch.distributed as dist

    from dora_cli.progress import make_progress
    from dora_core.training import run_training
    from dora_core.training.distributed import die_with_parent, process_group, rank_device

    die_with_parent()
    rank_dev = rank_device(device)
    try:
        with process_group(rank_dev), _quiet_library_progress_bars():
            progress = make_progress(log_every=log_every) if dist.get_rank() == 0 else None
            try:
                return run_training(config, out_dir, callbacks=[progress] if progress else [], device=str(rank_dev),
                                    resume=resume)
            finally:
                if progress is not None:
                    progress.close()
    except KeyboardInterrupt:  # Ctrl-C reaches every rank; the launcher reports it once
        sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)  # at once: checkpoints are atomic, and tearing down the interpreter takes seconds
    except Exception as error:
        text = _user_error_text(error, config_path)
        if text is None:
            raise
        rank = os.environ.get("RANK", "0")
        _fail(text if rank == "0" else f"rank {rank}: {text}")
        raise SystemExit(EXIT_USAGE) from None


def _load_config(path: Path):
    import yaml

    from dora_core.training import RunConfig

    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise UsageError(f"config {path}: expected a .json, .yaml or .yml file")
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        return RunConfig.from_file(path)
    except json.JSONDecodeError as error:
        raise UsageError(f"config {path} is not valid JSON: {error}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"config {path} is not valid YAML: {error}") from None


def _located_base_model(config, path: Path):
    """The config with its base_model found (a relative path: relative to the config file's folder),
    or a UsageError in seconds naming the setting, the file and the path tried."""
    from dora_core.model_loading import ModelNotFoundError, locate_model

    try:
        located = locate_model(config.base_model, setting="base_model", relative_to=path.parent)
    except ModelNotFoundError as error:
        raise UsageError(f"{path}: {error}") from None
    return config if located == config.base_model else config.with_changes(base_model=located)


def _device(name: str) -> str | None:
    if name == "auto":
        return None
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r} is not a device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return name


def _check_processes(args: argparse.Namespace, device: str | None) -> None:
    if args.nnodes > 1:
        raise UsageError(f"--nnodes {args.nnodes}: multi-host runs are not supported yet (the output folder and "
                         "checkpoints are local to rank 0's host); use --nproc on one host")
    if args.nproc == 1:
        return
    if device is not None and device.startswith("cuda:"):
        raise UsageError(f"--device {device} with --nproc {args.nproc}: rank r uses cuda:r; give --device cuda or auto "
                         "(CUDA_VISIBLE_DEVICES picks the GPUs)")
    import torch

    on_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if on_cuda and args.nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {args.nproc}: this machine has {torch.cuda.device_count()} GPU(s)")


def _clear_earlier_run(out_dir: Path, *, overwrite: bool) -> None:
    """--no-resume never deletes silently: refuse, or (with --overwrite) say what is removed."""
    found = [out_dir / name for name in RUN_FILES if (out_dir / name).exists()]
    if not found:
        return
    listed = ", ".join(path.name for path in found)
    if not overwrite:
        raise UsageError(f"--no-resume: {out_dir} already holds an earlier run ({listed}). Run without --no-resume "
                         "to continue it, add --overwrite to delete it and start over, or choose another --out")
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    print(f"--overwrite: deleted the earlier run in {out_dir} ({listed})", flush=True)


@contextmanager
def _quiet_library_progress_bars():
    """transformers' own tqdm bars (loading and writing weights) would interleave with ours."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _print_result(result) -> int:
    print(f"status: {result.status} ({_status_detail(result)})")
    metrics = "  ".join(f"{name} {_number(value)}" for name, value in result.final_metrics.items())
    print(f"final metrics: {metrics or '-'}")
    if result.outputs:
        print("outputs:")
        width = max(len(name) for name in result.outputs)
        for name, path in result.outputs.items():
            print(f"  {name:<{width}}  {path}")
    if result.status == "stopped":
        print("the run stopped before its last step; its checkpoints are kept: run the same command to resume")
        return 1
    return 0


def _status_detail(result) -> str:
    """`step 6/6`, `step 6/6, resumed from step 3`, or, when the run resumed from a checkpoint at
    which it had already ended (a second `dora train` of a finished run), that nothing was trained."""
    where = f"step {result.step}/{result.total_steps}"
    if result.resumed_from_step is None:
        return where
    if result.resumed_from_step == result.step and result.status != "stopped":
        ended = "already complete" if result.status == "completed" else "already stopped early"
        return f"{ended} at {where}; nothing to train (use --no-resume --overwrite to start over)"
    return f"{where}, resumed from step {result.resumed_from_step}"


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _dataset_error_text(error) -> str:
    where = f" {error.source}" if error.source else ""
    lines = [f"invalid dataset{where}: {error.error_count} problem(s)"]
    lines += [f"  {issue}" + (f" (field {issue.field})" if issue.field else "") for issue in error.errors]
    if error.error_count > len(error.errors):
        lines.append(f"  ... and {error.error_count - len(error.errors)} more")
    return "\n".join(lines)


def _print_interrupted(out_dir: Path) -> None:
    from dora_core.training.checkpoints import list_checkpoints

    checkpoints = list_checkpoints(out_dir / "checkpoints")
    if checkpoints:
        step, path = checkpoints[-1]
        kept = (f"checkpoints are kept (newest: step {step}, {path}); run the same command again "
                "to resume from there")
    else:
        kept = "no checkpoint had been written yet, so running the same command again starts over"
    print(f"\ninterrupted: {kept}", file=sys.stderr, flush=True)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE
