"""Query parameters shared by routes, documented with the bounds the services enforce."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from api.services.scope import MAX_LIMIT


def limit_param(maximum: int = MAX_LIMIT) -> Any:
    """A `limit` query parameter whose schema says its bounds (1 to `maximum`). The bounds are
    checked by the service (api/services/scope.py check_limit, a 400 that says them), with the
    same `maximum`, so the document and the check cannot disagree."""
    return Annotated[int, Query(description=f"How many items to return, 1 to {maximum}",
                                json_schema_extra={"minimum": 1, "maximum": maximum})]


Limit = limit_param()
