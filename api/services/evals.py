"""Evals and their runs: the checks made when they are created, and the SQL writes (store/evals.py).

An eval is checked whole before it is stored: its item_schema is a JSON schema (jsonschema's
check_schema), its testing criteria are graders (dora_contract/graders.py, by the request model)
with unique names, and every `{{item.x}}` a grader or a run's prompt references is a field the
item_schema defines (when the schema lists its properties). A run is checked against its eval:
the model is one this tenant may call (api/services/serving_models.py, the same resolution as
completions; a missing or foreign one is a 400 naming data_source.model, since it is a field of
the body), every item validates against the item_schema (a file's with its line numbers), at
most DORA_MAX_EVAL_ITEMS items, and under the tenant's cap on active runs.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError, bad_request
from api.eval_files import EVAL_PURPOSE, EvalRowError, lines_of, rows
from api.quotas import quota_exceeded
from api.schemas.evals import (
    CompletionsDataSource,
    EvalCreate,
    EvalUpdate,
    FileContentSource,
    ItemReferenceInput,
    RunCreate,
    TemplateInput,
)
from api.services import serving_models
from api.services.scope import get_owned, owned, page
from dora_graders import GraderSpecError, GradingContext, ItemError, PythonSandbox, check
from dora_graders.templates import references
from store import evals as eval_store
from store.eval_execution import RESOLVED_KEY  # the base + adapter the run's model names, for the executor
from store.eval_status import ITEM_STATUSES, EvalRunStatus
from store.models import Eval, EvalOutputItem, EvalRun, File
from store.settings import Settings
from store.storage import Storage

MAX_ITEM_ERRORS = 5  # item errors listed in one 400 (all are counted)
# OpenAI's `sample` namespace of a custom data source config that includes it
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "message": {"type": "object", "properties": {"role": {"type": "string", "enum": ["assistant"]},
                                                          "content": {"type": ["string", "null"]}},
                        "required": ["role", "content"]},
            "finish_reason": {"type": "string"}}, "required": ["message", "finish_reason"]}},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
    },
    "required": ["model", "choices"],
}
_STEP = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]")


# -- evals ------------------------------------------------------------------------------------------
def _stored_config(request: EvalCreate) -> dict[str, Any]:
    item_schema = request.data_source_config.item_schema
    try:
        jsonschema.validators.validator_for(item_schema).check_schema(item_schema)
    except jsonschema.SchemaError as error:
        where = ".".join(str(p) for p in error.absolute_path)
        raise bad_request(f"data_source_config.item_schema is not a valid JSON schema: {error.message[:300]}"
                          + (f" (at {where})" if where else ""), param="data_source_config.item_schema") from None
    properties: dict[str, Any] = {"item": item_schema}
    required = ["item"]
    if request.data_source_config.include_sample_schema:
        properties["sample"], required = SAMPLE_SCHEMA, ["item", "sample"]
    return {"type": "custom", "schema": {"type": "object", "properties": properties, "required": required}}


def item_schema_of(eval_row: Eval) -> dict[str, Any]:
    return (eval_row.data_source_config.get("schema") or {}).get("properties", {}).get("item") or {}


def _undefined_step(schema: Any, path: str) -> str | None:
    """The first step of `item.<path>` the schema does not define (None when it does, or does not say)."""
    for match in _STEP.finditer(path):
        if not isinstance(schema, dict):
            return None
        key, index = match.group(1), match.group(2)
        if index is not None or (key.isdigit() and "items" in schema):
            schema = schema.get("items")
            continue
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return None  # the schema does not list its fields here: anything may be there
        if key in properties:
            schema = properties[key]
        elif isinstance(schema.get("additionalProperties"), dict):
            schema = schema["additionalProperties"]
        elif schema.get("patternProperties") or schema.get("additionalProperties") is True:
            return None
        else:
            return key
    return None


def check_references(text: str, *, item_schema: dict[str, Any], param: str, allow_sample: bool = True) -> None:
    """Each `{{...}}` of `text` is well formed and names a field the item_schema defines (400 naming `param`)."""
    try:
        paths = references(text)
    except ItemError as error:
        raise bad_request(f"Invalid template in '{param}': {error}", param=param) from None
    for path in paths:
        if path.startswith("sample"):
            if not allow_sample:
                raise bad_request(f"'{param}' references '{{{{{path}}}}}', but a prompt is sent before there is a "
                                  "sample: use only item fields", param=param)
            continue
        missing = _undefined_step(item_schema, path[len("item"):])
        if missing is not None:
            raise bad_request(f"'{param}' references '{{{{{path}}}}}', but the eval's item_schema defines no field "
                              f"'{missing}' there", param=param)


def _strings(value: Any, path: str):
    """(path, string) of every string inside a grader spec: its templates among them."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            if key not in ("source", "calculate_output", "type", "name", "model", "labels", "passing_labels"):
                yield from _strings(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _strings(inner, f"{path}.{index}")


def _stored_criteria(request: EvalCreate, settings: Settings) -> list[dict[str, Any]]:
    """The criteria as stored; each one this server can run (dora_graders.check: a metric needing data
    not installed, python where the operator did not enable it, a formula that is no formula)."""
    context = GradingContext(python=PythonSandbox() if settings.python_grader_enabled else None)
    for index, grader in enumerate(request.testing_criteria):
        try:
            check(grader, context, field=f"testing_criteria.{index}")
        except GraderSpecError as error:
            raise bad_request(f"{error.field}: {error.message}", param=error.field) from None
        except ItemError as error:
            raise bad_request(error.message, param=f"testing_criteria.{index}") from None
    criteria = [c.model_dump(mode="json", exclude_none=True) for c in request.testing_criteria]
    seen: set[str] = set()
    for index, criterion in enumerate(criteria):
        if criterion["name"] in seen:
            raise bad_request(f"testing_criteria names must be unique: '{criterion['name'][:100]}' is used twice",
                              param=f"testing_criteria.{index}.name")
        seen.add(criterion["name"])
        for where, text in _strings(criterion, f"testing_criteria.{index}"):
            check_references(text, item_schema=request.data_source_config.item_schema, param=where)
    return criteria


def create_eval(*, session: Session, settings: Settings, tenant_id: str, request: EvalCreate) -> Eval:
    config = _stored_config(request)
    criteria = _stored_criteria(request, settings)
    return eval_store.create_eval(session, tenant_id=tenant_id, name=request.name, data_source_config=config,
                                  testing_criteria=criteria, metadata=request.metadata)


def list_evals(*, session: Session, tenant_id: str, after: str | None, limit: int, order: str,
               order_by: str) -> tuple[list[Eval], bool]:
    if order_by != "created_at":
        raise bad_request(f"Invalid order_by '{order_by[:32]}': evals are listed by created_at only",
                          param="order_by")
    return page(session, owned(Eval, tenant_id=tenant_id), id_column=Eval.id, after=after, limit=limit,
                ascending=order == "asc")


def update_eval(*, session: Session, eval_row: Eval, request: EvalUpdate) -> Eval:
    if "name" in request.model_fields_set and request.name is not None:
        eval_row.name = request.name
    if "metadata" in request.model_fields_set:
        eval_row.meta = request.metadata
    session.commit()
    return eval_row


# -- runs -------------------------------------------------------------------------------------------
def _resolved(session: Session, storage: Storage, settings: Settings, *, source: CompletionsDataSource,
              tenant_id: str, tenant_name: str) -> dict[str, Any]:
    try:
        served = serving_models.resolve_model(session, storage, settings, model=source.model, tenant_id=tenant_id,
                                              tenant_name=tenant_name)
    except ApiError as error:  # a field of the body: a 400 naming it, whatever the completions route says
        raise bad_request(error.message, param="data_source.model", code=error.code) from None
    adapter = served.adapter.model_dump(mode="json") if served.adapter is not None else None
    # the operator's bound on a completion that sets no max tokens (the run's, its judges'), as completions get it
    return {"base_model": served.base_model, "adapter": adapter, "max_tokens_default": settings.max_completion_tokens}


def _check_prompt(source: CompletionsDataSource, item_schema: dict[str, Any], settings: Settings) -> None:
    messages = source.input_messages
    if isinstance(messages, TemplateInput):
        for index, message in enumerate(messages.template):
            text = message.content if isinstance(message.content, str) else message.content.text
            check_references(text, item_schema=item_schema, allow_sample=False,
                             param=f"data_source.input_messages.template.{index}.content")
    elif isinstance(messages, ItemReferenceInput):
        check_references("{{" + messages.item_reference + "}}", item_schema=item_schema,
                         param="data_source.input_messages.item_reference")
    tokens = source.sampling_params.max_completion_tokens if source.sampling_params else None
    if tokens is not None and tokens > settings.max_completion_tokens:
        raise bad_request(f"max_completion_tokens is at most {settings.max_completion_tokens} here "
                          "(DORA_MAX_COMPLETION_TOKENS)", param="data_source.sampling_params.max_completion_tokens")


def _needs_sample(eval_row: Eval) -> bool:
    """Whether a grader reads `{{sample...}}` (a jsonl run's rows must then carry a sample)."""
    return any(path.startswith("sample") for criterion in eval_row.testing_criteria
               for _, text in _strings(criterion, "") for path in _safe_references(text))


def _safe_references(text: str) -> list[str]:
    try:
        return references(text)
    except ItemError:
        return []


class _ItemCheck:
    """Validates items one at a time against the item_schema, keeping the first few errors."""

    def __init__(self, item_schema: dict[str, Any], *, need_sample: bool, max_items: int, param: str) -> None:
        self.validator = jsonschema.validators.validator_for(item_schema)(item_schema)
        self.need_sample, self.max_items, self.param = need_sample, max_items, param
        self.count, self.errors, self.error_count = 0, [], 0

    def add(self, where: str, item: dict[str, Any], sample: dict[str, Any] | None) -> None:
        self.count += 1
        if self.count > self.max_items:
            raise bad_request(f"The data source holds more than {self.max_items} items (DORA_MAX_EVAL_ITEMS)",
                              param=self.param)
        problem = None
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(item))
        if error is not None:
            at = ".".join(str(p) for p in error.absolute_path)
            problem = f"item{'.' + at if at else ''}: {error.message[:200]}"
        elif self.need_sample and sample is None:
            problem = "no 'sample': this jsonl run's graders read {{sample...}}, so each row must carry one"
        if problem is not None:
            self.error_count += 1
            if len(self.errors) < MAX_ITEM_ERRORS:
                self.errors.append({"param": where, "message": problem})

    def finish(self) -> None:
        if self.error_count:
            shown = "; ".join(f"{e['param']}: {e['message']}" for e in self.errors)
            more = f" (and {self.error_count - len(self.errors)} more)" if self.error_count > len(self.errors) else ""
            raise bad_request(f"{self.error_count} item(s) do not match the eval's item_schema: {shown}{more}",
                              param=self.param, code="invalid_items", details=self.errors)


def _check_items(session: Session, storage: Storage, settings: Settings, *, eval_row: Eval,
                 request: RunCreate) -> None:
    source = request.data_source.source
    need_sample = request.data_source.type == "jsonl" and _needs_sample(eval_row)
    if isinstance(source, FileContentSource):
        check = _ItemCheck(item_schema_of(eval_row), need_sample=need_sample, max_items=settings.max_eval_items,
                           param="data_source.source.content")
        for index, row in enumerate(source.content):
            check.add(f"data_source.source.content.{index}", row.item, row.sample)
        return check.finish()
    param = "data_source.source.id"
    try:
        file = get_owned(session, File, tenant_id=eval_row.tenant_id, object_id=source.id, what="file", param=param)
    except ApiError as error:
        raise bad_request(error.message, param=param, code=error.code) from None
    if file.purpose != EVAL_PURPOSE or file.storage_key is None:
        raise bad_request(f"File {file.id} has purpose '{file.purpose}', not '{EVAL_PURPOSE}'", param=param)
    check = _ItemCheck(item_schema_of(eval_row), need_sample=need_sample, max_items=settings.max_eval_items,
                       param=param)
    try:
        for line, item, sample in rows(lines_of(storage.open_range(file.storage_key))):
            check.add(f"line {line}", item, sample)
    except EvalRowError as error:
        raise bad_request(f"File {file.id}: {error}", param=param, code="invalid_items") from None
    check.finish()


def create_run(*, session: Session, storage: Storage, settings: Settings, eval_row: Eval, request: RunCreate,
               tenant_name: str) -> EvalRun:
    """Check everything, then insert the run queued under the tenant's lock and cap; the caller publishes."""
    data_source = request.data_source.model_dump(mode="json", exclude_none=True)
    model = None
    if isinstance(request.data_source, CompletionsDataSource):
        _check_prompt(request.data_source, item_schema_of(eval_row), settings)
        data_source[RESOLVED_KEY] = _resolved(session, storage, settings, source=request.data_source,
                                              tenant_id=eval_row.tenant_id, tenant_name=tenant_name)
        model = request.data_source.model
    _check_items(session, storage, settings, eval_row=eval_row, request=request)
    cap = settings.max_active_eval_runs_per_tenant
    active = eval_store.lock_for_new_run(session, tenant_id=eval_row.tenant_id)  # held until the commit
    if cap and active >= cap:
        session.rollback()
        raise quota_exceeded(f"Quota exceeded: this tenant already has {active} queued or in_progress eval runs and "
                             f"the limit is {cap}. Wait for one to finish, or cancel one, then try again.")
    return eval_store.create_run(session, eval_row=eval_row, name=request.name, data_source=data_source,
                                 model=model, metadata=request.metadata)


def _status(value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise bad_request(f"Invalid status '{value[:32]}': one of {', '.join(allowed)}", param="status")
    return value


def list_runs(*, session: Session, eval_row: Eval, after: str | None, limit: int, order: str,
              status: str | None) -> tuple[list[EvalRun], bool]:
    query = select(EvalRun).where(EvalRun.eval_id == eval_row.id, EvalRun.tenant_id == eval_row.tenant_id)
    if _status(status, tuple(EvalRunStatus)) is not None:
        query = query.where(EvalRun.status == status)
    return page(session, query, id_column=EvalRun.id, after=after, limit=limit, ascending=order == "asc")


def get_run(*, session: Session, eval_row: Eval, run_id: str) -> EvalRun:
    """The eval's run (another eval's or tenant's run is the same 404 as a missing one)."""
    run = session.scalars(owned(EvalRun, tenant_id=eval_row.tenant_id)
                          .where(EvalRun.id == run_id, EvalRun.eval_id == eval_row.id)).first()
    if run is None:
        raise ApiError(404, f"No such eval run: '{run_id}'", code="eval_run_not_found")
    return run


def cancel_run(*, session: Session, run: EvalRun) -> EvalRun:
    try:
        return eval_store.cancel_run(session, run_id=run.id)
    except eval_store.InvalidEvalTransition as error:
        raise ApiError(409, str(error), param="run_id", code="run_not_cancellable") from None


def list_output_items(*, session: Session, run: EvalRun, after: str | None, limit: int, order: str,
                      status: str | None) -> tuple[list[EvalOutputItem], bool]:
    query = select(EvalOutputItem).where(EvalOutputItem.run_id == run.id)
    if _status(status, ITEM_STATUSES) is not None:
        query = query.where(EvalOutputItem.status == status)
    return page(session, query, id_column=EvalOutputItem.id, after=after, limit=limit, ascending=order == "asc")


def get_output_item(*, session: Session, run: EvalRun, item_id: str) -> EvalOutputItem:
    row = session.scalars(select(EvalOutputItem).where(EvalOutputItem.run_id == run.id,
                                                       EvalOutputItem.id == item_id)).first()
    if row is None:
        raise ApiError(404, f"No such output item: '{item_id}'", code="output_item_not_found")
    return row
