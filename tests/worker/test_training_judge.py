"""A reinforcement job's judge (worker/training_judge.py) on a real database, without a server: scoped to
the job's tenant, resolved once per model id, and failing the job (a TrainingError naming the judge
model) rather than grading 0 when it cannot answer; a database failure under it is retried instead.
Its completions through a real `dora serve` are tests/e2e/test_job_evals.py's."""

from __future__ import annotations

import time

import pytest
from pydantic import TypeAdapter

from dora_contract.graders import Grader
from dora_core.training.errors import TrainingError
from dora_graders import GradingContext, JudgeUnavailableError, asks_a_judge, grade
from store import jobs as job_store
from store.db import session_scope
from store.migrate import upgrade
from store.models import Job
from store.storage import open_storage
from store.tenants import create_api_key
from worker import judges
from worker.failures import describe
from worker.settings import WorkerSettings
from worker.training_judge import JudgeFailedError, TrainingJudge, tenant_name

GRADER = TypeAdapter(Grader)
SECRET = "s" * 32


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> WorkerSettings:
    root = tmp_path_factory.mktemp("training-judge")
    settings = WorkerSettings(database_url=f"sqlite:///{root / 'dora.db'}", storage_url=str(root / "artifacts"),
                              base_models={"tiny-llama": str(root / "tiny-llama")}, inference_secret=SECRET,
                              judge_server_wait_seconds=0)
    upgrade(settings)
    return settings


@pytest.fixture(scope="module")
def tenants(settings) -> dict[str, tuple[str, str]]:
    """name -> (tenant id, the ft: model of a succeeded job of theirs with an adapter output)."""
    found = {}
    for name in ("judge-owner", "judge-other"):
        with session_scope(settings) as session:
            tenant_id = create_api_key(session, tenant_name=name).tenant_id
            job = job_store.create_job(session, tenant_id=tenant_id, model="tiny-llama", training_file="file-x",
                                       validation_file=None, method={"type": "supervised"}, settings={}, seed=0,
                                       suffix="judge", metadata=None, max_attempts=1)
            assert job_store.claim_job(session, job_id=job.id, owner="test", lease_seconds=60)
            spec = job_store.ArtifactSpec(name="adapter", storage_prefix=f"jobs/{job.id}/adapter", files=[])
            assert job_store.finish_job(session, job_id=job.id, owner="test", attempt=1, status="succeeded",
                                        artifacts=[spec])
            found[name] = (tenant_id, session.get(Job, job.id).fine_tuned_model)
            assert tenant_name(session, job_id=job.id) == name
    return found


def judge_of(settings, tenants, name: str, **changes) -> TrainingJudge:
    return TrainingJudge(settings.model_copy(update=changes), open_storage(settings.storage_url),
                         tenant_id=tenants[name][0], tenant_name=name)


def label_grader(model: str) -> object:
    return GRADER.validate_python({
        "type": "label_model", "name": "verdict", "model": model, "labels": ["right", "wrong"],
        "passing_labels": ["right"], "input": [{"role": "user", "content": "Is '{{sample.output_text}}' right?"}]})


def test_another_tenants_ft_model_as_judge_is_not_found_and_fails_the_job_naming_it(settings, tenants):
    theirs = tenants["judge-owner"][1]
    grader = label_grader(theirs)
    for name, words in (("judge-other", "does not exist"), ("judge-owner", "No inference server for 'tiny-llama'")):
        judge = judge_of(settings, tenants, name)
        try:
            with pytest.raises(JudgeFailedError) as failed:  # out of grade(): no reward of 0 for the sample
                grade(grader, output_text="4", item={}, context=GradingContext(complete=judge))
        finally:
            judge.close()
        message = str(failed.value)
        # the other tenant's lookup stops at "not found"; the owner's resolves and only then finds no server
        assert f"judge model '{theirs}'" in message and words in message, message
        failure = describe(failed.value)
        assert (failure.code, failure.retry) == ("training_failed", False) and theirs in failure.message


def test_each_judge_model_is_resolved_once_per_job(settings, tenants, monkeypatch):
    calls = []
    real = judges.resolve_model

    def counted(*args, **kwargs):
        calls.append(kwargs["model"])
        return real(*args, **kwargs)

    monkeypatch.setattr(judges, "resolve_model", counted)
    judge = judge_of(settings, tenants, "judge-owner")
    try:
        for model in ("tiny-llama", "tiny-llama", "no-such-model", "no-such-model"):
            with pytest.raises(JudgeFailedError):
                judge(model, [{"role": "user", "content": "hi"}], {"temperature": 0.0, "max_tokens": 2})
    finally:
        judge.close()
    assert calls == ["tiny-llama", "no-such-model"]


def test_without_the_inference_secret_the_judge_fails_at_once_saying_what_to_set(settings, tenants):
    judge = judge_of(settings, tenants, "judge-owner", inference_secret=None, judge_server_wait_seconds=60)
    started = time.monotonic()
    try:
        with pytest.raises(JudgeFailedError, match="judge model 'tiny-llama'.*DORA_INFERENCE_SECRET"):
            judge("tiny-llama", [{"role": "user", "content": "hi"}], {})
    finally:
        judge.close()
    assert time.monotonic() - started < 5  # not the 60 s wait for a server


def test_a_database_failure_under_the_judge_is_retried_not_a_training_error(settings, tenants, tmp_path):
    judge = judge_of(settings, tenants, "judge-owner", database_url=f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    try:
        with pytest.raises(JudgeUnavailableError) as failed:
            judge("tiny-llama", [{"role": "user", "content": "hi"}], {})
    finally:
        judge.close()
    assert not isinstance(failed.value, TrainingError) and "judge model 'tiny-llama'" in str(failed.value)
    assert describe(failed.value).retry


def test_only_a_grader_with_a_model_grader_gets_a_judge():
    exact = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "4",
             "operation": "eq"}
    multi = {"type": "multi", "name": "m", "calculate_output": "exact", "graders": {"exact": exact}}
    assert not asks_a_judge(GRADER.validate_python(exact)) and not asks_a_judge(GRADER.validate_python(multi))
    judged = multi | {"graders": {"exact": exact, "verdict": label_grader("tiny-llama").model_dump(mode="json")}}
    assert asks_a_judge(GRADER.validate_python(judged))
