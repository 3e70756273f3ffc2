"""A job that names `evals` (issue #24) gets one completed eval run per checkpoint and one of its
fine-tuned model, through `dora api`, `dora worker`, `dora evals` and a `dora serve` (the tiny model),
started as users start them; GET .../eval_scores answers them by step with their pass rates, and the
checkpoint's run sampled the checkpoint (its answers are that model's chat completions). On the same
stack, a reinforcement job's label_model grader is judged by that `dora serve`, asked by the worker."""

from __future__ import annotations

import json

import pytest

from tests.support.jobs import dora_method, wait_for
from tests.support.stack import serving_stack

MAX_TOKENS = 4
QUESTIONS = ["Colour of the sky?", "Opposite of up?", "Two plus two?"]
CRITERIA = [{"type": "string_check", "name": "says something", "input": "{{sample.output_text}}", "reference": "",
             "operation": "ne"},
            {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.expected}}", "operation": "eq"}]
PROMPT = {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    with serving_stack(tmp_path_factory.mktemp("job-evals"), tiny_model_dir=tiny_model_dir, evals=True) as stack:
        yield stack


def _post(api, path: str, body: dict) -> dict:
    response = api.client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _answer(api, model: str, question: str) -> str:
    completion = _post(api, "/v1/chat/completions", {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0,
                                                     "messages": [{"role": "user", "content": question}]})
    return completion["choices"][0]["message"]["content"]


def test_a_job_with_evals_gets_a_completed_run_per_checkpoint_and_of_its_model(stack):
    api = stack.api
    evaluation = _post(api, "/v1/evals", {"name": "curve", "testing_criteria": CRITERIA, "data_source_config": {
        "type": "custom", "include_sample_schema": True, "item_schema": {
            "type": "object", "properties": {"question": {"type": "string"}, "expected": {"type": "string"}}}}})
    base_answers = [_answer(api, "tiny-llama", q) for q in QUESTIONS]
    # the first item expects the base's answer, the others one no model gives
    content = [{"item": {"question": q, "expected": base_answers[0] if i == 0 else "\u2603 never"}}
               for i, q in enumerate(QUESTIONS)]
    baseline = _post(api, f"/v1/evals/{evaluation['id']}/runs", {"name": "base", "data_source": {
        "type": "completions", "model": "tiny-llama", "input_messages": PROMPT,
        "sampling_params": {"temperature": 0, "max_completion_tokens": MAX_TOKENS},
        "source": {"type": "file_content", "content": content}}})

    job = api.create(dora_method(max_steps=6, checkpoint_interval=3), suffix="curve", evals=[evaluation["id"]])
    assert job["evals"] == [evaluation["id"]]
    job = api.wait(job["id"], timeout=120)
    assert job["status"] == "succeeded", job
    checkpoints = {c["step_number"]: c["fine_tuned_model_checkpoint"] for c in api.client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]}
    assert sorted(checkpoints) == [3, 6]

    def finished():
        rows = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_scores").raise_for_status().json()["data"]
        return rows if len(rows) == 3 and all(r["status"] not in ("queued", "in_progress") for r in rows) else None

    rows = wait_for(finished, timeout=120, what="the job's three eval runs to finish", interval=0.5)
    assert [(r["step"], r["evaluated"], r["model"]) for r in rows] == [
        (3, "checkpoint", checkpoints[3]), (6, "checkpoint", checkpoints[6]),
        (6, "fine_tuned_model", job["fine_tuned_model"])]
    for row in rows:
        assert row["status"] == "completed", row
        assert row["eval_id"] == evaluation["id"] and row["result_counts"]["total"] == len(QUESTIONS)
        assert row["result_counts"]["errored"] == 0, row
        for criterion in row["per_testing_criteria_results"]:
            assert criterion["passed"] + criterion["failed"] == len(QUESTIONS)
            assert criterion["pass_rate"] == pytest.approx(criterion["passed"] / len(QUESTIONS), abs=1e-12)
        assert row["pass_rate"] == pytest.approx(row["result_counts"]["passed"] / len(QUESTIONS), abs=1e-12)

    # the checkpoint's run sampled the checkpoint, with the baseline's prompt and sampling params
    step_3 = rows[0]
    items = api.client.get(f"/v1/evals/{evaluation['id']}/runs/{step_3['run_id']}/output_items",
                           params={"limit": 10}).json()["data"]
    by_index = {item["datasource_item_id"]: item for item in items}
    expected = [_answer(api, checkpoints[3], q) for q in QUESTIONS]
    assert [by_index[i]["sample"]["output"][0]["content"] for i in range(len(QUESTIONS))] == expected
    assert [by_index[i]["sample"]["max_completion_tokens"] for i in range(len(QUESTIONS))] == [MAX_TOKENS] * 3
    run = api.client.get(f"/v1/evals/{evaluation['id']}/runs/{step_3['run_id']}").json()
    assert run["metadata"] == {"fine_tuning_job_id": job["id"], "step": "3", "evaluated": "checkpoint"}
    assert run["data_source"]["input_messages"] == baseline["data_source"]["input_messages"]
    events = api.events(job["id"])
    assert sum(f"queued for the checkpoint at step {step}" in e for e in events for step in (3, 6)) == 2, events


# a reinforcement job's judge: the worker asks the inference server, as `dora evals` does
JUDGE_TOKENS = 3
JUDGE_PROMPT = [{"role": "user", "content": "Is this easy: {{item.question}}"}]
CANDIDATES = ["Colour of the sky?", "Opposite of up?", "Two plus two?", "Name a fruit.", "Capital of France?"]


def _label(text: str) -> str:
    """The judge's answer as dora_graders/judges.py parse_label reads a plain-text label."""
    return text.strip().rstrip(".").strip().strip("\"'`").strip()


def test_a_reinforcement_jobs_label_model_grader_is_rewarded_by_its_judge_on_the_inference_server(stack):
    """The judge's prompt reads only the item, so its greedy answer to each prompt is known before
    training (asked here through /v1/chat/completions of the same server): the grader's labels are
    the answers to two prompts, the first passing. Every sample of the first prompt is rewarded 1,
    of the second 0, whatever the policy samples: the step's reward is exactly 0.5 with a spread of
    0, and so is each evaluation's (before and after training). A judge not asked (or failing) would
    fail the job, a label the judge did not give would be a parse error (reward 0)."""
    api = stack.api
    labels: dict[str, str] = {}
    for question in CANDIDATES:
        completion = _post(api, "/v1/chat/completions", {
            "model": "tiny-llama", "max_tokens": JUDGE_TOKENS, "temperature": 0,
            "messages": [{"role": "user", "content": f"Is this easy: {question}"}]})
        label = _label(completion["choices"][0]["message"]["content"])
        if label and label not in labels.values() and not label.startswith(("{", "[")):
            labels[question] = label
        if len(labels) == 2:
            break
    assert len(labels) == 2, labels  # two prompts the tiny model answers apart
    (passing, passing_label), (_, failing_label) = labels.items()
    grader = {"type": "label_model", "name": "judge", "model": "tiny-llama", "input": JUDGE_PROMPT,
              "labels": [passing_label, failing_label], "passing_labels": [passing_label],
              "sampling_params": {"temperature": 0, "max_completions_tokens": JUDGE_TOKENS}}
    prompts = "".join(json.dumps({"messages": [{"role": "user", "content": q}], "question": q}) + "\n"
                      for q in labels).encode()
    file_id = api.upload(prompts)
    job = api.create({"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {
        "batch_size": 2, "n_epochs": 1, "compute_multiplier": 2, "eval_interval": 1, "eval_samples": 2,
        "max_completion_tokens": 4}}}, training_file=file_id, validation_file=file_id, outputs=["adapter"])
    job = api.wait(job["id"], timeout=120)
    assert job["status"] == "succeeded", job

    points = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics", params={"limit": 100}).json()["data"]
    steps = [point["values"] for point in points if "loss" in point["values"]]
    assert len(steps) == 1 and all(step["reward"] == pytest.approx(0.5, abs=1e-12) for step in steps), steps
    assert all(step["reward_std"] == pytest.approx(0.0, abs=1e-12) for step in steps), steps
    evaluations = [point["values"]["eval_reward"] for point in points if "eval_reward" in point["values"]]
    assert len(evaluations) == 2 and evaluations == pytest.approx([0.5] * 2, abs=1e-12), points  # steps 0, 1
