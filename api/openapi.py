"""The OpenAPI document, made to say what the API answers.

FastAPI documents a 422 `HTTPValidationError` for every route with parameters, but validation
errors are answered 400 in OpenAI's error shape (api/errors.py), and it knows nothing of the
errors answered outside the routes (401 and the rate limit's 429 by api/authentication.py,
503 when the database is away, 400 for a NUL in the URL). `describe_errors` replaces the
422 with the 400 and adds, to every operation, the errors it can get with the error body
(api/schemas/errors.py): 400 everywhere, 401, 429 and 503 under /v1/, 404 on a path with an
id. Errors of one route only (409, 413, 415, 416) are declared on the route (`responses=`).
The bearer schemes are declared too: tenants' API keys for /v1/, the operator's token for
/metrics.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas.errors import ErrorResponse, error_responses

PROTECTED_PREFIX = "/v1/"
SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer",
               "description": "A tenant's API key (`dora keys create --tenant NAME`)"},
    "metricsToken": {"type": "http", "scheme": "bearer", "description": "The operator's DORA_METRICS_TOKEN"},
}


def _shared_errors(path: str) -> list[int]:
    codes = [400]
    if path.startswith(PROTECTED_PREFIX):
        codes += [401, 429, 503]
    if "{" in path:
        codes.append(404)
    return codes


def describe_errors(document: dict[str, Any]) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in error_schema.pop("$defs", {}).items():
        schemas.setdefault(name, schema)
    schemas.setdefault("ErrorResponse", error_schema)
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code, response in error_responses(*_shared_errors(path)).items():
                responses.setdefault(str(code), response)
            if path.startswith(PROTECTED_PREFIX):
                operation.setdefault("security", [{"apiKey": []}])
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve `describe_errors` of FastAPI's document at /openapi.json (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            app.openapi_schema = describe_errors(document)
        return app.openapi_schema

    app.openapi = openapi
