// The playground: chat with a base model, a fine-tuned model or a checkpoint, the answer streamed
// token by token from /v1/chat/completions; or compare two models side by side (base against
// fine-tuned is the first thing a user wants to see). In compare mode each prompt goes to both and
// each side keeps its own conversation (its own answers are its context, as in OpenAI's compare).
//   #/playground?model=<id>[&compare=<id>][&job=<job id>]
// `job` adds that job's checkpoints to the pickers (the job page links here with it). The
// conversation lives in this page only: nothing is stored.

import {getJson} from "../api.js";
import {streamChat} from "../completions.js";
import {clear, h} from "../dom.js";

// dora_contract/serving.py MAX_TEMPERATURE, OpenAI's bound (tests/api/test_ui.py checks they agree);
// max_tokens has no bound here: the operator sets it (DORA_MAX_COMPLETION_TOKENS) and the API's 400 names it
const MAX_TEMPERATURE = 2;
const DEFAULT_TEMPERATURE = 0; // greedy: the same answer every time, which is what a comparison needs
const DEFAULT_MAX_TOKENS = 256;
const OTHER = "__other__"; // the picker's "another id" choice, which shows the free text field
const SIDES = ["a", "b"];

/** A link to the playground: `model` (and `compare`) chosen, `job`'s checkpoints in the pickers. */
export function playgroundHref({model, compare, job} = {}) {
  const query = new URLSearchParams();
  if (model) query.set("model", model);
  if (compare) query.set("compare", compare);
  if (job) query.set("job", job);
  const text = query.toString();
  return text ? `#/playground?${text}` : "#/playground";
}

/** The base model a fine-tuned id was trained from: `ft:<base>:<org>:<suffix>:<short id>[:ckpt-step-N]`. */
export function baseOf(modelId) {
  return modelId && modelId.startsWith("ft:") ? modelId.split(":")[1] || null : null;
}

/** A <select> of the known models (grouped) plus "Another id…", which shows a free text field. */
function modelPicker(side, onChange) {
  const label = side === "a" ? "Model" : "Compare with";
  const select = h("select", {id: `model-${side}`, class: "model-select"});
  const other = h("input", {type: "text", id: `model-${side}-id`, class: "mono model-id", hidden: true,
                            placeholder: "ft:base:org:suffix:id:ckpt-step-N", spellcheck: "false",
                            autocomplete: "off", "aria-label": `${label}: model or checkpoint id`});
  let groups = [];
  const known = (id) => groups.some((group) => group.ids.includes(id));

  function fill() {
    const current = value();
    clear(select,
      groups.filter((group) => group.ids.length).map((group) => h("optgroup", {label: group.label},
        group.ids.map((id) => h("option", {value: id}, id)))),
      h("option", {value: OTHER}, "Another id (a checkpoint)…"));
    if (current) set(current);
  }

  function value() {
    return select.value === OTHER ? other.value.trim() : select.value;
  }

  function set(id) {
    if (id && known(id)) {
      select.value = id;
      other.hidden = true;
    } else {
      select.value = OTHER;
      other.hidden = false;
      other.value = id || "";
    }
  }

  select.addEventListener("change", () => {
    other.hidden = select.value !== OTHER;
    if (!other.hidden) other.focus();
    onChange();
  });
  other.addEventListener("change", onChange);
  const element = h("div", {class: "model-picker"},
    h("label", {for: `model-${side}`}, label), select, other);
  return {element, value, set, setGroups(next) { groups = next; fill(); }, known};
}

function bubble(role, who, text = null) {
  const body = h("div", {class: "message-text"}, text);
  const meta = h("div", {class: "message-meta"}, h("span", {class: "message-who"}, who));
  const node = h("li", {class: "message", dataset: {role}}, meta, body);
  return {node, body, meta};
}

function elapsed(since) {
  return `${((performance.now() - since) / 1000).toFixed(1)} s`;
}

export function render(main, {query}) {
  let stopped = false, busy = false, models = [];
  const checkpointGroups = new Map(); // job id -> checkpoint ids, newest first
  const jobParam = query.get("job") || null;

  const message = h("p", {class: "error", role: "alert", id: "playground-message"});
  const compareToggle = h("input", {type: "checkbox", id: "compare"});
  const clearButton = h("button", {type: "button", class: "secondary", id: "clear-chat"}, "Clear chat");
  const jobSelect = h("select", {id: "checkpoints-job"}, h("option", {value: ""}, "Add a job's checkpoints…"));
  const system = h("textarea", {id: "system-prompt", rows: 2, placeholder: "Optional: how the model should answer"});
  const temperature = h("input", {type: "number", id: "temperature", min: 0, max: MAX_TEMPERATURE, step: 0.1,
                                  value: String(DEFAULT_TEMPERATURE), inputmode: "decimal"});
  const maxTokens = h("input", {type: "number", id: "max-tokens", min: 1, step: 1, value: String(DEFAULT_MAX_TOKENS),
                                inputmode: "numeric"});
  const prompt = h("textarea", {id: "prompt", rows: 3, placeholder: "Send a message (Enter; Shift+Enter for a new line)",
                                "aria-label": "Message"});
  const sendButton = h("button", {type: "submit", id: "send"}, "Send");
  const stopButton = h("button", {type: "button", class: "danger", id: "stop", hidden: true}, "Stop");

  const panes = Object.fromEntries(SIDES.map((side) => {
    const picker = modelPicker(side, syncUrl);
    const transcript = h("ol", {class: "transcript", id: `transcript-${side}`, "aria-live": "polite"});
    const element = h("section", {class: "card pane", dataset: {pane: side}, hidden: side === "b"},
      picker.element, transcript);
    return [side, {side, picker, transcript, element, history: [], controller: null}];
  }));
  const paneBox = h("div", {class: "panes"}, panes.a.element, panes.b.element);
  const active = () => (compareToggle.checked ? [panes.a, panes.b] : [panes.a]);

  clear(main,
    h("div", {class: "page-head"},
      h("h1", {}, "Playground"),
      h("div", {class: "actions"},
        h("label", {class: "radio", for: "compare"}, compareToggle, "Compare two models"), clearButton)),
    message,
    h("section", {class: "card playground-settings"},
      h("div", {class: "setting wide"}, h("label", {for: "system-prompt"}, "System prompt"), system),
      h("div", {class: "setting"}, h("label", {for: "temperature"}, "Temperature"), temperature,
        h("span", {class: "hint"}, `0 (greedy) to ${MAX_TEMPERATURE}`)),
      h("div", {class: "setting"}, h("label", {for: "max-tokens"}, "Max tokens"), maxTokens,
        h("span", {class: "hint"}, "most tokens in one answer")),
      h("div", {class: "setting"}, h("label", {for: "checkpoints-job"}, "Checkpoints"), jobSelect,
        h("span", {class: "hint"}, "adds a job's checkpoints to the pickers"))),
    paneBox,
    h("form", {class: "card composer", id: "composer", onsubmit: (event) => { event.preventDefault(); send(); }},
      prompt, h("div", {class: "actions"}, sendButton, stopButton)));

  // -- models -------------------------------------------------------------------------------
  function groups() {
    const base = models.filter((m) => m.owned_by === "system").map((m) => m.id);
    const tuned = models.filter((m) => m.owned_by !== "system").map((m) => m.id);
    return [{label: "Base models", ids: base}, {label: "Fine-tuned models", ids: tuned},
            ...[...checkpointGroups].map(([job, ids]) => ({label: `Checkpoints of ${job}`, ids}))];
  }

  function refreshPickers() {
    for (const pane of Object.values(panes)) pane.picker.setGroups(groups());
  }

  async function addCheckpoints(jobId) {
    const page = await getJson(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/checkpoints`, {query: {limit: 100}});
    checkpointGroups.set(jobId, page.data.map((checkpoint) => checkpoint.fine_tuned_model_checkpoint));
    if (!stopped) refreshPickers();
    return page.data.length;
  }

  jobSelect.addEventListener("change", async () => {
    const jobId = jobSelect.value;
    if (!jobId) return;
    message.textContent = "";
    try {
      const count = await addCheckpoints(jobId);
      if (!count) message.textContent = `Job ${jobId} has no checkpoints yet.`;
    } catch (error) {
      message.textContent = `Could not load the checkpoints of ${jobId}: ${error.message}`;
    }
    jobSelect.value = "";
  });

  // the first choice without a deep link: a fine-tuned model against its base, else the first base
  function defaults() {
    const [base, tuned] = groups();
    const a = query.get("model") || base.ids[0] || tuned.ids[0] || "";
    const b = query.get("compare") || baseOf(a) || tuned.ids.find((id) => baseOf(id) === a) || tuned.ids[0]
      || base.ids.find((id) => id !== a) || a;
    return {a, b};
  }

  function syncUrl() { // the address names what is chosen (replaceState: no hashchange, no re-render)
    const href = playgroundHref({model: panes.a.picker.value(),
                                 compare: compareToggle.checked ? panes.b.picker.value() : null, job: jobParam});
    if (window.location.hash !== href) history.replaceState(null, "", href);
  }

  async function load() {
    try {
      const [list] = await Promise.all([getJson("/v1/models"),
                                        jobParam ? addCheckpoints(jobParam).catch((error) => {
                                          message.textContent = `Could not load the checkpoints of ${jobParam}: ${error.message}`;
                                        }) : null]);
      if (stopped) return;
      models = list.data;
      refreshPickers();
      const chosen = defaults();
      panes.a.picker.set(chosen.a);
      panes.b.picker.set(chosen.b);
      if (query.get("compare")) setCompare(true);
      main.querySelector(".playground-settings").dataset.ready = "true";
      paneBox.dataset.ready = "true";
    } catch (error) {
      if (!stopped) message.textContent = `Could not load the models: ${error.message}`;
    }
    try {
      const jobs = await getJson("/v1/fine_tuning/jobs", {query: {limit: 100}});
      if (stopped) return;
      jobSelect.append(...jobs.data.filter((job) => job.status !== "queued").map((job) =>
        h("option", {value: job.id}, `${job.id}${job.suffix ? ` (${job.suffix})` : ""} · ${job.status}`)));
    } catch (error) {
      console.warn("no job list", error);
    }
  }

  // -- the conversation ---------------------------------------------------------------------
  function setCompare(on) {
    compareToggle.checked = on;
    panes.b.element.hidden = !on;
    paneBox.classList.toggle("compare", on);
    if (on) { // the other side carries on from the conversation so far
      const b = panes.b;
      b.history = panes.a.history.map((turn) => ({...turn}));
      clear(b.transcript, [...panes.a.transcript.children].map((node) => node.cloneNode(true)));
    }
    syncUrl();
  }
  compareToggle.addEventListener("change", () => setCompare(compareToggle.checked));

  function setBusy(value) {
    busy = value;
    sendButton.disabled = value;
    compareToggle.disabled = value;
    clearButton.disabled = value;
    stopButton.hidden = !value;
  }

  function scrollDown(pane) {
    const box = pane.transcript;
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 80) box.scrollTop = box.scrollHeight;
  }

  function sampling() {
    const body = {};
    const t = temperature.value.trim(), m = maxTokens.value.trim();
    if (t !== "" && Number.isFinite(Number(t))) body.temperature = Number(t);
    if (m !== "" && Number.isFinite(Number(m))) body.max_tokens = Number(m);
    return body; // an out-of-range value is sent as is: the API's 400 names the field
  }

  async function ask(pane, text) {
    const model = pane.picker.value();
    const turn = {role: "user", content: text};
    const question = bubble("user", "You", text);
    const answer = bubble("assistant", model);
    answer.node.dataset.state = "streaming";
    answer.node.dataset.model = model;
    const note = h("span", {class: "message-note muted"}, "…");
    answer.meta.append(note);
    const answerText = document.createTextNode("");
    answer.body.append(answerText);
    pane.transcript.append(question.node, answer.node);
    pane.transcript.scrollTop = pane.transcript.scrollHeight;

    const instructions = system.value.trim();
    const messages = [...(instructions ? [{role: "system", content: instructions}] : []), ...pane.history, turn];
    pane.controller = new AbortController();
    const started = performance.now();
    try {
      const result = await streamChat({model, messages, ...sampling()}, {
        signal: pane.controller.signal,
        onDelta: (piece) => {
          answerText.appendData(piece);
          scrollDown(pane);
        }});
      pane.history.push(turn, {role: "assistant", content: result.text});
      answer.node.dataset.state = "done";
      answer.node.dataset.finishReason = result.finishReason || "";
      const tokens = result.usage ? `${result.usage.completion_tokens} tokens · ` : "";
      note.textContent = `${tokens}${elapsed(started)}${result.finishReason === "length" ? " · max tokens reached" : ""}`;
    } catch (error) {
      if (error.name === "AbortError") {
        answer.node.dataset.state = "stopped";
        note.textContent = `stopped after ${elapsed(started)}`;
        if (answerText.data) pane.history.push(turn, {role: "assistant", content: answerText.data});
        else question.node.classList.add("unsent");
      } else { // not part of the conversation: the model did not answer it
        answer.node.dataset.state = "error";
        question.node.classList.add("unsent");
        question.node.title = "Not sent again: this model did not answer it";
        note.textContent = error.code ? `error: ${error.code}` : "error";
        answer.body.append(h("p", {class: "error message-error", role: "alert"}, error.message,
          error.param ? h("span", {class: "muted"}, " (", h("code", {}, error.param), ")") : null));
      }
    } finally {
      pane.controller = null;
      scrollDown(pane);
    }
  }

  async function send() {
    const text = prompt.value.trim();
    if (!text || busy) return;
    const sides = active();
    const missing = sides.find((pane) => !pane.picker.value());
    if (missing) {
      message.textContent = missing.side === "a" ? "Pick a model first." : "Pick a model to compare with.";
      return;
    }
    message.textContent = "";
    prompt.value = "";
    setBusy(true);
    await Promise.all(sides.map((pane) => ask(pane, text)));
    if (stopped) return;
    setBusy(false);
    prompt.focus();
  }

  function stopAll() {
    for (const pane of Object.values(panes)) pane.controller?.abort();
  }

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  stopButton.addEventListener("click", stopAll);
  clearButton.addEventListener("click", () => {
    for (const pane of Object.values(panes)) {
      pane.history = [];
      clear(pane.transcript);
    }
    message.textContent = "";
    prompt.focus();
  });

  load();
  return () => {
    stopped = true;
    stopAll();
  };
}
