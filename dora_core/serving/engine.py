"""Continuous batching of many adapters on one base model: a background thread and a KV cache.

    slots = AdapterSlots.install(model, slots=8, max_rank=64)    # model: a transformers causal LM
    engine = Engine(model, tokenizer, slots, max_batch=16)
    engine.start()
    handle = engine.submit(prompt_ids, slot, GenerationParams(max_tokens=64, temperature=0.0))
    for event in handle.events(timeout=None):   # TextDelta ..., then Finished (or Failed)
        ...
    handle.cancel()                              # any thread; the row leaves at the next step
    engine.stop()

Or, on a model whose own layers are the policy (a training model: its AdapterLinear or
NF4AdapterLinear layers, no slots), synchronously in the calling thread, with no background thread:

    engine = Engine(model, tokenizer, None, max_batch=64, max_seq_len=512)
    completions = engine.generate(prompts, [GenerationParams(max_tokens=256, seed=s) for s in seeds])

generate() runs the same loop (join, decode step, leave) until every request is done, in eval mode
under no_grad (no inference tensors in a model that trains next), and puts the model back in the
train/eval mode it found; each Completion holds every sampled token, the EOS that ended it included
(reinforcement fine-tuning trains on it), its finish reason and its text. An error (an out-of-memory
one included) is raised as it was, not turned into a Failed event.

Thread safety: submit, cancel and events may be called from any thread; only the engine thread runs
the model. A step holds `slots.lock`, so an adapter copy (AdapterSlots.write) lands between steps.
`submit(..., on_done=...)` runs on_done once the row has left the batch (finished, cancelled or
failed): the place to release an AdapterCache slot, which must not be reused while a row reads it.

The loop: requests that wait join between decode steps (up to max_batch rows). Those that join
together prefill together: grouped by prompt length (prefill.prefill_groups bounds the padding), a
group is one forward of its prompts left-padded to the longest, with the 2-D attention mask,
per-row position ids (each row's real tokens from 0) and per-row slot ids; each row's first token
is sampled, and the group's cache, less the rows that finished at once, is appended to the running
batch (batch_cache.BatchCache.add_rows: left padding). A failing prefill fails its group's requests
only. A decode step feeds every row's last token with the mask, positions and slot ids of the
batch. Rows that finish or were cancelled leave after the step. transformers' own continuous
batching packs all requests into one sequence with no hook for per-row adapters, hence this
scheduler.

Events: TextDelta(text, tokens) carries new text (see detokenize.IncrementalText) and the tokens it
accounts for (with logprobs when asked); Finished(finish_reason, prompt_tokens, completion_tokens)
ends a stream with "stop" (an EOS token or a stop string; the text ends before the stop string),
"length" (max_tokens, or the model's context is full) or "cancelled"; Failed(message) ends it when
the engine failed. completion_tokens counts the EOS token; the tokens of TextDeltas do not include it.
"""

from __future__ import annotations

import inspect
import logging
import queue
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from dora_core.serving.adapter_slots import BASE_SLOT, AdapterSlots
from dora_core.serving.batch_cache import BatchCache, new_cache
from dora_core.serving.detokenize import IncrementalText, TokenTexts
from dora_core.serving.errors import RequestError
from dora_core.serving.prefill import left_padded, prefill_groups
from dora_core.serving.prompts import check_length, context_length
from dora_core.serving.sampling import Choice, RowSampling, choose_tokens, new_generator
from dora_core.stop_tokens import stop_token_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationParams:
    """One request's settings (the server applies its own defaults and limits before this)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False  # decode exactly max_tokens (benchmarks, as vLLM's SamplingParams.ignore_eos)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise RequestError("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if not self.temperature >= 0.0:
            raise RequestError("temperature", f"must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_logprobs < 0:
            raise RequestError("top_logprobs", f"must be >= 0, got {self.top_logprobs}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # what torch.Generator takes
            raise RequestError("seed", f"must be in [-2**63, 2**64), got {self.seed}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise RequestError("stop", "stop strings must be non-empty strings")


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float
    token_bytes: bytes


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token; logprob and top_logprobs only when the request asked for logprobs."""

    token_id: int
    token: str
    token_bytes: bytes
    logprob: float | None = None
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str
    tokens: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


Event = TextDelta | Finished | Failed


@dataclass(frozen=True)
class Completion:
    """One request's result from Engine.generate."""

    token_ids: tuple[int, ...]  # every sampled token, the EOS (or a stop string's tokens) that ended it included
    finish_reason: str  # "stop" | "length"
    text: str  # what its stream shows: no special tokens, ending before a stop string


class GenerationHandle:
    """A submitted request: read its events, or cancel it."""

    def __init__(self, prompt_ids: list[int], slot: int, params: GenerationParams,
                 on_done: Callable[[], None] | None) -> None:
        self.prompt_ids, self.slot, self.params, self.on_done = prompt_ids, slot, params, on_done
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self.closed = False  # the final event (Finished or Failed) was emitted
        self.generated: list[int] = []  # every sampled token, the EOS included (engine side)
        self.error: Exception | None = None  # what failed it, for generate() to raise

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they come; ends after Finished or Failed. TimeoutError if one takes over `timeout` s."""
        while True:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event from the engine within {timeout} s") from None
            yield event
            if isinstance(event, Finished | Failed):
                return

    def emit(self, event: Event) -> None:
        """Engine side: queue an event for the reader (nothing after the final one)."""
        if self.closed:
            return
        self.closed = isinstance(event, Finished | Failed)
        self._events.put(event)


@dataclass
class _Row:
    """A request in the running batch (engine thread only)."""

    handle: GenerationHandle
    text: IncrementalText
    sampling: RowSampling
    pending: list[TokenLogprob] = field(default_factory=list)  # tokens not yet sent in a TextDelta
    finished: bool = False

    @property
    def generated(self) -> list[int]:
        return self.handle.generated  # kept on the handle: generate() returns them


class Engine:
    """Runs requests on `model`: its linears already MultiAdapterLinear (see AdapterSlots.install), or,
    with `slots` None, its layers as they are (slot 0 only). `max_seq_len`: prompt + completion never
    longer (a training run's), nor than the model has positions for."""

    def __init__(self, model: Any, tokenizer: Any, slots: AdapterSlots | None, *, max_batch: int = 16,
                 max_seq_len: int | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        # a slotted model serves in eval mode for good; a training model's mode is generate()'s to set and restore
        self.model = model if slots is None else model.eval()
        self.tokenizer, self.slots, self.max_batch = tokenizer, slots, max_batch
        self.device = next(model.parameters()).device
        positions = context_length(model)
        self.context_length = min(positions, max_seq_len or positions)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.eos_ids = frozenset(stop_token_ids(model, tokenizer))
        new_cache(model.config)  # refuses a model whose cache is not plain dynamic layers, now
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"  # 5.25 / 5.17
        self._token_texts = TokenTexts(tokenizer)
        self._waiting: deque[GenerationHandle] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._rows: list[_Row] = []
        self._joining: list[GenerationHandle] = []  # taken from _waiting, not yet in _rows
        self._batch = BatchCache()

    # -- control ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._run, name="dora-serving-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the current step, fail every running and waiting request, end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, prompt_ids: list[int], slot: int, params: GenerationParams,
               on_done: Callable[[], None] | None = None) -> GenerationHandle:
        """Queue a request; `on_done` runs on the engine thread once its row has left the batch
        (e.g. AdapterCache.release)."""
        handle = self._new_handle(prompt_ids, slot, params, on_done)
        with self._wake:
            if not self.alive:
                raise RuntimeError("the engine is not running")
            self._waiting.append(handle)
            self._wake.notify_all()
        return handle

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: GenerationParams | Sequence[GenerationParams]) -> list[Completion]:
        """Every prompt's completion (params: one for all, or one per prompt), decoded in the calling
        thread by the loop the engine thread runs, up to max_batch rows at a time; only on an engine
        that was not started. The model is in eval mode meanwhile and back in its own mode after."""
        if self._thread is not None:
            raise RuntimeError("this engine runs its own thread: submit() to it")
        each = [params] * len(prompts) if isinstance(params, GenerationParams) else list(params)
        if len(each) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(each)} GenerationParams")
        handles = [self._new_handle(prompt, BASE_SLOT, p, None) for prompt, p in zip(prompts, each, strict=True)]
        was_training = self.model.training
        self._waiting.extend(handles)
        try:
            self.model.eval()
            while self._waiting or self._rows:
                self._step()
                if failed := next((h.error for h in handles if h.error is not None), None):
                    raise failed
        finally:
            self._waiting.clear()
            self._rows, self._batch = [], BatchCache()
            self.model.train(was_training)
        return [_completion(handle) for handle in handles]

    def _new_handle(self, prompt_ids: Sequence[int], slot: int, params: GenerationParams,
                    on_done: Callable[[], None] | None) -> GenerationHandle:
        if not prompt_ids or not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in prompt_ids):
            raise RequestError("prompt", f"must be a non-empty list of token ids in [0, {self.vocab_size})")
        check_length(list(prompt_ids), max_length=self.context_length, param="prompt")
        num_slots = 1 if self.slots is None else self.slots.num_slots
        if not BASE_SLOT <= slot < num_slots:
            raise ValueError(f"slot must be in 0..{num_slots - 1}, got {slot}")
        return GenerationHandle(list(prompt_ids), slot, params, on_done)

    @property
    def running(self) -> int:
        """Rows in the batch now (for metrics; read without a lock)."""
        return len(self._rows)

    @property
    def waiting(self) -> int:
        """Requests queued for a place in the batch."""
        return len(self._waiting)

    @property
    def alive(self) -> bool:
        """The engine thread runs and takes requests."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    # -- the loop (engine thread) -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # the requests still in it fail below, and submit refuses new ones
            log.exception("the serving engine's loop failed")
        finally:
            with self._wake:
                self._stopping = True
                waiting, self._waiting = list(self._waiting), deque()
            running, self._rows, self._batch = [row.handle for row in self._rows], [], BatchCache()
            for handle in running:  # rows never had their on_done: _leave runs it
                if handle.closed:
                    self._done(handle)
                else:
                    self._fail(handle, "the engine stopped")
            for handle in self._joining + waiting:
                if not handle.closed:
                    self._fail(handle, "the engine stopped")

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._waiting or self._rows):
                    self._wake.wait()
                if self._stopping:
                    return
            self._step()

    def _step(self) -> None:
        """Admit waiting requests (up to max_batch rows), prefill them, drop finished rows, decode one token.
        Gradients off: inference mode, but no_grad on a training model (slots None), where a tensor
        a layer caches meanwhile must not become an inference tensor that autograd later refuses to save."""
        with self._wake:
            self._joining = []
            while self._waiting and len(self._rows) + len(self._joining) < self.max_batch:
                self._joining.append(self._waiting.popleft())
        with torch.inference_mode() if self.slots is not None else torch.no_grad():
            for group in prefill_groups([len(handle.prompt_ids) for handle in self._joining]):
                self._join([self._joining[i] for i in group])
            self._joining = []
            self._leave()
            if self._rows:
                self._decode_step()

    def _join(self, handles: list[GenerationHandle]) -> None:
        """Prefill these requests in one forward (left-padded to the longest prompt, each row with its own
        positions and slot), sample each one's first token, add the rows that go on to the batch."""
        rows = []
        for handle in handles:
            if handle.cancelled:
                self._finish_cancelled(handle, completion_tokens=0)
            else:
                rows.append(self._new_row(handle))
        if not rows:
            return
        try:
            prompts = [row.handle.prompt_ids for row in rows]
            ids, mask, positions = left_padded(prompts, self.device)  # (k, L) each
            cache = new_cache(self.model.config)
            logits = self._forward(ids, mask, positions, cache, [row.handle.slot for row in rows])  # (k, vocab)
            for row, choice in zip(rows, choose_tokens(logits, [row.sampling for row in rows]), strict=True):
                self._accept(row, choice)
            going_on = [i for i, row in enumerate(rows) if not row.finished]
            self._batch.add_rows(cache, [len(prompt) for prompt in prompts], keep=going_on)
            self._rows.extend(rows[i] for i in going_on)
        except Exception as error:  # the requests of this prefill fail with the reason, the engine goes on
            log.exception("prefill failed")
            for row in rows:
                if not row.finished:
                    row.finished = True
                    self._fail(row.handle, f"prefill failed: {error}", error)

    def _new_row(self, handle: GenerationHandle) -> _Row:
        params = handle.params
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        generator = None if params.temperature == 0.0 else new_generator(self.device, seed)
        sampling = RowSampling(params.temperature, params.top_p, generator, params.logprobs, params.top_logprobs)
        return _Row(handle, IncrementalText(self.tokenizer, params.stop), sampling)

    def _decode_step(self) -> None:
        try:
            ids = torch.tensor([[row.generated[-1]] for row in self._rows], device=self.device)  # (B, 1)
            positions = self._batch.next_positions()  # (B, 1)
            mask = self._batch.extend_mask()  # (B, T + 1)
            logits = self._forward(ids, mask, positions, self._batch.cache, [row.handle.slot for row in self._rows])
            choices = choose_tokens(logits, [row.sampling for row in self._rows])
            for row, choice in zip(self._rows, choices, strict=True):
                self._accept(row, choice)
        except Exception as error:  # every row of the failed step fails with the reason
            log.exception("decode step failed")
            for row in self._rows:
                if not row.finished:
                    row.finished = True
                    self._fail(row.handle, f"decode step failed: {error}", error)
        self._leave()

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                 slots: list[int]) -> torch.Tensor:
        """Last-position logits (batch, vocab) in fp32; the cache grows by the ids' length."""
        with self._slot_rows(slots):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{self._cache_argument: cache})
        return out.logits[:, -1].float()

    @contextmanager
    def _slot_rows(self, slots: list[int]) -> Iterator[None]:
        """Each row's adapter slot set for one forward, under slots.lock; nothing to set without slots."""
        if self.slots is None:
            yield
            return
        slot_ids = None if all(s == BASE_SLOT for s in slots) else torch.tensor(slots, device=self.device)
        with self.slots.lock, self.slots.context.rows(slot_ids):
            yield

    def _leave(self) -> None:
        """Drop finished and cancelled rows from the batch."""
        for row in self._rows:
            if not row.finished and row.handle.cancelled:
                row.finished = True
                self._finish_cancelled(row.handle, completion_tokens=len(row.generated))
        keep = [i for i, row in enumerate(self._rows) if not row.finished]
        if len(keep) < len(self._rows):
            left = [row for row in self._rows if row.finished]
            self._rows = [self._rows[i] for i in keep]
            self._batch.keep(keep)
            for row in left:
                self._done(row.handle)

    # -- one token -----------------------------------------------------------------------------
    def _accept(self, row: _Row, choice: Choice) -> None:
        params = row.handle.params
        token = choice.token
        row.generated.append(token)
        if token in self.eos_ids and not params.ignore_eos:
            self._finish(row, "stop", row.text.flush())
            return
        row.pending.append(self._token_logprob(choice, params))
        text, stopped = row.text.add(token)
        if stopped:
            self._finish(row, "stop", text)
        elif len(row.generated) >= params.max_tokens or self._context_full(row):
            self._finish(row, "length", text + row.text.flush())
        elif text:
            row.handle.emit(TextDelta(text, tuple(row.pending)))
            row.pending = []

    def _context_full(self, row: _Row) -> bool:
        return len(row.handle.prompt_ids) + len(row.generated) >= self.context_length

    def _token_logprob(self, choice: Choice, params: GenerationParams) -> TokenLogprob:
        text, raw = self._token_texts(choice.token)
        if not (params.logprobs or params.top_logprobs):
            return TokenLogprob(choice.token, text, raw)
        top = []
        for token_id, value in choice.top:
            top_text, top_raw = self._token_texts(token_id)
            top.append(TopLogprob(token_id, top_text, value, top_raw))
        return TokenLogprob(choice.token, text, raw, choice.logprob, tuple(top))

    def _finish(self, row: _Row, reason: str, text: str) -> None:
        row.finished = True
        if text or row.pending:
            row.handle.emit(TextDelta(text, tuple(row.pending)))
            row.pending = []
        row.handle.emit(Finished(reason, len(row.handle.prompt_ids), len(row.generated)))
        if row not in self._rows:  # finished at its first token: never joined the batch
            self._done(row.handle)

    def _finish_cancelled(self, handle: GenerationHandle, *, completion_tokens: int) -> None:
        handle.emit(Finished("cancelled", len(handle.prompt_ids), completion_tokens))
        if handle not in [row.handle for row in self._rows]:
            self._done(handle)

    def _fail(self, handle: GenerationHandle, message: str, error: Exception | None = None) -> None:
        handle.error = error
        handle.emit(Failed(message))
        if handle not in [row.handle for row in self._rows]:
            self._done(handle)

    def _done(self, handle: GenerationHandle) -> None:
        if handle.on_done is not None:
            try:
                handle.on_done()
            except Exception:  # a caller's callback must not stop the engine
                log.exception("on_done callback failed")


def _completion(handle: GenerationHandle) -> Completion:
    """A finished handle's events (all queued by now) read into its Completion."""
    text, finish = [], None
    for event in handle.events(timeout=0):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, Finished):
            finish = event.finish_reason
    return Completion(tuple(handle.generated), finish, "".join(text))
