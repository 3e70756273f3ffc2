// Server-sent events read with fetch() (EventSource cannot send an Authorization header).
//
// `GET ...?stream=true` answers text/event-stream: events of `id:` + `data: <JSON item>` (the
// list endpoint's item shape), `: ping` comments as heartbeats and `data: [DONE]` once the job is
// over. A dropped connection is resumed with the `Last-Event-ID` header. A server whose endpoint
// answers JSON instead (no streaming there) is followed by polling the list endpoint.

import {ApiError, request} from "./api.js";

const HEARTBEAT_TIMEOUT_MS = 45_000;

/** A push parser of the SSE wire format (WHATWG HTML, "Parsing an event stream"). */
export class SseParser {
  constructor(onEvent, onComment = () => {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.buffer = "";
    this.skipLf = false;
    this.data = [];
    this.type = "";
    this.lastEventId = "";
    this.retry = null;
  }

  feed(text) {
    if (!text) return;
    // a CR that ended the previous chunk may be the first half of a CRLF split across chunks
    if (this.skipLf && text.startsWith("\n")) text = text.slice(1);
    this.skipLf = false;
    this.buffer += text;
    const ends = /\r\n|\r|\n/g;
    let start = 0, found;
    while ((found = ends.exec(this.buffer)) !== null) {
      this.line(this.buffer.slice(start, found.index));
      start = ends.lastIndex;
      if (found[0] === "\r" && start === this.buffer.length) this.skipLf = true;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return this.onComment(line.slice(1).trim());
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  dispatch() {
    if (this.data.length) {
      this.onEvent({id: this.lastEventId, type: this.type || "message", data: this.data.join("\n")});
    }
    this.data = [];
    this.type = "";
  }
}

/**
 * Follows one of a job's streams until `[DONE]`, `stop()`, or an error that retrying cannot fix.
 *   path       "/v1/fine_tuning/jobs/<id>/metrics"
 *   onItems    called with a list of parsed items, oldest first
 *   onState    "connecting" | "live" | "reconnecting" | "polling" | "done" | "error: ..."
 *   poll       async () => ({items, done}) reading the JSON list endpoint, used where the server
 *              does not stream; `done` once the job was terminal before that read
 */
export function follow({path, onItems, onState = () => {}, poll, pollMs = 1500}) {
  const state = {stopped: false, controller: null, lastEventId: "", retryMs: 1000, failures: 0, timer: null};

  const setState = (value) => { if (!state.stopped) onState(value); };
  const sleep = (ms) => new Promise((resolve) => { state.timer = setTimeout(resolve, ms); });

  async function readStream(response) {
    let finished = false, watchdog = null;
    const controller = state.controller;
    const alive = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(), HEARTBEAT_TIMEOUT_MS);
    };
    const parser = new SseParser((event) => {
      alive();
      state.lastEventId = event.id || state.lastEventId;
      if (event.data === "[DONE]") { finished = true; return; }
      if (event.type !== "message" && event.type !== "") return;
      try {
        onItems([JSON.parse(event.data)]);
      } catch (error) {
        console.warn("unreadable event", event, error);
      }
    }, alive);
    alive();
    setState("live");
    state.failures = 0;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      while (!finished) {
        const {done, value} = await reader.read();
        if (done) break;
        parser.feed(value);
        if (parser.retry !== null) state.retryMs = parser.retry;
      }
    } finally {
      clearTimeout(watchdog);
      if (finished) reader.cancel().catch(() => {});
    }
    return finished;
  }

  async function pollUntilDone() {
    setState("polling");
    while (!state.stopped) {
      try {
        const {items, done} = await poll();
        if (state.stopped) return;
        if (items.length) onItems(items);
        if (done) return setState("done");
        setState("polling");
      } catch (error) {
        if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
          return setState(`error: ${error.message}`);
        }
        setState("reconnecting");
      }
      await sleep(pollMs);
    }
  }

  async function run() {
    while (!state.stopped) {
      state.controller = new AbortController();
      const extraHeaders = state.lastEventId ? {"Last-Event-ID": state.lastEventId} : {};
      try {
        setState(state.failures ? "reconnecting" : "connecting");
        const response = await request(path, {query: {stream: "true"}, accept: "text/event-stream",
                                              signal: state.controller.signal, extraHeaders});
        const type = response.headers.get("Content-Type") || "";
        if (!type.startsWith("text/event-stream")) {
          response.body?.cancel().catch(() => {});
          return pollUntilDone(); // this server answers the list instead: poll it
        }
        if (await readStream(response)) return setState("done");
      } catch (error) {
        if (state.stopped) return;
        if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
          return setState(`error: ${error.message}`);
        }
      }
      state.failures += 1;
      setState("reconnecting");
      await sleep(Math.min(state.retryMs * 2 ** Math.min(state.failures - 1, 4), 15_000));
    }
  }

  run();
  return {
    stop() {
      state.stopped = true;
      clearTimeout(state.timer);
      state.controller?.abort();
    },
  };
}
