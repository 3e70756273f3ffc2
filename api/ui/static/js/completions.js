// One chat completion streamed from `POST /v1/chat/completions`, read with fetch (the key goes in
// the Authorization header, which EventSource cannot send).
//
// OpenAI's wire: `data: {"choices": [{"index": 0, "delta": {"content": "..."}, "finish_reason": null}]}`
// chunks, a last chunk with `usage` and no choices (stream_options.include_usage), then
// `data: [DONE]`. An error after the 200 (the inference server failed mid-answer) comes as
// `data: {"error": {...}}` and is thrown like an HTTP error, so a caller shows both the same way.

import {ApiError, request} from "./api.js";
import {SseParser} from "./stream.js";

export const COMPLETIONS_PATH = "/v1/chat/completions";

/** A stream that ended (connection closed) before `[DONE]` or an error event. */
export class StreamCutError extends Error {
  constructor() {
    super("The answer stopped before it was complete: the connection to the API was closed.");
    this.code = "stream_cut";
  }
}

/**
 * Streams choice 0 of a chat completion.
 *   body     {model, messages, temperature?, max_tokens?}: the request (stream options are added here)
 *   onDelta  called with (piece, textSoFar) for every piece of text, as it arrives
 * Resolves to {text, finishReason, usage}; rejects with an ApiError carrying the API's message
 * (HTTP or mid-stream), a StreamCutError, or the AbortError of `signal`.
 */
export async function streamChat(body, {signal, onDelta = () => {}} = {}) {
  const response = await request(COMPLETIONS_PATH, {
    method: "POST", json: {...body, stream: true, stream_options: {include_usage: true}}, signal,
    accept: "text/event-stream"});
  let text = "", finishReason = null, usage = null, error = null, done = false;
  const parser = new SseParser((event) => {
    if (event.data === "[DONE]") { done = true; return; }
    let chunk;
    try {
      chunk = JSON.parse(event.data);
    } catch {
      console.warn("unreadable completion chunk", event.data);
      return;
    }
    if (chunk.error) { error = chunk.error; return; }
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      if (choice.index !== 0) continue; // the playground asks for one choice (n = 1)
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        text += piece;
        onDelta(piece, text);
      }
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    while (!done && !error) {
      const {done: ended, value} = await reader.read();
      if (ended) break;
      parser.feed(value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  if (error) throw new ApiError(response.status, error);
  if (!done) throw new StreamCutError();
  return {text, finishReason, usage};
}
