"""`/v1/fine_tuning/alpha/graders/run|validate` through the official openai client against a real server."""

from __future__ import annotations

import openai
import pytest

STRING_CHECK = {"type": "string_check", "name": "exact", "operation": "eq", "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}"}


@pytest.fixture
def oai(tenant, server_url):
    return openai.OpenAI(api_key=tenant.key, base_url=f"{server_url}/v1", max_retries=0, timeout=30)


def test_run_and_validate_through_the_openai_client(oai):
    graders = oai.fine_tuning.alpha.graders
    passed = graders.run(grader=STRING_CHECK, model_sample="42", item={"answer": "42"})
    assert passed.reward == 1.0 and passed.sub_rewards == {} and passed.metadata.type == "string_check"
    assert passed.metadata.name == "exact" and not passed.metadata.errors.other_error
    assert graders.run(grader=STRING_CHECK, model_sample="41", item={"answer": "42"}).reward == 0.0

    multi = {"type": "multi", "name": "m", "calculate_output": "0.25 * exact + 0.75 * overlap",
             "graders": {"exact": STRING_CHECK,
                         "overlap": {"type": "text_similarity", "name": "o", "evaluation_metric": "rouge_1",
                                     "input": "{{sample.output_text}}", "reference": "{{item.answer}} is it"}}}
    combined = graders.run(grader=multi, model_sample="42", item={"answer": "42"})
    # rouge_1 of "42" against "42 is it": precision 1, recall 1/3 -> F = 1/2
    assert combined.reward == pytest.approx(0.25 * 1 + 0.75 * 0.5, abs=1e-12)
    assert combined.sub_rewards == {"exact": 1.0, "overlap": pytest.approx(0.5, abs=1e-12)}

    validated = graders.validate(grader=STRING_CHECK)
    assert validated.grader.type == "string_check" and validated.grader.reference == "{{item.answer}}"


@pytest.mark.parametrize(("grader", "param", "message"), [
    ({"type": "python", "name": "p", "source": "def grade(s, i): return 1"}, "grader.type", "disabled"),
    ({"type": "text_similarity", "name": "t", "evaluation_metric": "cosine", "input": "a", "reference": "b"},
     "grader.evaluation_metric", "embedding model"),
    ({**STRING_CHECK, "operation": "regex"}, "grader.operation", "eq"),
    ({"type": "multi", "name": "m", "calculate_output": "exact + nope", "graders": {"exact": STRING_CHECK}},
     "grader.calculate_output", "'nope' names no grader"),
])
def test_bad_graders_are_400s_naming_the_field(oai, grader, param, message):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.fine_tuning.alpha.graders.validate(grader=grader)
    assert refused.value.param == param and message in refused.value.message


def test_a_missing_item_field_is_a_400_naming_it(oai):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.fine_tuning.alpha.graders.run(grader=STRING_CHECK, model_sample="42", item={"answr": "42"})
    assert refused.value.param == "item" and "'item' has no field 'answer'" in refused.value.message


def test_a_judge_model_that_no_server_serves_is_a_grader_error_not_a_500(oai):
    judge = {"type": "score_model", "name": "j", "model": "tiny-llama", "input": [{"role": "user", "content": "x"}]}
    result = oai.fine_tuning.alpha.graders.run(grader=judge, model_sample="42", item={})
    assert result.reward == 0.0 and result.metadata.errors.api_model_grader_server_error
    assert result.metadata.errors.api_model_grader_server_error_details
