"""End to end: a real `dora api` (uvicorn) and real `dora worker` (Celery) processes.

A stack (API + worker + the worker's reconciler) runs on its own database, broker and storage,
with short leases and intervals so that crash recovery takes seconds: a lease of 6 s renewed
every second, a reconciler pass every second, and queued jobs re-published after 2 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.jobs import DATASET, dora_method, wait_for
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]
FAST = {"DORA_LEASE_SECONDS": "6", "DORA_HEARTBEAT_SECONDS": "1", "DORA_RECONCILE_INTERVAL_SECONDS": "1",
        "DORA_REQUEUE_AFTER_SECONDS": "2", "DORA_AUTH_CACHE_SECONDS": "0", "DORA_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1", "DORA_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1",
        "DORA_RATE_LIMIT_PER_MINUTE": "0"}  # the suites poll every 50 ms; the rate limit has tests of its own
# e2e jobs run longer than the worker suite's default (dora_method's 6 steps, a checkpoint every 3)
E2E_RUN = {"max_steps": 12, "checkpoint_interval": 4}
TIMINGS: dict = {}  # measured by the tests (not asserted), printed after the run (tests/e2e/conftest.py)


@dataclass
class Process:
    """A service process in a session of its own (so SIGKILL can take its children with it)."""

    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: the Celery parent, the job's process, the reconciler
        (also what a stopped parent left behind)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # a parent past its timeout, and whatever the group left behind (a reconciler between two passes)


@dataclass
class Api:
    url: str
    key: str
    client: httpx.Client = None

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def upload(self, content: bytes = DATASET) -> str:
        response = self.client.post("/v1/files", files={"file": ("train.jsonl", content)},
                                    data={"purpose": "fine-tune"})
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def create(self, method: dict | None = None, **body) -> dict:
        method = method or dora_method(**E2E_RUN)
        body = {"model": "tiny-llama", "training_file": self.upload(), "method": method} | body
        response = self.client.post("/v1/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/v1/fine_tuning/jobs/{job_id}").raise_for_status().json()

    def wait(self, job_id: str, *statuses: str, timeout: float = 90) -> dict:
        statuses = statuses or ("succeeded", "failed", "cancelled")
        job = wait_for(lambda: (j := self.job(job_id))["status"] in statuses and j, timeout=timeout,
                       what=f"job {job_id} to reach {statuses}", interval=0.2)
        return job

    def steps(self, job_id: str) -> list[int]:
        data = self.client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", params={"limit": 10000}).json()["data"]
        return [point["step"] for point in data]

    def events(self, job_id: str) -> list[str]:
        data = self.client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        return [event["message"] for event in reversed(data)]  # oldest first

    def checkpoints(self, job_id: str) -> list[int]:
        data = self.client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 100}).json()["data"]
        return sorted(c["step_number"] for c in data)

    def artifacts(self, job_id: str) -> list[dict]:
        return self.client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts").raise_for_status().json()["data"]

    def cancel(self, job_id: str) -> dict:
        return self.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").raise_for_status().json()

    def download(self, path: str) -> bytes:
        return self.client.get(path).raise_for_status().content

    def job_pid(self, job_id: str, attempt: int) -> int:
        """The process running `attempt` (its claim event says `... started on host:pid`)."""
        prefix = f"Attempt {attempt} of "
        message = wait_for(lambda: next((m for m in self.events(job_id) if m.startswith(prefix)), None),
                           timeout=60, what=f"attempt {attempt} of {job_id} to start")
        return int(message.rsplit(":", 1)[1])


@dataclass
class Stack:
    root: Path
    env: dict
    api: Api = None
    api_process: Process = None
    workers: list[Process] = field(default_factory=list)
    more_apis: list[Process] = field(default_factory=list)  # API processes beside the first
    servers: list[Process] = field(default_factory=list)  # `dora serve` processes
    server_urls: list[str] = field(default_factory=list)  # theirs, in the same order
    executors: list[Process] = field(default_factory=list)  # `dora evals` processes

    @property
    def settings(self):
        from worker.settings import WorkerSettings

        return WorkerSettings(database_url=self.env["DORA_DATABASE_URL"], broker_url=self.env["DORA_BROKER_URL"],
                              storage_url=self.env["DORA_STORAGE_URL"])

    def _spawn(self, name: str, args: list[str], env: dict) -> Process:
        log = self.root / f"{name}.log"
        handle = open(log, "ab")
        popen = subprocess.Popen([sys.executable, "-m", "dora_cli.main", *args], cwd=ROOT, env=env, stdout=handle,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        handle.close()
        return Process(name, popen, log)

    def start_api(self) -> Api:
        port = free_port()
        self.api_process = self._spawn("api", ["api", "--port", str(port)], self.env)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url), timeout=60, what=f"the API at {url}; log:\n{self.api_process.text()}")
        self.api = Api(url, self._create_key())
        return self.api

    def start_another_api(self) -> Api:
        """One more `dora api` process on the same backends, with the first one's key."""
        port = free_port()
        process = self._spawn(f"api-{len(self.more_apis) + 2}", ["api", "--port", str(port)], self.env)
        self.more_apis.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url), timeout=60, what=f"the API at {url}; log:\n{process.text()}")
        return Api(url, self.api.key)

    def start_worker(self, work_dir: str | None = None) -> Process:
        env = self.env | {"DORA_WORK_DIR": work_dir or str(self.root / "work")}
        worker = self._spawn(f"worker-{len(self.workers) + 1}", ["worker"], env)
        self.workers.append(worker)
        return _celery_ready(worker, timeout=90)

    def start_servers(self, count: int = 1, *, wait: bool = True) -> list[tuple[Process, str]]:
        """`count` more `dora serve` processes (every base model, on the CPU, heartbeat every 0.5 s), started
        together; (process, url) of each once it answers /healthz (its models loaded, its row registered),
        or at once without `wait` (then `wait_for_servers`). The stack's environment must hold
        DORA_INFERENCE_SECRET, as the API's must."""
        started = []
        for _ in range(count):
            port = free_port()
            env = self.env | {"DORA_SERVE_DEVICE": "cpu", "DORA_SERVE_HEARTBEAT_SECONDS": "0.5",
                              "DORA_MODEL_CACHE_DIR": str(self.root / "model-cache")}
            process = self._spawn(f"serve-{len(self.servers) + 1}", ["serve", "--port", str(port)], env)
            self.servers.append(process)
            self.server_urls.append(f"http://127.0.0.1:{port}")
            started.append((process, f"http://127.0.0.1:{port}"))
        if wait:
            self.wait_for_servers(started)
        return started

    def wait_for_servers(self, started: list[tuple[Process, str]]) -> None:
        for process, url in started:
            wait_for(lambda p=process, u=url: _healthy(u) or not p.alive(), timeout=90, what=f"{process.name} at {url}")
            assert process.alive(), process.text()

    def start_evals(self) -> Process:
        """One more `dora evals` (the eval executor) on the stack's backends, with a short lease and sweep.
        The stack's environment must hold DORA_INFERENCE_SECRET."""
        env = self.env | {"DORA_EVAL_LEASE_SECONDS": "4", "DORA_EVAL_HEARTBEAT_SECONDS": "1",
                          "DORA_EVAL_SWEEP_INTERVAL_SECONDS": "1", "DORA_EVAL_REQUEUE_AFTER_SECONDS": "2"}
        process = self._spawn(f"evals-{len(self.executors) + 1}", ["evals"], env)
        self.executors.append(process)
        return _celery_ready(process, timeout=60)

    def publish(self, job_id: str) -> bool:
        from store.queue import publish_job

        return publish_job(job_id, broker_url=self.env["DORA_BROKER_URL"])

    def _create_key(self) -> str:
        from store.db import session_scope
        from store.tenants import create_api_key

        with session_scope(self.settings) as session:
            return create_api_key(session, tenant_name=f"e2e-{uuid.uuid4().hex[:8]}").key

    def stop(self) -> None:
        """SIGKILL every process group of the stack: a teardown, not a test of the shutdown (the tests
        that stop a worker gracefully call Process.stop themselves). A warm shutdown of an idle
        worker takes 6-9 s on this machine, a teardown's worth of waiting per stack."""
        for process in [*self.workers, self.api_process, *self.more_apis, *self.servers, *self.executors]:
            if process is not None:
                process.kill()


def _celery_ready(process: Process, *, timeout: float) -> Process:
    """A Celery process (`dora worker`, `dora evals`) once it logged ' ready.'; one that died first fails the
    test with its log."""
    wait_for(lambda: " ready." in process.text() or not process.alive(), timeout=timeout,
             what=f"{process.name} to start")
    assert process.alive(), process.text()
    return process


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def make_stack(root: Path, *, database_url: str, broker_url: str, tiny_model_dir: Path,
               base_models: dict[str, Any] | None = None, extra_env: dict[str, str] | None = None) -> Stack:
    """A stack's environment on these backends (its processes not started yet).

    `base_models`: registrations beside tiny-llama (a real model's, say), merged into
    DORA_BASE_MODELS; `extra_env`: more variables for every process (DORA_MODEL_CACHE_DIR, ...)."""
    from store.migrate import upgrade
    from store.settings import Settings

    upgrade(Settings(database_url=database_url))
    models = {"tiny-llama": str(tiny_model_dir)} | (base_models or {})
    env = dict(os.environ) | FAST | {
        "DORA_DATABASE_URL": database_url, "DORA_BROKER_URL": broker_url,
        "DORA_STORAGE_URL": str(root / "artifacts"),
        "DORA_BASE_MODELS": json.dumps(models),
    } | (extra_env or {})
    return Stack(root=root, env=env)


@contextmanager
def running_stack(root: Path, *, database_url: str, broker_url: str, tiny_model_dir: Path,
                  base_models: dict[str, Any] | None = None,
                  extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """An API and a worker on these backends, stopped (with their children) on exit; `base_models`
    and `extra_env` as in make_stack."""
    stack = make_stack(root, database_url=database_url, broker_url=broker_url, tiny_model_dir=tiny_model_dir,
                       base_models=base_models, extra_env=extra_env)
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


@contextmanager
def serving_stack(root: Path, *, tiny_model_dir: Path, servers: int = 1, evals: bool = False,
                  before_worker: Callable[[Stack], None] | None = None) -> Iterator[Stack]:
    """An API, a worker, `servers` inference servers (`stack.servers`) and, with `evals`, an eval
    executor, on SQLite in `root`, with a shared inference secret; the servers load their models while
    the others start. `before_worker(stack)` runs once the API answers (creating a job that trains
    while the worker starts, say)."""
    stack = make_stack(root, database_url=f"sqlite:///{root / 'dora.db'}",
                       broker_url=f"sqla+sqlite:///{root / 'broker.db'}", tiny_model_dir=tiny_model_dir,
                       extra_env={"DORA_INFERENCE_SECRET": f"e2e-inference-secret-{uuid.uuid4().hex}"})
    try:
        started = stack.start_servers(servers, wait=False)
        stack.start_api()
        if before_worker is not None:
            before_worker(stack)
        stack.start_worker()
        if evals:
            stack.start_evals()
        stack.wait_for_servers(started)
        yield stack
    finally:
        stack.stop()
