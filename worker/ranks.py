"""A job on several GPUs: one torch.distributed run whose ranks are child processes of the job's process.

The job's process (a fresh Celery child, worker/job.py) claims the job and holds its lease as for
one GPU: its heartbeat thread keeps renewing it while the ranks train, and it uploads the outputs
and writes the final status afterwards. The ranks are started by torch's elastic launcher
(dora_core/training/processes.py) and die with it (PR_SET_PDEATHSIG), so a SIGKILLed job
process leaves no rank training on: its lease expires, the reconciler republishes the job, and
the next attempt resumes from the newest checkpoint, with any number of processes.

Rank 0 reports. It builds its own `Lease` for the same (owner, attempt), so its writes pass the
same fence as the job process's, and a `JobProgress` on it: metrics, events, samples and
checkpoints go to SQL and storage from rank 0 exactly as from a one-GPU run, and rank 0 reads the
cancel request at each step; every rank follows rank 0's answer at the same micro-batch. The other
ranks get no callbacks. A worker shutting down reaches rank 0 through a file in the job's work
folder (`StopRelay`), since the ranks are spawned, not forked, and share no memory with the
job's process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from worker.job_evals import JobEvals
from worker.progress import JobProgress
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

STOP_FILE = "stop-requested"  # in the job's work folder
STOP_POLL_SECONDS = 0.2


@contextmanager
def children_allowed() -> Iterator[None]:
    """Let this process spawn the ranks. Celery's prefork pool (billiard) marks its job processes
    daemonic, and multiprocessing refuses children to a daemonic process (so that none is orphaned
    when the pool terminates it); and it leaves billiard's authentication key in place, which
    multiprocessing's spawn must pickle and billiard's type refuses. Inside, the process is not
    daemonic and its key is plain bytes, restored on exit. The ranks cannot be orphaned: the
    launcher joins them, and each dies with its parent (PR_SET_PDEATHSIG) if this one is killed."""
    import multiprocessing.process

    config = multiprocessing.current_process()._config  # noqa: SLF001 - what start() and spawn read
    saved = {name: config[name] for name in ("daemon", "authkey") if name in config}
    config["daemon"] = False
    if "authkey" in saved:  # billiard's own process object may stand here: set the stdlib's type
        config["authkey"] = multiprocessing.process.AuthenticationString(bytes(saved["authkey"]))
    try:
        yield
    finally:
        config.update(saved)


@contextmanager
def stop_relay(stop_requested: Callable[[], bool], folder: Path) -> Iterator[Path]:
    """While inside, a thread of the job's process writes `folder/STOP_FILE` once stop_requested()
    says so; rank 0 reads the file. A file left by an earlier attempt is removed first."""
    flag = folder / STOP_FILE
    flag.unlink(missing_ok=True)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(STOP_POLL_SECONDS):
            if stop_requested():
                flag.parent.mkdir(parents=True, exist_ok=True)
                flag.touch()
                return

    thread = threading.Thread(target=watch, name="stop-relay", daemon=True)
    thread.start()
    try:
        yield flag
    finally:
        done.set()
        thread.join(timeout=5)
        flag.unlink(missing_ok=True)


@dataclass(frozen=True)
class RankProgress:
    """The callbacks of each rank, made in the rank (this crosses into it pickled): rank 0 gets a
    JobProgress on its own lease, the others none."""

    settings: WorkerSettings
    job_id: str
    owner: str
    attempt: int
    tenant_id: str
    keep_checkpoints: int
    metrics_file: Path
    stop_file: Path
    evals: JobEvals | None = None  # the job's evals (worker/job_evals.py), run on rank 0's checkpoints

    def __call__(self) -> list:
        if int(os.environ.get("RANK", "0")) != 0:
            return []
        from store.storage import open_storage
        from worker.lease import Lease

        lease = Lease(self.settings, self.job_id, self.owner, self.attempt)
        storage = open_storage(self.settings.storage_url, endpoint_url=self.settings.s3_endpoint_url)
        return [RankZeroProgress(lease=lease, storage=storage, tenant_id=self.tenant_id,
                                 heartbeat_seconds=self.settings.heartbeat_seconds,
                                 keep_checkpoints=self.keep_checkpoints, stop_requested=self.stop_file.exists,
                                 metrics_file=self.metrics_file, evals=self.evals)]


class RankZeroProgress(JobProgress):
    """JobProgress in rank 0, whose lease object ends with the rank: `close()` (called by the
    rank when its run ends, also by an error) writes what is still buffered, such as the last
    evaluation's metrics and the events of writing the outputs."""

    def close(self) -> None:
        if self.lease.held and not self.lease.flush():
            log.warning("job %s: rank 0 could not write its last progress (the lease is gone)", self.lease.job_id)
