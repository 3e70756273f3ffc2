"""Query parameters shared by routes, documented with the bounds the services enforce."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

# a page of jobs, events or checkpoints (OpenAI's bound). Here, with the parameter it bounds, so
# the services (api/services/scope.py) import it from the schemas and never the other way round
MAX_LIMIT = 100


def limit_param(maximum: int = MAX_LIMIT) -> Any:
    """A `limit` query parameter whose schema says its bounds (1 to `maximum`). The bounds are
    checked by the service (api/services/scope.py check_limit, a 400 that says them), with the
    same `maximum`, so the document and the check cannot disagree."""
    return Annotated[int, Query(description=f"How many items to return, 1 to {maximum}",
                                json_schema_extra={"minimum": 1, "maximum": maximum})]


Limit = limit_param()
