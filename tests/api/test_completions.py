"""`/v1/chat/completions` and `/v1/completions` without a real inference server: every 400 names its
field, a model that is not the caller's is the same 404 as a missing one, no secret or no server is
a 503 with Retry-After, and, against a stand-in server speaking the wire contract
(tests/support/inference_standin.py), the official `openai` client reads the OpenAI shapes,
streamed and not, a dead server is dropped and the next one used, and a server dying mid-stream
ends the stream with an error the client raises.
"""

from __future__ import annotations

import uuid

import openai
import pytest
from pydantic import SecretStr
from sqlalchemy import delete

from api.schemas.completions import MAX_MODEL_ID_LENGTH
from api.services.inference_routing import rendezvous
from store import jobs as job_store
from store.db import session_scope
from store.inference_servers import LiveServer
from store.models import InferenceServer
from store.storage import LocalStorage, job_key
from tests.support.api_client import make_tenant, recording_app
from tests.support.artifacts import ADAPTER_FILES, finish_with_artifacts
from tests.support.inference_standin import LOGPROB, SECRET, TOKENS, register, registered, standin_server
from tests.support.jobs import wait_for
from tests.support.services import free_port, running_server

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
HI = [{"role": "user", "content": "hello"}]


def _chat(**body):
    return {"model": "tiny-llama", "messages": HI} | body


BAD_REQUESTS = [  # (path, body, param)
    (CHAT, _chat(messages=[]), "messages"),
    (CHAT, _chat(messages=[*HI, {"role": "tool", "content": "x", "tool_call_id": "1"}]), "messages.1.tool_call_id"),
    (CHAT, _chat(messages=[*HI, {"role": "tool", "content": "x"}]), "messages.1.role"),
    (CHAT, _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages.0.content.0.type"),
    (CHAT, _chat(messages=[{"role": "assistant", "content": None}]), "messages.0.content"),
    (CHAT, _chat(max_tokens=0), "max_tokens"),
    (CHAT, _chat(max_completion_tokens=10**6), "max_completion_tokens"),
    (CHAT, _chat(max_tokens=5, max_completion_tokens=6), "max_tokens"),
    (CHAT, _chat(n=9), "n"),
    (CHAT, _chat(n=0), "n"),
    (CHAT, _chat(temperature=2.5), "temperature"),
    (CHAT, _chat(top_p=0), "top_p"),
    (CHAT, _chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    (CHAT, _chat(top_logprobs=2), "top_logprobs"),
    (CHAT, _chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    (CHAT, _chat(stop=["a", ""]), "stop.1"),
    (CHAT, _chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    (CHAT, _chat(frequency_penalty=0.5), "frequency_penalty"),
    (CHAT, _chat(logit_bias={"1": 5}), "logit_bias"),
    (CHAT, _chat(response_format={"type": "json_object"}), "response_format"),
    (CHAT, _chat(store=True), "store"),
    (CHAT, _chat(stream_options={"include_usage": True}), "stream_options"),
    (CHAT, _chat(best_of=2), "best_of"),  # a /v1/completions field: unrecognized here
    (CHAT, _chat(model="ft:tiny-llama:org:abcdefgh"), "model"),  # a part missing
    (CHAT, _chat(model="ft:tiny-llama:org::abcdefgh:ckpt-step-x"), "model"),
    (CHAT, _chat(model="ft:tiny-llama:org::abcdefgh:ckpt-step-99999999999"), "model"),
    (CHAT, _chat(model="ft:" + "x" * MAX_MODEL_ID_LENGTH), "model"),
    (TEXT, {"model": "tiny-llama", "prompt": "hi", "logprobs": 6}, "logprobs"),
    (TEXT, {"model": "tiny-llama", "prompt": [1, 2, 3]}, "prompt"),
    (TEXT, {"model": "tiny-llama", "prompt": ["a", "b"]}, "prompt"),
    (TEXT, {"model": "tiny-llama", "prompt": "hi", "echo": True}, "echo"),
    (TEXT, {"model": "tiny-llama", "prompt": "hi", "suffix": "end"}, "suffix"),
    (TEXT, {"model": "tiny-llama"}, "prompt"),
]


def test_every_bad_request_is_a_400_naming_its_field(tenant):
    wrong = {}
    for path, body, param in BAD_REQUESTS:
        response = tenant.post(path, json=body)
        error = response.json().get("error", {})
        if response.status_code != 400 or error.get("param") != param or error.get("type") != "invalid_request_error":
            wrong[f"{path} {str(body)[:120]}"] = (response.status_code, error)
    assert not wrong


def test_another_tenants_model_is_the_same_404_as_a_missing_one(tenant, other_tenant, worker, settings):
    theirs = finish_with_artifacts(other_tenant, worker, settings)["fine_tuned_model"]
    short = theirs.rsplit(":", 1)[1]
    missing = theirs.replace(short, "zzzzzzzz")  # the same shape, no such job
    answers = {}
    for model in (theirs, missing, f"{theirs}:ckpt-step-3", "no-such-base", "gpt-4o"):
        response = tenant.post(CHAT, json=_chat(model=model))
        assert response.status_code == 404, response.text
        answers[model] = response.json()
    assert {str(body).replace(model, "<model>") for model, body in answers.items()} == {str({"error": {
        "message": "The model '<model>' does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})}
    # the owner's own id resolves: it gets as far as the missing secret (this app has none)
    own = other_tenant.post(CHAT, json=_chat(model=theirs))
    assert own.status_code == 503 and own.json()["error"]["code"] == "inference_not_configured", own.text
    assert "DORA_INFERENCE_SECRET" in own.json()["error"]["message"] and own.headers["Retry-After"]


def test_checkpoint_ids_of_a_running_job_resolve_until_pruned(tenant, other_tenant, worker, settings):
    job = tenant.job()
    worker.claim(job["id"])
    storage = LocalStorage(settings.storage_url)
    for step in (2, 4):
        key = job_key(tenant.tenant_id, job["id"], "checkpoints", f"attempt-{worker.attempt}", f"step-{step}")
        for path, data in ADAPTER_FILES.items():
            storage.put_stream(f"{key}/{path}", [data])
        worker.call(job_store.add_checkpoint, job_id=job["id"], step=step, storage_key=key)
    names = {c["step_number"]: c["fine_tuned_model_checkpoint"]
             for c in tenant.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]}
    assert tenant.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running"
    assert tenant.post(CHAT, json=_chat(model=names[4])).json()["error"]["code"] == "inference_not_configured"
    storage.delete_prefix(key)  # step 4's files, as the worker prunes them (the row stays)
    for model, who in ((names[4], tenant), (names[2], other_tenant), (names[2].replace(":ckpt-step-2", ":ckpt-step-3"),
                                                                       tenant)):
        response = who.post(CHAT, json=_chat(model=model))
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found", model
    assert tenant.post(CHAT, json=_chat(model=names[2])).status_code == 503  # still there
    # a finished job without the adapter output: a 400 saying what it has
    merged_only = finish_with_artifacts(tenant, worker, settings, name="merged")["fine_tuned_model"]
    error = tenant.post(CHAT, json=_chat(model=merged_only)).json()["error"]
    assert error["code"] == "model_not_servable" and error["param"] == "model" and "merged" in error["message"]


# -- with the secret: routing to servers (a stand-in one) -------------------------------------------

@pytest.fixture(scope="module")
def served(settings, client):
    """An API with DORA_INFERENCE_SECRET set, over HTTP, and a stand-in inference server."""
    app = recording_app(settings.model_copy(update={"inference_secret": SecretStr(SECRET),
                                                    "max_generations_per_tenant": 3}))
    with running_server(app) as url, standin_server() as (server_url, server):
        yield url, server_url, server


@pytest.fixture
def no_servers(settings):
    def clear():
        with session_scope(settings) as session:
            session.execute(delete(InferenceServer))
            session.commit()

    clear()
    yield
    clear()


@pytest.fixture
def oai(served, client, settings):
    tenant = make_tenant(client, settings)
    return openai.OpenAI(api_key=tenant.key, base_url=f"{served[0]}/v1", max_retries=0, timeout=30)


def test_no_server_is_a_503_with_retry_after_and_an_unreachable_one_is_dropped(served, oai, settings, no_servers):
    with pytest.raises(openai.InternalServerError) as raised:
        oai.chat.completions.create(model="tiny-llama", messages=HI)
    assert raised.value.status_code == 503 and raised.value.response.headers["Retry-After"] == "5"
    assert raised.value.body["code"] == "no_inference_server"
    dead = f"dead-{uuid.uuid4().hex[:6]}"
    register(settings, server_id=dead, url=f"http://127.0.0.1:{free_port()}", base_models=["tiny-llama"])
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="tiny-llama", messages=HI)
    assert dead not in registered(settings)
    # a dead server that rendezvous hashing puts before the live one for this model: dropped, the
    # request served by the next
    live = LiveServer(id="live", url=served[1], max_batch=4)
    dead = next(d for d in (f"dead-{i}" for i in range(100))
                if rendezvous([live, LiveServer(id=d, url="", max_batch=4)], "tiny-llama")[0].id == d)
    register(settings, server_id=dead, url=f"http://127.0.0.1:{free_port()}", base_models=["tiny-llama"])
    register(settings, server_id="live", url=served[1], base_models=["tiny-llama"])
    assert oai.chat.completions.create(model="tiny-llama", messages=HI).choices[0].message.content == "Hi there!"
    assert registered(settings) == ["live"]


def test_the_openai_client_reads_chat_and_text_completions_streamed_and_not(served, oai, settings, no_servers):
    register(settings, server_id="live", url=served[1], base_models=["tiny-llama"])
    chat = oai.chat.completions.create(model="tiny-llama", messages=HI, n=2, logprobs=True, top_logprobs=2, seed=7,
                                       temperature=0.5, stop="END", max_completion_tokens=9)
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-") and chat.model == "tiny-llama"
    assert [(c.index, c.message.role, c.message.content, c.finish_reason) for c in chat.choices] == \
        [(i, "assistant", "Hi there!", "stop") for i in range(2)]
    first = chat.choices[0].logprobs.content[0]
    assert (first.token, first.bytes, [t.token for t in first.top_logprobs]) == ("Hi", list(b"Hi"), ["Hi#0", "Hi#1"])
    assert abs(first.logprob - LOGPROB) <= 1e-12  # float64 through JSON: exact to its last bits
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens) == (1, 6, 7)
    sent = served[2].state.received[-1]
    assert (sent.n, sent.adapter, sent.messages[0].content, sent.sampling.max_tokens, sent.sampling.stop,
            sent.sampling.seed, sent.sampling.top_logprobs) == (2, None, "hello", 9, ["END"], 7, 2)
    assert sent.sampling.max_tokens_default == settings.max_completion_tokens  # the bound of a request without one

    chunks = list(oai.chat.completions.create(model="tiny-llama", messages=HI, stream=True, n=2,
                                              stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert [c.delta.role for c in chunks[0].choices] == ["assistant", "assistant"]
    for i in range(2):
        deltas = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert "".join(d.delta.content or "" for d in deltas) == "Hi there!"
        assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])

    text = oai.completions.create(model="tiny-llama", prompt="one two", logprobs=1, max_tokens=5)
    assert text.object == "text_completion" and text.choices[0].text == "Hi there!"
    legacy = text.choices[0].logprobs
    assert legacy.tokens == list(TOKENS) and legacy.text_offset == [7, 9, 15]
    assert legacy.top_logprobs[1] == {" there#0": LOGPROB - 1}
    streamed = list(oai.completions.create(model="tiny-llama", prompt="one two", stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "Hi there!"
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "stop"


def test_server_errors_a_dead_stream_and_the_tenants_cap(served, oai, settings, no_servers):
    register(settings, server_id="live", url=served[1], base_models=["tiny-llama"])
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "bad"}])
    assert (raised.value.body["param"], raised.value.body["code"]) == ("messages", "context_length_exceeded")
    with pytest.raises(openai.InternalServerError):  # the only server is busy
        oai.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "busy"}])
    assert registered(settings) == ["live"]  # busy is not dead

    stream = oai.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "die"}],
                                         stream=True)
    with pytest.raises(openai.APIError, match="stopped while generating"):
        list(stream)
    assert registered(settings) == []  # dropped; a live server's next beat brings it back
    register(settings, server_id="live", url=served[1], base_models=["tiny-llama"])
    with pytest.raises(openai.InternalServerError) as raised:  # not streamed: a 503, nothing was sent
        oai.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "die"}])
    assert raised.value.body["code"] == "inference_server_lost"

    # the per-tenant cap (3 here) counts each choice; a closed stream cancels its generation
    register(settings, server_id="live", url=served[1], base_models=["tiny-llama"])
    slow = oai.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "slow"}],
                                       stream=True, n=2)
    next(iter(slow))
    with pytest.raises(openai.RateLimitError) as raised:
        oai.chat.completions.create(model="tiny-llama", messages=HI, n=2)
    assert raised.value.response.headers["Retry-After"] == "5"
    slow.close()
    wait_for(lambda: served[2].state.cancelled, timeout=10, what="the stand-in server to see the stream cancelled")
    assert oai.chat.completions.create(model="tiny-llama", messages=HI, n=2).choices[1].message.content == "Hi there!"
