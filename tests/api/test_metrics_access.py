"""/metrics is the operator's: only `Authorization: Bearer <DORA_METRICS_TOKEN>` opens it, a tenant's
API key never does, and with no token configured it is refused on every address."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from store.settings import Settings
from tests.support.api_client import METRICS_TOKEN, OPERATOR, make_tenant


def test_without_a_metrics_token_configured_metrics_are_refused(settings):
    with TestClient(create_app(settings.model_copy(update={"metrics_token": None}))) as client:
        tenant = make_tenant(client, settings)
        for headers in ({}, tenant.headers, OPERATOR):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 403, headers
            assert response.json()["error"]["code"] == "metrics_disabled"
            assert "dora_" not in response.text


def test_only_the_operators_token_opens_metrics_and_no_api_key_does(client, tenant):
    tenant.job()
    for headers in ({}, tenant.headers, {"Authorization": f"Bearer {METRICS_TOKEN}x"},
                    {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"}, {"Authorization": f"Basic {METRICS_TOKEN}"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "invalid_metrics_token"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    opened = client.get("/metrics", headers=OPERATOR)
    assert opened.status_code == 200 and opened.headers["content-type"].startswith("text/plain")
    assert 'dora_jobs{status="queued"}' in opened.text
    # what it shows is per route and status, never per tenant
    assert tenant.tenant_id not in opened.text and tenant.key not in opened.text


def test_a_short_metrics_token_is_refused_at_start(tmp_path):
    with pytest.raises(ValidationError, match="DORA_METRICS_TOKEN must be at least 16 characters"):
        Settings(database_url="sqlite://", storage_url=str(tmp_path), metrics_token="short")
