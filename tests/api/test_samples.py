"""`GET /v1/fine_tuning/jobs/{id}/samples` (issue #15): what the worker's progress write stored,
in OpenAI's list shape, newest evaluation first; paging, the step filter, tenancy and bad input."""

from __future__ import annotations

import pytest

from store.progress import PendingSample, write_progress

JOBS = "/v1/fine_tuning/jobs"


def _samples(step: int, count: int = 3, answer: str = "answer") -> list[PendingSample]:
    return [PendingSample(step=step, index=i, prompt=f"<|user|>\nQ{i}<|end|>\n<|assistant|>\n", expected=f"E{i}",
                          answer=f"{answer} {i} at {step}") for i in range(count)]


@pytest.fixture
def running_job(tenant, worker):
    job = tenant.job()
    assert worker.claim(job["id"]) is not None
    return job


def _write(worker, job_id, samples):
    return worker.call(write_progress, job_id=job_id, lease_seconds=60, samples=samples)


def _list(tenant, job_id, **params):
    response = tenant.get(f"{JOBS}/{job_id}/samples", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_samples_are_listed_newest_evaluation_first_in_index_order(tenant, worker, running_job):
    job_id = running_job["id"]
    assert _list(tenant, job_id) == {"object": "list", "data": [], "has_more": False, "first_id": None,
                                     "last_id": None}
    for step in (5, 10):
        assert _write(worker, job_id, _samples(step)).held
    page = _list(tenant, job_id)
    assert [(s["step"], s["index"]) for s in page["data"]] == [(10, 0), (10, 1), (10, 2), (5, 0), (5, 1), (5, 2)]
    first = page["data"][0]
    assert first["object"] == "fine_tuning.job.sample" and first["id"].startswith("ftsample-")
    assert (first["prompt"], first["expected"], first["answer"]) == ("<|user|>\nQ0<|end|>\n<|assistant|>\n", "E0",
                                                                    "answer 0 at 10")
    assert isinstance(first["created_at"], int) and page["has_more"] is False
    assert page["first_id"] == first["id"] and page["last_id"] == page["data"][-1]["id"]


def test_pages_follow_the_cursor_and_the_step_filter(tenant, worker, running_job):
    job_id = running_job["id"]
    for step in (2, 4, 6):
        _write(worker, job_id, _samples(step))
    seen, after = [], None
    while True:
        page = _list(tenant, job_id, limit=2, **({"after": after} if after else {}))
        seen += [(s["step"], s["index"]) for s in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == [(step, i) for step in (6, 4, 2) for i in range(3)]
    only = _list(tenant, job_id, step=4)
    assert [(s["step"], s["index"]) for s in only["data"]] == [(4, 0), (4, 1), (4, 2)]
    assert _list(tenant, job_id, step=3)["data"] == []


def test_a_replayed_write_stores_nothing_twice_and_keeps_the_first_answers(tenant, worker, running_job):
    job_id = running_job["id"]
    _write(worker, job_id, _samples(8))
    _write(worker, job_id, _samples(8, answer="again"))  # a replay, or a resumed attempt's evaluation
    data = _list(tenant, job_id)["data"]
    assert [s["answer"] for s in data] == ["answer 0 at 8", "answer 1 at 8", "answer 2 at 8"]


def test_a_write_without_the_lease_stores_nothing(tenant, worker, running_job):
    from dataclasses import replace

    stale = replace(worker, attempt=worker.attempt + 1)
    assert not _write(stale, running_job["id"], _samples(3)).held
    assert _list(tenant, running_job["id"])["data"] == []


def test_text_a_database_cannot_hold_is_replaced(tenant, worker, running_job):
    sample = PendingSample(step=1, index=0, prompt="p\x00", expected="e", answer="a\x00b\udc80")
    _write(worker, running_job["id"], [sample])
    [stored] = _list(tenant, running_job["id"])["data"]
    assert (stored["prompt"], stored["answer"]) == ("p\ufffd", "a\ufffdb\ufffd")


def test_another_tenants_job_is_404_and_a_foreign_cursor_is_400(tenant, other_tenant, worker, running_job):
    job_id = running_job["id"]
    _write(worker, job_id, _samples(2))
    response = other_tenant.get(f"{JOBS}/{job_id}/samples")
    assert response.status_code == 404 and response.json()["error"]["message"] == f"No such job: '{job_id}'"
    theirs = other_tenant.job()["id"]
    cursor = _list(tenant, job_id)["data"][0]["id"]
    response = other_tenant.get(f"{JOBS}/{theirs}/samples", params={"after": cursor})
    assert response.status_code == 400 and response.json()["error"]["param"] == "after"


@pytest.mark.parametrize(("params", "param"), [
    ({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "many"}, "limit"),
    ({"step": -1}, "step"), ({"step": 2**31}, "step"), ({"step": "last"}, "step"),
    ({"after": "ftsample-nope"}, "after"), ({"after": "ftsample-\x00"}, None),  # NUL: refused for the whole URL
])
def test_bad_parameters_are_a_400_naming_them(tenant, running_job, params, param):
    response = tenant.get(f"{JOBS}/{running_job['id']}/samples", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text
