"""Completions end to end with the official `openai` client: `dora api`, `dora worker` and two `dora
serve` processes (the tiny model, embedded backends), started as users start them.

The base, a finished job's `ft:` model and a checkpoint of a job still training answer chat and
text completions, streamed and not; another tenant's model is a NotFoundError; a server killed
(SIGKILL) mid-stream ends that stream with an APIError and the next request is served by the other;
a client that closes its stream stops the generation on the server (its /healthz counts the
sequences in flight).
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from api.services.inference_routing import rendezvous
from store.db import session_scope
from store.inference_servers import live_servers
from tests.support.jobs import dora_method, wait_for
from tests.support.stack import serving_stack

HI = [{"role": "user", "content": "Say hello"}]
# a greedy chat that runs to its bound on the tiny model (seed 0; most prompts end at EOS sooner): 1800
# tokens, ~6 s on a busy 2-core machine, outlasting a kill or a close
LONG = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1800,
        "temperature": 0}


@pytest.fixture(scope="module")
def services(tmp_path_factory, tiny_model_dir):
    """The stack and (process, url) of its two `dora serve` processes."""
    with serving_stack(tmp_path_factory.mktemp("serve-openai"), tiny_model_dir=tiny_model_dir, servers=2) as stack:
        yield stack, list(zip(stack.servers, stack.server_urls, strict=True))


@pytest.fixture(scope="module")
def stack(services):
    return services[0]


@pytest.fixture(scope="module")
def servers(services) -> list:
    return services[1]


@pytest.fixture(scope="module")
def oai(stack, servers):
    return openai.OpenAI(api_key=stack.api.key, base_url=f"{stack.api.url}/v1", max_retries=0, timeout=60)


def _streamed(oai, **request) -> tuple[str, list]:
    chunks = list(oai.chat.completions.create(stream=True, **request))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def _first_token(oai, model: str) -> tuple[str, float]:
    answer = oai.completions.create(model=model, prompt="Once upon a time", max_tokens=1, temperature=0, logprobs=0)
    logprobs = answer.choices[0].logprobs
    return logprobs.tokens[0], logprobs.token_logprobs[0]


def test_base_and_fine_tuned_models_answer_chat_and_text_completions(stack, oai):
    job = stack.api.wait(stack.api.create(suffix="hello")["id"])
    assert job["status"] == "succeeded", job
    tuned = job["fine_tuned_model"]
    for model in ("tiny-llama", tuned):
        plain = oai.chat.completions.create(model=model, messages=HI, max_tokens=12, temperature=0)
        choice = plain.choices[0]
        assert plain.model == model and choice.message.role == "assistant"
        assert choice.finish_reason in ("stop", "length")
        assert 1 <= plain.usage.completion_tokens <= 12 and plain.usage.prompt_tokens > 0
        text, chunks = _streamed(oai, model=model, messages=HI, max_tokens=12, temperature=0,
                                 stream_options={"include_usage": True})
        assert text == choice.message.content  # greedy: the same tokens, streamed
        assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage == plain.usage
    # the adapter is applied: its trained weights move the first token's logprob off the base's
    (base_token, base_logprob), (tuned_token, tuned_logprob) = _first_token(oai, "tiny-llama"), _first_token(oai, tuned)
    assert tuned_token != base_token or abs(tuned_logprob - base_logprob) > 1e-3
    text = oai.completions.create(model=tuned, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2)
    legacy = text.choices[0].logprobs
    eos = text.choices[0].finish_reason == "stop"  # counted in the usage, never shown as a token
    assert text.object == "text_completion" and len(legacy.tokens) == text.usage.completion_tokens - eos
    assert legacy.text_offset[0] == len("Once upon a time") and all(len(top) <= 2 for top in legacy.top_logprobs)

    stranger = openai.OpenAI(api_key=stack._create_key(), base_url=f"{stack.api.url}/v1", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        stranger.chat.completions.create(model=tuned, messages=HI)
    assert raised.value.code == "model_not_found"


def test_a_checkpoint_of_a_running_job_answers_while_it_trains(stack, oai):
    api = stack.api
    job = api.create(dora_method(max_steps=5000, checkpoint_interval=5, keep_checkpoints=100))
    try:
        checkpoint = wait_for(lambda: api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")
                              .json()["data"], timeout=60, what="a checkpoint")[0]
        model = checkpoint["fine_tuned_model_checkpoint"]
        answer = oai.chat.completions.create(model=model, messages=HI, max_tokens=4, temperature=0)
        text, _ = _streamed(oai, model=model, messages=HI, max_tokens=4, temperature=0)
        assert text == answer.choices[0].message.content and answer.model == model
        assert api.job(job["id"])["status"] == "running"  # it answered while the job trains
    finally:
        api.cancel(job["id"])


def _in_order(stack, servers) -> list[tuple]:
    """(process, url) of the live servers, in the order the API tries them for the base."""
    with session_scope(stack.settings) as session:
        live = live_servers(session, base_model="tiny-llama", ttl_seconds=15)
    by_url = {url: process for process, url in servers}
    return [(by_url[s.url], s.url) for s in rendezvous(live, "tiny-llama")]


def _in_flight(url: str) -> int:
    return httpx.get(f"{url}/healthz", timeout=5).json()["models"]["tiny-llama"]["sequences"]


def test_a_closed_stream_stops_its_generation_and_a_killed_server_ends_its_stream(stack, servers, oai):
    (first, first_url), (_, other_url) = _in_order(stack, servers)
    # closed by the client: the server's sequences in flight fall back to 0 long before 1800 tokens
    stream = oai.chat.completions.create(stream=True, **LONG)
    next(iter(stream))
    assert _in_flight(first_url) == 1
    closed = time.monotonic()
    stream.close()
    wait_for(lambda: _in_flight(first_url) == 0, timeout=10, what="the generation to be cancelled")
    cancelled_in = time.monotonic() - closed
    started = time.monotonic()
    full = oai.chat.completions.create(**LONG)
    assert full.choices[0].finish_reason == "length"  # greedy on the tiny model runs to its bound
    assert cancelled_in < (time.monotonic() - started) / 2

    # SIGKILL of the server streaming: the stream ends with an APIError, the next request goes to the other
    chunks = iter(oai.chat.completions.create(stream=True, **LONG))
    next(chunks)
    first.kill()
    with pytest.raises(openai.APIError, match="stopped while generating"):
        for _ in chunks:
            pass
    answer = oai.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=4, temperature=0)
    assert answer.choices[0].message.content and _in_flight(other_url) == 0
