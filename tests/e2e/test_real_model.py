"""The README's five-minute tour and docs/service.md's real-model walkthrough, as written, against a real `make run`.

`make run` starts in a folder laid out as a fresh clone of the repository, for what `make run`
and the tour read: the Makefile, `.venv` (a link to the virtual environment running the tests) and
the demo model, already built once (a link to the session's tiny model; building it is not what is
timed here). It runs as `make -o .venv/.installed run`, the Makefile's own recipe with the set-up
step held off, so the test's environment is never rebuilt; that recipe is `dora up --demo`: the
API, a worker and the webhook sender, on SQLite, no DORA_* variable set but a free DORA_PORT and
the test cache of the converted SmolLM2 (pre-filled by tests/support/real_model.py, so the worker
finds it). The time from starting it to the API's first answer (GET /v1/models with the demo key
it wrote) is measured and printed.

1. The tour (README.md, "## A five-minute tour"): its first block must be `make run`, the command
   started above. Every later ```bash block goes, in order, into one bash (`-e -o pipefail`: a
   failing command fails the test), as pasted into one terminal, so the variables of one block
   are there in the next; each ```python block runs in this process, in the clone's folder, but
   the openai client's training block, which is only compiled: it trains a second job the same
   way, and the client's job calls are covered by tests/api/test_openai_client.py and
   tests/e2e/test_redis_postgres.py. The openai client's chat block ("Talk to it") runs against
   the inference server `make run` started: the base, the fine-tuned model and a checkpoint
   answer. PEFT loads the downloaded adapter onto the tiny base model; its logits must be the
   merged model's, and differ from the base model's.
2. The real model (docs/service.md, "## A real model"): its ```bash block runs unchanged through
   bash against the same `make run`; then, through the API: the validation loss went down, the
   samples changed from the base model's answers, the adapter names the model's public id, and
   the merged model came back in the base's bf16.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import e2e_scenarios as scenarios
from tests.support.doc_blocks import DOCS, README, ROOT, Shell, commands, fenced_blocks, page_section
from tests.support.jobs import wait_for
from tests.support.real_model import REAL_MODEL_PUBLIC_ID, REAL_MODEL_SOURCE, TEST_MODEL_CACHE, real_model_dir
from tests.support.services import free_port
from tests.support.stack import TIMINGS

TOUR = (README, "## A five-minute tour")
WALKTHROUGH = (DOCS / "service.md", "## A real model")
MODEL = "smollm2-135m-instruct"
# the tour's job trains the tiny model for seconds; the bound leaves room for a loaded machine
TOUR_BLOCK_SECONDS = 300
# the real model: about 2 minutes alone on the 2-core CI machine; the bound leaves room for a loaded one
WALKTHROUGH_SECONDS = 900


@dataclass
class MakeRun:
    """`make run` in a fresh clone: its folder, process, address and demo key."""

    clone: Path
    process: subprocess.Popen
    output: Path
    url: str
    key: str

    def log(self, name: str) -> str:
        """The end of var/logs/<name>.log (api, worker, webhooks) and what `make run` printed."""
        path = self.clone / "var" / "logs" / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return f"{text[-6000:]}\n--- make run printed:\n{self.output.read_text(errors='replace')[-3000:]}"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)


def makefile_run_recipe() -> str:
    """What `make run` runs (the Makefile's recipe), so the test starts what the tour says to."""
    recipe = re.search(r"^run:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    assert recipe, "the Makefile has no `run` target"
    return recipe.group(1).replace("$(VENV)", ".venv")


def tour_blocks() -> list[tuple[str, str]]:
    """The tour's fenced blocks after its first, which must be `make run` alone (the command the
    fixture started)."""
    blocks = fenced_blocks(page_section(*TOUR))
    first = [shlex.split(command, comments=True) for command in commands(blocks[0][1])] if blocks else []
    assert blocks[0][0] == "bash" and first == [["make", "run"]], f"the tour must start with `make run`: {blocks[:1]}"
    return blocks[1:]


def banner_pattern(text_block: str, url: str) -> re.Pattern:
    """The tour's picture of make run's banner as a pattern for the real one: its URLs, key and the
    demo model's path (a link here) stand for what this run has."""
    pattern = re.escape(text_block.strip()).replace(re.escape("http://127.0.0.1:8000"), re.escape(url))
    pattern = pattern.replace(re.escape("http://127.0.0.1:8100"), r"http://127\.0\.0\.1:\d+")  # dora serve's
    pattern = pattern.replace(re.escape("sk-dora-..."), r"sk-dora-\S+")
    return re.compile(pattern.replace(re.escape("/path/to/dora-tuner/var/models/tiny-llama"), r"\S+"))


def walkthrough_block() -> str:
    blocks = [body for language, body in fenced_blocks(page_section(*WALKTHROUGH)) if language == "bash"]
    assert len(blocks) == 1, f"expected one bash block under {WALKTHROUGH[1]!r} in {WALKTHROUGH[0].name}"
    return blocks[0]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        found += (frontier := [child for parent in frontier for child in children.get(parent, [])])
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL `make run` and every process under it, in their own sessions too (the API, the
    worker with its job processes and reconciler, the webhook sender): a teardown, not a test of
    Ctrl-C (tests/worker/test_up.py and the worker's e2e tests stop them gracefully)."""
    for _ in range(2):  # a second pass for a process forked meanwhile (the worker refills its pool)
        groups = set()
        for pid in [process.pid, *_descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
    process.wait(timeout=10)


@contextlib.contextmanager
def make_run(clone: Path) -> Iterator[MakeRun]:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("DORA_")} | {
        "DORA_PORT": str(port), "DORA_MODEL_CACHE_DIR": str(TEST_MODEL_CACHE),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    output = clone / "make-run.out"
    started = time.monotonic()
    with open(output, "wb") as terminal:
        process = subprocess.Popen(["make", "-o", ".venv/.installed", "run"], cwd=clone, env=env, stdout=terminal,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def first_answer() -> str | None:
            assert process.poll() is None, f"make run exited ({process.returncode}):\n{output.read_text()}"
            key_file = clone / "var" / "demo-api-key"
            key = key_file.read_text().strip() if key_file.is_file() else ""
            try:
                answer = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=2)
            except httpx.HTTPError:
                return None
            return key if key and answer.status_code == 200 else None

        key = wait_for(first_answer, timeout=120, what=f"make run's API at {url}", interval=0.1)
        seconds = round(time.monotonic() - started, 1)
        TIMINGS["make run -> the API's first answer (demo model built before)"] = {"seconds": seconds}
        print(f"make run -> the API's first answer: {seconds} s")
        yield MakeRun(clone, process, output, url, key)
    finally:
        _kill_tree(process)


@pytest.fixture(scope="module")
def running(tmp_path_factory, tiny_model_dir) -> Iterator[MakeRun]:
    real_model_dir()  # convert once into the test cache before the worker looks there
    clone = tmp_path_factory.mktemp("clone")
    (clone / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    (clone / "Makefile").write_bytes((ROOT / "Makefile").read_bytes())
    (clone / "var" / "models").mkdir(parents=True)
    (clone / "var" / "models" / "tiny-llama").symlink_to(tiny_model_dir, target_is_directory=True)
    with make_run(clone) as running:
        assert makefile_run_recipe() == ".venv/bin/dora up --demo", makefile_run_recipe()
        yield running


@pytest.mark.timeout(TOUR_BLOCK_SECONDS + 120)
def test_the_readme_tour_pasted_block_by_block_ends_with_the_adapter_loaded_by_peft(running, tiny_model_dir,
                                                                                   monkeypatch):
    started = time.monotonic()
    env = {name: value for name, value in os.environ.items() if not name.startswith("DORA_")} | {
        "DORA_PORT": running.url.rsplit(":", 1)[1], "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    shell = Shell(running.clone, env)
    monkeypatch.chdir(running.clone)
    monkeypatch.setenv("DORA_PORT", env["DORA_PORT"])  # the chat block's client reads it, as a reader's shell has it
    ran: dict[str, int] = {"bash": 0, "text": 0, "python": 0, "compiled": 0}
    namespace: dict = {}
    try:
        for language, block in tour_blocks():
            if language == "bash":
                try:
                    printed = shell.run(block, timeout=TOUR_BLOCK_SECONDS)
                except AssertionError as error:
                    raise AssertionError(f"{error}\n--- worker log:\n{running.log('worker')}") from None
                print(printed)
                ran["bash"] += 1
            elif language == "text":  # what make run printed
                wait_for(lambda: "Next:" in running.output.read_text(), timeout=30, what="make run's banner")
                assert banner_pattern(block, running.url).search(running.output.read_text()), \
                    f"make run printed:\n{running.output.read_text()}\nthe README shows:\n{block}"
                ran["text"] += 1
            elif language == "python":
                code = compile(block, f"{README.name}, {TOUR[1]}, python block", "exec")
                if "fine_tuning.jobs.create" in block:  # the openai client's training block
                    ran["compiled"] += 1
                    continue
                exec(code, namespace)  # the README's own code, as a reader pastes it
                ran["python"] += 1
    finally:
        shell.close()
    assert ran["bash"] >= 5 and ran["text"] == 1 and ran["python"] >= 2 and ran["compiled"] == 1, ran
    TIMINGS["README tour (its tiny-llama job, curl, PEFT)"] = {"seconds": round(time.monotonic() - started, 1)}

    (job,) = [job for job in running.api().get("/v1/fine_tuning/jobs").json()["data"] if job["model"] == "tiny-llama"]
    assert job["status"] == "succeeded", job
    samples = running.api().get(f"/v1/fine_tuning/jobs/{job['id']}/samples", params={"limit": 100}).json()["data"]
    assert {sample["step"] for sample in samples} >= {0, job["progress"]["step"]}, samples  # before and after
    # "Talk to it": the base, the fine-tune and a checkpoint answered through the inference server
    assert namespace["answer"].choices[0].finish_reason in ("stop", "length"), namespace["answer"]
    assert namespace["checkpoint"].startswith(job["fine_tuned_model"] + ":ckpt-step-"), namespace["checkpoint"]
    assert namespace["model"].peft_config["default"].use_dora
    assert namespace["gap"] < 1e-3, namespace["gap"]
    # the downloaded adapter on the base model computes what the downloaded merged model computes
    scenarios.same_logits_from_adapter_and_merged(running.clone / "adapter", running.clone / "merged", tiny_model_dir)


@pytest.mark.timeout(WALKTHROUGH_SECONDS + 300)
def test_the_real_model_walkthrough_teaches_smollm2(running, tmp_path):
    started = time.monotonic()
    env = {name: value for name, value in os.environ.items() if not name.startswith("DORA_")} | {
        "DORA_PORT": running.url.rsplit(":", 1)[1]}
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough_block()], cwd=running.clone, env=env,
                              capture_output=True, text=True, timeout=WALKTHROUGH_SECONDS)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"the walkthrough ran past {WALKTHROUGH_SECONDS} s; stdout:\n{timeout.stdout}\n"
                    f"worker log (end):\n{running.log('worker')}")
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\nworker:\n{running.log('worker')}"
    assert "status: succeeded" in done.stdout, done.stdout
    TIMINGS["real model (SmolLM2-135M, docs/service.md walkthrough)"] = {"seconds": round(time.monotonic() - started,
                                                                                         1)}
    api = running.api()
    (job,) = [job for job in api.get("/v1/fine_tuning/jobs").json()["data"] if job["model"] == MODEL]
    assert f"base model {MODEL} -> {REAL_MODEL_SOURCE}" in running.output.read_text()  # what make run registered

    metrics = api.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics", params={"limit": 100}).json()["data"]
    evals = [(point["step"], point["values"]["eval_loss"]) for point in metrics if "eval_loss" in point["values"]]
    assert len(evals) >= 2 and evals[-1][1] < evals[0][1], evals  # the validation loss went down

    samples = api.get(f"/v1/fine_tuning/jobs/{job['id']}/samples", params={"limit": 100}).json()["data"]
    by_step: dict[int, dict[int, str]] = {}
    for sample in samples:
        by_step.setdefault(sample["step"], {})[sample["index"]] = sample["answer"]
    first, last = min(by_step), max(by_step)
    assert last == 15 and len(by_step[last]) == 4, by_step
    assert by_step[first] != by_step[last], by_step  # training changed what the model says
    for line in done.stdout.splitlines():
        print(line)  # docs/service.md quotes this output

    archives = {a["name"]: a["download_url"] for a in api.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts")
                .raise_for_status().json()["data"]}
    adapter = scenarios.extract(api.get(archives["adapter"]).raise_for_status().content, tmp_path) / "adapter"
    merged = scenarios.extract(api.get(archives["merged"]).raise_for_status().content, tmp_path) / "merged"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == REAL_MODEL_PUBLIC_ID
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
