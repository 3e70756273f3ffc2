"""A real `dora serve` process, started as a user starts it (environment variables, a free port), and
a client that posts a `GenerationRequest` and decodes the NDJSON events.

    with serve_process(root, database_url=..., base_models={"tiny-llama": str(dir)}) as server:
        status, events = server.generate({"base_model": "tiny-llama", "prompt": "hi"})

The database must be migrated (store.migrate.upgrade). The server's log is `root/serve.log`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dora_contract.serving import GENERATE_PATH, SECRET_HEADER, decode_event
from tests.support.jobs import wait_for
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def serve_env(root: Path, *, database_url: str, base_models: dict, port: int, secret: str,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `dora serve` on CPU with its storage and caches under `root`."""
    return dict(os.environ) | {
        "DORA_DATABASE_URL": database_url, "DORA_STORAGE_URL": str(root / "artifacts"),
        "DORA_BASE_MODELS": json.dumps(base_models), "DORA_MODEL_CACHE_DIR": str(root / "model-cache"),
        "DORA_INFERENCE_SECRET": secret, "DORA_SERVE_PORT": str(port), "DORA_SERVE_DEVICE": "cpu",
        "DORA_SERVE_HEARTBEAT_SECONDS": "0.5", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
    } | (extra or {})


@dataclass
class ServeProcess:
    url: str
    secret: str
    popen: subprocess.Popen
    log: Path
    env: dict = field(default_factory=dict)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def headers(self) -> dict[str, str]:
        return {SECRET_HEADER: f"Bearer {self.secret}"}

    def generate(self, body: dict, *, headers: dict | None = None, timeout: float = 60) -> tuple[int, list]:
        """(HTTP status, decoded events) of one request read to its end."""
        response = httpx.post(self.url + GENERATE_PATH, json=body, timeout=timeout,
                              headers=self.headers if headers is None else headers)
        return response.status_code, [decode_event(line) for line in response.text.splitlines() if line]

    def health(self) -> dict:
        return httpx.get(self.url + "/healthz", timeout=5).raise_for_status().json()

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (a graceful shutdown: the row is removed), SIGKILL past `timeout`; the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        return self.popen.returncode


def start_serve(root: Path, env: dict[str, str], *, wait: bool = True) -> ServeProcess:
    """`python -m dora_cli.main serve` in a session of its own, its output in root/serve.log."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / "serve.log"
    with open(log, "ab") as handle:
        popen = subprocess.Popen([sys.executable, "-m", "dora_cli.main", "serve"], cwd=ROOT, env=env,
                                 stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServeProcess(url=f"http://127.0.0.1:{env['DORA_SERVE_PORT']}", secret=env["DORA_INFERENCE_SECRET"],
                          popen=popen, log=log, env=env)
    if wait:
        wait_for(lambda: _healthy(server) or popen.poll() is not None, timeout=90,
                 what=f"dora serve at {server.url}")
        assert popen.poll() is None, server.text()
    return server


@contextmanager
def serve_process(root: Path, *, database_url: str, base_models: dict,
                  extra_env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    """A running `dora serve` (a new secret, a free port), stopped on exit."""
    env = serve_env(root, database_url=database_url, base_models=base_models, port=free_port(),
                    secret=secrets.token_hex(16), extra=extra_env)
    server = start_serve(root, env)
    try:
        yield server
    finally:
        server.stop()


def _healthy(server: ServeProcess) -> bool:
    try:
        return httpx.get(server.url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
