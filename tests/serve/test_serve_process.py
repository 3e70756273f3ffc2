"""`dora serve` as a user starts it (environment variables, a free port), spoken to over HTTP as the
API speaks to it: the shared secret, generations on the base and on a DoRA adapter from storage that
equal the models' own generate(), the registry row and its heartbeat, requests that cannot run
answered with a 4xx naming the field, and a client that goes away stopping its generation.

One server for the module (its start, models included, is most of the cost): the tiny model as
`tiny-llama`, and `endless`, the same model unable to choose an EOS token (their output rows are zero,
so another token always scores higher): its greedy completions run to the context's end, long
enough to see a cancellation.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from dora_contract.serving import (
    ADAPTER_FILES,
    GENERATE_PATH,
    ChoiceFinished,
    GenerationDone,
    GenerationError,
    PromptAccepted,
    TextDelta,
    decode_event,
)
from store.db import get_engine
from store.inference_servers import live_servers
from store.migrate import upgrade
from store.models import InferenceServer
from store.settings import DatabaseSettings
from tests.support.jobs import wait_for
from tests.support.serve_process import ROOT, serve_process
from tests.support.serving import greedy_reference, load_tiny, merged, random_adapter, save_endless_model

ADAPTER_PREFIX = "tenants/t-serve/jobs/job-serve/checkpoints/step-6"  # a checkpoint's folder holds more files


@pytest.fixture(scope="module")
def endless_model_dir(tiny_model_dir, tmp_path_factory):
    return save_endless_model(tiny_model_dir, tmp_path_factory.mktemp("endless") / "endless")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def database_url(root):
    url = f"sqlite:///{root / 'dora.db'}"
    upgrade(DatabaseSettings(database_url=url))
    return url


@pytest.fixture(scope="module")
def adapter_dir(root, tiny_model_dir):
    """A DoRA adapter (random non-zero B, m off ||W||) saved where the API's storage_prefix points,
    beside a file of the checkpoint's that the server must never download."""
    folder = root / "artifacts" / ADAPTER_PREFIX
    random_adapter(load_tiny(tiny_model_dir), folder, method="dora", rank=8, seed=3)
    (folder / "optimizer.pt").write_bytes(b"not for the server")
    return folder


@pytest.fixture(scope="module")
def server(root, database_url, tiny_model_dir, endless_model_dir, adapter_dir):
    with serve_process(root, database_url=database_url,
                       base_models={"tiny-llama": str(tiny_model_dir), "endless": str(endless_model_dir)}) as server:
        yield server


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from dora_core.model_loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def _split(events: list) -> tuple[PromptAccepted, dict[int, str], list[ChoiceFinished], GenerationDone]:
    """The events of a whole generation, checked in order: PromptAccepted, deltas and finishes, Done."""
    assert isinstance(events[0], PromptAccepted) and isinstance(events[-1], GenerationDone), events
    texts: dict[int, str] = {}
    finished = []
    for event in events[1:-1]:
        assert isinstance(event, TextDelta | ChoiceFinished), event
        assert event.index not in {f.index for f in finished}, "an event after its choice finished"
        if isinstance(event, TextDelta):
            texts[event.index] = texts.get(event.index, "") + event.text
        else:
            finished.append(event)
    return events[0], texts, finished, events[-1]


def _error(status: int, events: list) -> GenerationError:
    assert len(events) == 1 and isinstance(events[0], GenerationError), events
    assert events[0].status == status
    return events[0]


def test_only_the_api_may_generate(server):
    body = {"base_model": "tiny-llama", "prompt": "hello", "sampling": {"max_tokens": 2}}
    for headers in ({}, {"authorization": f"Bearer {server.secret[:-1]}x"},
                    {"authorization": f"Bearer {server.secret}x"}, {"authorization": server.secret}):
        status, events = server.generate(body, headers=headers)
        assert status == 401 and _error(401, events).code == "unauthorized", headers
    assert server.generate(body)[0] == 200
    assert server.health()["status"] == "ok"


def test_a_greedy_generation_on_the_base_is_the_models_own(server, tiny_model_dir, tokenizer):
    prompt = "The capital of"
    ids = tokenizer(prompt)["input_ids"]
    expected, _ = greedy_reference(load_tiny(tiny_model_dir), ids, 24)
    status, events = server.generate({"base_model": "tiny-llama", "prompt": prompt,
                                      "sampling": {"max_tokens": 24, "temperature": 0}})
    accepted, texts, finished, done = _split(events)
    assert status == 200 and accepted == PromptAccepted(prompt_tokens=len(ids), max_tokens=24)
    assert texts[0] == tokenizer.decode(expected, skip_special_tokens=True)
    assert len(finished) == 1 and done == GenerationDone(prompt_tokens=len(ids),
                                                          completion_tokens=finished[0].completion_tokens)


def test_a_dora_adapter_from_storage_generates_what_the_merged_model_generates(server, root, tiny_model_dir,
                                                                               adapter_dir, tokenizer):
    messages = [{"role": "user", "content": "Name three colours."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    expected, _ = greedy_reference(merged(lambda: load_tiny(tiny_model_dir), adapter_dir), list(ids), 32)
    base, _ = greedy_reference(load_tiny(tiny_model_dir), list(ids), 32)
    assert expected != base  # the adapter changes the completion, so ignoring it would fail
    body = {"base_model": "tiny-llama", "messages": messages, "n": 2,
            "adapter": {"key": "ft:tiny-llama:t-serve:job-serve:ckpt-step-6", "storage_prefix": ADAPTER_PREFIX},
            "sampling": {"max_tokens": 32, "temperature": 0, "logprobs": True, "top_logprobs": 2}}
    status, events = server.generate(body)
    accepted, texts, finished, done = _split(events)
    assert status == 200 and accepted.prompt_tokens == len(ids)
    assert texts == {0: tokenizer.decode(expected, skip_special_tokens=True)} | {1: texts[0]}
    assert sorted(f.index for f in finished) == [0, 1]
    assert done.completion_tokens == sum(f.completion_tokens for f in finished)
    deltas = [e for e in events if isinstance(e, TextDelta) and e.index == 0]
    tokens = [t for delta in deltas for t in delta.tokens]
    assert len(tokens) == len(expected) and all(len(t.top_logprobs) == 2 for t in tokens)
    assert all(t.logprob <= 0 and t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in tokens)  # greedy
    cached = [folder for folder in (root / "model-cache" / "adapters").iterdir() if folder.is_dir()
              and not folder.name.startswith(".")]  # beside each folder, `<folder>.prefix` names its storage prefix
    assert len(cached) == 1 and sorted(p.name for p in cached[0].iterdir()) == sorted(ADAPTER_FILES)


def test_the_server_registers_itself_and_its_heartbeat_advances(server, database_url):
    engine = get_engine(DatabaseSettings(database_url=database_url))

    def row() -> InferenceServer:
        with Session(engine) as session:
            rows = session.scalars(select(InferenceServer)).all()
            assert len(rows) == 1
            session.expunge_all()
            return rows[0]

    first = row()
    assert (first.url, first.base_models, first.max_batch) == (server.url, ["endless", "tiny-llama"], 16)
    assert first.id.split(":")[1] == str(server.popen.pid)
    wait_for(lambda: row().heartbeat_at > first.heartbeat_at, timeout=10, what="the next heartbeat")
    with Session(engine) as session:
        assert [s.url for s in live_servers(session, base_model="tiny-llama", ttl_seconds=15)] == [server.url]
        assert live_servers(session, base_model="other", ttl_seconds=15) == []


@pytest.mark.parametrize(("body", "status", "code", "param"), [
    ({"base_model": "tiny-llama", "prompt": "word " * 2100}, 400, "context_length_exceeded", "prompt"),
    ({"base_model": "tiny-llama", "messages": [{"role": "user", "content": "word " * 2100}]}, 400,
     "context_length_exceeded", "messages"),
    ({"base_model": "tiny-llama", "prompt": "hi", "sampling": {"max_tokens": 2048}}, 400, "context_length_exceeded",
     "max_tokens"),
    ({"base_model": "no-such-model", "prompt": "hi"}, 404, "model_not_found", "model"),
    ({"base_model": "tiny-llama", "prompt": "hi", "adapter": {"key": "ft:x", "storage_prefix": "tenants/t/none"}},
     404, "model_not_found", "model"),
    ({"base_model": "tiny-llama", "prompt": "hi", "adapter": {"key": "ft:x", "storage_prefix": "../../etc"}},
     404, "model_not_found", "model"),
    ({"prompt": "hi"}, 400, "invalid_request", "base_model"),
    ({"base_model": "tiny-llama", "prompt": "hi", "sampling": {"temperature": 9}}, 400, "invalid_request",
     "sampling.temperature"),
    ({"base_model": "tiny-llama", "prompt": "hi", "messages": []}, 400, "invalid_request", "messages"),
], ids=["prompt-too-long", "messages-too-long", "max-tokens-past-context", "unknown-base", "adapter-not-stored",
        "adapter-prefix-escapes", "no-base-model", "temperature", "prompt-and-messages"])
def test_a_request_that_cannot_run_is_answered_with_its_status_naming_the_field(server, body, status, code, param):
    answer, events = server.generate(body)
    error = _error(status, events)
    assert (answer, error.code, error.param) == (status, code, param), error.message


def test_a_body_that_is_not_json_is_a_400(server):
    response = httpx.post(server.url + GENERATE_PATH, content=b"{not json", headers=server.headers, timeout=10)
    assert response.status_code == 400 and decode_event(response.text).code == "invalid_request"


def test_a_client_that_goes_away_stops_its_generation(server):
    """Two endless choices (about 2,000 tokens each, seconds of decoding) stop as the client leaves."""
    body = {"base_model": "endless", "prompt": "hello", "n": 2, "sampling": {"temperature": 0}}
    with httpx.stream("POST", server.url + GENERATE_PATH, json=body, headers=server.headers, timeout=30) as response:
        lines = response.iter_lines()
        accepted = decode_event(next(lines))
        assert isinstance(accepted, PromptAccepted) and accepted.max_tokens > 2000
        assert isinstance(decode_event(next(lines)), TextDelta)
        assert server.health()["models"]["endless"]["sequences"] == 2  # running
    wait_for(lambda: server.health()["models"]["endless"]["sequences"] == 0, timeout=2, interval=0.05,
             what="the choices to be cancelled")
    status, events = server.generate({"base_model": "endless", "prompt": "hi", "sampling": {"max_tokens": 3}})
    assert status == 200 and _split(events)[3].completion_tokens == 3  # the server goes on


def test_dora_serve_refuses_to_start_without_the_secret(server):
    env = {name: value for name, value in server.env.items() if name != "DORA_INFERENCE_SECRET"}
    result = subprocess.run([sys.executable, "-m", "dora_cli.main", "serve"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: DORA_INFERENCE_SECRET is not set"), result.stderr


def test_a_second_server_holds_only_its_loadable_models_and_leaves_the_registry_when_stopped(server, root, database_url,
                                                                                     tiny_model_dir,
                                                                                     endless_model_dir):
    engine = get_engine(DatabaseSettings(database_url=database_url))
    # a model it cannot load (a hub id, offline, not cached) is left out with its reason; the others are served
    with serve_process(root / "second", database_url=database_url,
                       base_models={"tiny-llama": str(tiny_model_dir), "endless": str(endless_model_dir),
                                    "unreachable": "acme/not-in-any-cache"},
                       extra_env={"DORA_SERVE_BASE_MODELS": '["endless", "unreachable"]'}) as second:
        health = second.health()
        assert health["models"].keys() == {"endless"} and health["not_loaded"].keys() == {"unreachable"}, health
        assert "acme/not-in-any-cache" in health["not_loaded"]["unreachable"], health
        assert second.generate({"base_model": "tiny-llama", "prompt": "hi"})[0] == 404  # registered, not held here
        with Session(engine) as session:
            endless = live_servers(session, base_model="endless", ttl_seconds=15)
            assert sorted(s.url for s in endless) == sorted([server.url, second.url])
            assert [s.url for s in live_servers(session, base_model="tiny-llama", ttl_seconds=15)] == [server.url]
            assert live_servers(session, base_model="unreachable", ttl_seconds=15) == []
        assert second.stop() in (0, -15)  # SIGTERM: uvicorn shuts down gracefully, then re-raises the signal
        assert "Application shutdown complete" in second.text()
    with Session(engine) as session:
        assert session.scalars(select(InferenceServer.url)).all() == [server.url]  # the row left with it

