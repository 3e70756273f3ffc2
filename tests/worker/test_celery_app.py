"""The Celery settings docs/architecture.md describes, and the commands that start a worker."""

from __future__ import annotations

import subprocess
import sys

from store.queue import QUEUE, TASK_NAME
from worker.celery_app import app, make_celery
from worker.settings import WorkerSettings


def test_the_worker_acks_late_takes_one_job_and_forks_a_fresh_process_per_job():
    conf = make_celery(WorkerSettings(broker_url="redis://127.0.0.1:6379/0", job_time_limit_seconds=3600)).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert conf.worker_pool == "worker.pool:JobPool" and conf.worker_max_tasks_per_child == 1
    from celery.concurrency.prefork import TaskPool

    from worker.pool import JobPool

    assert issubclass(JobPool, TaskPool)  # prefork: one fresh process per job
    assert conf.task_routes[TASK_NAME] == {"queue": QUEUE} and conf.task_default_queue == QUEUE == "gpu"
    assert conf.task_soft_time_limit == 3600 < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert conf.broker_connection_max_retries is None


def test_a_worker_with_three_gpus_consumes_the_queues_of_one_to_three_gpu_jobs():
    conf = make_celery(WorkerSettings(gpus=3)).conf
    assert [queue.name for queue in conf.task_queues] == ["gpu", "gpu-x2", "gpu-x3"]
    assert [queue.name for queue in make_celery(WorkerSettings()).conf.task_queues] == ["gpu"]


def test_the_embedded_broker_gets_no_redis_options_and_no_remote_control():
    conf = make_celery(WorkerSettings(broker_url="sqla+sqlite:///var/broker.db")).conf
    assert conf.broker_transport_options == {} and conf.worker_enable_remote_control is False


def test_the_task_is_registered_under_the_name_the_api_publishes():
    assert TASK_NAME in app.tasks


def test_heartbeats_must_fit_in_the_lease():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="DORA_HEARTBEAT_SECONDS"):
        WorkerSettings(lease_seconds=10, heartbeat_seconds=6)


def test_dora_lists_the_worker_commands():
    result = subprocess.run([sys.executable, "-m", "dora_cli.main", "--help"], capture_output=True, text=True,
                            check=True)
    for command in ("worker", "reconcile", "up"):
        assert command in result.stdout


def test_a_message_whose_job_no_claim_would_take_is_dropped_without_forking_a_job_process(service):
    """N8: each cancelled job's message cost a fresh job process (a fork, imports, a claim that
    failed): a create-then-cancel loop kept workers busy forking. The parent now reads whether
    the job is claimable first, and drops the message of one that is not before the pool sees it."""
    from unittest.mock import MagicMock, create_autospec

    from celery.contrib.testing.mocks import TaskMessage
    from celery.worker import state

    from worker.celery_app import run_job_task

    cancelled, queued = service.create(), service.create()
    service.cancel(cancelled)
    consumer = MagicMock()  # the worker's consumer: on_task_request hands a request to the pool, a fork
    handle = run_job_task.start_strategy(make_celery(service.settings), consumer)  # the task's own strategy
    # the consumer's ack promises call message.ack_log_error(logger, errors)
    acks = {job_id: create_autospec(lambda logger, errors: None) for job_id in (cancelled, queued)}
    for job_id, ack in acks.items():
        handle(TaskMessage(TASK_NAME, args=[job_id]), None, ack, MagicMock(), [])
    assert consumer.on_task_request.call_count == 1  # one job process, for the queued job only
    (request,), _ = consumer.on_task_request.call_args
    state.task_ready(request)
    assert request.args == [queued]
    acks[cancelled].assert_called_once()  # dropped: acknowledged without reaching the pool
    acks[queued].assert_not_called()  # acknowledged once its task has run (acks_late)
