"""Eval runs executed against a real `dora serve` (the tiny model): counts equal to the ones worked
out by hand from the server's own answers, every item graded exactly once through a SIGKILL of the
`dora evals` process, a cancel between batches, and a run with no server for its model failed.

The model is `endless`: the tiny model unable to choose an EOS token, so every completion is
exactly `max_completion_tokens` long (its usage is known without asking) and takes long enough
for the executor to be killed mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dora_contract.serving import ADAPTER_FILES, TextDelta
from store import evals as eval_store
from store.db import session_scope
from store.eval_execution import RESOLVED_KEY
from store.eval_status import EvalRunStatus
from store.inference_client import InferenceClient
from store.migrate import upgrade
from store.models import EvalOutputItem, EvalRun, File, Job, Tenant
from store.queue import publish_eval_run
from store.storage import open_storage
from store.tenants import create_api_key
from tests.support.jobs import wait_for
from tests.support.serve_process import ROOT, serve_process
from tests.support.serving import load_tiny, save_endless_model
from worker.eval_grading import grade_item
from worker.eval_run import run_eval
from worker.settings import EvalRunnerSettings

MAX_TOKENS = 6
TEMPLATE = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "{{item.question}}"}]
CRITERION = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.expected}}", "operation": "eq"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evals")


@pytest.fixture(scope="module")
def endless_dir(root) -> Path:
    from dora_core.tiny_model import make_tiny_model

    return save_endless_model(make_tiny_model(root / "tiny"), root / "endless")


@pytest.fixture(scope="module")
def server(root, endless_dir):
    url = f"sqlite:///{root / 'dora.db'}"
    upgrade(EvalRunnerSettings(database_url=url))
    with serve_process(root / "serve", database_url=url, base_models={"endless": str(endless_dir)}) as server:
        yield server


@pytest.fixture(scope="module")
def settings(root, server) -> EvalRunnerSettings:
    return EvalRunnerSettings(database_url=f"sqlite:///{root / 'dora.db'}", storage_url=str(root / "artifacts"),
                              broker_url=f"sqla+sqlite:///{root / 'broker.db'}", inference_secret=server.secret,
                              eval_batch_items=4, eval_lease_seconds=4, eval_heartbeat_seconds=1,
                              eval_server_wait_seconds=0)


@pytest.fixture(scope="module")
def tenant_id(settings) -> str:
    with session_scope(settings) as session:
        return create_api_key(session, tenant_name="t-evals").tenant_id


def greedy(server, question: str) -> str:
    """The server's own answer to the item's chat (what the run must get)."""
    messages = [TEMPLATE[0], {"role": "user", "content": question}]
    status, events = server.generate({"base_model": "endless", "messages": messages,
                                      "sampling": {"max_tokens": MAX_TOKENS, "temperature": 0}})
    assert status == 200, events
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def make_run(settings, tenant_id: str, content: list[dict], *, base_model: str = "endless",
             criteria: list[dict] | None = None, bound: int | None = None) -> str:
    with session_scope(settings) as session:
        eval_row = eval_store.create_eval(session, tenant_id=tenant_id, name="exact answers", metadata=None,
                                          data_source_config={"type": "custom"},
                                          testing_criteria=criteria or [CRITERION])
        data_source = {"type": "completions", "model": base_model,
                       "input_messages": {"type": "template", "template": TEMPLATE},
                       "sampling_params": {"temperature": 0, "max_completion_tokens": MAX_TOKENS},
                       "source": {"type": "file_content", "content": content},
                       RESOLVED_KEY: {"base_model": base_model, "adapter": None}}
        if bound is not None:  # no max_completion_tokens: the operator's bound the API wrote applies
            data_source["sampling_params"].pop("max_completion_tokens")
            data_source[RESOLVED_KEY]["max_tokens_default"] = bound
        return eval_store.create_run(session, eval_row=eval_row, name=None, data_source=data_source,
                                     model=base_model, metadata=None).id


def run_in_process(settings, run_id: str, grade=grade_item) -> str:
    with InferenceClient(settings, lambda: session_scope(settings)) as client:
        return run_eval(run_id, settings=settings, client=client, storage=open_storage(settings.storage_url),
                        owner="test", grade=grade)


def run_row(settings, run_id: str) -> EvalRun:
    with session_scope(settings) as session:
        return session.get(EvalRun, run_id)


def items_per_index(settings, run_id: str) -> Counter:
    with session_scope(settings) as session:
        rows = session.execute(select(EvalOutputItem.datasource_item_id, func.count())
                               .where(EvalOutputItem.run_id == run_id).group_by(EvalOutputItem.datasource_item_id))
        return Counter(dict(rows.all()))


def questions(n: int) -> list[str]:
    return [f"What is {i} plus {i}?" for i in range(n)]


def test_a_run_over_ten_items_completes_with_the_hand_computed_counts(server, settings, tenant_id):
    asked = questions(8)
    answers = [greedy(server, question) for question in asked]
    # 0-3: the expected answer is the model's own (pass); 4-7: another one (fail); 8-9: no question (error)
    content = ([{"item": {"question": q, "expected": a}} for q, a in zip(asked[:4], answers[:4], strict=True)]
               + [{"item": {"question": q, "expected": "not " + a}} for q, a in zip(asked[4:], answers[4:],
                                                                                  strict=True)]
               + [{"item": {"expected": "x"}}, {"item": {"prompt": "no question field"}}])
    run_id = make_run(settings, tenant_id, content)

    assert run_in_process(settings, run_id) == "completed"

    run = run_row(settings, run_id)
    assert (run.status, run.error, run.attempt) == ("completed", None, 1)
    assert run.result_counts == {"total": 10, "passed": 4, "failed": 4, "errored": 2}
    assert run.per_testing_criteria_results == [{"testing_criteria": "exact", "passed": 4, "failed": 4}]
    [usage] = run.per_model_usage
    assert (usage["model_name"], usage["invocation_count"], usage["completion_tokens"]) == ("endless", 8,
                                                                                            8 * MAX_TOKENS)
    with session_scope(settings) as session:
        items = {i.datasource_item_id: i for i in session.scalars(select(EvalOutputItem).where(
            EvalOutputItem.run_id == run_id))}
    assert [items[i].status for i in range(10)] == ["pass"] * 4 + ["fail"] * 4 + ["error"] * 2
    assert [items[i].sample["output"][0]["content"] for i in range(8)] == answers
    assert {items[i].sample["finish_reason"] for i in range(8)} == {"length"}
    assert items[0].sample["input"] == [TEMPLATE[0], {"role": "user", "content": asked[0]}]
    assert items[0].results == [{"name": "exact", "type": "string_check", "score": 1.0, "passed": True,
                                 "sample": None, "error": None}]
    assert items[4].results[0]["score"] == 0.0 and items[4].results[0]["passed"] is False
    assert "question" in items[8].sample["error"]["message"] and items[8].results == []
    assert usage["prompt_tokens"] == sum(items[i].sample["usage"]["prompt_tokens"] for i in range(8)) > 0


def test_cancel_between_batches_ends_the_run_canceled_with_the_graded_items(server, settings, tenant_id):
    run_id = make_run(settings, tenant_id, [{"item": {"question": q, "expected": ""}} for q in questions(12)])
    graded = []

    def grade_then_cancel(*args):
        graded.append(args)
        if len(graded) == 2:  # during the first batch (4 items): seen before the second
            with session_scope(settings) as session:
                assert eval_store.cancel_run(session, run_id=run_id).cancel_requested
        return grade_item(*args)

    assert run_in_process(settings, run_id, grade=grade_then_cancel) == "canceled"
    run = run_row(settings, run_id)
    assert (run.status, run.result_counts["total"]) == ("canceled", 4)
    assert sorted(items_per_index(settings, run_id)) == [0, 1, 2, 3]


def test_items_that_set_no_max_tokens_get_the_operators_bound_as_completions_do(settings, tenant_id):
    run_id = make_run(settings, tenant_id, [{"item": {"question": "hi", "expected": ""}}], bound=MAX_TOKENS - 2)

    assert run_in_process(settings, run_id) == "completed"
    [usage] = run_row(settings, run_id).per_model_usage
    assert usage["completion_tokens"] == MAX_TOKENS - 2  # the endless model stops only at a bound


def test_a_run_whose_model_no_server_holds_fails_saying_so(settings, tenant_id):
    run_id = make_run(settings, tenant_id, [{"item": {"question": "hi", "expected": ""}}], base_model="absent")

    assert run_in_process(settings, run_id) == "failed"
    run = run_row(settings, run_id)
    assert run.error["code"] == "no_inference_server" and "'absent'" in run.error["message"]
    assert run.result_counts["total"] == 0


def _start_evals(settings, root: Path, name: str) -> subprocess.Popen:
    env = os.environ | {"DORA_DATABASE_URL": settings.database_url, "DORA_BROKER_URL": settings.broker_url,
                        "DORA_STORAGE_URL": settings.storage_url,
                        "DORA_INFERENCE_SECRET": settings.inference_secret.get_secret_value(),
                        "DORA_EVAL_BATCH_ITEMS": "1", "DORA_EVAL_COMPLETION_CONCURRENCY": "1",
                        "DORA_EVAL_LEASE_SECONDS": "2", "DORA_EVAL_HEARTBEAT_SECONDS": "0.5",
                        "DORA_EVAL_SWEEP_INTERVAL_SECONDS": "0.5", "PYTHONUNBUFFERED": "1"}
    log = root / f"{name}.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "dora_cli.main", "evals"], cwd=ROOT, env=env,
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: " ready." in log.read_text() or process.poll() is not None, timeout=60,
             what="`dora evals` to start")
    assert process.poll() is None, log.read_text()
    return process


def test_a_sigkilled_executor_resumes_and_grades_every_item_exactly_once(server, settings, tenant_id, root):
    run_id = make_run(settings, tenant_id, [{"item": {"question": q, "expected": ""}} for q in questions(10)])
    first = _start_evals(settings, root, "evals-1")
    try:
        assert publish_eval_run(run_id, broker_url=settings.broker_url)
        wait_for(lambda: sum(items_per_index(settings, run_id).values()) >= 3, timeout=60, what="3 items graded")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    stored = sum(items_per_index(settings, run_id).values())
    assert stored < 10 and run_row(settings, run_id).status == "in_progress"  # killed mid-run

    second = _start_evals(settings, root, "evals-2")  # its sweeper publishes the run once the lease expired
    try:
        wait_for(lambda: run_row(settings, run_id).status == "completed", timeout=60, what="the run to complete")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    run = run_row(settings, run_id)
    assert run.attempt == 2
    assert items_per_index(settings, run_id) == Counter(dict.fromkeys(range(10), 1))
    assert run.result_counts == {"total": 10, "passed": 0, "failed": 10, "errored": 0}


def test_the_executor_process_imports_no_torch():
    code = "import sys, worker.evals; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_a_duplicate_message_is_dropped_by_the_claim(settings, tenant_id):
    run_id = make_run(settings, tenant_id, [{"item": {"question": "hi", "expected": ""}}], base_model="absent")
    run_in_process(settings, run_id)
    assert run_in_process(settings, run_id) == "dropped"
    assert run_row(settings, run_id).status == EvalRunStatus.FAILED


# -- model graders' judges: a base, an `ft:` model and its checkpoint, resolved for the run's tenant ---------
JUDGE_TOKENS = 3
JUDGE_PROMPT = [{"role": "user", "content": "Is '{{sample.output_text}}' right? Answer yes or no."}]


def _judge(name: str, model: str) -> dict:
    return {"type": "label_model", "name": name, "model": model, "input": JUDGE_PROMPT, "labels": ["yes", "no"],
            "passing_labels": ["yes"], "sampling_params": {"temperature": 0, "max_completions_tokens": JUDGE_TOKENS}}


@pytest.fixture(scope="module")
def fine_tuned(server, settings, tenant_id, endless_dir, root) -> tuple[str, str]:
    """A succeeded job of the tenant with a random adapter (in the server's storage) as its `adapter`
    output and as its step-2 checkpoint: (its ft: model, the checkpoint's id)."""
    from store import jobs as job_store
    from store.storage import LocalStorage, job_key
    from tests.support.serving import random_adapter

    adapter = random_adapter(load_tiny(endless_dir), root / "adapter", b_scale=0.5)
    storage = LocalStorage(server.env["DORA_STORAGE_URL"])
    with session_scope(settings) as session:
        job = job_store.create_job(session, tenant_id=tenant_id, model="endless", training_file="file-x",
                                   validation_file=None, method={"type": "supervised"}, settings={}, seed=0,
                                   suffix="judge", metadata=None, max_attempts=1)
        assert job_store.claim_job(session, job_id=job.id, owner="test", lease_seconds=60)
        prefixes = {name: job_key(tenant_id, job.id, *parts) for name, parts in
                    {"adapter": ("attempts", "1", "adapter"), "checkpoint": ("checkpoints", "step-2")}.items()}
        for prefix in prefixes.values():
            for path in ADAPTER_FILES:
                storage.put_stream(f"{prefix}/{path}", [(adapter / path).read_bytes()])
        job_store.add_checkpoint(session, job_id=job.id, owner="test", attempt=1, step=2,
                                 storage_key=prefixes["checkpoint"])
        spec = job_store.ArtifactSpec(name="adapter", storage_prefix=prefixes["adapter"], files=[])
        assert job_store.finish_job(session, job_id=job.id, owner="test", attempt=1, status="succeeded",
                                    artifacts=[spec])
        model = session.get(Job, job.id).fine_tuned_model
    return model, f"{model}:ckpt-step-2"


def test_model_graders_judges_are_a_base_an_ft_model_and_a_checkpoint_their_tokens_counted(
        server, settings, tenant_id, fine_tuned, endless_dir):
    model, checkpoint = fine_tuned
    judges = {"base": "endless", "ft": model, "ckpt": checkpoint, "missing": model.replace(":judge:", ":other:")}
    judging = settings.model_copy(update={"storage_url": server.env["DORA_STORAGE_URL"],
                                          "base_models": {"endless": str(endless_dir)}})
    asked = questions(3)
    run_id = make_run(judging, tenant_id, [{"item": {"question": q, "expected": ""}} for q in asked],
                      criteria=[_judge(name, judge) for name, judge in judges.items()])

    assert run_in_process(judging, run_id) == "completed"

    run = run_row(judging, run_id)
    usage = {u["model_name"]: u for u in run.per_model_usage}
    assert set(usage) == {"endless", model, checkpoint}  # the missing model was never sent
    # the sampled model (3 items) and the base judge (3 calls) share one name; every call ran to its bound
    assert (usage["endless"]["invocation_count"], usage["endless"]["completion_tokens"]) == (
        6, 3 * MAX_TOKENS + 3 * JUDGE_TOKENS)
    for judge in (model, checkpoint):
        assert (usage[judge]["invocation_count"], usage[judge]["completion_tokens"]) == (3, 3 * JUDGE_TOKENS)
        assert usage[judge]["prompt_tokens"] > 0
    with session_scope(judging) as session:
        first = session.scalars(select(EvalOutputItem).where(EvalOutputItem.run_id == run_id,
                                                             EvalOutputItem.datasource_item_id == 0)).one()
    results = {result["name"]: result for result in first.results}
    # each judge's answer is its own model's: the adapter's greedy answer to the rendered prompt, not the base's
    prompt = [{"role": "user", "content": f"Is '{first.sample['output'][0]['content']}' right? Answer yes or no."}]
    for name, adapter in (("base", None), ("ft", "adapter"), ("ckpt", "checkpoint")):
        sample = results[name]["sample"]
        assert (sample["model"], sample["input"]) == (judges[name], prompt)
        assert sample["output"][0]["content"] == _direct(server, prompt, judges[name] if adapter else None,
                                                         _prefix(judging, judges[name]) if adapter else None)
    assert results["ft"]["sample"]["output"] != results["base"]["sample"]["output"]
    assert results["missing"]["error"]["code"] == "model_grader_server_error"
    assert "does not exist" in results["missing"]["error"]["message"]


def _prefix(settings, model: str) -> str:
    from store.served_models import resolve_model

    with session_scope(settings) as session:
        tenant = session.scalars(select(Tenant).where(Tenant.name == "t-evals")).one()
        return resolve_model(session, open_storage(settings.storage_url), base_models=settings.base_models,
                             model=model, tenant_id=tenant.id, tenant_name=tenant.name).adapter.storage_prefix


def _direct(server, messages: list[dict], key: str | None, prefix: str | None) -> str:
    body = {"base_model": "endless", "messages": messages, "sampling": {"max_tokens": JUDGE_TOKENS, "temperature": 0}}
    if key is not None:
        body["adapter"] = {"key": key, "storage_prefix": prefix}
    status, events = server.generate(body)
    assert status == 200, events
    return "".join(event.text for event in events if isinstance(event, TextDelta))


# -- jsonl runs (samples given, no model) from a file; python graders; the shutdown path ----------------------
PYTHON = {"type": "python", "name": "py", "pass_threshold": 1.0, "source": (
    "import sys\n"
    "def grade(sample, item):\n"
    "    # run in a process of its own: the executor's modules are not loaded there\n"
    "    alone = 'sqlalchemy' not in sys.modules and 'worker' not in sys.modules\n"
    "    return 1.0 if alone and sample['output_text'] == item['expected'] else 0.0\n")}


def jsonl_file(settings, tenant_id: str, rows: list[dict]) -> str:
    from store.ids import new_id

    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    file_id = new_id("file")
    open_storage(settings.storage_url).put_stream(f"files/{file_id}", [data])
    with session_scope(settings) as session:
        session.add(File(id=file_id, tenant_id=tenant_id, filename="rows.jsonl", purpose="evals", bytes=len(data),
                         storage_key=f"files/{file_id}"))
        session.commit()
    return file_id


def jsonl_run(settings, tenant_id: str, file_id: str, criteria: list[dict]) -> str:
    with session_scope(settings) as session:
        eval_row = eval_store.create_eval(session, tenant_id=tenant_id, name="given samples", metadata=None,
                                          data_source_config={"type": "custom"}, testing_criteria=criteria)
        return eval_store.create_run(session, eval_row=eval_row, name=None, metadata=None, model=None, data_source={
            "type": "jsonl", "source": {"type": "file_id", "id": file_id}}).id


GIVEN = [{"item": {"expected": "4"}, "sample": {"output_text": "4"}},
         {"item": {"expected": "6"}, "sample": {"output_text": "five"}},
         {"item": {"expected": "8"}, "sample": {"output": [{"role": "assistant", "content": "8"}]}}]


def test_a_jsonl_run_from_a_file_grades_the_given_samples_with_python_in_its_sandbox(settings, tenant_id):
    enabled = settings.model_copy(update={"python_grader_enabled": True})
    criteria = [PYTHON, CRITERION]
    run_id = jsonl_run(enabled, tenant_id, jsonl_file(enabled, tenant_id, GIVEN), criteria)

    assert run_in_process(enabled, run_id) == "completed"

    run = run_row(enabled, run_id)
    assert run.result_counts == {"total": 3, "passed": 2, "failed": 1, "errored": 0}
    assert run.per_testing_criteria_results == [{"testing_criteria": "py", "passed": 2, "failed": 1},
                                                {"testing_criteria": "exact", "passed": 2, "failed": 1}]
    assert run.per_model_usage == []  # no model was asked
    with session_scope(enabled) as session:
        items = {i.datasource_item_id: i for i in session.scalars(select(EvalOutputItem).where(
            EvalOutputItem.run_id == run_id))}
    assert [items[i].results[0]["score"] for i in range(3)] == [1.0, 0.0, 1.0]
    assert items[2].sample["output"] == [{"role": "assistant", "content": "8"}]


def test_python_graders_where_the_executor_has_them_off_error_saying_so(settings, tenant_id):
    run_id = jsonl_run(settings, tenant_id, jsonl_file(settings, tenant_id, GIVEN[:1]), [PYTHON])

    assert run_in_process(settings, run_id) == "completed"

    assert run_row(settings, run_id).result_counts == {"total": 1, "passed": 0, "failed": 0, "errored": 1}
    with session_scope(settings) as session:
        [item] = session.scalars(select(EvalOutputItem).where(EvalOutputItem.run_id == run_id))
    assert item.results[0]["error"]["code"] == "python_grader_server_error"
    assert "DORA_PYTHON_GRADER_ENABLED" in item.results[0]["error"]["message"]


def test_a_run_whose_file_is_gone_fails_saying_so(settings, tenant_id):
    file_id = jsonl_file(settings, tenant_id, GIVEN)
    run_id = jsonl_run(settings, tenant_id, file_id, [CRITERION])
    with session_scope(settings) as session:
        session.get(File, file_id).storage_key = None
        session.commit()

    assert run_in_process(settings, run_id) == "failed"
    assert run_row(settings, run_id).error["code"] == "invalid_data_source"


def test_a_shutdown_gives_the_run_back_after_its_batch_and_the_next_attempt_does_the_rest(settings, tenant_id):
    rows = [{"item": {"expected": str(i)}, "sample": {"output_text": str(i)}} for i in range(10)]
    run_id = jsonl_run(settings, tenant_id, jsonl_file(settings, tenant_id, rows), [CRITERION])
    published, batches = [], []

    def stopping() -> bool:  # asked before each batch (4 items): the third is not started, 8 items stored
        batches.append(1)
        return len(batches) > 2

    with InferenceClient(settings, lambda: session_scope(settings)) as client:
        outcome = run_eval(run_id, settings=settings, client=client, storage=open_storage(settings.storage_url),
                           owner="test", stopping=stopping, publish=lambda rid: published.append(rid) or True)
    assert outcome == "released" and published == [run_id]
    run = run_row(settings, run_id)
    assert (run.status, run.attempt, run.lease_owner) == ("queued", 0, None)  # given back: the attempt not spent
    assert sorted(items_per_index(settings, run_id)) == list(range(8))

    assert run_in_process(settings, run_id) == "completed"
    assert items_per_index(settings, run_id) == Counter(dict.fromkeys(range(10), 1))
    assert run_row(settings, run_id).result_counts == {"total": 10, "passed": 10, "failed": 0, "errored": 0}
