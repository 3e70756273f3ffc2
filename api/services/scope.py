"""The one place that scopes rows to a tenant, and cursor pagination over sortable ids."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from api.errors import bad_request, not_found
from api.schemas.params import MAX_LIMIT

Row = TypeVar("Row")


def owned(model: type[Row], *, tenant_id: str) -> Select:
    """`SELECT model WHERE tenant_id = :tenant`: the start of every query on tenant data."""
    return select(model).where(model.tenant_id == tenant_id)


def get_owned(session: Session, model: type[Row], *, tenant_id: str, object_id: str, what: str,
              param: str | None = None) -> Row:
    """The row if it exists AND belongs to the tenant; otherwise the same 404 either way."""
    row = session.scalars(owned(model, tenant_id=tenant_id).where(model.id == object_id)).first()
    if row is None:
        raise not_found(what, object_id, param=param)
    return row


def check_limit(limit: int, *, maximum: int = MAX_LIMIT) -> int:
    if not 1 <= limit <= maximum:
        raise bad_request(f"limit must be between 1 and {maximum}", param="limit")
    return limit


def page(session: Session, query: Select, *, id_column: Any, after: str | None, limit: int,
         ascending: bool = False, max_limit: int = MAX_LIMIT) -> tuple[list[Any], bool]:
    """One page after the cursor id (ids sort by creation time), and whether more follow."""
    if after is not None:
        query = query.where(id_column > after if ascending else id_column < after)
    query = query.order_by(id_column.asc() if ascending else id_column.desc())
    query = query.limit(check_limit(limit, maximum=max_limit) + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit
