"""A job's `evals` (issue #24) through the API, on SQLite and PostgreSQL: each named eval is the
caller's and has a completions run whose data source the job copies (the 400s name `evals.<i>`;
another tenant's eval is the same 400 as a missing one), the job object lists them, old job rows
without them stay readable, and GET .../eval_scores answers the runs the worker made for the job
(written here with the worker's own SQL, store/job_evals.py) by step, with their pass rates; the
job page's chart series are made from that answer (its js/eval_scores.js, run under node)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import openai
import pytest
from sqlalchemy import select, update

from dora_contract import JobSpec
from dora_contract.job_spec import MAX_JOB_EVALS
from store.db import session_scope
from store.eval_execution import RESOLVED_KEY
from store.job_evals import CHECKPOINT, FINE_TUNED_MODEL, create_job_run
from store.models import EvalRun, Job

ITEM_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
               "required": ["question", "answer"]}
CRITERIA = [{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "eq"},
            {"type": "string_check", "name": "not empty", "input": "{{sample.output_text}}", "reference": "",
             "operation": "ne"}]
EVAL_SCORES_JS = Path(__file__).resolve().parents[2] / "api" / "ui" / "static" / "js" / "eval_scores.js"
ITEMS = [{"item": {"question": f"q{i}", "answer": f"a{i}"}} for i in range(4)]


def _eval(tenant) -> str:
    response = tenant.post("/v1/evals", json={"name": "qa", "testing_criteria": CRITERIA, "data_source_config": {
        "type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True}})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _run(tenant, eval_id: str, *, max_tokens: int = 8, kind: str = "completions") -> dict:
    source = {"type": "file_content", "content": ITEMS}
    if kind == "completions":
        data_source = {"type": "completions", "model": "tiny-llama", "source": source,
                       "input_messages": {"type": "template", "template": [{"role": "user",
                                                                           "content": "Q: {{item.question}}"}]},
                       "sampling_params": {"temperature": 0.0, "max_completion_tokens": max_tokens}}
    else:
        data_source = {"type": "jsonl", "source": {"type": "file_content", "content": [
            row | {"sample": {"output_text": "x"}} for row in ITEMS]}}
    response = tenant.post(f"/v1/evals/{eval_id}/runs", json={"data_source": data_source})
    assert response.status_code == 200, response.text
    return response.json()


def _stored_spec(settings, job_id: str) -> JobSpec:
    with session_scope(settings) as session:
        return JobSpec.from_data(session.get(Job, job_id).settings)


def test_a_job_copies_the_data_source_of_each_evals_latest_completions_run(tenant, settings):
    first, second = _eval(tenant), _eval(tenant)
    _run(tenant, first, max_tokens=4)
    latest = _run(tenant, first, max_tokens=6)
    _run(tenant, first, kind="jsonl")  # not a completions run: not a template
    only = _run(tenant, second)

    job = tenant.job({"evals": [first, second]})
    assert job["evals"] == [first, second]
    assert tenant.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["evals"] == [first, second]
    stored = _stored_spec(settings, job["id"]).evals
    assert [(e.eval_id, e.template_run_id) for e in stored] == [(first, latest["id"]), (second, only["id"])]
    expected = {k: v for k, v in latest["data_source"].items() if k != "model"}
    assert stored[0].data_source == expected and "model" not in stored[0].data_source
    assert stored[0].data_source["sampling_params"]["max_completion_tokens"] == 6
    assert RESOLVED_KEY not in stored[0].data_source

    plain = tenant.job()
    assert plain["evals"] == [] and _stored_spec(settings, plain["id"]).evals == ()


def test_the_openai_client_names_evals_with_extra_body_and_reads_the_scores(tenant, server_url):
    """As docs/service.md shows it: `extra_body={"evals": [...]}`, then `client.get(.../eval_scores)`."""
    eval_id = _eval(tenant)
    _run(tenant, eval_id)
    client = openai.OpenAI(api_key=tenant.key, base_url=f"{server_url}/v1", max_retries=0, timeout=30)
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=tenant.file_id(),
                                         extra_body={"evals": [eval_id]})
    assert job.model_extra["evals"] == [eval_id]
    scores = client.get(f"/fine_tuning/jobs/{job.id}/eval_scores", cast_to=object)
    assert scores == {"object": "list", "data": [], "has_more": False}


def test_an_old_job_spec_without_evals_is_read_with_none():
    spec = JobSpec.from_data({"version": 1, "run": {}, "base_model": {"source": "tiny"},
                              "training_file": {"id": "file-1", "storage_key": "k"}})
    assert spec.evals == ()


@pytest.mark.parametrize("case", ["missing", "other_tenant", "twice", "no_completions_run", "empty", "too_many"])
def test_bad_evals_are_400s_naming_the_entry(tenant, other_tenant, case):
    mine = _eval(tenant)
    _run(tenant, mine)
    foreign = _eval(other_tenant)
    _run(other_tenant, foreign)
    never_run = _eval(tenant)
    _run(tenant, never_run, kind="jsonl")
    evals, param = {
        "missing": ([mine, "eval_nope"], "evals.1"),
        "other_tenant": ([mine, foreign], "evals.1"),
        "twice": ([mine, mine], "evals.1"),
        "no_completions_run": ([never_run], "evals.0"),
        "empty": ([""], "evals.0"),
        "too_many": ([mine] * (MAX_JOB_EVALS + 1), "evals"),
    }[case]
    before = tenant.counts()[1]
    response = tenant.create_job({"evals": evals})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    if case in ("missing", "other_tenant"):  # the same answer: another tenant's eval is not revealed
        assert error["code"] == "eval_not_found" and error["message"] == f"No such eval: '{evals[1]}'"
    if case == "no_completions_run":
        assert error["code"] == "eval_without_completions_run" and "POST /v1/evals/" in error["message"]
    assert tenant.counts()[1] == before  # no job was created


def _grade(settings, run_id: str, passed: tuple[int, int], total: int) -> None:
    """The counts as the executor leaves them (store/eval_execution.py tally): per criterion and per item."""
    criteria = [{"testing_criteria": c["name"], "passed": p, "failed": total - p} for c, p in zip(CRITERIA, passed,
                                                                                                   strict=True)]
    with session_scope(settings) as session:
        session.execute(update(EvalRun).where(EvalRun.id == run_id).values(
            status="completed", per_testing_criteria_results=criteria,
            result_counts={"total": total, "passed": min(passed), "failed": total - min(passed), "errored": 0}))
        session.commit()


def test_eval_scores_list_the_jobs_runs_by_step_with_pass_rates(tenant, other_tenant, settings):
    eval_id = _eval(tenant)
    _run(tenant, eval_id)
    job = tenant.job({"evals": [eval_id], "suffix": "curve"})
    [job_eval] = _stored_spec(settings, job["id"]).evals
    made = {}
    for step, kind in ((8, CHECKPOINT), (4, CHECKPOINT), (8, FINE_TUNED_MODEL)):
        with session_scope(settings) as session:
            run = create_job_run(session, tenant_id=tenant.tenant_id, job_id=job["id"], job_eval=job_eval,
                                 model=f"ft:model-{step}-{kind}", base_model="tiny-llama",
                                 adapter={"key": f"ft:model-{step}", "storage_prefix": f"p/{step}"}, step=step,
                                 kind=kind, cap=settings.max_active_eval_runs_per_tenant)
            made[step, kind] = run.id
        with session_scope(settings) as session:  # a replay (a second attempt) makes no second run
            assert create_job_run(session, tenant_id=tenant.tenant_id, job_id=job["id"], job_eval=job_eval,
                                  model=f"ft:model-{step}-{kind}", base_model="tiny-llama", adapter=None, step=step,
                                  kind=kind, cap=0) is None
    _grade(settings, made[4, CHECKPOINT], passed=(1, 4), total=4)
    _grade(settings, made[8, CHECKPOINT], passed=(3, 4), total=4)
    with session_scope(settings) as session:
        stored = session.get(EvalRun, made[4, CHECKPOINT])
        assert stored.data_source["model"] == "ft:model-4-checkpoint" and stored.status == "completed"
        assert stored.data_source[RESOLVED_KEY]["adapter"]["storage_prefix"] == "p/4"
        assert stored.data_source["sampling_params"] == job_eval.data_source["sampling_params"]
        assert session.scalars(select(EvalRun.id).where(EvalRun.eval_id == eval_id)).all()  # listed under its eval

    response = tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_scores")
    assert response.status_code == 200, response.text
    page = response.json()
    assert not page["has_more"]
    rows = page["data"]
    assert [(r["step"], r["evaluated"], r["run_id"]) for r in rows] == [
        (4, CHECKPOINT, made[4, CHECKPOINT]), (8, CHECKPOINT, made[8, CHECKPOINT]),
        (8, FINE_TUNED_MODEL, made[8, FINE_TUNED_MODEL])]
    four = rows[0]
    assert (four["eval_id"], four["eval_name"], four["status"]) == (eval_id, "qa", "completed")
    assert [(c["testing_criteria"], c["passed"], c["failed"], c["pass_rate"])
            for c in four["per_testing_criteria_results"]] == [("exact", 1, 3, 0.25), ("not empty", 4, 0, 1.0)]
    assert four["pass_rate"] == 0.25 and rows[1]["pass_rate"] == 0.75
    assert rows[2]["status"] == "queued" and rows[2]["pass_rate"] is None
    assert [c["pass_rate"] for c in rows[2]["per_testing_criteria_results"]] == [None, None]
    assert tenant.get(f"/v1/evals/{eval_id}/runs/{made[4, CHECKPOINT]}").json()["metadata"] == {
        "fine_tuning_job_id": job["id"], "step": "4", "evaluated": CHECKPOINT}

    assert other_tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_scores").status_code == 404
    limited = tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_scores", params={"limit": 2}).json()
    assert limited["has_more"] and len(limited["data"]) == 2


def _made_runs(tenant, settings, job_id: str, runs: list[tuple[int, str]]) -> dict:
    [job_eval] = _stored_spec(settings, job_id).evals
    made = {}
    for step, kind in runs:
        with session_scope(settings) as session:
            made[step, kind] = create_job_run(
                session, tenant_id=tenant.tenant_id, job_id=job_id, job_eval=job_eval, model=f"ft:m-{step}-{kind}",
                base_model="tiny-llama", adapter=None, step=step, kind=kind, cap=0).id
    return made


@pytest.mark.skipif(shutil.which("node") is None, reason="node runs the dashboard's module")
def test_the_job_pages_score_chart_series_come_from_eval_scores(tenant, settings):
    eval_id = _eval(tenant)
    _run(tenant, eval_id)
    job = tenant.job({"evals": [eval_id]})
    made = _made_runs(tenant, settings, job["id"], [(2, CHECKPOINT), (4, CHECKPOINT), (4, FINE_TUNED_MODEL),
                                                    (6, CHECKPOINT)])
    _grade(settings, made[2, CHECKPOINT], passed=(1, 4), total=4)
    _grade(settings, made[4, CHECKPOINT], passed=(2, 4), total=4)
    _grade(settings, made[4, FINE_TUNED_MODEL], passed=(3, 4), total=4)  # same step as a checkpoint: not drawn
    # (6, checkpoint) stays queued: pending, no point yet
    page = tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_scores").json()
    script = (f"import {{scoreSeries}} from {json.dumps(EVAL_SCORES_JS.as_uri())};\n"
              "import {readFileSync} from 'node:fs';\n"
              "console.log(JSON.stringify(scoreSeries(JSON.parse(readFileSync(0, 'utf8')))));")
    done = subprocess.run(["node", "--input-type=module", "-e", script], input=json.dumps(page["data"]),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    chart = json.loads(done.stdout)
    assert [(s["key"], s["label"]) for s in chart["series"]] == [
        (f"{eval_id}/exact", "exact"), (f"{eval_id}/not empty", "not empty")]
    assert chart["data"] == {f"{eval_id}/exact": [{"x": 2, "y": 0.25}, {"x": 4, "y": 0.5}],
                             f"{eval_id}/not empty": [{"x": 2, "y": 1.0}, {"x": 4, "y": 1.0}]}
    assert chart["pending"] == 1
