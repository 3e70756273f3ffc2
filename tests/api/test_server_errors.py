"""A 500 is an answer, not a dropped connection: on a real uvicorn server, the keep-alive
connection that carried a 500 carries the client's next request too."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.exc import ProgrammingError

from api.services import jobs as job_service

JOBS = "/v1/fine_tuning/jobs"


def _local_port(response: httpx.Response) -> int:
    """The client side's port of the connection that carried `response`."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


@pytest.mark.parametrize("bug", [RuntimeError("a bug"),
                                 ProgrammingError("SELECT 1", {}, Exception("a bug in SQL"))],
                         ids=["exception", "sqlalchemy-error"])
def test_after_a_500_the_same_keep_alive_connection_serves_the_next_request(tenant, server_url, monkeypatch,
                                                                             caplog, bug):
    def broken(**_):
        raise bug

    with httpx.Client(base_url=server_url, headers=tenant.headers, timeout=30) as client:
        assert client.get("/v1/models").status_code == 200
        monkeypatch.setattr(job_service, "list_jobs", broken)
        failed = client.get(JOBS)
        assert failed.status_code == 500, failed.text
        assert failed.json()["error"]["type"] == "server_error" and "a bug" not in failed.text
        port = _local_port(failed)
        monkeypatch.undo()
        after = client.get(JOBS)
        assert after.status_code == 200, after.text
        assert _local_port(after) == port, "the server closed the connection after the 500"
    assert f"unhandled error on GET {JOBS}" in caplog.text
