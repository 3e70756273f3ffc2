"""`dora up` (what `make run` runs) as the README starts it, in this process: its own steps run for
real (settings, port checks, migrations, the demo model and key, the environment and log files it
gives each process, the inference secret, the banner); the four processes it would start are
stand-ins, which is what keeps this cheap (tests/e2e runs the real API and worker processes,
tests/serve a real `dora serve`)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from dora_cli import worker_commands
from dora_cli.main import main
from tests.support.services import free_port


class _Child:
    """Stands in for a started process: running, or exited with `code`."""

    def __init__(self, code: int | None = None) -> None:
        self.returncode, self.pid = code, 0

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum) -> None:
        self.returncode = 0

    def wait(self, timeout=None) -> int:
        return self.returncode


@pytest.fixture
def checkout(tmp_path, monkeypatch, tiny_model_dir) -> dict:
    """The repository root of a clone where the demo model was built once (var/models/tiny-llama),
    no DORA_* variable set but a free DORA_PORT; `dora up`'s processes are recorded, not started."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var" / "models").mkdir(parents=True)
    (tmp_path / "var" / "models" / "tiny-llama").symlink_to(tiny_model_dir, target_is_directory=True)
    for name in [name for name in os.environ if name.startswith("DORA_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DORA_PORT", str(free_port()))
    started: dict = {"children": {}, "supervised": None}

    def start(command, env, log=None):
        started["children"][command[3]] = {"env": env, "log": log, "command": command}
        return _Child()

    def supervise(children, grace=60.0, logs=None):
        started["supervised"] = {"children": sorted(children), "logs": logs}
        return 0

    monkeypatch.setattr(worker_commands, "_start", start)
    monkeypatch.setattr(worker_commands, "_wait_healthy", lambda url, api, timeout=60.0: True)
    monkeypatch.setattr(worker_commands, "_supervise", supervise)
    return started


@pytest.mark.parametrize("max_job_gpus", [None, "1"], ids=["make-run", "DORA_MAX_JOB_GPUS=1"])
def test_dora_up_demo_starts_quiet_and_prints_where_everything_is(checkout, monkeypatch, capsys, max_job_gpus):
    if max_job_gpus:
        monkeypatch.setenv("DORA_MAX_JOB_GPUS", max_job_gpus)
    port = os.environ["DORA_PORT"]
    monkeypatch.setenv("DORA_SERVE_PORT", str(free_port()))  # else the API's port + 100, which may be taken
    assert main(["up", "--demo"]) == 0
    key = Path("var/demo-api-key").read_text().strip()
    banner = capsys.readouterr().out
    url = f"http://127.0.0.1:{port}"
    for shown in (f"dashboard  {url}/ui/", f"API        {url}/v1", f"API docs   {url}/docs",
                  f"API key    {key}   (saved in var/demo-api-key)",
                  f"inference  http://127.0.0.1:{os.environ['DORA_SERVE_PORT']}   (dora serve",
                  "logs       var/logs/api.log, var/logs/worker.log, var/logs/webhooks.log, var/logs/evals.log, "
                  "var/logs/serve.log",
                  "`dora up --verbose` shows them here",
                  f'curl -s {url}/v1/models -H "Authorization: Bearer $(cat var/demo-api-key)"'):
        assert shown in banner, banner
    children = checkout["children"]
    assert sorted(children) == ["api", "evals", "serve", "webhooks", "worker"] == checkout["supervised"]["children"]
    assert {name: str(child["log"]) for name, child in children.items()} == {
        name: f"var/logs/{name}.log" for name in ("api", "worker", "webhooks", "evals", "serve")}
    assert children["evals"]["command"][3:] == ["evals"]
    for child in children.values():
        assert child["env"]["DORA_MAX_JOB_GPUS"] == (max_job_gpus or "1")
        assert json.loads(child["env"]["DORA_BASE_MODELS"])["tiny-llama"] == str(Path("var/models/tiny-llama")
                                                                                .resolve())
    assert children["api"]["command"][-4:] == ["--host", "127.0.0.1", "--port", port]
    assert children["serve"]["command"][3:] == ["serve"]
    assert children["serve"]["env"]["DORA_SERVE_PORT"] == os.environ["DORA_SERVE_PORT"]


def test_dora_up_makes_an_inference_secret_for_the_processes_that_call_or_are_the_inference_server(checkout):
    assert main(["up"]) == 0
    children = checkout["children"]
    secret = children["api"]["env"]["DORA_INFERENCE_SECRET"]
    assert len(secret) >= 32 and children["serve"]["env"]["DORA_INFERENCE_SECRET"] == secret
    # the eval executor's judges and samples, the worker's reinforcement judges (worker/training_judge.py)
    assert children["evals"]["env"]["DORA_INFERENCE_SECRET"] == children["worker"]["env"]["DORA_INFERENCE_SECRET"] \
        == secret
    assert "DORA_INFERENCE_SECRET" not in children["webhooks"]["env"]
    assert children["serve"]["env"]["DORA_SERVE_PORT"] == str(int(os.environ["DORA_PORT"]) + 100)
    checkout["children"].clear()
    assert main(["up"]) == 0  # a new one each run
    assert checkout["children"]["api"]["env"]["DORA_INFERENCE_SECRET"] != secret


def test_dora_up_passes_the_operators_inference_secret_as_it_is(checkout, monkeypatch):
    monkeypatch.setenv("DORA_INFERENCE_SECRET", "s" * 20)
    assert main(["up"]) == 0
    children = checkout["children"]
    assert children["api"]["env"]["DORA_INFERENCE_SECRET"] == children["serve"]["env"]["DORA_INFERENCE_SECRET"] == \
        children["worker"]["env"]["DORA_INFERENCE_SECRET"] == "s" * 20
    assert "DORA_INFERENCE_SECRET" not in children["webhooks"]["env"]


def test_the_inference_servers_port_in_use_stops_dora_up_naming_its_setting(checkout, monkeypatch, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("DORA_SERVE_PORT", str(port))
        assert main(["up"]) == 2
    err = capsys.readouterr().err
    assert f"error: port {port} on 127.0.0.1 is already in use" in err, err
    assert f"with DORA_SERVE_PORT, e.g. DORA_SERVE_PORT={port + 1} make run" in err, err
    assert checkout["children"] == {}


def test_dora_up_verbose_leaves_the_logs_on_the_terminal(checkout, capsys):
    assert main(["up", "--verbose"]) == 0
    assert all(child["log"] is None for child in checkout["children"].values())
    banner = capsys.readouterr().out
    assert "var/logs" not in banner and "var/demo-api-key" not in banner
    assert "Next: create an API key (`dora keys create --tenant NAME`)" in banner


@pytest.mark.parametrize("argv", [["up", "--demo"], ["up", "--demo", "--port", "PORT"]], ids=["DORA_PORT", "--port"])
def test_a_port_in_use_stops_dora_up_at_once_naming_the_port_and_the_setting(checkout, capsys, argv):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if "PORT" in argv:
            argv = [*argv[:-1], str(port)]
        else:
            os.environ["DORA_PORT"] = str(port)  # restored by the fixture's monkeypatch
        assert main(argv) == 2
    err = capsys.readouterr().err
    setting = "--port" if "--port" in argv else "DORA_PORT"
    assert f"error: port {port} on 127.0.0.1 is already in use" in err and f"with {setting}" in err, err
    assert checkout["children"] == {} and not Path("var/dora.db").exists()  # nothing migrated, nothing started


@pytest.mark.parametrize("command", ["up", "worker", "api", "serve"])
def test_a_base_model_path_that_does_not_exist_stops_the_start(checkout, monkeypatch, capsys, command):
    """`dora up`, `dora worker` and `dora serve` refuse; `dora api` only warns: it never loads a model, and in
    a split deployment (docker-compose.yml) its host does not hold them."""
    from serve.settings import get_serve_settings
    from store.settings import get_settings
    from worker.settings import get_worker_settings

    monkeypatch.setenv("DORA_INFERENCE_SECRET", "s" * 20)  # else `dora serve` stops before, for want of it
    monkeypatch.setattr("dora_cli.serve_commands._schema_problem", lambda settings: pytest.fail("serve started"))

    monkeypatch.setenv("DORA_BASE_MODELS", json.dumps({
        "mine": "/no/such/model", "gguf": "./no-such.gguf", "hub": "org/name", "packaged": "package:no-such",
        "built": "./var/models/tiny-llama"}))
    monkeypatch.setenv("DORA_GPUS", "1")  # `dora worker` sets it; restored afterwards
    monkeypatch.setenv("DORA_RECONCILE_INTERVAL_SECONDS", "0")  # should the check let `dora worker` by: no reconciler
    monkeypatch.setattr(worker_commands, "_schema_problem", lambda settings: pytest.fail("the worker started"))
    served = []
    monkeypatch.setattr("store.migrate.check_schema", lambda engine: None)
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: served.append(args))
    get_settings.cache_clear(), get_worker_settings.cache_clear(), get_serve_settings.cache_clear()
    try:
        assert main([command]) == (0 if command == "api" else 2)
    finally:
        get_settings.cache_clear(), get_worker_settings.cache_clear(), get_serve_settings.cache_clear()
    level, after = ("warning", " (on this host; the workers must have it)") if command == "api" else ("error", "")
    assert capsys.readouterr().err.splitlines() == [
        f"{level}: DORA_BASE_MODELS: base model 'mine': no such folder '/no/such/model' (/no/such/model); build or "
        f"copy the model there, or fix the path{after}",
        f"{level}: DORA_BASE_MODELS: base model 'gguf': no such GGUF file './no-such.gguf' ({Path.cwd()}/no-such.gguf);"
        f" build or copy the model there, or fix the path{after}"]
    assert checkout["children"] == {} and len(served) == (command == "api")


def test_a_process_that_exits_stops_the_others_and_the_end_of_its_log_is_shown(tmp_path, capsys):
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "worker")}
    logs["api"].write_text("starting\nerror: the database schema is outdated: run `dora migrate`\n")
    children = {"api": _Child(code=2), "worker": _Child()}
    assert worker_commands._supervise(children, grace=1, logs=logs) == 1
    err = capsys.readouterr().err
    assert "error: api exited (code 2); stopping" in err
    assert f"--- the end of {logs['api']}:\nstarting\nerror: the database schema is outdated" in err
    assert children["worker"].returncode == 0  # stopped
