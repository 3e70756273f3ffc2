"""Each grader type against hand-computed values; the metrics against their libraries called here directly."""

from __future__ import annotations

import pytest
from nltk.translate.gleu_score import sentence_gleu
from pydantic import TypeAdapter, ValidationError
from rapidfuzz.distance import Indel
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from dora_contract.graders import Grader
from dora_graders import (
    GraderSpecError,
    GradingContext,
    ItemError,
    JudgeReply,
    JudgeUnavailableError,
    check,
    check_item,
    grade,
)

GRADER = TypeAdapter(Grader)
HYPOTHESIS, REFERENCE = "the cat sat on the mat", "the cat is on the mat"
# float64 throughout: the libraries' own values are reproduced exactly, up to float rounding
TOL = 1e-12


def run(spec: dict, output: str = "", item: dict | None = None, **context) -> object:
    grader = GRADER.validate_python(spec)
    check(grader, GradingContext(**context))
    return grade(grader, output_text=output, item=item or {}, context=GradingContext(**context))


@pytest.mark.parametrize(("operation", "given", "expected"), [
    ("eq", "Paris", 1.0), ("eq", "paris", 0.0), ("ne", "paris", 1.0), ("ne", "Paris", 0.0),
    ("like", "It is Paris.", 1.0), ("like", "it is paris.", 0.0), ("ilike", "IT IS PARIS", 1.0),
    ("ilike", "London", 0.0)])
def test_string_check_operations(operation, given, expected):
    result = run({"type": "string_check", "name": "s", "operation": operation, "input": "{{sample.output_text}}",
                  "reference": "{{item.city}}"}, given, {"city": "Paris"})
    assert result.reward == expected and result.error is None and result.passed is (expected == 1.0)


def test_text_similarity_by_hand():
    # rouge_1: 5 of 6 unigrams shared both ways -> F = 5/6; rouge_2: 3 of 5 bigrams -> 3/5
    expected = {"rouge_1": 5 / 6, "rouge_2": 3 / 5, "rouge_3": 1 / 4, "rouge_4": 0.0, "rouge_l": 5 / 6,
                # fuzzy: Indel distance 3 over 43 characters -> 1 - 3/43
                "fuzzy_match": 1 - 3 / 43}
    for metric, value in expected.items():
        result = run({"type": "text_similarity", "name": "t", "evaluation_metric": metric,
                      "input": "{{sample.output_text}}", "reference": "{{item.ref}}"}, HYPOTHESIS, {"ref": REFERENCE})
        assert result.reward == pytest.approx(value, abs=TOL), metric


def test_text_similarity_matches_the_libraries():
    def score(metric):
        return run({"type": "text_similarity", "name": "t", "evaluation_metric": metric, "input": HYPOTHESIS,
                    "reference": REFERENCE}).reward

    assert score("bleu") == pytest.approx(BLEU(effective_order=True).sentence_score(HYPOTHESIS, [REFERENCE]).score
                                          / 100, abs=TOL)
    assert 0.0 < score("bleu") < 1.0
    assert score("gleu") == pytest.approx(sentence_gleu([REFERENCE.split()], HYPOTHESIS.split()), abs=TOL)
    assert score("gleu") == pytest.approx(0.5, abs=TOL)  # 8 of 16 reference n-grams (1..4) matched; 8 of 15 hyp
    scorer = rouge_scorer.RougeScorer(["rouge5", "rougeL"])
    assert score("rouge_5") == scorer.score(REFERENCE, HYPOTHESIS)["rouge5"].fmeasure == 0.0
    assert score("fuzzy_match") == pytest.approx(Indel.normalized_similarity(HYPOTHESIS, REFERENCE), abs=TOL)


def test_cosine_and_meteor_are_refused_with_reasons():
    with pytest.raises(ValidationError, match="needs an embedding model"):
        GRADER.validate_python({"type": "text_similarity", "name": "t", "evaluation_metric": "cosine",
                                "input": "a", "reference": "b"})
    grader = GRADER.validate_python({"type": "text_similarity", "name": "t", "evaluation_metric": "meteor",
                                     "input": "a", "reference": "b"})
    with pytest.raises(GraderSpecError, match="nltk.downloader wordnet") as refused:
        check(grader, GradingContext())
    assert refused.value.field == "evaluation_metric"


def test_templates_render_item_and_sample_paths_and_name_what_is_missing():
    result = run({"type": "string_check", "name": "s", "operation": "eq",
                  "input": "{{ sample.output_json.answer }}-{{sample.choices[0].message.content}}",
                  "reference": "{{item.answers[1]}}-{{item.meta.n}}"},
                 '{"answer": 7}', {"answers": [1, 7], "meta": {"n": '{"answer": 7}'}})
    assert result.reward == 1.0
    grader = GRADER.validate_python({"type": "string_check", "name": "s", "operation": "eq",
                                     "input": "{{sample.output_text}}", "reference": "{{item.labels.gold}}"})
    with pytest.raises(ItemError, match="'item.labels' has no field 'gold'") as missing:
        check_item(grader, {"labels": {"silver": 1}})
    assert missing.value.reference == "item.labels.gold"
    with pytest.raises(ItemError, match="not a path"):
        check(GRADER.validate_python({"type": "string_check", "name": "s", "operation": "eq",
                                      "input": "{{ os.system('x') }}", "reference": ""}), GradingContext())


def test_multi_formula_over_named_graders():
    spec = {"type": "multi", "name": "m", "calculate_output": "0.5 * exact + 0.5 * fuzzy ^ 2 - min(exact, 0.25)",
            "graders": {"exact": {"type": "string_check", "name": "e", "operation": "eq",
                                  "input": "{{sample.output_text}}", "reference": "{{item.a}}"},
                        "fuzzy": {"type": "text_similarity", "name": "f", "evaluation_metric": "rouge_1",
                                  "input": "{{sample.output_text}}", "reference": "{{item.b}}"}}}
    result = run(spec, "x y", {"a": "x y", "b": "x y z w"})
    # rouge_1 F of 2/2 precision, 2/4 recall = 2/3; 0.5 + 0.5 * 4/9 - 0.25
    assert result.reward == pytest.approx(0.5 + 0.5 * 4 / 9 - 0.25, abs=TOL)
    assert result.sub_rewards == {"exact": 1.0, "fuzzy": pytest.approx(2 / 3, abs=TOL)}
    for bad, why in (("exact + nope", "'nope' names no grader"), ("__import__('os')", "not a function"),
                     ("exact.real", "not allowed"), ("exact +", "not a formula")):
        with pytest.raises(GraderSpecError, match=why):
            run(spec | {"calculate_output": bad})
    zero = run(spec | {"calculate_output": "1 / (exact - 1)"}, "x y", {"a": "x y", "b": "x"})
    assert zero.reward == 0.0 and zero.error == "formula_parse_error"


def test_score_and_label_model_read_the_judges_answer():
    asked = []

    def judge(model, messages, sampling):
        asked.append((model, messages, sampling))
        return {"7": JudgeReply('{"result": 0.7, "steps": []}', total_tokens=12), "8": "Score: 8 out of 10",
                "big": "11", "good": ' "Good". ', "huh": "maybe"}[messages[-1]["content"]]

    score = {"type": "score_model", "name": "j", "model": "tiny-llama", "range": [0, 10],
             "input": [{"role": "system", "content": "Rate."},
                       {"role": "user", "content": [{"type": "input_text", "text": "{{sample.output_text}}"}]}],
             "sampling_params": {"temperature": 0, "max_completions_tokens": 5}}
    seven = run(score, "7", complete=judge)
    assert seven.reward == 0.7 and seven.tokens_per_model == {"tiny-llama": 12}
    assert asked[0] == ("tiny-llama", [{"role": "system", "content": "Rate."}, {"role": "user", "content": "7"}],
                        {"temperature": 0.0, "max_tokens": 5})
    assert run(score, "8", complete=judge).reward == 8.0
    out_of_range = run(score, "big", complete=judge)
    assert out_of_range.error == "model_grader_parse_error" and "outside the range" in out_of_range.message
    label = {"type": "label_model", "name": "l", "model": "tiny-llama", "labels": ["good", "bad"],
             "passing_labels": ["good"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    good = run(label, "good", complete=judge)
    assert (good.reward, good.label, good.passed) == (1.0, "good", True)
    assert run(label, "huh", complete=judge).error == "model_grader_parse_error"
    assert run(label, "good").error == "model_grader_server_error"  # no judge lent

    def broken(model, messages, sampling):
        raise ConnectionError("refused")

    failed = run(label, "good", complete=broken)
    assert failed.error == "model_grader_server_error" and failed.to_openai()["metadata"]["errors"][
        "model_grader_server_error_details"].endswith("refused")
    with pytest.raises(ValidationError, match="subset of labels"):
        GRADER.validate_python(label | {"passing_labels": ["great"]})


def test_a_judge_that_cannot_answer_at_all_stops_the_caller_even_inside_a_multi_grader():
    """The training worker's judge raises JudgeUnavailableError (its model gone, no server): not a
    sample's model_grader_server_error with a reward of 0, but out of grade(), so the run fails."""
    def gone(model, messages, sampling):
        raise JudgeUnavailableError(f"the judge '{model}' is gone")

    label = {"type": "label_model", "name": "l", "model": "tiny-llama", "labels": ["good", "bad"],
             "passing_labels": ["good"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    multi = {"type": "multi", "name": "m", "calculate_output": "l", "graders": {"l": label}}
    for spec in (label, multi):
        with pytest.raises(JudgeUnavailableError, match="'tiny-llama' is gone"):
            run(spec, "good", complete=gone)


def test_python_disabled_names_the_grader_type():
    grader = GRADER.validate_python({"type": "python", "name": "p", "source": "def grade(s, i): return 1"})
    with pytest.raises(GraderSpecError, match="'python' grader type is disabled") as disabled:
        check(grader, GradingContext())
    assert disabled.value.field == "type"
