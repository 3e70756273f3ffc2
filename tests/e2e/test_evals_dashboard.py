"""The dashboard's eval pages in a real headless Chromium, against a real `dora api`, `dora worker`,
`dora evals` (the executor) and `dora serve` (the tiny model, embedded backends).

One eval with a string_check grader is created and run with the official `openai` client on the
base model, a finished job's checkpoint and its fine-tuned model. The items' expected answers are
chosen from the models' own greedy answers (read with the same client first), so which runs pass
which item, and so the disagreements, are known before the page is opened. The comparison page
must show one column per run in order (base, checkpoint, final), the API's counts, the 95% Wilson
intervals (also checked against textbook values and a float64 formula here), and exactly the
items passed by some runs and not others, each with every run's answer and grade; the run's
report_url opens its report; the job's page lists the runs of its model and checkpoint.
"""

from __future__ import annotations

import math

import openai
import pytest

from tests.support.browser import chromium, dashboard_page, screenshot_path
from tests.support.jobs import dora_method, wait_for
from tests.support.stack import serving_stack

pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")
MAX_TOKENS = 4
SYSTEM = "Answer in one word."
QUESTIONS = ["Colour of the sky?", "Opposite of up?", "First letter?", "Two plus two?", "A fruit?", "Capital city?"]
CRITERION = {"type": "string_check", "name": "exact answer", "input": "{{sample.output_text}}",
             "reference": "{{item.expected}}", "operation": "eq"}
Z95 = 1.959963984540054


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    def train_meanwhile(stack):
        stack.job = stack.api.create(dora_method(max_steps=6, checkpoint_interval=3))

    with serving_stack(tmp_path_factory.mktemp("evals-dashboard"), tiny_model_dir=tiny_model_dir, evals=True,
                       before_worker=train_meanwhile) as stack:
        yield stack


@pytest.fixture
def page(stack, request):
    with chromium() as browser, dashboard_page(browser, stack.api.url, request.node.name) as page:
        yield page


def wilson(passed: int, trials: int) -> tuple[float, float]:
    """The 95% Wilson score interval in float64, written independently of js/stats.js."""
    p, z2 = passed / trials, Z95 * Z95
    center = (passed + z2 / 2) / (trials + z2)
    half = Z95 * math.sqrt(trials * p * (1 - p) + z2 / 4) / (trials + z2)
    return max(0.0, center - half), min(1.0, center + half)


def interval_text(passed: int, trials: int) -> str:
    low, high = wilson(passed, trials)
    return f"[{100 * low:.1f}%, {100 * high:.1f}%]"


def answer(client, model: str, question: str) -> str:
    completion = client.chat.completions.create(model=model, max_tokens=MAX_TOKENS, temperature=0, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
    return completion.choices[0].message.content


def test_the_comparison_shows_the_apis_counts_wilson_intervals_and_the_items_the_models_disagree_on(
        page, stack, request):
    client = openai.OpenAI(api_key=stack.api.key, base_url=f"{stack.api.url}/v1", max_retries=0, timeout=60)
    # js/stats.js against textbook values (Newcombe 1998: 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634])
    # and against the float64 formula above: the same double operations up to their order
    page.goto("/ui/")
    cases = [(0, 10), (5, 10), (3, 5), (10, 10), (1, 1), (81, 263), (999, 1000), (0, 0)]
    got = page.evaluate("""async (cases) => { const stats = await import("/ui/js/stats.js");
        return cases.map(([k, n]) => stats.wilson(k, n)); }""", cases)
    assert got[-1] is None  # nothing to rate
    assert got[0]["low"] == 0 and abs(got[0]["high"] - 0.2775) < 5e-5
    assert abs(got[1]["low"] - 0.2366) < 5e-5 and abs(got[1]["high"] - 0.7634) < 5e-5
    for (k, n), interval in zip(cases[:-1], got[:-1], strict=True):
        low, high = wilson(k, n)
        assert interval["rate"] == k / n
        assert math.isclose(interval["low"], low, rel_tol=1e-12, abs_tol=1e-15), (k, n, interval)
        assert math.isclose(interval["high"], high, rel_tol=1e-12), (k, n, interval)

    job = stack.api.wait(stack.job["id"])
    assert job["status"] == "succeeded", job
    tuned = job["fine_tuned_model"]
    checkpoint = f"{tuned}:ckpt-step-3"
    models = ["tiny-llama", checkpoint, tuned]  # the page's column order: base, checkpoints by step, final
    answers = {model: [answer(client, model, question) for question in QUESTIONS] for model in models}
    # item i expects one model's own answer (in turn), the last one nobody's: which runs pass it is known
    expected = [answers[models[i % 3]][i] for i in range(len(QUESTIONS) - 1)] + ["(nobody says this)"]
    passes = {model: [a == e for a, e in zip(answers[model], expected, strict=True)] for model in models}
    disagree = [i for i in range(len(QUESTIONS)) if len({passes[m][i] for m in models}) == 2]
    assert disagree, f"the fine-tuned models answer as the base does: {answers}"  # the test would show nothing

    evaluation = client.evals.create(
        name="one-word answers", testing_criteria=[CRITERION],
        data_source_config={"type": "custom", "include_sample_schema": True, "item_schema": {
            "type": "object", "properties": {"question": {"type": "string"}, "expected": {"type": "string"}},
            "required": ["question", "expected"]}})
    content = [{"item": {"question": q, "expected": e}} for q, e in zip(QUESTIONS, expected, strict=True)]
    run_ids = {}
    for model in (tuned, "tiny-llama", checkpoint):  # created out of column order
        run_ids[model] = client.evals.runs.create(evaluation.id, name=f"on {model.split(':')[-1]}", data_source={
            "type": "completions", "model": model,
            "input_messages": {"type": "template", "template": [
                {"role": "system", "content": SYSTEM}, {"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": MAX_TOKENS},
            "source": {"type": "file_content", "content": content}}).id
    runs = {model: wait_for(lambda r=run_id: (lambda got: got if got.status not in ("queued", "in_progress") else None)(
        client.evals.runs.retrieve(r, eval_id=evaluation.id)), timeout=60, what=f"the run on {model}")
            for model, run_id in run_ids.items()}
    for model, run in runs.items():
        assert run.status == "completed", run
        assert run.result_counts.passed == sum(passes[model]) and run.result_counts.total == len(QUESTIONS)

    # the evals list, then the comparison
    page.evaluate("(key) => sessionStorage.setItem('dora.apiKey', key)", stack.api.key)
    page.goto("/ui/#/evals")
    page.click(f"#evals-table tr[data-eval='{evaluation.id}'] a")
    page.wait_for_selector("#comparison")
    page.wait_for_selector("#disagreement-summary[data-count]")
    assert page.get_attribute("#nav a.active", "data-nav") == "evals"
    columns = page.eval_on_selector_all("#comparison thead th[data-run]", "nodes => nodes.map((n) => n.dataset.run)")
    assert columns == [runs[model].id for model in models]
    labels = page.eval_on_selector_all("#comparison thead .run-label", "nodes => nodes.map((n) => n.textContent)")
    assert labels == ["base", "DoRA r4 · step 3", "DoRA r4"]
    for model in models:
        run = runs[model]
        counts = run.result_counts
        [per_criterion] = run.per_testing_criteria_results
        for row, (passed, trials) in {"overall": (counts.passed, counts.total),
                                      "criterion": (per_criterion.passed, per_criterion.passed + per_criterion.failed)
                                      }.items():
            cell = page.locator(f"#comparison tr[data-row={row}] td[data-run='{run.id}']")
            assert (cell.get_attribute("data-passed"), cell.get_attribute("data-trials")) == (str(passed), str(trials))
            text = cell.inner_text()
            assert f"{passed} / {trials} · {100 * passed / trials:.1f}%" in text, text
            assert cell.locator(".rate-interval").inner_text() == interval_text(passed, trials)

    # the disagreements: exactly the items some runs passed and others did not, with every answer
    assert page.get_attribute("#disagreement-summary", "data-count") == str(len(disagree))
    assert page.inner_text("#disagreement-summary").startswith(f"{len(disagree)} of {len(QUESTIONS)} items")
    rows = page.eval_on_selector_all("#disagreements tbody tr", "nodes => nodes.map((n) => n.dataset.item)")
    assert rows == [str(i) for i in disagree]
    for i in disagree:
        assert QUESTIONS[i] in page.inner_text(f"#disagreements tr[data-item='{i}'] .item-text")
        for model in models:
            cell = page.locator(f"#disagreements tr[data-item='{i}'] td[data-run='{runs[model].id}']")
            assert cell.locator(".answer").text_content() == answers[model][i]
            assert cell.get_attribute("data-grade") == ("pass" if passes[model][i] else "fail")
    page.screenshot(path=str(screenshot_path(f"{request.node.name}-comparison")), full_page=True)

    # the run's report_url is its report: counts, its items with the answers
    run = runs[tuned]
    assert run.report_url == f"/ui/#/evals/{evaluation.id}/runs/{run.id}"
    page.goto(run.report_url)
    page.wait_for_selector("#run-status[data-status=completed]")
    page.wait_for_selector("#output-items tbody tr[data-item]")
    shown = {name: page.inner_text(f"#run-counts [data-count={name}] dd") for name in ("total", "passed", "failed")}
    assert shown == {"total": str(run.result_counts.total), "passed": str(run.result_counts.passed),
                     "failed": str(run.result_counts.failed)}
    items = page.eval_on_selector_all("#output-items tbody tr[data-item]", """nodes => nodes.map((n) =>
        [Number(n.dataset.item), n.dataset.grade, n.querySelector(".answer").textContent])""")
    assert sorted(items) == [[i, "pass" if passes[tuned][i] else "fail", answers[tuned][i]]
                             for i in range(len(QUESTIONS))]
    page.screenshot(path=str(screenshot_path(f"{request.node.name}-report")), full_page=True)

    # the job's page lists the runs of its model and its checkpoint (not the base's) and links the comparison
    page.goto(f"/ui/#/jobs/{job['id']}")
    page.wait_for_selector("#job-eval-runs")
    listed = page.eval_on_selector_all("#job-eval-runs tbody tr", "nodes => nodes.map((n) => n.dataset.run)")
    assert sorted(listed) == sorted([runs[tuned].id, runs[checkpoint].id])
    page.locator("#job-evals").screenshot(path=str(screenshot_path(f"{request.node.name}-job")))
    page.click(f"#job-eval-runs tr[data-run='{runs[tuned].id}'] [data-action=compare]")
    page.wait_for_selector("#comparison")

    page.set_viewport_size({"width": 480, "height": 900})  # the nav's new link still fits in a narrow window
    header = page.evaluate("""() => ({clipped: document.querySelector(".topbar").scrollWidth - 480,
        navEnd: document.querySelector("#nav a[data-nav=evals]").getBoundingClientRect().right,
        signOut: document.querySelector("#sign-out").getBoundingClientRect().left})""")
    assert header["clipped"] <= 0 and header["navEnd"] <= header["signOut"], header
    assert page.evaluate("document.documentElement.scrollWidth") <= 480  # the table scrolls inside its card
