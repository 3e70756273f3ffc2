"""The base of every contract model: frozen, no unknown keys, no NaN, errors that name the field."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from dora_contract.errors import setting_error


def distinct(values: tuple) -> tuple:
    """A list setting names at least one thing, each once (a repeat is a mistake, not a weight)."""
    if not values:
        raise ValueError("must not be empty")
    if len(set(values)) != len(values):
        raise ValueError("has duplicates")
    return values


class ContractModel(BaseModel):
    """Settings are values: frozen (hashable, safe to share), and a typo is an error, not ignored.

    `from_data` raises `SettingError` naming the field, which is what the CLI and the worker
    report. Direct construction (`AdapterSettings(rank=0)`) raises pydantic's ValidationError,
    which names the field too: `__init__` is not overridden because pydantic would then call it
    for nested models as well, and the API's request models must keep pydantic's own errors.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, validate_default=True)

    @classmethod
    def from_data(cls, data: Any) -> Self:
        """Validate plain data (a parsed JSON/YAML mapping or a job's stored settings)."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise setting_error(error, cls) from None

    def with_changes(self, **changes: Any) -> Self:
        """A validated copy with some fields replaced (model_copy would skip validation)."""
        return type(self).from_data(self.model_dump() | changes)
