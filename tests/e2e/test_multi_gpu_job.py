"""A 2-GPU job through the real processes: `dora api`, `dora worker` with DORA_GPUS=2, embedded backends.

On this CPU-only host the worker's two "GPUs" are two gloo processes. The job is published to the
`gpu-x2` queue, which this worker consumes beside `gpu`; it trains as two ranks below the job's
Celery process. SIGKILL of that process (an OOM kill, a crashed driver) takes both ranks with it
(PR_SET_PDEATHSIG), so nothing trains on unobserved; the job's lease then expires, the reconciler
publishes it to `gpu-x2` again, the worker's refilled pool claims attempt 2, and it resumes from
the newest checkpoint rank 0 registered, its steps continuous. A warm shutdown of the worker
reaches rank 0 through the job's stop file: both ranks stop at a checkpoint and the next worker
resumes from it.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.support.distributed_runs import descendant_pids, wait_until_gone
from tests.support.jobs import dora_method, wait_for
from tests.support.stack import running_stack

TWO_GPUS = {"DORA_GPUS": "2", "DORA_MAX_JOB_GPUS": "2"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("multi-gpu")
    with running_stack(root, database_url=f"sqlite:///{root / 'dora.db'}",
                       broker_url=f"sqla+sqlite:///{root / 'broker.db'}", tiny_model_dir=tiny_model_dir,
                       extra_env=TWO_GPUS) as stack:
        yield stack


def test_a_two_gpu_job_survives_a_sigkill_and_a_worker_shutdown_resuming_on_two_gpus_each_time(stack):
    """One job, three attempts (one job's start-up less than a test per case): attempt 1 is
    SIGKILLed, attempt 2 resumes from the last checkpoint and is stopped by a warm shutdown,
    attempt 3, on a new worker, resumes from the stop's checkpoint; steps continuous throughout."""
    api = stack.api
    job = api.create(dora_method(max_steps=24, checkpoint_interval=4, batch_size=2, gradient_accumulation_steps=2),
                     outputs=["adapter"], gpus=2)
    assert job["gpus"] == 2
    worker = stack.workers[-1]
    assert "gpu-x2" in worker.text()  # the queues it consumes, as Celery's banner lists them
    pid = api.job_pid(job["id"], 1)
    wait_for(lambda: api.checkpoints(job["id"]), timeout=240, what="the first checkpoint", interval=0.1)
    ranks = descendant_pids(pid)
    assert len(ranks) >= 2, ranks  # the two ranks (and multiprocessing's resource tracker)
    os.kill(pid, signal.SIGKILL)
    assert not wait_until_gone(ranks, timeout=30), "a rank outlived its SIGKILLed job process"
    killed_at = max(api.steps(job["id"]))

    # attempt 2: the lease expired, the reconciler published it to gpu-x2 again, the refilled pool took it
    resumed = wait_for(lambda: api.job(job["id"]).get("resumed_from_step"), timeout=240, what="attempt 2's resume")
    assert 4 <= resumed <= killed_at
    assert f"Attempt 2 resumed from the checkpoint at step {resumed}" in api.events(job["id"])
    assert worker.alive()  # the worker itself lived on and took the job again
    wait_for(lambda: max(api.steps(job["id"])) >= killed_at + 3, timeout=240, what="three steps of attempt 2",
             interval=0.1)
    worker.stop(timeout=120)  # SIGTERM: a warm shutdown; rank 0 learns it from the stop file
    stopped = api.job(job["id"])
    assert stopped["status"] == "queued", stopped  # given back, to the gpu-x2 queue
    assert api.checkpoints(job["id"])[-1] == stopped["progress"]["step"] < 24  # the stop's checkpoint

    stack.start_worker()
    job = api.wait(job["id"], timeout=300)
    assert job["status"] == "succeeded" and job["attempt"] == 3, job
    assert job["resumed_from_step"] == stopped["progress"]["step"]
    assert api.steps(job["id"]) == list(range(1, 25))  # continuous in step: none missing, none twice
    assert [a["name"] for a in api.artifacts(job["id"])] == ["adapter"]
