"""The dashboard's playground in a real headless Chromium, against a real `dora api`, `dora worker`
and `dora serve` (the tiny model, embedded backends).

One test walks what a user does: the base model's answer streamed into the page (the same text the
API returns to the official `openai` client for the same greedy request, arriving in several
pieces), stop mid-answer, the job page's "Compare with the base model" link opening both side by
side with an answer each, a checkpoint's "Try" link, an unknown checkpoint id's error shown inline
with the API's message, and the two panes stacked at 480 px. A full-page screenshot is left in
var/screenshots/ (tests/support/browser.py).
"""

from __future__ import annotations

import openai
import pytest

from tests.support.browser import chromium, dashboard_page, screenshot_path, sign_in
from tests.support.jobs import dora_method
from tests.support.stack import serving_stack

PROMPT = "What is two plus two?"
SYSTEM = "Answer in one short sentence."
ANSWER_TOKENS = 24  # greedy: the tiny model's answer to PROMPT, the page's and the client's alike
# Stop lands mid-answer: the tiny model's greedy answer to this prompt (no system prompt) is 747
# tokens, ~1.9 s here; the page stops it as soon as its first piece shows
LONG_PROMPT, LONG_TOKENS = "List every month.", 1000


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    """An API, a worker and an inference server; `dora serve` loads its model while the others start."""
    def train_meanwhile(stack):
        stack.job = stack.api.create(dora_method(max_steps=4, checkpoint_interval=2))

    with serving_stack(tmp_path_factory.mktemp("playground"), tiny_model_dir=tiny_model_dir,
                       before_worker=train_meanwhile) as stack:
        yield stack


@pytest.fixture
def page(stack, request):
    with chromium() as browser, dashboard_page(browser, stack.api.url, request.node.name) as page:
        yield page


def answers(page, pane: str) -> list[dict]:
    """The pane's answers: their state, model, text (the streamed text node) and error message."""
    return page.eval_on_selector_all(f"#transcript-{pane} .message[data-role=assistant]", """nodes => nodes.map((n) =>
        ({state: n.dataset.state, model: n.dataset.model, text: n.querySelector(".message-text").firstChild?.data ?? "",
          error: n.querySelector(".message-error")?.textContent ?? null}))""")


def pane_boxes(page) -> list[dict]:
    return page.evaluate("""() => ["a", "b"].map((p) => document.querySelector(`[data-pane=${p}]`))
        .map((pane) => pane.getBoundingClientRect()).map((b) => ({left: b.left, top: b.top, bottom: b.bottom,
                                                                   right: b.right}))""")


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_chat_streamed_stop_compare_base_and_fine_tuned_and_an_error_inline(page, stack, request):
    api = stack.api
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=api.key, max_retries=0)

    sign_in(page, api.key)
    page.click("#nav a[data-nav=playground]")
    page.wait_for_selector(".panes[data-ready=true]")
    assert page.input_value("#model-a") == "tiny-llama"
    page.fill("#system-prompt", SYSTEM)
    page.fill("#max-tokens", str(ANSWER_TOKENS))
    assert page.input_value("#temperature") == "0"  # greedy by default
    # every piece of text the page adds to the answer, as it adds it
    page.evaluate("""() => {
        window.pieces = [];
        new MutationObserver((records) => { for (const r of records) if (r.type === "characterData")
            window.pieces.push(r.target.data.length); })
          .observe(document.querySelector("#transcript-a"), {subtree: true, characterData: true});
    }""")
    send(page, PROMPT)
    page.wait_for_selector("#transcript-a .message[data-role=assistant][data-state=done]")
    expected = client.chat.completions.create(
        model="tiny-llama", max_tokens=ANSWER_TOKENS, temperature=0,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
    ).choices[0].message.content
    [answer] = answers(page, "a")
    assert answer["model"] == "tiny-llama" and answer["text"] == expected and expected
    pieces = page.evaluate("window.pieces")
    assert len(pieces) >= 2 and pieces == sorted(pieces) and pieces[-1] == len(expected), pieces  # streamed
    assert "tokens" in page.inner_text("#transcript-a .message[data-role=assistant] .message-note")

    # Stop: the fetch is aborted mid-answer, the partial answer stays, marked stopped
    page.click("#clear-chat")
    page.fill("#system-prompt", "")
    page.fill("#max-tokens", str(LONG_TOKENS))
    send(page, LONG_PROMPT)
    page.wait_for_function("""() => document.querySelector("#transcript-a .message[data-state=streaming]")
        ?.querySelector(".message-text").textContent.length > 0""")
    page.click("#stop")
    page.wait_for_selector("#transcript-a .message[data-state=stopped]")
    assert page.is_enabled("#send") and page.is_hidden("#stop")
    assert "stopped after" in page.inner_text("#transcript-a .message[data-state=stopped] .message-note")

    # the job page's links: base against fine-tuned side by side, and a checkpoint alone
    job = api.wait(stack.job["id"])
    assert job["status"] == "succeeded"
    page.goto(f"/ui/#/jobs/{job['id']}")
    page.click("#compare-base")
    page.wait_for_selector(".panes.compare[data-ready=true]")
    assert page.input_value("#model-a") == job["fine_tuned_model"] and page.input_value("#model-b") == "tiny-llama"
    page.fill("#max-tokens", str(ANSWER_TOKENS))
    send(page, PROMPT)
    page.wait_for_selector("#transcript-a .message[data-state=done]")
    page.wait_for_selector("#transcript-b .message[data-state=done]")
    [tuned], [base] = answers(page, "a"), answers(page, "b")
    assert tuned["model"] == job["fine_tuned_model"] and tuned["text"]
    assert base["model"] == "tiny-llama" and base["text"]
    boxes = pane_boxes(page)
    assert boxes[0]["top"] == boxes[1]["top"] and boxes[0]["left"] < boxes[1]["left"]  # side by side
    page.screenshot(path=str(screenshot_path(f"{request.node.name}-compare")), full_page=True)
    page.set_viewport_size({"width": 480, "height": 900})  # narrow: stacked, nothing wider than the window
    boxes = pane_boxes(page)
    assert boxes[1]["top"] >= boxes[0]["bottom"] and max(b["right"] for b in boxes) <= 480, boxes
    assert page.evaluate("document.documentElement.scrollWidth") <= 480
    header = page.evaluate("""() => ({clipped: document.querySelector(".topbar").scrollWidth - 480,
        navEnd: document.querySelector("#nav a[data-nav=playground]").getBoundingClientRect().right,
        signOut: document.querySelector("#sign-out").getBoundingClientRect().left})""")
    assert header["clipped"] <= 0 and header["navEnd"] <= header["signOut"], header  # the nav's new link fits
    page.screenshot(path=str(screenshot_path(f"{request.node.name}-480px")), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})

    # an unknown checkpoint id of this job: the API's 404 message, inline in the answer's place
    page.goto(f"/ui/#/jobs/{job['id']}")
    page.wait_for_selector("[data-download=adapter]")  # the page has read the job, its checkpoints, its artifacts
    checkpoint = page.locator("#checkpoints tr[data-step='2'] [data-action=try]")
    checkpoint.click()
    page.wait_for_url("**/ui/#/playground?*")
    page.wait_for_selector(".panes[data-ready=true]")
    assert page.input_value("#model-a") == f"{job['fine_tuned_model']}:ckpt-step-2"  # listed under the job's group
    assert not page.is_checked("#compare")
    unknown = f"{job['fine_tuned_model']}:ckpt-step-999"
    page.select_option("#model-a", "__other__")
    page.fill("#model-a-id", unknown)
    send(page, PROMPT)
    page.wait_for_selector("#transcript-a .message[data-state=error]")
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model=unknown, messages=[{"role": "user", "content": PROMPT}])
    [failed] = answers(page, "a")
    assert failed["model"] == unknown and refused.value.body["message"] in failed["error"]
    assert "model_not_found" in page.inner_text("#transcript-a .message[data-state=error] .message-note")
