"""One eval run, executed: claim, sample each item not graded yet, grade it, store it once, finish.

`run_eval` claims the run with a lease (store/eval_execution.py), reads its rows and the item
indices already stored (an earlier attempt's: skipped), then works in batches of
DORA_EVAL_BATCH_ITEMS: each item's chat is rendered, completed by an inference server
(store/inference_client.py; DORA_EVAL_COMPLETION_CONCURRENCY at once, which the server batches)
and graded by every testing criterion (worker/eval_grading.py: a model grader's judge resolved for
the run's tenant by `Judges`, a python grader in its sandboxed process where enabled); the batch is
inserted in one fenced transaction. Between
batches the lease is renewed (a thread renews it during a long batch too), the counts are written
from SQL, and a cancel request ends the run `canceled`; a shutdown gives the run back (queued)
after the batch. An item the server refuses (400: too long for the model, say) or whose template
names a missing field is stored `error` and the run goes on; no server for the model for
DORA_EVAL_SERVER_WAIT_SECONDS (or completions not configured) fails the run with that error.
An executor killed mid-run loses only its unstored batch: the lease expires, the sweep
publishes the run again, and the next attempt does exactly the items no attempt stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from dora_contract.serving import GenerationRequest
from dora_graders import PythonSandbox
from store import eval_execution as runs
from store.db import session_scope
from store.eval_execution import Beat, NewItem, RunWork, Tally
from store.eval_status import EvalRunStatus
from store.inference_client import Collected, GenerationRefusedError, InferenceClient
from store.models import File
from store.storage import Storage
from worker.eval_grading import Grade, Graders, JudgeAnswer, grade_item
from worker.eval_items import (
    ItemInputError,
    Row,
    ServedModel,
    input_messages,
    max_tokens_default,
    read_rows,
    sampling,
    served_model,
)
from worker.judges import JudgeModels, ServerWaitError, generate_waiting
from worker.settings import EvalRunnerSettings

log = logging.getLogger("worker.evals")


class RunFailedError(Exception):
    """The run cannot go on (no server for its model, its file gone): it ends `failed` with this."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class LeaseLostError(Exception):
    """Another attempt holds the run now (or it was deleted): stop, write nothing."""


@dataclass
class RunLease:
    """The attempt's fence and what the last heartbeat said; thread-safe `beat`."""

    settings: EvalRunnerSettings
    work: RunWork
    held: bool = True
    cancel_requested: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def beat(self, tally: Tally | None = None) -> Beat:
        with self._lock:
            if not self.held:
                return Beat(held=False)
            try:
                with session_scope(self.settings) as session:
                    beat = runs.heartbeat(session, fence=self.work.fence, tally=tally,
                                          lease_seconds=self.settings.eval_lease_seconds)
            except Exception as error:  # noqa: BLE001 - a database blip: the next beat tries again
                log.warning("eval run %s: heartbeat failed: %s", self.work.fence.run_id, error)
                return Beat(held=True, cancel_requested=self.cancel_requested)
            self.held = beat.held
            self.cancel_requested = self.cancel_requested or beat.cancel_requested
            return beat

    def keep(self, stop: threading.Event) -> None:
        """A thread's loop: renew every DORA_EVAL_HEARTBEAT_SECONDS while a batch runs."""
        while not stop.wait(self.settings.eval_heartbeat_seconds) and self.beat().held:
            pass


class Executor:
    """The run's items, sampled and graded; one per attempt."""

    def __init__(self, settings: EvalRunnerSettings, work: RunWork, lease: RunLease, client: InferenceClient,
                 storage: Storage, grade: Grade, stopping: Callable[[], bool]) -> None:
        self.settings, self.work, self.lease, self.client = settings, work, lease, client
        self.grade, self.stopping = grade, stopping
        self.served: ServedModel | None = served_model(work.data_source)
        self.sampling = sampling(work.data_source) if self.served is not None else None
        self.graders = Graders(judge=Judges(settings, work, storage, self._generate),
                               python=PythonSandbox() if settings.python_grader_enabled else None)

    # -- one item
    def item(self, row: Row) -> NewItem:
        if self.served is None:
            sample = _given_sample(row.sample)
        else:
            sample = self._sample(row)
        if sample.get("error"):
            return NewItem(datasource_item_id=row.index, datasource_item=row.item, sample=sample, results=[],
                           status="error")
        output_text = sample["output"][0]["content"] if sample.get("output") else ""
        results, status = self.grade(self.work.testing_criteria, row.item, output_text, self.graders)
        return NewItem(datasource_item_id=row.index, datasource_item=row.item, sample=sample, results=results,
                       status=status)

    def _sample(self, row: Row) -> dict[str, Any]:
        served, params = self.served, self.sampling
        base = {"input": [], "output": [], "finish_reason": None, "model": served.model, "usage": None, "error": None,
                "temperature": params.temperature, "max_completion_tokens": params.max_tokens, "top_p": params.top_p,
                "seed": params.seed}
        try:
            messages = input_messages(self.work.data_source, row.item)
        except ItemInputError as error:
            return base | {"error": {"code": "invalid_item", "message": str(error)}}
        base["input"] = [message.model_dump() for message in messages]
        request = GenerationRequest(base_model=served.base_model, adapter=served.adapter, messages=messages,
                                    sampling=params)
        try:
            collected = self._generate(request, served.route_key)
        except GenerationRefusedError as refused:  # a 4xx: this item's request
            return base | {"error": {"code": refused.code, "message": refused.message, "param": refused.param}}
        return base | {"output": [{"role": "assistant", "content": collected.texts[0]}],
                       "finish_reason": collected.finish_reasons[0], "usage": collected.usage}

    def _generate(self, request: GenerationRequest, route_key: str) -> Collected:
        """The completion, retried while no server can take it, for DORA_EVAL_SERVER_WAIT_SECONDS."""
        try:
            return generate_waiting(self.client, request, route_key,
                                    wait_seconds=self.settings.eval_server_wait_seconds,
                                    give_up=lambda: not self.lease.held or self.lease.cancel_requested)
        except ServerWaitError as error:
            raise RunFailedError(error.code, error.message) from None


class Judges:
    """Model graders' judges for one run: each model id resolved once for the run's tenant (a base,
    an `ft:` model or a checkpoint: worker/judges.py, the API's resolution), then completed by the
    inference servers as the run's own samples are (waiting for a server as long). A judge that
    cannot be resolved, or had no server that long, errors each criterion asking it (its
    `model_grader_server_error`), at once after the first time: the run goes on."""

    def __init__(self, settings: EvalRunnerSettings, work: RunWork, storage: Storage,
                 generate: Callable[[GenerationRequest, str], Collected]) -> None:
        # a jsonl run has no bound stored: max_tokens_default None, what the judge's context leaves
        self.models = JudgeModels(settings, storage, tenant_id=work.tenant_id, tenant_name=work.tenant_name,
                                  generate=generate, max_tokens_default=max_tokens_default(work.data_source))

    def __call__(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> JudgeAnswer:
        try:
            collected = self.models.complete(model, messages, params)
        except RunFailedError as failure:  # no server for the judge: the criterion's error, not the run's
            self.models.remember(model, failure)
            raise
        return JudgeAnswer(model=model, messages=messages, text=collected.texts[0],
                           finish_reason=collected.finish_reasons[0], usage=collected.usage)


def _given_sample(sample: dict[str, Any] | None) -> dict[str, Any]:
    """A jsonl run's sample as stored: OpenAI's sample shape, from `output_text` or `output`."""
    sample = sample or {}
    text = sample.get("output_text")
    if text is None and isinstance(sample.get("output"), list) and sample["output"]:
        text = sample["output"][0].get("content")
    if text is None:
        text = ""
    return {"input": sample.get("input", []), "output": [{"role": "assistant", "content": str(text)}],
            "finish_reason": sample.get("finish_reason"), "model": sample.get("model"), "usage": sample.get("usage"),
            "error": None}


def run_eval(run_id: str, *, settings: EvalRunnerSettings, client: InferenceClient, storage: Storage, owner: str,
             grade: Grade = grade_item, stopping: Callable[[], bool] = lambda: False,
             publish: Callable[[str], bool] = lambda run_id: False) -> str:
    """Execute the run (one attempt); what happened, for the log: its final status, "released",
    "lease lost" or "dropped" (not claimable: a duplicate or stale message)."""
    with session_scope(settings) as session:
        work = runs.claim_run(session, run_id=run_id, owner=owner, lease_seconds=settings.eval_lease_seconds)
    if work is None:
        return "dropped"
    fence = work.fence
    log.info("eval run %s: attempt %d started on %s", run_id, fence.attempt, owner)
    lease = RunLease(settings, work)
    names = [criterion.get("name", "") for criterion in work.testing_criteria]
    stop_keeping = threading.Event()
    keeper = threading.Thread(target=lease.keep, args=(stop_keeping,), name=f"lease-{run_id}", daemon=True)
    keeper.start()
    status, error = EvalRunStatus.COMPLETED, None
    try:
        outcome = _work(settings, work, lease, client, storage, grade, stopping, names)
        if outcome is not None:
            if outcome == "released":
                with session_scope(settings) as session:
                    if runs.release_run(session, fence=fence):
                        publish(run_id)
            return outcome
    except RunFailedError as failure:
        status, error = EvalRunStatus.FAILED, {"code": failure.code, "message": failure.message}
    except LeaseLostError:
        log.warning("eval run %s: lease lost (attempt %d); stopping without writing", run_id, fence.attempt)
        return "lease lost"
    except Exception as failure:
        log.exception("eval run %s failed", run_id)
        status, error = EvalRunStatus.FAILED, {"code": "internal_error",
                                               "message": f"{type(failure).__name__}: {failure}"}
    finally:
        stop_keeping.set()
    with session_scope(settings) as session:
        tally = runs.tally(session, run_id=run_id, criteria_names=names)
        written = runs.finish_run(session, fence=fence, status=status, tally=tally, error=error)
    log.info("eval run %s: %s (%s)", run_id, written or "lease lost", tally.result_counts)
    return str(written or "lease lost")


def _work(settings: EvalRunnerSettings, work: RunWork, lease: RunLease, client: InferenceClient, storage: Storage,
          grade: Grade, stopping: Callable[[], bool], names: list[str]) -> str | None:
    """Every item not stored yet, batch after batch; None when done (or canceled: finish decides),
    "released" when stopping."""
    run_id = work.fence.run_id
    with session_scope(settings) as session:
        source = work.data_source.get("source") or {}
        file = (session.scalars(select(File).where(File.id == source.get("id"), File.tenant_id == work.tenant_id))
                .first() if source.get("type") == "file_id" else None)
        try:
            rows = read_rows(work.data_source, storage=storage, session_file=file)
        except (FileNotFoundError, ValueError) as error:
            raise RunFailedError("invalid_data_source", f"the data source cannot be read: {error}") from None
        done = runs.stored_item_ids(session, run_id=run_id)
    todo = [row for row in rows if row.index not in done]
    if done:
        log.info("eval run %s: resuming, %d of %d items already graded", run_id, len(done), len(rows))
    executor = Executor(settings, work, lease, client, storage, grade, stopping)
    size = settings.eval_batch_items
    with ThreadPoolExecutor(settings.eval_completion_concurrency, thread_name_prefix=f"eval-{run_id[-6:]}") as pool:
        for start in range(0, len(todo), size):
            with session_scope(settings) as session:
                beat = lease.beat(runs.tally(session, run_id=run_id, criteria_names=names) if start else None)
            if not beat.held:
                raise LeaseLostError()
            if lease.cancel_requested:
                return None
            if stopping():
                return "released"
            futures = [pool.submit(executor.item, row) for row in todo[start:start + size]]
            items, failure = [], None
            for future in futures:
                try:
                    items.append(future.result())
                except RunFailedError as error:
                    failure = failure or error
            with session_scope(settings) as session:
                inserted = runs.insert_items(session, fence=work.fence, work=work, items=items,
                                             lease_seconds=settings.eval_lease_seconds)
            if inserted is None:
                raise LeaseLostError()
            if failure is not None:
                raise failure
    return None
