"""One error type for an invalid setting, naming the field, for every caller of the contract.

The CLI prints it with the file name, the worker turns it into a job failure, and the API never
sees it: request bodies are validated by pydantic, whose errors the API maps to 400s itself.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError


class SettingError(ValueError):
    """A setting is invalid; `field` is its dotted path (`training.learning_rate`)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def error_field(error: dict) -> str:
    """The dotted field of one pydantic error; model-level checks name theirs in ctx['field']."""
    parts = [str(part) for part in error.get("loc", ()) if not is_union_member(str(part))]
    extra = (error.get("ctx") or {}).get("field")
    if extra:
        parts.append(str(extra))
    return ".".join(parts) or "config"


def is_union_member(part: str) -> bool:
    """A location part that names a union member pydantic tried, not a field."""
    # pydantic adds the union member it tried ("int", "literal['auto']", "tuple[...]") to the location
    return part.startswith(("literal[", "function-", "tuple[", "list[", "constrained-")) or part in (
        "int", "float", "bool", "str", "list[str]")


def setting_error(error: ValidationError, model: type[BaseModel]) -> SettingError:
    """The first problem of a ValidationError, as a SettingError with a readable message."""
    first = error.errors()[0]
    field_name = error_field(first)
    kind = first.get("type")
    if kind == "missing":
        return SettingError(field_name, "is required")
    if kind == "extra_forbidden":
        return SettingError(field_name, f"unknown setting; known: {sorted(_known_fields(model, field_name))}")
    # a union ("auto" or a boolean) fails once per member: say all of it in one sentence
    same_field = [e for e in error.errors() if error_field(e) == field_name]
    reasons = list(dict.fromkeys(e.get("msg", "invalid value").removeprefix("Value error, ") for e in same_field))
    message = " or ".join(r if i == 0 else r[0].lower() + r[1:] for i, r in enumerate(reasons))
    if "input" in first and kind != "conflict":
        message = f"{message}, got {first['input']!r}"
    return SettingError(field_name, message)


def _known_fields(model: type[BaseModel], dotted: str) -> list[str]:
    """The fields of the (nested) model that an unknown key `dotted` was given to."""
    for part in dotted.split(".")[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)
