"""Evals end to end with the official `openai` client: `dora api`, `dora worker`, `dora evals` (the
eval executor) and a `dora serve` (the tiny model, embedded backends), started as users start them.

One eval (a string_check of the answer against the item's `expected`) is run against the base, a
finished job's `ft:` model and one of its checkpoints; each run completes, its output items are
listed, and its counts are the ones worked out from the same model's chat completions: an item
whose `expected` is that answer passes, the others fail.
"""

from __future__ import annotations

import openai
import pytest

from tests.support.jobs import wait_for
from tests.support.stack import serving_stack

# the client warns that OpenAI's hosted Evals API is being shut down; this service keeps its shapes
pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")
MAX_TOKENS = 4
SYSTEM = "Answer in one word."
QUESTIONS = ["Colour of the sky?", "Opposite of up?", "First letter?", "Two plus two?", "A fruit?"]
CRITERION = {"type": "string_check", "name": "exact answer", "input": "{{sample.output_text}}",
             "reference": "{{item.expected}}", "operation": "eq"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    with serving_stack(tmp_path_factory.mktemp("evals-openai"), tiny_model_dir=tiny_model_dir, evals=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def oai(stack):
    return openai.OpenAI(api_key=stack.api.key, base_url=f"{stack.api.url}/v1", max_retries=0, timeout=60)


def _answer(oai, model: str, question: str) -> str:
    completion = oai.chat.completions.create(model=model, max_tokens=MAX_TOKENS, temperature=0, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
    return completion.choices[0].message.content


def test_an_eval_runs_against_a_base_a_fine_tuned_model_and_a_checkpoint(stack, oai):
    job = stack.api.wait(stack.api.create(suffix="evals")["id"])
    assert job["status"] == "succeeded", job
    checkpoint = next(c.fine_tuned_model_checkpoint
                      for c in oai.fine_tuning.jobs.checkpoints.list(job["id"]))
    evaluation = oai.evals.create(
        name="one-word answers", testing_criteria=[CRITERION],
        data_source_config={"type": "custom", "include_sample_schema": True, "item_schema": {
            "type": "object", "properties": {"question": {"type": "string"}, "expected": {"type": "string"}},
            "required": ["question", "expected"]}})

    runs = {}
    for model in ("tiny-llama", job["fine_tuned_model"], checkpoint):
        answers = [_answer(oai, model, question) for question in QUESTIONS]
        # the first three expect the model's own answer (pass), the last two another one (fail)
        content = [{"item": {"question": q, "expected": a if i < 3 else f"not {a}"}}
                   for i, (q, a) in enumerate(zip(QUESTIONS, answers, strict=True))]
        run = oai.evals.runs.create(evaluation.id, name=f"run on {model}", data_source={
            "type": "completions", "model": model,
            "input_messages": {"type": "template", "template": [
                {"role": "system", "content": SYSTEM}, {"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": MAX_TOKENS},
            "source": {"type": "file_content", "content": content}})
        assert run.status in ("queued", "in_progress") and run.model == model
        runs[model] = (run.id, answers)

    for model, (run_id, answers) in runs.items():
        run = wait_for(lambda r=run_id: (lambda got: got if got.status not in ("queued", "in_progress") else None)(
            oai.evals.runs.retrieve(r, eval_id=evaluation.id)), timeout=60, what=f"the run on {model}")
        assert run.status == "completed", run
        assert (run.result_counts.total, run.result_counts.passed, run.result_counts.failed,
                run.result_counts.errored) == (5, 3, 2, 0)
        assert [(r.testing_criteria, r.passed, r.failed) for r in run.per_testing_criteria_results] == [
            ("exact answer", 3, 2)]
        [usage] = run.per_model_usage
        assert (usage.model_name, usage.invocation_count) == (model, 5)
        items = list(oai.evals.runs.output_items.list(run_id, eval_id=evaluation.id))
        by_index = {item.datasource_item_id: item for item in items}
        assert sorted(by_index) == [0, 1, 2, 3, 4]
        assert [by_index[i].sample.output[0].content for i in range(5)] == answers
        assert [by_index[i].status for i in range(5)] == ["pass"] * 3 + ["fail"] * 2
