"""Every malformed body, file, header and query we could think of: a 4xx naming the problem,
never a 500, and nothing left behind (no job or file row, no stored object)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.support.api_client import CHAT_ROW, MAX_UPLOAD

JOBS = "/v1/fine_tuning/jobs"


@dataclass
class Ctx:
    file_id: str
    other_file_id: str


STRING_CHECK = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}", "operation": "eq"}


def job(extra: dict | None = None, drop: tuple = ()) -> Callable[[Ctx], dict]:
    def body(ctx: Ctx) -> dict:
        value = {"model": "tiny-llama", "training_file": ctx.file_id} | (extra or {})
        return {"json": {k: v for k, v in value.items() if k not in drop}}

    return body


def dora(**settings) -> Callable[[Ctx], dict]:
    return job({"method": {"type": "dora", "dora": settings}})


def hyper(**settings) -> Callable[[Ctx], dict]:
    return dora(hyperparameters=settings)


def raw(content: bytes, content_type: str = "application/json") -> Callable[[Ctx], dict]:
    return lambda ctx: {"content": content, "headers": {"Content-Type": content_type}}


def raw_job(members: str) -> Callable[[Ctx], dict]:
    """A job body written as JSON text, for what `json=` cannot send (lone surrogates, deep nesting)."""

    def body(ctx: Ctx) -> dict:
        text = f'{{"model": "tiny-llama", "training_file": "{ctx.file_id}", {members}}}'
        return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}

    return body


def nested(levels: int, leaf: str = "1") -> str:
    """JSON text of `levels` objects, each the value of key "a" of the one around it."""
    return '{"a": ' * levels + leaf + "}" * levels


def file_content(ctx: Ctx) -> str:
    return f"/v1/files/{ctx.file_id}/content"


def upload(content: bytes | None = CHAT_ROW, purpose: str | None = "fine-tune", filename: str = "d.jsonl"):
    def body(ctx: Ctx) -> dict:
        files = {"file": (filename, content)} if content is not None else {"unused": (None, "x")}
        return {"files": files, "data": {"purpose": purpose} if purpose is not None else {}}

    return body


@dataclass
class Case:
    id: str
    method: str
    path: str | Callable[[Ctx], str]
    request: Callable[[Ctx], dict]
    status: int
    says: str  # must appear in error.message
    param: str | None = "-"  # expected error.param ("-": not checked)


CASES = [
    # --- job creation: the body
    Case("body-not-json", "POST", JOBS, raw(b"{model: tiny"), 400, "not valid JSON"),
    Case("body-is-a-list", "POST", JOBS, raw(b'["tiny-llama"]'), 400, "must be a JSON object"),
    Case("body-missing", "POST", JOBS, raw(b""), 400, "body is missing"),
    Case("missing-model", "POST", JOBS, job(drop=("model",)), 400, "'model'", "model"),
    Case("empty-model", "POST", JOBS, job({"model": ""}), 400, "model", "model"),
    Case("missing-training-file", "POST", JOBS, job(drop=("training_file",)), 400, "training_file", "training_file"),
    Case("unknown-model", "POST", JOBS, job({"model": "gpt-9"}), 400, "gpt-9", "model"),
    Case("no-such-training-file", "POST", JOBS, job({"training_file": "file-nope"}), 400, "file-nope",
         "training_file"),
    Case("other-tenants-file", "POST", JOBS, lambda c: job({"training_file": c.other_file_id})(c), 400,
         "No such file", "training_file"),
    Case("no-such-validation-file", "POST", JOBS, job({"validation_file": "file-gone"}), 400, "file-gone",
         "validation_file"),
    Case("unknown-field", "POST", JOBS, job({"rnak": 8}), 400, "Unrecognized request argument supplied: 'rnak'",
         "rnak"),
    Case("rank-zero", "POST", JOBS, dora(rank=0), 400, "greater than or equal to 1", "method.dora.rank"),
    Case("rank-above-server-limit", "POST", JOBS, dora(rank=1000), 400, "rank must be between 1 and 128",
         "method.dora.rank"),
    Case("rank-not-a-number", "POST", JOBS, dora(rank="eight"), 400, "integer", "method.dora.rank"),
    Case("alpha-negative", "POST", JOBS, dora(alpha=-1), 400, "greater than 0", "method.dora.alpha"),
    Case("dropout-above-one", "POST", JOBS, dora(dropout=1.5), 400, "less than 1", "method.dora.dropout"),
    Case("target-modules-empty", "POST", JOBS, dora(target_modules=[]), 400, "must not be empty",
         "method.dora.target_modules"),
    Case("target-modules-bad-name", "POST", JOBS, dora(target_modules=["q_proj; rm -rf"]), 400,
         "should match pattern", "method.dora.target_modules.0"),
    Case("rank-in-both-places", "POST", JOBS, dora(rank=8, hyperparameters={"rank": 8}), 400,
         "'method.dora.rank' and 'method.dora.hyperparameters.rank' are both given",
         "method.dora.hyperparameters.rank"),
    Case("alpha-in-both-places", "POST", JOBS, job({"method": {"type": "lora", "lora": {
        "alpha": 8, "hyperparameters": {"alpha": 16}}}}), 400, "'method.lora.alpha' and "
        "'method.lora.hyperparameters.alpha' are both given", "method.lora.hyperparameters.alpha"),
    Case("rank-inside-hyperparameters-zero", "POST", JOBS, hyper(rank=0), 400, "greater than or equal to 1",
         "method.dora.hyperparameters.rank"),
    Case("rank-inside-hyperparameters-above-server-limit", "POST", JOBS, hyper(rank=1000), 400,
         "rank must be between 1 and 128", "method.dora.hyperparameters.rank"),
    Case("gradient-checkpointing-word", "POST", JOBS, hyper(gradient_checkpointing="yes"), 400,
         "'auto' or input should be a valid boolean", "method.dora.hyperparameters.gradient_checkpointing"),
    Case("validation-file-and-split", "POST", JOBS, lambda ctx: {"json": {
        "model": "tiny-llama", "training_file": ctx.file_id, "validation_file": ctx.file_id,
        "method": {"type": "dora", "dora": {"hyperparameters": {"validation_split": 0.1}}}}}, 400, "not both",
         "method.dora.hyperparameters.validation_split"),
    Case("method-reinforcement-without-grader", "POST", JOBS,
         job({"method": {"type": "reinforcement", "reinforcement": {}}}), 400, "grader",
         "method.reinforcement.grader"),
    Case("method-reinforcement-on-a-chat-file", "POST", JOBS, job({"method": {
        "type": "reinforcement", "reinforcement": {"grader": STRING_CHECK}}}), 400,
        "a reinforcement job trains on prompts rows", "training_file"),
    Case("method-reinforcement-reasoning-effort", "POST", JOBS, job({"method": {"type": "reinforcement",
         "reinforcement": {"grader": STRING_CHECK, "hyperparameters": {"reasoning_effort": "high"}}}}), 400,
         "only 'default' is accepted", "method.reinforcement.hyperparameters.reasoning_effort"),
    Case("method-reinforcement-bad-grader", "POST", JOBS, job({"method": {"type": "reinforcement", "reinforcement": {
        "grader": {**STRING_CHECK, "operation": "sounds_like"}}}}), 400, "operation",
         "method.reinforcement.grader.operation"),
    Case("method-dpo-on-a-chat-file", "POST", JOBS, job({"method": {"type": "dpo", "dpo": {}}}), 400,
         "a dpo job trains on preference rows", "training_file"),
    Case("method-block-mismatch", "POST", JOBS, job({"method": {"type": "dora", "lora": {"rank": 4}}}), 400,
         "under 'lora'", "method"),
    Case("method-not-an-object", "POST", JOBS, job({"method": "dora"}), 400, "method", "method"),
    Case("unknown-hyperparameter", "POST", JOBS, hyper(learnin_rate=0.1), 400, "learnin_rate",
         "method.dora.hyperparameters.learnin_rate"),
    Case("epochs-zero", "POST", JOBS, hyper(n_epochs=0), 400, "greater than 0",
         "method.dora.hyperparameters.n_epochs"),
    Case("epochs-above-server-limit", "POST", JOBS, hyper(n_epochs=1000), 400, "n_epochs must be at most 100",
         "method.dora.hyperparameters.n_epochs"),
    Case("max-steps-zero", "POST", JOBS, hyper(max_steps=0), 400, "max_steps", "method.dora.hyperparameters.max_steps"),
    Case("batch-size-huge", "POST", JOBS, hyper(batch_size=10**6), 400, "batch_size must be at most",
         "method.dora.hyperparameters.batch_size"),
    Case("seq-len-huge", "POST", JOBS, hyper(max_seq_len=10**9), 400, "max_seq_len must be at most",
         "method.dora.hyperparameters.max_seq_len"),
    Case("learning-rate-negative", "POST", JOBS, hyper(learning_rate=-1), 400, "greater than 0",
         "method.dora.hyperparameters.learning_rate"),
    Case("two-learning-rates", "POST", JOBS, hyper(learning_rate=1e-4, learning_rate_multiplier=2), 400, "not both",
         "method.dora.hyperparameters"),
    Case("unknown-scheduler", "POST", JOBS, hyper(lr_scheduler="wobbly"), 400, "'linear'",
         "method.dora.hyperparameters.lr_scheduler"),
    Case("warmup-ratio-above-one", "POST", JOBS, hyper(warmup_ratio=2), 400, "less than or equal to 1",
         "method.dora.hyperparameters.warmup_ratio"),
    Case("supervised-epochs-word", "POST", JOBS,
         job({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "many"}}}}), 400,
         "'auto'", "method.supervised.hyperparameters.n_epochs"),
    Case("hyperparameters-twice", "POST", JOBS,
         job({"hyperparameters": {"n_epochs": 1}, "method": {"type": "supervised"}}), 400, "not both"),
    Case("suffix-too-long", "POST", JOBS, job({"suffix": "x" * 65}), 400, "at most 64 characters", "suffix"),
    Case("suffix-with-slash", "POST", JOBS, job({"suffix": "../evil"}), 400, "pattern", "suffix"),
    Case("seed-negative", "POST", JOBS, job({"seed": -1}), 400, "greater than or equal to 0", "seed"),
    Case("metadata-too-many-keys", "POST", JOBS, job({"metadata": {f"k{i}": "v" for i in range(17)}}), 400,
         "at most 16", "metadata"),
    Case("metadata-value-not-string", "POST", JOBS, job({"metadata": {"n": 3}}), 400, "string", "metadata.n"),
    Case("metadata-value-too-long", "POST", JOBS, job({"metadata": {"k": "v" * 600}}), 400, "512", "metadata"),
    Case("outputs-unknown", "POST", JOBS, job({"outputs": ["weights"]}), 400, "'adapter'", "outputs.0"),
    Case("outputs-empty", "POST", JOBS, job({"outputs": []}), 400, "must not be empty", "outputs"),
    Case("integration-unknown-type", "POST", JOBS, job({"integrations": [{"type": "comet", "comet": {}}]}), 400,
         "integration type 'comet' is not supported", "integrations.0.type"),
    Case("integration-without-its-block", "POST", JOBS, job({"integrations": [{"type": "wandb"}]}), 400,
         "needs its settings under 'wandb'", "integrations.0"),
    Case("integration-wandb-project-too-long", "POST", JOBS,
         job({"integrations": [{"type": "wandb", "wandb": {"project": "p" * 129}}]}), 400, "at most 128 characters",
         "integrations.0.wandb.project"),
    Case("integration-wandb-tag-too-long", "POST", JOBS,
         job({"integrations": [{"type": "wandb", "wandb": {"project": "p", "tags": ["t" * 65]}}]}), 400,
         "at most 64 characters", "integrations.0.wandb.tags.0"),
    Case("integration-twice", "POST", JOBS,
         job({"integrations": [{"type": "mlflow", "mlflow": {"experiment": "e"}}] * 2}), 400, "at most once",
         "integrations"),
    Case("integration-not-configured", "POST", JOBS,
         job({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}), 400, "not configured on this server",
         "integrations.0.type"),
    Case("max-attempts-zero", "POST", JOBS, job({"max_attempts": 0}), 400, "max_attempts", "max_attempts"),
    Case("idempotency-key-too-long", "POST", JOBS,
         lambda c: job()(c) | {"headers": {"Idempotency-Key": "k" * 300}}, 400, "Idempotency-Key",
         "Idempotency-Key"),
    # --- auth
    Case("no-api-key", "POST", JOBS, lambda c: job()(c) | {"headers": {"Authorization": ""}}, 401,
         "didn't provide an API key"),
    Case("wrong-api-key", "POST", JOBS, lambda c: job()(c) | {"headers": {"Authorization": "Bearer sk-dora-nope"}},
         401, "Incorrect API key"),
    Case("basic-auth", "GET", JOBS, lambda c: {"headers": {"Authorization": "Basic dXNlcjpwYXNz"}}, 401,
         "Authorization: Bearer"),
    # --- uploads
    Case("upload-not-multipart", "POST", "/v1/files", raw(b'{"purpose": "fine-tune"}'), 415, "multipart/form-data"),
    Case("upload-no-boundary", "POST", "/v1/files", raw(b"--x\r\n", "multipart/form-data"), 400, "boundary"),
    Case("upload-without-file", "POST", "/v1/files", upload(content=None), 400, "'file'", "file"),
    Case("upload-without-purpose", "POST", "/v1/files", upload(purpose=None), 400, "'purpose'", "purpose"),
    Case("upload-wrong-purpose", "POST", "/v1/files", upload(purpose="assistants"), 400, "fine-tune", "purpose"),
    Case("upload-empty-file", "POST", "/v1/files", upload(content=b""), 400, "empty", "file"),
    Case("upload-bad-json", "POST", "/v1/files", upload(content=CHAT_ROW + b"{oops\n"), 400, "line 2: invalid JSON",
         "file"),
    Case("upload-unknown-format", "POST", "/v1/files", upload(content=b'{"question": "q", "answer": "a"}\n'), 400,
         "line 1", "file"),
    Case("upload-mixed-formats", "POST", "/v1/files", upload(content=CHAT_ROW + b'{"text": "plain"}\n'), 400,
         "line 2", "file"),
    Case("upload-not-utf8", "POST", "/v1/files", upload(content=b"\xff\xfe\x00garbage\n"), 400, "UTF-8", "file"),
    Case("upload-not-an-object", "POST", "/v1/files", upload(content=b"[1, 2]\n"), 400, "line 1", "file"),
    Case("upload-declared-too-large", "POST", "/v1/files",
         lambda c: {"content": b"x", "headers": {"Content-Type": "multipart/form-data; boundary=b",
                                                 "Content-Length": str(MAX_UPLOAD * 4)}}, 413, "too large", "file"),
    Case("upload-two-files", "POST", "/v1/files",
         lambda c: {"files": [("file", ("a.jsonl", CHAT_ROW)), ("file", ("b.jsonl", CHAT_ROW))],
                    "data": {"purpose": "fine-tune"}}, 400, "Only one file", "file"),
    # --- queries
    Case("list-limit-zero", "GET", JOBS, lambda c: {"params": {"limit": 0}}, 400, "limit", "limit"),
    Case("list-limit-huge", "GET", JOBS, lambda c: {"params": {"limit": 1000}}, 400, "between 1 and 100", "limit"),
    Case("list-bad-status", "GET", JOBS, lambda c: {"params": {"status": "stopped"}}, 400, "stopped", "status"),
    Case("list-bad-metadata-filter", "GET", JOBS, lambda c: {"params": {"metadata[]": "x"}}, 400,
         "metadata[key]=value"),
    Case("files-bad-order", "GET", "/v1/files", lambda c: {"params": {"order": "sideways"}}, 400, "'asc'", "order"),
    Case("unknown-job", "GET", f"{JOBS}/ftjob-doesnotexist", lambda c: {}, 404, "ftjob-doesnotexist"),
    Case("unknown-file-content", "GET", "/v1/files/file-nope/content", lambda c: {}, 404, "file-nope"),
    Case("unknown-route", "GET", "/v1/fine_tunes", lambda c: {}, 404, "Not Found"),
    # --- found by fuzzing (schemathesis and by hand): each was a 500 before, mostly on PostgreSQL
    Case("nul-in-job-id", "GET", f"{JOBS}/ftjob-%00x", lambda c: {}, 400, "NUL"),
    Case("nul-in-file-id", "GET", "/v1/files/file-%00", lambda c: {}, 400, "NUL"),
    Case("nul-in-cursor", "GET", JOBS, lambda c: {"params": {"after": "ftjob-\x00"}}, 400, "NUL"),
    Case("nul-in-metadata-filter", "GET", JOBS, lambda c: {"params": {"metadata[k]": "a\x00"}}, 400, "NUL"),
    Case("nul-in-files-purpose-filter", "GET", "/v1/files", lambda c: {"params": {"purpose": "\x00"}}, 400, "NUL"),
    Case("nul-in-artifact-name", "GET", f"{JOBS}/ftjob-x/artifacts/%00/archive", lambda c: {}, 400, "NUL"),
    Case("nul-in-training-file", "POST", JOBS, job({"training_file": "file-\x00"}), 400,
         "'training_file' contains a NUL"),
    Case("nul-in-metadata-value", "POST", JOBS, job({"metadata": {"k": "a\x00b"}}), 400,
         "'metadata.k' contains a NUL"),
    Case("nul-in-metadata-key", "POST", JOBS, job({"metadata": {"k\x00": "v"}}), 400, "contains a NUL"),
    Case("alpha-infinite", "POST", JOBS, raw(b'{"model": "tiny-llama", "training_file": "f", '
                                             b'"method": {"type": "dora", "dora": {"alpha": Infinity}}}'),
         400, "finite number", "method.dora.alpha"),
    Case("max-grad-norm-nan", "POST", JOBS, raw(b'{"model": "tiny-llama", "training_file": "f", "method": {"type": '
                                                 b'"dora", "dora": {"hyperparameters": {"max_grad_norm": NaN}}}}'),
         400, "finite number",
         "method.dora.hyperparameters.max_grad_norm"),
    Case("body-nested-too-deep", "POST", JOBS, raw(b"[" * 100_000), 400, ""),
    Case("wrong-method", "PUT", JOBS, lambda c: {}, 405, "Method Not Allowed"),
    # --- found by the security campaign ([reliability] no poison input): each was a 500, or
    # stored and a 500 later. JSON text with an escaped lone surrogate is valid JSON that no
    # UTF-8 text (PostgreSQL's, a response's, a tokenizer's) can hold.
    Case("surrogate-in-metadata-value", "POST", JOBS, raw_job(r'"metadata": {"k": "a\udc80"}'), 400,
         "'metadata.k' contains a lone surrogate (\\udc80)", "metadata.k"),
    Case("surrogate-in-metadata-key", "POST", JOBS, raw_job(r'"metadata": {"k\udc80": "v"}'), 400,
         "'metadata.k\\udc80' contains a lone surrogate", "metadata.k\\udc80"),
    Case("surrogate-deep-in-method", "POST", JOBS,
         raw_job(r'"method": {"type": "dora", "dora": {"target_modules": ["q_proj\ud800"]}}'), 400,
         "lone surrogate (\\ud800)", "method.dora.target_modules.0"),
    Case("surrogates-reversed-pair", "POST", JOBS, raw_job(r'"suffix": "\udc00\ud800"'), 400, "lone surrogate",
         "suffix"),
    Case("nul-param-named", "POST", JOBS, job({"metadata": {"k": "a\x00b"}}), 400, "NUL", "metadata.k"),
    Case("body-nested-33-levels", "POST", JOBS, raw_job(f'"dpo": {nested(40)}'), 400, "nested more than 32 levels",
         "dpo" + ".a" * 31),
    Case("body-nested-deep-in-a-list", "POST", JOBS, raw_job('"integrations": ' + "[" * 40 + "]" * 40), 400,
         "nested more than 32 levels", "integrations" + ".0" * 31),
    Case("metadata-filter-not-utf8", "GET", f"{JOBS}?metadata%5Bk%5D=%ED%B2%80", lambda c: {}, 400, "UTF-8",
         "metadata[k]"),
    Case("metadata-filter-key-not-utf8", "GET", f"{JOBS}?metadata%5B%FF%5D=v", lambda c: {}, 400, "UTF-8",
         "metadata[\\xff]"),
    Case("range-start-past-int-digit-limit", "GET", file_content,
         lambda c: {"headers": {"Range": "bytes=" + "9" * 4301 + "-"}}, 416, "not satisfiable", "Range"),
    Case("upload-nested-100k-deep", "POST", "/v1/files",
         upload(content=CHAT_ROW + b'{"text": "t", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"), 400,
         "line 2: JSON nested more than", "file"),
    Case("upload-nested-past-the-bound", "POST", "/v1/files",
         upload(content=b'{"text": "t", "x": ' + nested(100).encode() + b"}\n"), 400, "line 1: JSON nested more than",
         "file"),
    Case("upload-lone-surrogate-in-text", "POST", "/v1/files", upload(content=b'{"text": "a\\ud800b"}\n'), 400,
         "line 1: field 'text' contains a lone surrogate (\\ud800)", "file"),
    Case("upload-lone-surrogate-in-chat", "POST", "/v1/files",
         upload(content=CHAT_ROW + CHAT_ROW.replace(b"hello", b"hel\\udfffo")), 400,
         "line 2: field 'messages[1].content' contains a lone surrogate", "file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_4xx_naming_the_problem_and_leaves_nothing(case: Case, tenant, other_tenant):
    ctx = Ctx(file_id=tenant.file_id(), other_file_id=other_tenant.file_id())
    before = tenant.counts()
    request = case.request(ctx)
    headers = tenant.headers | request.pop("headers", {})
    headers = {k: v for k, v in headers.items() if v}
    path = case.path(ctx) if callable(case.path) else case.path
    response = tenant.client.request(case.method, path, headers=headers, **request)
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert case.says in error["message"], error
    if case.param != "-":
        assert error["param"] == case.param, error
    assert tenant.counts() == before


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("after", [10**30, -1, "x"])
def test_a_metrics_cursor_outside_the_step_range_is_a_400(tenant, after):
    """A step cursor past PostgreSQL's integer (or SQLite's) was a 500."""
    job_id = tenant.job()["id"]
    response = tenant.get(f"{JOBS}/{job_id}/metrics", params={"after": after})
    assert response.status_code == 400 and response.json()["error"]["param"] == "after", response.text


def test_a_refused_metadata_key_leaves_the_tenants_metadata_filters_working(tenant):
    """A lone surrogate in a metadata key was stored, and from then on every metadata-filtered
    list of the tenant was a 500 (PostgreSQL cannot read such a key back out of JSON)."""
    refused = tenant.post(JOBS, headers={"Content-Type": "application/json"},
                          content=f'{{"model": "tiny-llama", "training_file": "{tenant.file_id()}", '
                                  r'"metadata": {"\udc80": "v"}}'.encode())
    assert refused.status_code == 400, refused.text
    job_id = tenant.job({"metadata": {"team": "a"}})["id"]
    listed = tenant.get(JOBS, params={"metadata[team]": "a"})
    assert listed.status_code == 200 and [j["id"] for j in listed.json()["data"]] == [job_id], listed.text


def test_a_key_sent_without_bearer_is_told_the_header_it_needs(client):
    """`Authorization: sk-...` was answered "You didn't provide an API key"; the key is never echoed."""
    says = {"": "You didn't provide an API key",
            "sk-dora-abcdef": "must be 'Authorization: Bearer <key>': it holds a value without the 'Bearer ' prefix",
            "Bearer ": "has 'Bearer' but no key after it",
            "Token sk-dora-abcdef": "must be 'Authorization: Bearer <key>', not the 'Token' scheme",
            "Basic dXNlcjpwYXNz": "not the 'Basic' scheme"}
    for header, expected in says.items():
        response = client.get("/v1/models", headers={"Authorization": header} if header else {})
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer", response.text
        error = response.json()["error"]
        assert expected in error["message"] and error["code"] == "invalid_api_key", (header, error)
        assert "abcdef" not in error["message"] and "dXNl" not in error["message"]
