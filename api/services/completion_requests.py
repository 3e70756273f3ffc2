"""An OpenAI completion request, checked, as the inference servers' `GenerationRequest` parts.

The schemas (api/schemas/completions.py) check types and OpenAI's own bounds; here are the checks
that need the operator's settings or say *why* something is refused. Refused, because each would
change the result and no server implements it: tools and functions, a response format other than
text, non-zero frequency/presence penalties, a logit bias, non-text content parts or modalities,
`echo`, `best_of` > n, `suffix`, token-id prompts. Accepted and ignored, because they change
nothing here: `user`, `metadata`, `store: false`, `service_tier`, `parallel_tool_calls`, a
message's `name`, tool_choice/function_call "none". Each refusal is a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.errors import bad_request
from api.schemas.completions import ChatCompletionRequest, CompletionRequest, SamplingFields
from dora_contract.serving import CHAT_ROLES, MAX_STOP_SEQUENCES, ChatMessage, SamplingParams
from store.settings import Settings


@dataclass(frozen=True)
class Checked:
    """What the API forwards (less the model, resolved elsewhere) and how it answers."""

    n: int
    sampling: SamplingParams
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    stream: bool = False
    include_usage: bool = False


def _unsupported(param: str, what: str) -> Exception:
    return bad_request(f"'{param}' is not supported: {what}", param=param, code="unsupported_parameter")


def _max_tokens(value: int | None, param: str, settings: Settings) -> int | None:
    """The request's bound, checked against the operator's. None when it does not say: the server then
    generates up to the operator's bound or what the model's context leaves, the smaller (sent as
    `max_tokens_default`: the API does not know the context, and a max_tokens that does not fit it is
    refused by the server, as it must be when a client sets it)."""
    if value is None:
        return None
    if value > settings.max_completion_tokens:
        raise bad_request(f"Invalid value for '{param}': {value} is more than this server allows "
                          f"({settings.max_completion_tokens}, DORA_MAX_COMPLETION_TOKENS)", param=param,
                          code="invalid_value")
    return value


def _n(value: int | None, settings: Settings) -> int:
    n = 1 if value is None else value
    bound = settings.max_completion_choices
    if n > bound:
        raise bad_request(f"Invalid value for 'n': {n} is more than this server allows ({bound}, "
                          "DORA_MAX_COMPLETION_CHOICES)", param="n", code="invalid_value")
    per_tenant = settings.max_generations_per_tenant
    if per_tenant and n > per_tenant:  # it would never fit in the tenant's running generations
        raise bad_request(f"Invalid value for 'n': {n} choices are more than a tenant may have generating at "
                          f"once ({per_tenant}, DORA_MAX_GENERATIONS_PER_TENANT)", param="n", code="invalid_value")
    return n


def _stop(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(f"Invalid value for 'stop': at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}",
                          param="stop", code="invalid_value")
    for i, text in enumerate(stops):
        if not text:
            raise bad_request("Invalid value for 'stop': a stop sequence cannot be empty",
                              param="stop" if isinstance(stop, str) else f"stop.{i}", code="invalid_value")
    return stops


def _common(body: SamplingFields) -> None:
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise _unsupported(name, "only 0 (no penalty)")
    if body.logit_bias:
        raise _unsupported("logit_bias", "only an empty bias")
    if body.stream_options is not None and not body.stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", param="stream_options",
                          code="invalid_value")


def _sampling(body: SamplingFields, *, max_tokens: int | None, logprobs: bool, top_logprobs: int,
              settings: Settings) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, max_tokens_default=settings.max_completion_tokens,
                          temperature=1.0 if body.temperature is None else body.temperature,
                          top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, stop=_stop(body.stop),
                          logprobs=logprobs, top_logprobs=top_logprobs)


def _text(message, i: int) -> str:
    content = message.content
    if content is None:
        raise bad_request(f"Invalid value for 'messages.{i}.content': a {message.role} message needs text content",
                          param=f"messages.{i}.content", code="invalid_value")
    if isinstance(content, str):
        return content
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise _unsupported(f"messages.{i}.content.{j}.type",
                               f"only text parts ({{\"type\": \"text\", \"text\": ...}}), got '{part.type[:40]}'")
    return "".join(part.text for part in content)


def _messages(body: ChatCompletionRequest) -> list[ChatMessage]:
    messages = []
    for i, message in enumerate(body.messages):
        if message.role not in CHAT_ROLES:
            raise bad_request(f"Invalid value for 'messages.{i}.role': '{message.role[:40]}' is not one of "
                              f"{', '.join(CHAT_ROLES)} (tool and function messages are not supported)",
                              param=f"messages.{i}.role", code="invalid_value")
        messages.append(ChatMessage(role=message.role, content=_text(message, i)))
    return messages


def check_chat(body: ChatCompletionRequest, settings: Settings) -> Checked:
    _common(body)
    if body.tools:
        raise _unsupported("tools", "tool calls are not implemented")
    if body.functions:
        raise _unsupported("functions", "function calls are not implemented")
    for name in ("tool_choice", "function_call"):
        if getattr(body, name) not in (None, "none"):
            raise _unsupported(name, "only \"none\"")
    if body.response_format is not None and body.response_format.get("type") != "text":
        raise _unsupported("response_format", "only {\"type\": \"text\"}")
    if body.modalities is not None and body.modalities != ["text"]:
        raise _unsupported("modalities", "only [\"text\"]")
    if body.store:
        raise _unsupported("store", "completions are not stored (only false)")
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise bad_request("Set one of 'max_tokens' and 'max_completion_tokens' (they mean the same)",
                          param="max_tokens", code="invalid_value")
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs' set to true", param="top_logprobs", code="invalid_value")
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = _max_tokens(body.max_completion_tokens or body.max_tokens, param, settings)
    n = _n(body.n, settings)
    sampling = _sampling(body, max_tokens=max_tokens, logprobs=bool(body.logprobs),
                         top_logprobs=body.top_logprobs or 0, settings=settings)
    return Checked(n=n, sampling=sampling, messages=_messages(body), stream=bool(body.stream),
                   include_usage=bool(body.stream_options and body.stream_options.include_usage))


def _prompt(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if prompt and all(isinstance(p, str) for p in prompt):
        raise _unsupported("prompt", "one prompt per request (send each prompt in a request of its own)")
    raise _unsupported("prompt", "a text prompt (token ids are not accepted)")


def check_completion(body: CompletionRequest, settings: Settings) -> Checked:
    _common(body)
    if body.echo:
        raise _unsupported("echo", "only false")
    if body.suffix:
        raise _unsupported("suffix", "insertion is not implemented (only empty)")
    n = _n(body.n, settings)
    if body.best_of is not None and body.best_of != n:
        raise _unsupported("best_of", "only equal to n (every generated choice is returned)")
    max_tokens = _max_tokens(body.max_tokens, "max_tokens", settings)
    legacy = body.logprobs  # None: no logprobs; k: each token's logprob and its k most likely alternatives
    sampling = _sampling(body, max_tokens=max_tokens, logprobs=legacy is not None, top_logprobs=legacy or 0,
                         settings=settings)
    return Checked(n=n, sampling=sampling, prompt=_prompt(body.prompt), stream=bool(body.stream),
                   include_usage=bool(body.stream_options and body.stream_options.include_usage))
