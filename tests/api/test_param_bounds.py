"""Every client-sent value that reaches SQL is bounded before it does, and one out of bounds is a 400
naming it (issue [reliability-3] N4).

`Last-Event-ID: 2147483648` on the metrics stream was a 200 with the stream's headers, then the
connection cut by PostgreSQL's NumericValueOutOfRange (steps are SQL INTEGER), while the same
value as `?after=` was a 400. Ids in paths and `after` cursors longer than any id never match a
row: they are refused before a query is made.
"""

from __future__ import annotations

from api.schemas.params import MAX_ID_LENGTH
from store import jobs as job_store

TOO_LONG = "x" * (MAX_ID_LENGTH + 1)
JOBS = "/v1/fine_tuning/jobs"


def assert_400(response, param: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_a_metric_step_past_sql_integer_is_a_400_in_last_event_id_as_in_after(tenant, worker):
    job_id = tenant.job()["id"]
    worker.claim(job_id)
    assert worker.call(job_store.finish_job, job_id=job_id, status="succeeded")
    path = f"{JOBS}/{job_id}/metrics"
    for position in ("2147483648", "9" * 40, "-1"):
        assert_400(tenant.get(path, params={"stream": "true"}, headers={"Last-Event-ID": position}), "Last-Event-ID")
        assert_400(tenant.get(path, params={"stream": "true", "after": position}), "after")
        assert_400(tenant.get(path, params={"after": position}), "after")
    # the largest step is a position like any other
    done = tenant.get(path, params={"stream": "true"}, headers={"Last-Event-ID": "2147483647"})
    assert done.status_code == 200 and done.text.endswith("data: [DONE]\n\n")


def test_ids_in_paths_longer_than_any_id_are_a_400_naming_them(tenant):
    job_id = tenant.job()["id"]
    cases = {
        f"/v1/files/{TOO_LONG}": "file_id", f"/v1/files/{TOO_LONG}/content": "file_id",
        f"{JOBS}/{TOO_LONG}": "job_id", f"{JOBS}/{TOO_LONG}/events": "job_id", f"{JOBS}/{TOO_LONG}/metrics": "job_id",
        f"{JOBS}/{TOO_LONG}/artifacts": "job_id", f"{JOBS}/{job_id}/artifacts/{TOO_LONG}/archive": "name",
        f"/v1/webhooks/{TOO_LONG}": "webhook_id", f"/v1/webhooks/{TOO_LONG}/deliveries": "webhook_id",
    }
    for path, param in cases.items():
        assert_400(tenant.get(path), param)
    assert_400(tenant.delete(f"/v1/files/{TOO_LONG}"), "file_id")
    assert_400(tenant.post(f"{JOBS}/{TOO_LONG}/cancel"), "job_id")
    # at the bound: an id that could be one, and is not: 404
    assert tenant.get(f"{JOBS}/{'x' * MAX_ID_LENGTH}").status_code == 404


def test_cursors_and_filters_longer_than_any_stored_value_are_a_400_naming_them(tenant):
    job_id = tenant.job()["id"]
    for path in ("/v1/files", JOBS, f"{JOBS}/{job_id}/events", f"{JOBS}/{job_id}/checkpoints",
                 f"{JOBS}/{job_id}/samples", "/v1/webhooks"):
        assert_400(tenant.get(path, params={"after": TOO_LONG}), "after")
        assert tenant.get(path, params={"after": "x" * MAX_ID_LENGTH}).status_code in (200, 400)  # 400: no such sample
    assert_400(tenant.get(f"{JOBS}/{job_id}/events", params={"stream": "true", "after": TOO_LONG}), "after")
    assert_400(tenant.get(f"{JOBS}/{job_id}/samples", params={"step": 2**31}), "step")
    assert_400(tenant.get("/v1/files", params={"purpose": "p" * 65}), "purpose")
    assert_400(tenant.get(JOBS, params={"metadata[k]": "v" * 513}), "metadata[k]")
    assert tenant.get(JOBS, params={"metadata[k]": "v" * 512}).json()["data"] == []
