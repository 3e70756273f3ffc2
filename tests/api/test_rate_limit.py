"""The request rate per tenant: a token bucket per tenant in each API process. Over it: OpenAI's
rate-limit error (429, type "requests", code "rate_limit_exceeded") with Retry-After and the
x-ratelimit-* headers, before the request's body is read."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from api.rate_limit import MAX_TENANTS, TokenBuckets
from tests.support.api_client import make_tenant, recording_app


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_the_rate():
    clock = Clock()
    buckets = TokenBuckets(per_minute=60, burst=3, clock=clock)  # one request a second
    assert [buckets.take("a") for _ in range(3)] == [None] * 3
    refusal = buckets.take("a")
    assert refusal is not None and abs(refusal.wait_seconds - 1.0) < 1e-9
    assert buckets.take("b") is None  # buckets are per tenant
    clock.now += 0.5
    assert abs(buckets.take("a").wait_seconds - 0.5) < 1e-9  # a refused request takes nothing
    clock.now += 0.5
    assert buckets.take("a") is None and buckets.take("a") is not None
    clock.now += 3600
    assert [buckets.take("a") for _ in range(4)].count(None) == 3  # never more than the burst


def test_the_buckets_stay_bounded():
    clock = Clock()
    buckets = TokenBuckets(per_minute=60, burst=2, clock=clock)
    for index in range(MAX_TENANTS):
        buckets.buckets[f"t{index}"] = (2.0, clock.now)  # full: the same as no bucket
    buckets.buckets["busy"] = (0.0, clock.now)
    assert buckets.take("new") is None
    assert set(buckets.buckets) == {"busy", "new"} and buckets.take("busy") is not None


def test_over_the_rate_a_tenant_gets_openais_rate_limit_error(settings):
    limited = settings.model_copy(update={"rate_limit_per_minute": 60, "rate_limit_burst": 3})
    with TestClient(recording_app(limited)) as client:
        tenant, other = make_tenant(client, settings), make_tenant(client, settings)
        assert [tenant.get("/v1/models").status_code for _ in range(3)] == [200] * 3
        refused = tenant.post("/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": "file-x"})
        assert refused.status_code == 429
        assert refused.json() == {"error": {
            "message": refused.json()["error"]["message"], "type": "requests", "param": None,
            "code": "rate_limit_exceeded"}}
        assert "on requests per min (RPM): limit 60" in refused.json()["error"]["message"]
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["x-ratelimit-limit-requests"] == "60"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
        assert other.get("/v1/models").status_code == 200  # another tenant's bucket is full
        assert client.get("/healthz").status_code == 200  # only /v1/ is rate limited
        time.sleep(1.1)  # at least one more request's worth (never more than the burst of 3)
        statuses = [tenant.get("/v1/models").status_code for _ in range(4)]
        assert statuses[0] == 200 and statuses[-1] == 429, statuses


def test_an_upload_over_the_rate_is_refused_with_the_wait_in_whole_seconds(settings):
    limited = settings.model_copy(update={"rate_limit_per_minute": 1, "rate_limit_burst": 1})
    with TestClient(recording_app(limited)) as client:
        tenant = make_tenant(client, settings)
        assert tenant.get("/v1/models").status_code == 200
        response = tenant.upload()
        assert response.status_code == 429 and response.headers["Retry-After"] == "60"
        assert tenant.counts() == (0, 0, 0)


def test_zero_turns_the_rate_limit_off(settings):
    with TestClient(recording_app(settings.model_copy(update={"rate_limit_per_minute": 0,
                                                              "rate_limit_burst": 1}))) as client:
        tenant = make_tenant(client, settings)
        assert {tenant.get("/v1/models").status_code for _ in range(5)} == {200}
