"""Parameters shared by routes, documented with the bounds the services enforce.

Every value a client sends that reaches SQL is bounded before it does, and a value out of bounds
is a 400 naming the parameter: an id or a cursor longer than any id (they are 40 characters,
store/models.py IdString) never matches a row, and a step past SQL INTEGER (2**31 - 1) was an
error from PostgreSQL (`NumericValueOutOfRange`) in the middle of a metrics stream.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query

from store.served_models import MAX_STEP as MAX_STEP  # steps are SQL INTEGER columns; written once there

# a page of jobs, events or checkpoints (OpenAI's bound). Here, with the parameter it bounds, so
# the services (api/services/scope.py) import it from the schemas and never the other way round
MAX_LIMIT = 100
# longer than any object id (`ftsample-` and 26 characters, 35, is the longest), short enough to cost nothing
MAX_ID_LENGTH = 64


def limit_param(maximum: int = MAX_LIMIT) -> Any:
    """A `limit` query parameter whose schema says its bounds (1 to `maximum`). The bounds are
    checked by the service (api/services/scope.py check_limit, a 400 that says them), with the
    same `maximum`, so the document and the check cannot disagree."""
    return Annotated[int, Query(description=f"How many items to return, 1 to {maximum}",
                                json_schema_extra={"minimum": 1, "maximum": maximum})]


def id_path(what: str) -> Any:
    """A path parameter holding the id of one of the caller's objects."""
    return Annotated[str, Path(max_length=MAX_ID_LENGTH, description=f"The {what}'s id")]


Limit = limit_param()
JobIdPath = id_path("fine-tuning job")
FileIdPath = id_path("file")
WebhookIdPath = id_path("webhook")
# `after`: the id of the last item of the previous page
Cursor = Annotated[str | None, Query(max_length=MAX_ID_LENGTH,
                                     description="The id of the last item of the previous page: the page after it")]
