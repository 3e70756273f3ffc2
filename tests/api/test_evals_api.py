"""The Evals API (issue #24) through the official openai client against the app (a real uvicorn server),
on SQLite and PostgreSQL: evals, runs and output items in OpenAI's shapes, cursor pagination, the 400s
naming the field, another tenant's objects answered 404 like missing ones, the active-run cap.

The executor (worker/) is not run here: output items and in_progress runs are written in SQL the way
it writes them (tests/worker/test_eval_runs.py runs it)."""

from __future__ import annotations

import io
import json

import openai
import pytest
from sqlalchemy import func, select, update

from store.db import session_scope
from store.ids import new_id
from store.models import EvalOutputItem, EvalRun

ITEM_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
               "required": ["question", "answer"]}
CHECK = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}
PROMPT = {"type": "template", "template": [{"role": "user", "content": "Q: {{item.question}}"}]}
ITEMS = [{"item": {"question": f"q{i}", "answer": f"a{i}"}} for i in range(3)]


@pytest.fixture
def oai(tenant, server_url):
    return openai.OpenAI(api_key=tenant.key, base_url=f"{server_url}/v1", max_retries=0, timeout=30)


def _eval(oai, **kw):
    body = {"name": "qa", "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA,
                                                 "include_sample_schema": True},
            "testing_criteria": [CHECK]} | kw
    return oai.evals.create(**body)


def _completions(source=None, **kw) -> dict:
    return {"type": "completions", "model": "tiny-llama", "input_messages": PROMPT,
            "sampling_params": {"temperature": 0.0, "max_completion_tokens": 8, "seed": 1},
            "source": source or {"type": "file_content", "content": ITEMS}} | kw


def _error(call) -> tuple[int, str | None, str]:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    body = caught.value.body or {}
    return caught.value.status_code, body.get("param"), body.get("message", "")


def test_eval_create_retrieve_update_list_delete(oai, tenant):
    created = _eval(oai, metadata={"team": "qa"})
    assert created.id.startswith("eval_") and created.object == "eval" and created.name == "qa"
    schema = created.data_source_config.schema_
    assert schema["properties"]["item"] == ITEM_SCHEMA and schema["required"] == ["item", "sample"]
    assert "output_text" in schema["properties"]["sample"]["properties"]
    assert created.testing_criteria[0].name == "exact" and created.testing_criteria[0].operation == "eq"
    no_sample = _eval(oai, data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA})
    assert "sample" not in no_sample.data_source_config.schema_["properties"]

    assert oai.evals.retrieve(created.id).metadata == {"team": "qa"}
    updated = oai.evals.update(created.id, name="renamed", metadata={"team": "ml"})
    assert (updated.name, updated.metadata) == ("renamed", {"team": "ml"})
    assert oai.evals.retrieve(created.id).name == "renamed"

    more = [_eval(oai).id for _ in range(3)]
    ids = [e.id for e in oai.evals.list(limit=2)]  # auto-pagination over pages of 2, oldest first
    assert ids == [created.id, no_sample.id, *more]
    page = oai.evals.list(limit=2, order="desc")
    assert [e.id for e in page.data] == more[::-1][:2] and page.has_more

    deleted = oai.evals.delete(created.id)
    assert deleted.deleted and deleted.eval_id == created.id
    assert _error(lambda: oai.evals.retrieve(created.id))[0] == 404


@pytest.mark.parametrize(("change", "param"), [
    ({"data_source_config": {"type": "custom", "item_schema": {"type": "objekt"}}},
     "data_source_config.item_schema"),
    ({"data_source_config": {"type": "logs"}}, "data_source_config.type"),
    ({"testing_criteria": [CHECK, CHECK]}, "testing_criteria.1.name"),
    ({"testing_criteria": [CHECK | {"operation": "equals"}]}, "testing_criteria.0.operation"),
    ({"testing_criteria": [CHECK | {"reference": "{{item.answr}}"}]}, "testing_criteria.0.reference"),
    ({"testing_criteria": []}, "testing_criteria"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"testing_criteria": [{"type": "python", "name": "py", "source": "def grade(s, i): return 1.0"}]},
     "testing_criteria.0.type"),  # python graders are off unless the operator enables them
    ({"testing_criteria": [{"type": "multi", "name": "m", "graders": {"a": CHECK}, "calculate_output": "b + 1"}]},
     "testing_criteria.0.calculate_output"),
])
def test_a_bad_eval_is_a_400_naming_the_field(oai, change, param):
    status, named, message = _error(lambda: _eval(oai, **change))
    assert (status, named) == (400, param), message
    if "answr" in json.dumps(change):
        assert "answr" in message


def test_a_python_grader_is_accepted_where_the_operator_enabled_it(oai, app):
    python = {"type": "python", "name": "py", "source": "def grade(s, i): return 1.0", "pass_threshold": 1}
    settings = app.state.settings
    app.state.settings = settings.model_copy(update={"python_grader_enabled": True})
    try:
        created = _eval(oai, testing_criteria=[python])  # off, the same body is the 400 above
    finally:
        app.state.settings = settings

    assert oai.evals.retrieve(created.id).testing_criteria[0].type == "python"


def test_runs_create_list_retrieve_cancel_delete(oai, tenant, app):
    ev = _eval(oai)
    run = oai.evals.runs.create(ev.id, name="first", data_source=_completions(), metadata={"k": "v"})
    assert run.id.startswith("evalrun_") and run.status == "queued" and run.eval_id == ev.id
    assert run.model == "tiny-llama" and run.name == "first" and run.metadata == {"k": "v"}
    assert run.result_counts.total == 0 and run.per_testing_criteria_results[0].testing_criteria == "exact"
    assert run.report_url.endswith(f"/evals/{ev.id}/runs/{run.id}")
    assert "_resolved_model" not in run.data_source.model_dump() and run.data_source.type == "completions"
    assert app.state.published_eval_runs[-1] == run.id  # published after the commit
    with session_scope(tenant.settings) as session:  # what the executor reads: the resolved base model
        assert session.get(EvalRun, run.id).data_source["_resolved_model"] == {
            "base_model": "tiny-llama", "adapter": None, "max_tokens_default": tenant.settings.max_completion_tokens}

    jsonl = oai.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {
        "type": "file_content", "content": [{"item": ITEMS[0]["item"], "sample": {"output_text": "a0"}}]}})
    running = oai.evals.runs.create(ev.id, data_source=_completions())
    with session_scope(tenant.settings) as session:  # an executor took it
        session.execute(update(EvalRun).where(EvalRun.id == running.id).values(status="in_progress"))
        session.commit()

    assert [r.id for r in oai.evals.runs.list(ev.id, limit=1)] == [run.id, jsonl.id, running.id]
    assert [r.id for r in oai.evals.runs.list(ev.id, status="in_progress")] == [running.id]
    assert [r.id for r in oai.evals.runs.list(ev.id, order="desc", limit=2).data] == [running.id, jsonl.id]
    assert oai.evals.runs.retrieve(jsonl.id, eval_id=ev.id).model == ""

    assert oai.evals.runs.cancel(run.id, eval_id=ev.id).status == "canceled"  # queued: at once
    assert oai.evals.runs.cancel(run.id, eval_id=ev.id).status == "canceled"  # again: no error
    asked = oai.evals.runs.cancel(running.id, eval_id=ev.id)  # in_progress: its executor stops
    assert asked.status == "in_progress" and asked.model_extra["cancel_requested"] is True
    with session_scope(tenant.settings) as session:
        session.execute(update(EvalRun).where(EvalRun.id == jsonl.id).values(status="completed"))
        session.commit()
    status, param, _ = _error(lambda: oai.evals.runs.cancel(jsonl.id, eval_id=ev.id))
    assert (status, param) == (409, "run_id")

    assert oai.evals.runs.delete(jsonl.id, eval_id=ev.id).deleted
    assert _error(lambda: oai.evals.runs.retrieve(jsonl.id, eval_id=ev.id))[0] == 404
    oai.evals.delete(ev.id)  # its runs go with it
    with session_scope(tenant.settings) as session:
        assert session.scalar(select(func.count()).select_from(EvalRun).where(EvalRun.eval_id == ev.id)) == 0


def test_run_items_from_an_uploaded_file_are_checked_with_line_numbers(oai, tenant):
    ev = _eval(oai)
    good = b"".join(json.dumps(row).encode() + b"\n" for row in ITEMS)
    uploaded = oai.files.create(file=("items.jsonl", io.BytesIO(good)), purpose="evals")
    assert uploaded.purpose == "evals"
    run = oai.evals.runs.create(ev.id, data_source=_completions({"type": "file_id", "id": uploaded.id}))
    assert run.data_source.source.id == uploaded.id

    bad = good + b'{"item": {"question": "q3"}}\n' + b'{"item": {"question": 4, "answer": "a"}}\n'
    bad_file = oai.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="evals")
    status, param, message = _error(lambda: oai.evals.runs.create(
        ev.id, data_source=_completions({"type": "file_id", "id": bad_file.id})))
    assert (status, param) == (400, "data_source.source.id")
    assert "line 4" in message and "'answer' is a required property" in message and "line 5" in message

    training = tenant.file_id()  # a fine-tune file is no eval data
    assert _error(lambda: oai.evals.runs.create(ev.id, data_source=_completions(
        {"type": "file_id", "id": training})))[:2] == (400, "data_source.source.id")
    status, param, _ = _error(lambda: oai.files.create(file=("x.jsonl", io.BytesIO(b"[1]\n")), purpose="evals"))
    assert (status, param) == (400, "file")


@pytest.mark.parametrize(("data_source", "param"), [
    (_completions(model="no-such-model"), "data_source.model"),
    (_completions(model="ft:tiny-llama:someone-else:x:abcdefgh"), "data_source.model"),
    (_completions(input_messages={"type": "template", "template": [{"role": "user", "content": "{{item.nope}}"}]}),
     "data_source.input_messages.template.0.content"),
    (_completions(input_messages={"type": "item_reference", "item_reference": "item.messages"}),
     "data_source.input_messages.item_reference"),
    (_completions(sampling_params={"temperature": 3}), "data_source.sampling_params.temperature"),
    (_completions(sampling_params={"max_completion_tokens": 10**6}),
     "data_source.sampling_params.max_completion_tokens"),
    (_completions({"type": "file_content", "content": [{"item": {"question": "q"}}]}),
     "data_source.source.content"),
    (_completions({"type": "file_id", "id": "file-missing"}), "data_source.source.id"),
    (_completions({"type": "stored_completions"}), "data_source.source.type"),
    ({"type": "responses", "source": {"type": "file_id", "id": "x"}}, "data_source.type"),
    ({"type": "jsonl", "source": {"type": "file_content", "content": ITEMS}}, "data_source.source.content"),
    ({"type": "completions", "source": {"type": "file_content", "content": ITEMS}, "model": "tiny-llama"},
     "data_source.input_messages"),
])
def test_a_bad_run_is_a_400_naming_the_field(oai, data_source, param):
    ev = _eval(oai)
    status, named, message = _error(lambda: oai.evals.runs.create(ev.id, data_source=data_source))
    assert (status, named) == (400, param), message


def test_the_item_bound_and_the_active_run_cap(oai, tenant, settings, app):
    ev = _eval(oai)
    many = {"type": "file_content", "content": ITEMS * (settings.max_eval_items // len(ITEMS) + 1)}
    status, param, message = _error(lambda: oai.evals.runs.create(ev.id, data_source=_completions(many)))
    assert (status, param) == (400, "data_source.source.content") and "DORA_MAX_EVAL_ITEMS" in message
    cap = settings.max_active_eval_runs_per_tenant
    runs = [oai.evals.runs.create(ev.id, data_source=_completions()).id for _ in range(cap)]
    with pytest.raises(openai.RateLimitError) as refused:
        oai.evals.runs.create(ev.id, data_source=_completions())
    assert refused.value.body["code"] == "quota_exceeded"
    oai.evals.runs.cancel(runs[0], eval_id=ev.id)  # a canceled run frees its place
    assert oai.evals.runs.create(ev.id, data_source=_completions()).status == "queued"


def _item(run: EvalRun, index: int, status: str) -> EvalOutputItem:
    passed = status == "pass"
    return EvalOutputItem(
        id=new_id("eval_output_item"), run_id=run.id, eval_id=run.eval_id, tenant_id=run.tenant_id,
        datasource_item_id=index, datasource_item=ITEMS[index]["item"], status=status,
        sample={"input": [{"role": "user", "content": f"Q: q{index}"}],
                "output": [{"role": "assistant", "content": "a0"}], "finish_reason": "stop", "model": "tiny-llama",
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}, "seed": 1,
                "temperature": 0.0, "max_completion_tokens": 8, "top_p": 1.0},
        results=[{"name": "exact", "type": "string_check", "score": float(passed), "passed": passed}])


def test_output_items_list_filter_and_retrieve(oai, tenant):
    ev = _eval(oai)
    run = oai.evals.runs.create(ev.id, data_source=_completions())
    with session_scope(tenant.settings) as session:  # as the executor writes them, one per item
        row = session.get(EvalRun, run.id)
        for index, status in enumerate(("pass", "fail", "pass")):
            session.add(_item(row, index, status))
        session.commit()
    items = list(oai.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=2))
    assert [i.datasource_item_id for i in items] == [0, 1, 2] and items[0].object == "eval.run.output_item"
    assert items[0].sample.usage.total_tokens == 7 and items[0].sample.usage.cached_tokens == 0
    assert items[0].sample.error.code == "" and items[0].results[0].passed is True
    passed = oai.evals.runs.output_items.list(run.id, eval_id=ev.id, status="pass").data
    assert [i.datasource_item_id for i in passed] == [0, 2]
    assert [i.status for i in oai.evals.runs.output_items.list(run.id, eval_id=ev.id, status="fail")] == ["fail"]
    one = oai.evals.runs.output_items.retrieve(items[1].id, eval_id=ev.id, run_id=run.id)
    assert one.datasource_item == {"question": "q1", "answer": "a1"} and one.status == "fail"
    status, param, _ = _error(lambda: oai.evals.runs.output_items.list(run.id, eval_id=ev.id, status="passed"))
    assert (status, param) == (400, "status")


def test_another_tenants_evals_runs_and_items_are_404(oai, client, settings, server_url):
    from tests.support.api_client import make_tenant

    ev = _eval(oai)
    run = oai.evals.runs.create(ev.id, data_source=_completions())
    other = openai.OpenAI(api_key=make_tenant(client, settings).key, base_url=f"{server_url}/v1", max_retries=0)
    for call in (lambda: other.evals.retrieve(ev.id), lambda: other.evals.update(ev.id, name="x"),
                 lambda: other.evals.delete(ev.id), lambda: other.evals.runs.list(ev.id),
                 lambda: other.evals.runs.create(ev.id, data_source=_completions()),
                 lambda: other.evals.runs.retrieve(run.id, eval_id=ev.id),
                 lambda: other.evals.runs.cancel(run.id, eval_id=ev.id),
                 lambda: other.evals.runs.output_items.list(run.id, eval_id=ev.id)):
        assert _error(call)[0] == 404
    assert list(other.evals.list()) == []
    other_eval = _eval(other)  # a run is found only under its own eval
    assert _error(lambda: oai.evals.runs.retrieve(run.id, eval_id=other_eval.id))[0] == 404
    assert oai.evals.retrieve(ev.id).name == "qa"  # untouched
