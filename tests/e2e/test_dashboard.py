"""The dashboard at /ui in a real headless Chromium, against a real `dora api` and `dora worker`.

The stack is the embedded one (SQLite, the SQLAlchemy broker, a local folder) with the tiny model,
which trains a step in well under a second on a CPU (also registered under the demo's real model's
name, listed first, so the form's default model is checked). Each test leaves a full-page screenshot in
var/screenshots/ (DORA_TEST_SCREENSHOTS elsewhere), named after it, whatever its outcome. With CI
set, a missing Chromium or Playwright fails these tests instead of skipping them.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time

import pytest

from tests.support.browser import chromium, dashboard_page, screenshot_path, sign_in
from tests.support.jobs import DATASET, dora_method, wait_for
from tests.support.stack import E2E_RUN, Api, running_stack

# a dataset whose line 3 is not JSON and whose line 5 has no assistant reply
BROKEN = DATASET.split(b"\n")
BROKEN[2] = b'{"messages": [{"role": "user", "content": "What is 0 plus 2?"'
BROKEN[4] = b'{"messages": [{"role": "user", "content": "What is 0 plus 4?"}]}'
BROKEN = b"\n".join(BROKEN)
SLOW_MODEL = "smollm2-135m-instruct"  # what `dora up --demo` adds beside tiny-llama; sorts first
# the form's job: long enough that an idle machine still charts several stream updates while it runs
# (metric points reach the page in bursts: the worker writes them with its heartbeats)
FORM_STEPS = 150
PROGRESS_LABEL = re.compile(r"^\d+ / \d+ steps, \d+(\.\d)?%( · ETA .+)?$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("dashboard")
    with running_stack(root, database_url=f"sqlite:///{root / 'dora.db'}",
                       broker_url=f"sqla+sqlite:///{root / 'broker.db'}", tiny_model_dir=tiny_model_dir,
                       base_models={SLOW_MODEL: str(tiny_model_dir)}) as stack:
        yield stack


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, stack, request):
    with dashboard_page(browser, stack.api.url, request.node.name, accept_downloads=True) as page:
        yield page


def storage(page) -> dict:
    return page.evaluate("({session: {...sessionStorage}, local: {...localStorage}, cookie: document.cookie})")


def test_sign_in_keeps_the_key_in_session_storage_only_shows_only_that_tenants_jobs_and_sign_out_clears_it(
        page, stack, request):
    job = stack.api.create(dora_method(max_steps=2, checkpoint_interval=2))
    page.goto("/ui")  # redirected to /ui/: the page needs no key
    assert page.url.endswith("/ui/")
    page.fill("#api-key", "sk-dora-not-a-key")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-in-error:has-text('not accepted')")
    assert storage(page)["session"] == {}

    sign_in(page, stack.api.key)
    page.wait_for_selector(f"#jobs-table tr[data-job='{job['id']}']")
    assert storage(page) == {"session": {"dora.apiKey": stack.api.key}, "local": {}, "cookie": ""}
    assert stack.api.key not in page.url

    page.set_viewport_size({"width": 480, "height": 800})  # the header stays one row in a narrow window
    header = page.evaluate("""() => {
        const box = (selector) => document.querySelector(selector).getBoundingClientRect();
        const bar = document.querySelector(".topbar");
        const parts = [".brand", "#nav a[data-nav=jobs]", "#nav a[data-nav=files]", "#sign-out"].map(box);
        return {height: box(".topbar").height, tops: parts.map((b) => Math.round(b.top + b.height / 2)),
                right: Math.max(...parts.map((b) => b.right)), navEnd: box("#nav").right,
                signOut: box("#sign-out").left, clipped: bar.scrollWidth - bar.clientWidth};
    }""")
    assert header["height"] < 60 and max(header["tops"]) - min(header["tops"]) <= 3, header  # one row
    assert header["right"] <= 480 and header["clipped"] == 0 and header["navEnd"] <= header["signOut"], header
    page.screenshot(path=str(screenshot_path(f"{request.node.name}-480px")))
    page.set_viewport_size({"width": 1400, "height": 1000})

    other = Api(stack.api.url, stack._create_key())  # another tenant sees none of those jobs
    page.click("#sign-out")
    sign_in(page, other.key)
    page.wait_for_selector("#jobs-table td.empty:has-text('No jobs yet')")
    assert page.locator(f"tr[data-job='{job['id']}']").count() == 0
    page.screenshot(path=str(screenshot_path(f"{request.node.name}-other-tenant")), full_page=True)

    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    assert storage(page)["session"] == {}
    page.reload()  # nothing kept: still signed out
    page.wait_for_selector("#sign-in")
    assert page.locator("#nav").is_hidden()


def test_an_upload_with_broken_lines_shows_their_line_numbers(page, stack):
    sign_in(page, stack.api.key)
    page.click("#nav a[data-nav=new]")
    page.set_input_files("#dataset-file", {"name": "broken.jsonl", "mimeType": "application/jsonl", "buffer": BROKEN})
    errors = page.locator("#upload-status .line-errors li")
    errors.first.wait_for()
    lines = [errors.nth(i).get_attribute("data-line") for i in range(errors.count())]
    assert lines == ["3", "5"]
    assert "line 3" in errors.nth(0).inner_text() and "invalid JSON" in errors.nth(0).inner_text()
    assert "line 5" in errors.nth(1).inner_text()
    assert "Invalid training data in 'broken.jsonl'" in page.inner_text("#upload-status")
    assert page.locator("#training-file option:has-text('broken.jsonl')").count() == 0  # nothing was stored


def test_a_job_created_in_the_form_charts_its_loss_live_succeeds_and_its_adapter_downloads(page, stack, tmp_path):
    sign_in(page, stack.api.key)
    page.click("#nav a[data-nav=new]")
    page.set_input_files("#dataset-file", {"name": "train.jsonl", "mimeType": "application/jsonl", "buffer": DATASET})
    page.wait_for_selector("#upload-ok:has-text('25 rows')")
    file_id = page.input_value("#training-file")
    assert file_id.startswith("file-")
    page.wait_for_selector("#model option[value=tiny-llama]", state="attached")
    models = page.eval_on_selector_all("#model option", "options => options.map((o) => o.value)")
    assert models.index(SLOW_MODEL) < models.index("tiny-llama")  # listed first, yet the tiny one is chosen
    assert page.input_value("#model") == "tiny-llama"
    page.check("input[name=method][value=dora]")
    for name, value in {"rank": "4", "batch_size": "4", "learning_rate": "0.01", "max_steps": str(FORM_STEPS)}.items():
        page.fill(f"#hp-{name}", value)

    # a validation file or a validation_split, not both: setting one disables the other; what each
    # sends is read off the request (answered here, so no job runs for it)
    def sent() -> dict:
        with page.expect_request("**/v1/fine_tuning/jobs") as caught:
            page.click("#create-job")
        page.wait_for_selector("#create-error:has-text('not this time')")
        body = caught.value.post_data_json
        return body | {"hyperparameters": body["method"]["dora"]["hyperparameters"]}

    page.route("**/v1/fine_tuning/jobs", lambda route: route.fulfill(
        status=400, json={"error": {"message": "not this time", "code": "test", "param": None}}))
    page.wait_for_selector(f"#validation-file option[value='{file_id}']", state="attached")
    page.select_option("#validation-file", file_id)
    assert page.is_disabled("#hp-validation_split")
    body = sent()
    assert body["validation_file"] == file_id and "validation_split" not in body["hyperparameters"]
    page.select_option("#validation-file", "")
    page.fill("#hp-validation_split", "0.2")
    assert page.is_disabled("#validation-file") and page.is_enabled("#hp-validation_split")
    body = sent()
    assert "validation_file" not in body and body["hyperparameters"]["validation_split"] == 0.2
    assert body["model"] == "tiny-llama" and body["training_file"] == file_id
    page.unroute("**/v1/fine_tuning/jobs")
    page.fill("#hp-validation_split", "")  # the job itself runs without a validation set
    assert page.is_enabled("#validation-file")
    page.click("#create-job")
    page.wait_for_url("**/ui/#/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[-1]
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page

    # the loss chart gains points while the job runs, from the stream (the page is not reloaded), and
    # the progress bar follows the newest step charted (the job's own step comes on the page's timer)
    seen_running: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = page.evaluate("""() => ({points: +document.querySelector(".chart[data-metric=loss]").dataset.points,
            step: +(document.querySelector("#job-progress .progress")?.dataset.step ?? -1),
            label: document.querySelector("#job-progress .progress-label")?.textContent ?? "",
            status: document.querySelector("#job-status")?.textContent ?? ""})""")
        points, status = now["points"], now["status"]
        if status not in ("succeeded", "failed", "cancelled") and points > 0:  # still going (the
            seen_running.add(points)  # summary's status refreshes on its own timer, so not "== running")
            assert now["step"] >= points, now  # train loss at steps 1..points: the bar is at least there
            # until the page's timer re-reads the job (shown still 'queued', its total not known yet: a
            # fast machine trains many steps first) the bar names the step alone
            assert (PROGRESS_LABEL.match(now["label"]) and f"/ {FORM_STEPS} steps" in now["label"]) or (
                status == "queued" and now["label"] == f"step {now['step']}"), now
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert len(seen_running) >= 2, f"the loss chart did not grow while running: {sorted(seen_running)}"
    page.wait_for_selector("#job-status:text-is('succeeded')", timeout=60_000)
    page.wait_for_selector(f".chart[data-metric=loss][data-points='{FORM_STEPS}']")
    for metric in ("lr", "grad_norm", "token_accuracy"):
        assert page.get_attribute(f".chart[data-metric={metric}]", "data-points") == str(FORM_STEPS)
    assert page.evaluate("window.sameDocument") is True
    page.wait_for_selector(".live[data-stream=metrics][data-state=done]")
    page.wait_for_selector(f"#events li:has-text('Training on 25 examples for {FORM_STEPS} steps')")
    assert page.inner_text("tr[data-setting=rank] td") == "4"
    assert page.inner_text("tr[data-setting=max_steps] td") == str(FORM_STEPS)
    assert "dora · rank 4" in page.inner_text("#job-summary")
    assert page.inner_text("#job-summary .progress-label") == f"{FORM_STEPS} / {FORM_STEPS} steps, 100%"
    # the axes from the data: none below 0 (none of these metrics is), the token accuracy's within 0..1
    axes = page.eval_on_selector_all("#charts .chart", """charts => charts.map((c) => [c.dataset.metric,
        +c.dataset.yMin, +c.dataset.yMax])""")
    assert [metric for metric, _, _ in axes] == ["loss", "lr", "grad_norm", "token_accuracy"]
    assert all(low >= 0 for _, low, _ in axes), axes
    assert axes[3][2] <= 1, axes

    # the adapter's tar, downloaded by the page (fetch with the key, then a blob)
    page.wait_for_selector("tr[data-artifact=adapter] [data-download=adapter]")
    with page.expect_download() as caught:
        page.click("tr[data-artifact=adapter] [data-download=adapter]")
    download = caught.value
    assert download.suggested_filename == f"{job_id}-adapter.tar"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    page.wait_for_selector("tr[data-artifact=adapter] .download-note:has-text('saved')")
    archive = stack.api.artifacts(job_id)
    adapter = next(a for a in archive if a["name"] == "adapter")
    assert saved.read_bytes() == stack.api.download(adapter["download_url"])
    with tarfile.open(saved) as tar:
        names = set(tar.getnames())
        config = json.load(tar.extractfile("adapter/adapter_config.json"))
        weights = tar.extractfile("adapter/adapter_model.safetensors").read()
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= names
    listed = {f["path"]: f["sha256"] for f in adapter["files"]}
    assert hashlib.sha256(weights).hexdigest() == listed["adapter_model.safetensors"]
    assert config["use_dora"] is True and config["r"] == 4
    assert page.inner_text("tr[data-artifact=merged] .artifact-size").endswith(("KB", "MB"))
    page.evaluate("window.scrollTo(0, 0)")


def test_cancel_a_running_job_from_the_jobs_list(page, stack):
    api = stack.api
    job = api.create(dora_method(max_steps=2000, checkpoint_interval=3))
    wait_for(lambda: api.checkpoints(job["id"]), timeout=90, what="a first checkpoint")
    sign_in(page, api.key)
    page.select_option("#status-filter", "running")
    row = page.locator(f"#jobs-table tr[data-job='{job['id']}']")
    row.wait_for()
    assert row.get_attribute("data-status") == "running"
    assert "dora · r4" in row.inner_text() and "/ 2000 steps" in row.inner_text()
    page.screenshot(path=str(screenshot_path("test_cancel_a_running_job_from_the_jobs_list-running")), full_page=True)
    page.click("#nav a[data-nav=files]")  # its training file cannot be deleted while it runs (409): Delete is off
    used = page.locator(f"#files-table tr[data-file='{job['training_file']}'] [data-action=delete]")
    used.wait_for()
    assert used.is_disabled() and job["id"] in used.get_attribute("title")
    page.go_back()
    page.wait_for_selector(f"#jobs-table tr[data-job='{job['id']}']")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("[data-action=cancel]").click()
    page.select_option("#status-filter", "cancelled")
    page.wait_for_selector(f"#jobs-table tr[data-job='{job['id']}'][data-status=cancelled]", timeout=60_000)
    assert api.job(job["id"])["status"] == "cancelled"
    page.screenshot(path=str(screenshot_path("test_cancel_a_running_job_from_the_jobs_list-list")), full_page=True)

    page.click(f"#jobs-table tr[data-job='{job['id']}'] a")
    page.wait_for_selector("#job-status:text-is('cancelled')")
    page.wait_for_selector("#checkpoints tbody tr[data-step='3']")
    page.wait_for_selector("#artifacts:has-text('No artifacts: the job cancelled.')")
    assert page.locator(".page-head [data-action=cancel]").count() == 0  # nothing left to cancel


def test_pause_and_resume_a_running_job_from_its_page(page, stack):
    """Pause: the worker checkpoints and frees the job (paused, a Resume button); Resume: a worker
    takes it again and it continues from that checkpoint."""
    api = stack.api
    job = api.create(dora_method(max_steps=2000, checkpoint_interval=1000))
    wait_for(lambda: api.job(job["id"])["status"] == "running" and api.job(job["id"])["progress"]["step"] >= 2,
             timeout=90, what="a running job past step 2")
    sign_in(page, api.key)
    page.goto(f"/ui/#/jobs/{job['id']}")
    page.wait_for_selector("#job-status:text-is('running')")
    page.click(".page-head [data-action=pause]")
    page.wait_for_selector("#job-status:text-is('paused')", timeout=60_000)
    paused = api.job(job["id"])
    assert paused["status"] == "paused" and api.checkpoints(job["id"]) == [paused["progress"]["step"]]
    assert page.locator(".page-head [data-action=pause]").count() == 0
    page.screenshot(path=str(screenshot_path("test_pause_and_resume_a_running_job_from_its_page-paused")),
                    full_page=True)
    page.click(".page-head [data-action=resume]")
    wait_for(lambda: api.job(job["id"])["resumed_from_step"] == paused["progress"]["step"], timeout=90,
             what="the resumed attempt")
    page.wait_for_selector("#job-status:text-is('running')", timeout=60_000)
    api.cancel(job["id"])


def test_a_failed_job_shows_its_error(page, stack):
    job = stack.api.wait(stack.api.create(dora_method(**E2E_RUN, max_seq_len=8))["id"])
    assert job["status"] == "failed"
    sign_in(page, stack.api.key)
    page.goto(f"/ui/#/jobs/{job['id']}")
    page.wait_for_selector("#job-error .failure")
    text = page.inner_text("#job-error")
    assert "invalid_training_file" in text and "line 1: no trainable tokens within max_seq_len=8" in text
    page.wait_for_selector("#job-status:text-is('failed')")
    assert page.locator(".page-head [data-action=cancel]").count() == 0


def test_the_files_page_lists_and_deletes_a_file_and_offers_no_delete_for_job_results(page, stack):
    response = stack.api.client.post("/v1/files", files={"file": ("delete-me.jsonl", io.BytesIO(DATASET))},
                                     data={"purpose": "fine-tune"})
    file_id = response.raise_for_status().json()["id"]
    results = wait_for(lambda: stack.api.client.get("/v1/files", params={"purpose": "fine-tune-results"})
                       .json()["data"], timeout=90, what="a job's result files (the first test's job)")
    sign_in(page, stack.api.key)
    page.click("#nav a[data-nav=files]")
    row = page.locator(f"#files-table tr[data-file='{file_id}']")
    row.wait_for()
    # the API refuses (409) to delete a job's result: the page does not offer it
    result = page.locator(f"#files-table tr[data-file='{results[0]['id']}']")
    assert "fine-tune-results" in result.inner_text() and "kept with its job" in result.inner_text()
    assert result.locator("[data-action=delete]").count() == 0
    assert page.locator("#files-table tr:has-text('fine-tune-results') [data-action=delete]").count() == 0
    assert "delete-me.jsonl" in row.inner_text() and "chat" in row.inner_text() and "25" in row.inner_text()
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("[data-action=delete]").click()
    page.wait_for_selector("#files-message:has-text('Deleted delete-me.jsonl')")
    assert row.count() == 0
    assert stack.api.client.get(f"/v1/files/{file_id}").status_code == 404


def test_the_sse_parser_reads_events_split_anywhere_skips_pings_and_keeps_the_last_id(page, stack):
    page.goto("/ui/")  # the module from the server, in the page's own origin
    wire = ("id: 1\r\ndata: {\"step\": 1}\r\n\r\n: ping\n\nid: 2\ndata: {\"step\":\ndata:  2}\n\n"
            "retry: 2500\rdata: [DONE]\r\r")
    parsed = page.evaluate("""async (wire) => {
        const {SseParser} = await import("/ui/js/stream.js");
        const runs = [];
        for (const size of [1, 2, 3, 7, wire.length]) {  // the same bytes cut into chunks of each size
            const events = [], comments = [];
            const parser = new SseParser((event) => events.push(event), (text) => comments.push(text));
            for (let at = 0; at < wire.length; at += size) parser.feed(wire.slice(at, at + size));
            runs.push({events, comments, lastEventId: parser.lastEventId, retry: parser.retry});
        }
        return runs;
    }""", wire)
    expected = {"events": [{"id": "1", "type": "message", "data": '{"step": 1}'},
                           {"id": "2", "type": "message", "data": '{"step":\n 2}'},
                           {"id": "2", "type": "message", "data": "[DONE]"}],
                "comments": ["ping"], "lastEventId": "2", "retry": 2500}
    assert parsed == [expected] * 5


def test_a_server_without_streams_is_polled_instead(page, stack):
    """An API that answers `?stream=true` with the JSON list (one from before streams) still
    fills the charts and the events log: the page polls the list endpoints."""
    job = stack.api.wait(stack.api.create(dora_method(max_steps=4, checkpoint_interval=4))["id"])
    assert job["status"] == "succeeded"

    def as_list(route):  # what a server without streams answers: the JSON list, stream=true ignored
        url = route.request.url.replace("stream=true", "stream=false")
        route.fulfill(response=route.fetch(url=url))

    page.route("**/v1/fine_tuning/jobs/*/*stream=true*", as_list)
    sign_in(page, stack.api.key)
    page.goto(f"/ui/#/jobs/{job['id']}")
    page.wait_for_selector(".chart[data-metric=loss][data-points='4']")
    page.wait_for_selector(".live[data-stream=metrics][data-state=done]")
    page.wait_for_selector(".live[data-stream=events][data-state=done]")
    page.wait_for_selector("#events li:has-text('The job has successfully completed')")
    assert page.inner_text("#job-status") == "succeeded"


def test_a_job_with_a_validation_set_overlays_eval_on_train_loss_and_shows_its_samples_as_they_come(page, stack):
    api = stack.api
    validation = api.upload(b"\n".join(DATASET.split(b"\n")[:4]) + b"\n")  # 4 rows: "What is 0 plus 0?" ...
    job = api.wait(api.create(dora_method(max_steps=6, eval_interval=3, sample_prompts=3),
                              validation_file=validation)["id"], timeout=300)
    assert job["status"] == "succeeded"
    job_path = f"**/v1/fine_tuning/jobs/{job['id']}"

    # the states the page goes through while it runs, replayed: the job read as running, its
    # samples first none, then the base model's (step 0) only; then the real answers
    def running(route):
        response = route.fetch()
        route.fulfill(response=response, json=response.json() | {"status": "running", "finished_at": None})

    def samples(route):
        if stage["samples"] == "none":
            route.fulfill(json={"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None})
        else:
            route.fulfill(response=route.fetch(url=route.request.url + "&step=0"))

    stage = {"samples": "none"}
    page.route(job_path, running)
    page.route(f"{job_path}/samples*", samples)
    sign_in(page, api.key)
    page.goto(f"/ui/#/jobs/{job['id']}")
    page.wait_for_selector("#samples p[data-state=waiting]:has-text('Waiting for samples')")
    stage["samples"] = "step 0"
    page.wait_for_selector("#samples table[data-step='0'] tbody tr[data-index='2']")  # at the next refresh
    assert "base model" in page.inner_text("#samples p")
    page.unroute(job_path)
    page.unroute(f"{job_path}/samples*")
    page.wait_for_selector("#job-status:text-is('succeeded')")
    page.wait_for_selector("#samples table[data-step='6'] tbody tr[data-index='2']")  # the final evaluation's
    rows = page.locator("#samples tbody tr")
    assert rows.count() == 3
    cells = [rows.nth(0).locator("td").nth(i).inner_text() for i in range(4)]
    assert cells[0] == "0" and "What is 0 plus 0?" in cells[1] and cells[2] == "0"
    answer = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/samples").json()["data"][0]["answer"]
    assert cells[3].strip() == answer.strip()

    # train and eval loss on one chart: two series on one step axis, a legend naming both
    loss = page.locator(".chart[data-metric=loss]")
    page.wait_for_selector(".chart[data-metric=loss][data-series='loss eval_loss']")
    assert loss.locator("polyline[data-series=loss]").get_attribute("data-points") == "6"
    assert loss.locator("polyline[data-series=eval_loss]").get_attribute("data-points") == "2"  # steps 3 and 6
    legend = loss.locator(".chart-legend").inner_text()
    assert "Train" in legend and "Eval" in legend
    assert page.locator(".chart[data-metric=eval_loss], .chart[data-metric=eval_token_accuracy]").count() == 0
    accuracy = page.get_attribute(".chart[data-metric=token_accuracy]", "data-series")
    assert accuracy == "token_accuracy eval_token_accuracy"
    page.screenshot(path=str(screenshot_path(
        "test_a_job_with_a_validation_set_overlays_eval_on_train_loss_and_shows_its_samples_as_they_come-table")),
        full_page=True)

    other = api.wait(api.create(dora_method(max_steps=2))["id"], timeout=300)  # no validation set
    page.goto(f"/ui/#/jobs/{other['id']}")
    page.wait_for_selector("#samples p[data-state=no-validation]"
                           ":has-text('This job has no validation set: samples need one')")
    page.wait_for_selector(".chart[data-metric=loss][data-series=loss][data-points='2']")  # one series: no legend
    assert page.locator(".chart[data-metric=loss] .chart-legend").is_hidden()


def test_chart_axes_come_from_the_data_never_below_zero_for_a_metric_that_is_not(page, stack):
    page.goto("/ui/")  # the module from the server, in the page's own origin
    axes = page.evaluate("""async () => {
        const {LineChart, yDomain} = await import("/ui/js/chart.js");
        const ticks = (chart) => [...chart.svg.querySelectorAll(".chart-tick-y")].map((t) => Number(t.textContent));
        const flat = new LineChart({key: "token_accuracy", title: "Token accuracy", floor: 0, ceiling: 1});
        flat.setPoints([{x: 1, y: 0}, {x: 2, y: 0}]);
        const loss = new LineChart({key: "loss", title: "Loss"});
        loss.setPoints([{x: 1, y: 2.5}, {x: 2, y: 2.5}]);
        return {flat: ticks(flat), flatDomain: [+flat.element.dataset.yMin, +flat.element.dataset.yMax],
                loss: ticks(loss), lossDomain: [+loss.element.dataset.yMin, +loss.element.dataset.yMax],
                accuracy: yDomain([0.2, 0.9], {floor: 0, ceiling: 1}), nearOne: yDomain([1, 1], {floor: 0, ceiling: 1}),
                nearZero: yDomain([0, 0.5]), negative: yDomain([-0.5, 0.5])};
    }""")
    assert axes["flatDomain"] == [0, 1] and min(axes["flat"]) == 0 and max(axes["flat"]) == 1  # not -1..1
    assert axes["lossDomain"] == [2.25, 2.75] and all(2.25 <= t <= 2.75 for t in axes["loss"])  # around 2.5
    assert 0.15 < axes["accuracy"][0] < 0.2 and 0.9 < axes["accuracy"][1] < 0.95  # from the data, not 0..1
    assert axes["nearOne"] == [0.9, 1]
    assert axes["nearZero"] == [0, 0.53]  # a margin above, none below 0
    assert axes["negative"][0] < -0.5  # a metric that goes negative keeps its negative axis
