"""The OpenAPI document says what the API answers: validation errors as 400 with the error body
(never FastAPI's 422), each route's 4xx/503 with that body, the bounds of every `limit` (the
ones the API enforces), the enums, and the media types of uploads and downloads."""

from __future__ import annotations

import pytest

from tests.support.api_client import BASE_MODELS

ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
BINARY = {"type": "string", "format": "binary"}


@pytest.fixture(scope="module")
def document(client):
    return client.get("/openapi.json").json()


def _operations(document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def _error_statuses(operation) -> set[str]:
    return {status for status, response in operation["responses"].items()
            if response.get("content", {}).get("application/json", {}).get("schema") == ERROR}


def test_validation_errors_are_documented_as_400_with_the_error_body_not_422(document):
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert "ValidationError" not in document["components"]["schemas"]
    for path, method, operation in _operations(document):
        assert "422" not in operation["responses"], (method, path)
        assert "400" in _error_statuses(operation), (method, path)
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    assert set(error["properties"]["type"]["enum"]) == {"invalid_request_error", "requests", "insufficient_quota",
                                                        "server_error"}


def test_every_route_documents_its_errors_with_the_error_body(document):
    for path, method, operation in _operations(document):
        errors = _error_statuses(operation)
        if path.startswith("/v1/"):
            assert {"400", "401", "429", "503"} <= errors, (method, path, errors)
            assert operation["security"] == [{"apiKey": []}]
            assert "Retry-After" in operation["responses"]["429"]["headers"]
            assert "Retry-After" in operation["responses"]["503"]["headers"]
        if "{" in path:
            assert "404" in errors, (method, path)
    paths = document["paths"]
    assert {"413", "415", "429"} <= _error_statuses(paths["/v1/files"]["post"])
    assert "409" in _error_statuses(paths["/v1/files/{file_id}"]["delete"])
    assert {"409", "429"} <= _error_statuses(paths["/v1/fine_tuning/jobs"]["post"])
    assert "409" in _error_statuses(paths["/v1/fine_tuning/jobs/{job_id}/cancel"]["post"])
    assert {"401", "403"} <= _error_statuses(paths["/metrics"]["get"])
    assert paths["/metrics"]["get"]["security"] == [{"metricsToken": []}]
    assert set(document["components"]["securitySchemes"]) == {"apiKey", "metricsToken"}


def test_media_types_of_uploads_and_downloads(document):
    paths = document["paths"]
    upload = paths["/v1/files"]["post"]["requestBody"]["content"]
    assert list(upload) == ["multipart/form-data"]
    assert upload["multipart/form-data"]["schema"]["properties"]["file"] == {"type": "string", "format": "binary",
                                                                             "description": "the dataset (JSONL)"}
    downloads = {"/v1/files/{file_id}/content": {"application/octet-stream", "application/x-tar"},
                 "/v1/fine_tuning/jobs/{job_id}/artifacts/{name}/archive": {"application/x-tar"},
                 "/v1/fine_tuning/jobs/{job_id}/artifacts/{name}/files/{path}": {"application/octet-stream"}}
    for path, media_types in downloads.items():
        operation = paths[path]["get"]
        assert any(p["name"] == "Range" and p["in"] == "header" for p in operation["parameters"]), path
        for status in ("200", "206"):
            content = operation["responses"][status]["content"]
            assert set(content) == media_types, (path, status)
            assert all(entry["schema"] == BINARY for entry in content.values())
        assert "Content-Range" in operation["responses"]["206"]["headers"]
        assert "416" in _error_statuses(operation)
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def _parameter(document, path, name, method="get"):
    return next(p for p in document["paths"][path][method]["parameters"] if p["name"] == name)["schema"]


def test_enums_are_documented(document):
    statuses = ["queued", "running", "succeeded", "failed", "cancelled", "paused"]
    assert _parameter(document, "/v1/fine_tuning/jobs", "status")["enum"] == statuses
    assert _parameter(document, "/v1/files", "order")["enum"] == ["asc", "desc"]
    upload = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["purpose"]["enum"] == ["fine-tune", "evals"]
    schemas = document["components"]["schemas"]
    assert schemas["FineTuningJob"]["properties"]["status"] == {"$ref": "#/components/schemas/JobStatus"}
    assert schemas["JobStatus"]["enum"] == statuses
    assert schemas["FileObject"]["properties"]["purpose"]["enum"] == ["fine-tune", "evals", "fine-tune-results"]
    runs = "/v1/evals/{eval_id}/runs"
    assert _parameter(document, runs, "status")["enum"] == ["queued", "in_progress", "completed", "failed",
                                                            "canceled"]
    assert _parameter(document, runs + "/{run_id}/output_items", "status")["enum"] == ["pass", "fail", "error"]


LIMITS = {"/v1/files": 10_000, "/v1/fine_tuning/jobs": 100, "/v1/fine_tuning/jobs/{job_id}/events": 100,
          "/v1/fine_tuning/jobs/{job_id}/checkpoints": 100, "/v1/fine_tuning/jobs/{job_id}/metrics": 10_000}


def test_limit_bounds_are_documented_and_are_the_ones_enforced(document, tenant):
    documented = {path: _parameter(document, path, "limit") for path, ops in document["paths"].items()
                  if any(p["name"] == "limit" for p in ops.get("get", {}).get("parameters", []))}
    assert set(LIMITS) <= set(documented)
    job_id = tenant.job()["id"]
    for path, maximum in LIMITS.items():
        assert (documented[path]["minimum"], documented[path]["maximum"]) == (1, maximum), path
        url = path.replace("{job_id}", job_id)
        assert tenant.get(url, params={"limit": maximum}).status_code == 200, path
        for outside in (0, maximum + 1):
            response = tenant.get(url, params={"limit": outside})
            assert response.status_code == 400 and response.json()["error"]["param"] == "limit", (path, outside)


def test_a_validation_error_is_the_documented_400(tenant):
    response = tenant.post("/v1/fine_tuning/jobs", json={"model": list(BASE_MODELS)[0]})
    assert response.status_code == 400
    assert response.json()["error"] == {"message": "Missing required parameter: 'training_file'",
                                        "type": "invalid_request_error", "param": "training_file",
                                        "code": "missing_required_parameter"}
