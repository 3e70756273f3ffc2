"""run_training over several processes of this host: each rank's entrypoint and the error it leaves.

A module of its own because it joins the two layers below it: the loop (run.py, which uses
distributed.py's Parallelism) and the launcher (distributed.py's `launch`, `process_group`).
Kept in either of them, it would make each import the other. The ranks are spawned processes:
the launcher pickles `_train_rank` by its module path, so it stays a module-level function here.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from dora_core.training.distributed import die_with_parent, launch, process_group, rank_device
from dora_core.training.run import RunResult, run_training
from dora_core.training.settings import RunConfig


def train_in_processes(nproc: int, config: RunConfig, out_dir: str | os.PathLike, *, device: str | None = None,
                       resume: bool = True, callbacks: Callable[[], list] | None = None) -> RunResult:
    """run_training over `nproc` processes of this host; returns rank 0's RunResult. `callbacks`
    makes the callbacks in each rank (they cross into the ranks as a picklable factory); only
    rank 0's report, all ranks follow rank 0's should_stop. A callback with a `close()` method has
    it called when its rank's run ends, by an error too (to write what it buffered).

    When a rank fails, the exception it raised is raised here (the launcher only says that a child
    failed), so a caller can tell a bad dataset from a crash as it does for one process."""
    with tempfile.TemporaryDirectory(prefix="dora-rank-errors-") as errors:
        try:
            results = launch(nproc, _train_rank, config, os.fspath(out_dir), device, resume, callbacks, errors)
        except ChildFailedError as failed:
            raise _first_rank_error(failed, Path(errors)) from failed
    return results[0]


def _train_rank(config, out_dir: str, device: str | None, resume: bool, callbacks, errors: str):
    die_with_parent()
    made = callbacks() if callbacks else []
    try:
        device = rank_device(device)
        with process_group(device):
            return run_training(config, out_dir, callbacks=made, device=str(device), resume=resume)
    except BaseException as error:
        _save_rank_error(Path(errors), error)
        raise
    finally:
        for callback in made:
            if callable(close := getattr(callback, "close", None)):
                close()


def _save_rank_error(folder: Path, error: BaseException) -> None:
    """This rank's exception, pickled for the launching process (skipped if it cannot be)."""
    try:
        data = pickle.dumps(error)
    except Exception:  # noqa: BLE001 - the launcher's own report still says what failed
        return
    (folder / f"rank-{os.environ.get('RANK', '0')}.pickle").write_bytes(data)


def _first_rank_error(failed: ChildFailedError, folder: Path) -> BaseException:
    """The exception of the rank that failed first (the others were stopped because of it), or
    the launcher's error when that rank left none (it was killed, or its error did not pickle).
    The files are this run's own ranks' writing, in a private temporary folder."""
    rank, _ = failed.get_first_failure()
    path = folder / f"rank-{rank}.pickle"
    if path.is_file():
        try:
            return pickle.loads(path.read_bytes())  # noqa: S301 - written by our own child process just now
        except Exception:  # noqa: BLE001 - an error that does not unpickle: the launcher's error says enough
            pass
    return failed
