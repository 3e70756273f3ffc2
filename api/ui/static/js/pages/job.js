// One job: status and progress, live metric charts (from the metrics stream), the newest evaluation's
// samples, the events log (from the events stream), checkpoints, the eval runs of its model and
// checkpoints (linking their comparison pages), artifacts with downloads, the resolved settings, the error.

import {download, getJson} from "../api.js";
import {LineChart} from "../chart.js";
import {
  TERMINAL, clear, formatBytes, formatDuration, formatNumber, formatTime, h, jobDuration, jobMethod, progressBar,
  statusBadge,
} from "../dom.js";
import {scoreSeries} from "../eval_scores.js";
import {evalRunsTable, fineTunedOf, runsOfModels} from "../evals.js";
import {follow} from "../stream.js";
import {cancelButton, pauseButton} from "./jobs.js";
import {playgroundHref} from "./playground.js";

const REFRESH_MS = 2000;
const SAMPLES_PAGE = 64; // the run contract's most sample_prompts (dora_contract MAX_SAMPLE_PROMPTS): one evaluation
const PROMPT_SHOWN = 400; // characters of a prompt's end shown (the whole one is in the cell's title)
// dora_core's per-step names (dora_core/training/run.py), charted first and always: train and eval
// loss overlaid on one step axis, and so are the two token accuracies (an accuracy's axis stays in 0..1)
const PRIMARY = [
  {key: "loss", title: "Loss", series: [{key: "loss", label: "Train", color: "#2f5fd0"},
                                        {key: "eval_loss", label: "Eval", color: "#c2410c"}]},
  {key: "lr", title: "Learning rate", series: [{key: "lr", label: "Learning rate", color: "#0f766e"}]},
  {key: "grad_norm", title: "Grad norm", series: [{key: "grad_norm", label: "Grad norm", color: "#7c3aed"}]},
  {key: "token_accuracy", title: "Token accuracy", floor: 0, ceiling: 1,
   series: [{key: "token_accuracy", label: "Train", color: "#15803d"},
            {key: "eval_token_accuracy", label: "Eval", color: "#b45309"}]},
];
// a DPO job's per-step metrics (dora_contract DPO_METRICS, TRL's names; eval_ before them at an
// evaluation), charted beside the loss once a point has them: chosen and rejected rewards on one
// chart, the margin, and the preference accuracy (in 0..1)
const PREFERENCE = [
  {key: "rewards", title: "Rewards (beta x log-ratio to the reference)",
   series: [{key: "rewards/chosen", label: "Chosen", color: "#15803d"},
            {key: "rewards/rejected", label: "Rejected", color: "#b91c1c"},
            {key: "eval_rewards/chosen", label: "Eval chosen", color: "#65a30d"},
            {key: "eval_rewards/rejected", label: "Eval rejected", color: "#f97316"}]},
  {key: "rewards/margins", title: "Reward margin",
   series: [{key: "rewards/margins", label: "Train", color: "#2f5fd0"},
            {key: "eval_rewards/margins", label: "Eval", color: "#c2410c"}]},
  {key: "rewards/accuracies", title: "Preference accuracy", floor: 0, ceiling: 1,
   series: [{key: "rewards/accuracies", label: "Train", color: "#15803d"},
            {key: "eval_rewards/accuracies", label: "Eval", color: "#b45309"}]},
];
// a reinforcement job's (dora_contract RFT_METRICS, TRL's names): the mean reward of each step's
// sampled answers and of the greedy validation answers (eval_reward, from step 0) on one chart, the
// groups' reward spread and the KL to the reference (the model as the run started: adapter off, or
// a continued run's starting adapter)
const REINFORCEMENT = [
  {key: "reward", title: "Mean reward",
   series: [{key: "reward", label: "Train (sampled)", color: "#15803d"},
            {key: "eval_reward", label: "Validation (greedy)", color: "#b45309"}]},
  {key: "reward_std", title: "Reward std within a prompt's group",
   series: [{key: "reward_std", label: "Train", color: "#2f5fd0"}]},
  {key: "kl", title: "KL to the reference (per token)", floor: 0,
   series: [{key: "kl", label: "Train", color: "#7c3aed"}]},
];
const KNOWN = [...PRIMARY, ...PREFERENCE, ...REINFORCEMENT];
const CHART_OF = new Map(KNOWN.flatMap((chart) => chart.series.map((series) => [series.key, chart.key])));
const TITLES = {tokens_per_second: "Tokens / second", trained_tokens: "Trained tokens per step",
                micro_batch_size: "Micro-batch size", gpu_memory_allocated_bytes: "GPU memory allocated (bytes)",
                gpu_memory_peak_bytes: "GPU memory peak (bytes)"};

function section(title, ...children) {
  return h("section", {class: "card"}, h("h2", {}, title), ...children);
}

function definitionList(pairs) {
  return h("dl", {class: "facts"}, pairs.filter(Boolean).map(([term, value]) =>
    h("div", {class: "fact"}, h("dt", {}, term), h("dd", {}, value))));
}

function settingValue(value) {
  if (value === null || value === undefined) return h("span", {class: "muted"}, "null");
  if (typeof value === "object") return h("code", {}, JSON.stringify(value));
  if (typeof value === "number") return formatNumber(value);
  return String(value);
}

function artifactPath(jobId, name, path) {
  const encoded = path.split("/").map(encodeURIComponent).join("/");
  return `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/artifacts/${encodeURIComponent(name)}/files/${encoded}`;
}

function downloadButton(label, path, filename, attrs = {}) {
  const note = h("span", {class: "muted small download-note"});
  const button = h("button", {type: "button", class: "secondary small", ...attrs, onclick: async () => {
    button.disabled = true;
    note.textContent = "starting…";
    try {
      const bytes = await download(path, filename, (got, total) => {
        note.textContent = total ? `${Math.floor((100 * got) / total)}% of ${formatBytes(total)}` : formatBytes(got);
      });
      note.textContent = `saved ${formatBytes(bytes)}`;
    } catch (error) {
      note.textContent = `failed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  }}, label);
  return h("span", {class: "download"}, button, note);
}

export function render(main, {id}) {
  const jobPath = `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`;
  let job = null, stopped = false, timer = null, lastDrawnStatus = null;
  const streams = [];

  const head = h("div", {class: "page-head"});
  const summary = h("div", {class: "card", id: "job-summary"});
  const progressBox = h("div", {id: "job-progress"});
  const errorBox = h("div", {id: "job-error"});
  const liveState = {metrics: h("span", {class: "live", dataset: {stream: "metrics"}}),
                     events: h("span", {class: "live", dataset: {stream: "events"}})};
  const chartsPrimary = h("div", {class: "charts", id: "charts"});
  const chartsMore = h("div", {class: "charts"});
  const moreMetrics = h("details", {class: "more-metrics", hidden: true}, h("summary", {}, "More metrics"), chartsMore);
  const eventsList = h("ol", {class: "events", id: "events"});
  const checkpointsBody = h("tbody");
  const artifactsBody = h("div", {id: "artifacts"});
  const samplesBox = h("div", {id: "samples"});
  const evalsBox = h("div", {id: "job-evals"}, h("p", {class: "muted"}, "Looking for eval runs…"));
  const settingsBox = h("div", {id: "settings"});
  const message = h("p", {class: "error", role: "alert"});

  clear(main,
    h("p", {}, h("a", {href: "#/jobs"}, "← Jobs")),
    head, message, errorBox, summary,
    h("section", {class: "card"}, h("div", {class: "section-head"}, h("h2", {}, "Metrics"), liveState.metrics),
      chartsPrimary, moreMetrics),
    section("Samples", samplesBox),
    h("div", {class: "columns"},
      h("section", {class: "card"}, h("div", {class: "section-head"}, h("h2", {}, "Events"), liveState.events),
        eventsList),
      section("Checkpoints",
        h("table", {class: "table", id: "checkpoints"},
          h("thead", {}, h("tr", {}, ["Step", "Checkpoint", "Metrics", "Created", ""].map((t) => h("th", {}, t)))),
          checkpointsBody))),
    section("Evals", evalsBox),
    section("Artifacts", artifactsBody),
    section("Resolved settings", settingsBox));

  // -- metrics ------------------------------------------------------------------------------
  const points = new Map(); // step -> {step, epoch, values}
  const charts = new Map();
  let drawQueued = false;

  function chartFor(key) { // key: a chart's (PRIMARY, PREFERENCE, REINFORCEMENT) or another metric's, alone
    if (!charts.has(key)) {
      const known = KNOWN.find((chart) => chart.key === key);
      const chart = new LineChart(known || {key, title: TITLES[key] || key, color: "#475569"});
      charts.set(key, chart);
      if (known) {
        // keep PRIMARY's order, then PREFERENCE's, then REINFORCEMENT's
        const order = KNOWN.map((c) => c.key);
        const after = [...chartsPrimary.children].find((el) => order.indexOf(el.dataset.metric) > order.indexOf(key));
        chartsPrimary.insertBefore(chart.element, after || null);
      } else {
        chartsMore.append(chart.element);
        moreMetrics.hidden = false;
      }
    }
    return charts.get(key);
  }
  for (const chart of PRIMARY) chartFor(chart.key);

  // the job's `evals`: each grader's pass rate at each checkpoint (GET .../eval_scores), beside the
  // loss; read while the job runs and after, until its runs are finished (they end after the job)
  let scoreChart = null, scoreKeys = null, scoreTimer = null;
  async function loadScores() {
    clearTimeout(scoreTimer);
    if (!job || !(job.evals || []).length) return;
    let pending = 1;
    try {
      const page = await getJson(`${jobPath}/eval_scores`, {query: {limit: 10000}});
      if (stopped) return;
      const scores = scoreSeries(page.data);
      pending = scores.pending;
      const keys = scores.series.map((s) => s.key).join("\n");
      if (scores.series.length && keys !== scoreKeys) { // a new eval or grader: a chart with its series
        const chart = new LineChart({key: "eval_scores", title: "Eval pass rate", series: scores.series, floor: 0,
                                     ceiling: 1});
        if (scoreChart) scoreChart.element.replaceWith(chart.element);
        else chartsPrimary.insertBefore(chart.element, chartsPrimary.children[1] || null); // after the loss
        scoreChart = chart;
        scoreKeys = keys;
      }
      if (scoreChart) scoreChart.setData(scores.data);
    } catch (error) {
      // the chart keeps what it had; the next read tries again
    }
    if (!stopped && (pending || !TERMINAL.has(job.status))) scoreTimer = setTimeout(loadScores, REFRESH_MS);
  }

  // the newest step any metric has: the progress bar follows it (the job's own step comes with
  // the page's next read of the job, every REFRESH_MS; the metrics stream is live)
  let newestStep = null;

  function drawCharts() {
    drawQueued = false;
    if (stopped) return;
    const byChart = new Map(); // chart key -> {series key -> points}
    for (const point of points.values()) {
      for (const [key, value] of Object.entries(point.values || {})) {
        if (typeof value !== "number") continue;
        const chart = CHART_OF.get(key) || key;
        if (!byChart.has(chart)) byChart.set(chart, {});
        (byChart.get(chart)[key] ||= []).push({x: point.step, y: value});
      }
    }
    for (const [key, data] of byChart) chartFor(key).setData(data);
    const newest = points.size ? Math.max(...points.keys()) : null;
    if (newest !== newestStep) {
      newestStep = newest;
      if (job) drawProgress();
    }
    // a newer evaluation than the samples shown: its samples now, not at the next refresh
    const evaluations = [...points.values()].filter((p) => p.values && "eval_loss" in p.values).map((p) => p.step);
    const newestEvaluation = evaluations.length ? Math.max(...evaluations) : null;
    if (job && newestEvaluation !== null && newestEvaluation !== samplesWanted && newestEvaluation > samplesStep) {
      samplesWanted = newestEvaluation;
      loadSamples().catch(() => {});
    }
  }

  function addMetrics(items) {
    for (const item of items) {
      const known = points.get(item.step);
      // an evaluation stores its values on the step it ran after: merge, don't replace
      points.set(item.step, known ? {...known, ...item, values: {...known.values, ...item.values}} : item);
    }
    if (!drawQueued) {
      drawQueued = true;
      requestAnimationFrame(drawCharts);
    }
  }

  let lastStep = null;
  async function pollMetrics() {
    const done = job !== null && TERMINAL.has(job.status);
    const items = [];
    // from the step before the newest: an evaluation may have added to it since
    let after = lastStep === null ? undefined : Math.max(0, lastStep - 1);
    for (;;) {
      const page = await getJson(`${jobPath}/metrics`, {query: {after, limit: 10000}});
      items.push(...page.data);
      if (!page.has_more || page.next_after === null) break;
      after = page.next_after;
    }
    if (items.length) lastStep = items[items.length - 1].step;
    return {items, done};
  }

  // An evaluation adds its values to a step already stored (and maybe already streamed, which
  // the stream does not send again): with a validation set, re-read the steps since the last
  // such read from the list now and then, and once the job is over.
  let reconciledStep = 0, lastReconcile = 0;
  async function reconcileMetrics(force = false) {
    const hp = jobMethod(job).hyperparameters;
    if (!job.validation_file && !(hp.validation_split > 0)) return;
    if (!force && Date.now() - lastReconcile < 10_000) return;
    lastReconcile = Date.now();
    let after = Math.max(0, reconciledStep - 1), newest = reconciledStep;
    for (;;) {
      const page = await getJson(`${jobPath}/metrics`, {query: {after: after || undefined, limit: 10000}});
      addMetrics(page.data);
      if (page.data.length) newest = page.data[page.data.length - 1].step;
      if (!page.has_more || page.next_after === null) break;
      after = page.next_after;
    }
    reconciledStep = newest;
  }

  // -- events -------------------------------------------------------------------------------
  const events = new Map();
  function addEvents(items) {
    for (const item of items) events.set(item.id, item);
    const sorted = [...events.values()].sort((a, b) => (b.created_at - a.created_at) || (a.id < b.id ? 1 : -1));
    clear(eventsList, sorted.length ? sorted.map((event) =>
      h("li", {class: `event level-${event.level}`, dataset: {id: event.id}},
        h("time", {title: formatTime(event.created_at)}, new Date(event.created_at * 1000).toLocaleTimeString()),
        h("span", {class: `level level-${event.level}`}, event.level),
        h("span", {class: "message"}, event.message)))
      : h("li", {class: "empty"}, "No events yet."));
  }
  addEvents([]);

  async function pollEvents() {
    const done = job !== null && TERMINAL.has(job.status);
    const items = [];
    let after;
    for (let pages = 0; pages < 20; pages += 1) { // newest first: page back until a known event
      const page = await getJson(`${jobPath}/events`, {query: {limit: 100, after}});
      items.push(...page.data);
      if (!page.has_more || page.data.some((event) => events.has(event.id))) break;
      after = page.last_id;
    }
    return {items: items.reverse(), done};
  }

  // -- job, checkpoints, artifacts ----------------------------------------------------------
  function drawJob() {
    const method = jobMethod(job);
    clear(head,
      h("h1", {}, "Job ", h("span", {class: "mono"}, job.id)),
      h("div", {class: "actions"}, statusBadge(job.status, job.cancel_requested, job.pause_requested),
        job.fine_tuned_model ? [
          h("a", {class: "button small", id: "try-it", href: playgroundHref({model: job.fine_tuned_model})}, "Try it"),
          h("a", {class: "button secondary small", id: "compare-base",
                  href: playgroundHref({model: job.fine_tuned_model, compare: job.model})}, "Compare with the base model"),
        ] : null,
        pauseButton(job, (updated) => { job = updated; drawJob(); }),
        cancelButton(job, (updated) => { job = updated; drawJob(); })));
    drawProgress();
    clear(summary,
      progressBox,
      definitionList([
        ["Status", h("span", {id: "job-status"}, job.status)],
        ["Model", job.model],
        ["Method", `${method.label}${method.rank !== null ? ` · rank ${method.rank}` : ""}`],
        ["Training file", h("span", {class: "mono"}, job.training_file)],
        job.validation_file ? ["Validation file", h("span", {class: "mono"}, job.validation_file)] : null,
        ["Created", formatTime(job.created_at)],
        ["Finished", formatTime(job.finished_at)],
        ["Duration", formatDuration(jobDuration(job))],
        ["Attempt", `${job.attempt} of ${job.max_attempts}`],
        job.resumed_from_step ? ["Resumed from step", String(job.resumed_from_step)] : null,
        ["Outputs", (job.outputs || []).join(", ") || "–"],
        ["Seed", String(job.seed)],
        job.fine_tuned_model ? ["Fine-tuned model", h("span", {class: "mono"}, job.fine_tuned_model)] : null,
        job.trained_tokens ? ["Trained tokens", String(job.trained_tokens)] : null,
      ]));
    clear(errorBox, job.error ? h("div", {class: "card failure", role: "alert"},
      h("h2", {}, "Failed: ", h("code", {}, job.error.code)),
      h("p", {class: "error-message"}, job.error.message),
      job.error.param ? h("p", {class: "muted"}, "param: ", h("code", {}, job.error.param)) : null) : null);
    const order = ["rank", "alpha", "dropout", "target_modules", "use_rslora"];
    const entries = Object.entries(method.hyperparameters).sort(([a], [b]) => {
      const [ia, ib] = [order.indexOf(a), order.indexOf(b)];
      return (ia === -1 ? 99 : ia) - (ib === -1 ? 99 : ib) || a.localeCompare(b);
    });
    clear(settingsBox,
      h("p", {class: "muted"}, `method.${method.kind === "supervised" ? "dora" : method.kind}.hyperparameters`,
        method.kind === "supervised" ? " (a supervised job runs DoRA with these settings)" : ""),
      h("table", {class: "table settings"}, h("tbody", {},
        entries.map(([name, value]) => h("tr", {dataset: {setting: name}}, h("th", {}, name), h("td", {}, settingValue(value)))))));
  }

  function drawProgress() {
    clear(progressBox, progressBar(job, {metricStep: newestStep}));
  }

  let checkpointIds = [];
  async function loadCheckpoints() {
    const page = await getJson(`${jobPath}/checkpoints`, {query: {limit: 100}});
    checkpointIds = page.data.map((checkpoint) => checkpoint.fine_tuned_model_checkpoint);
    clear(checkpointsBody, page.data.length ? page.data.map((checkpoint) => {
      const metrics = Object.entries(checkpoint.metrics || {}).filter(([name]) => name !== "step")
        .map(([name, value]) => `${name} ${formatNumber(value)}`).join(" · ");
      return h("tr", {dataset: {step: String(checkpoint.step_number)}},
        h("td", {}, String(checkpoint.step_number)),
        h("td", {class: "mono small wrap-anywhere"}, checkpoint.fine_tuned_model_checkpoint),
        h("td", {class: "small"}, metrics || "–"),
        h("td", {}, formatTime(checkpoint.created_at)),
        h("td", {}, h("a", {class: "small", dataset: {action: "try"}, title: "Chat with this checkpoint in the playground",
                            href: playgroundHref({model: checkpoint.fine_tuned_model_checkpoint, job: job.id})}, "Try")));
    }) : h("tr", {}, h("td", {colspan: 5, class: "empty"}, "No checkpoints yet.")));
  }

  // The newest samples: the model's greedy answers to the first validation prompts, the base
  // model's (step 0, written when training starts) then each evaluation's.
  let samplesStep = -1, samplesWanted = null, samplesRead = 0;
  async function loadSamples() {
    const mine = ++samplesRead; // only the newest read is shown (the refresh's and a new evaluation's may cross)
    const page = await getJson(`${jobPath}/samples`, {query: {limit: SAMPLES_PAGE}});
    if (stopped || mine !== samplesRead) return;
    const hp = jobMethod(job).hyperparameters;
    if (!page.data.length) {
      const state = !job.validation_file && !(hp.validation_split > 0) ? "no-validation"
        : hp.sample_prompts === 0 ? "no-prompts" : TERMINAL.has(job.status) ? "none" : "waiting";
      const why = {
        "no-validation": "This job has no validation set: samples need one (a validation file or validation_split).",
        "no-prompts": "No samples: sample_prompts is 0.",
        none: `No samples: the job ${job.status} before writing any.`,
        waiting: "Waiting for samples: the base model's answers (step 0) come when training starts, "
          + "then each evaluation's.",
      }[state];
      return clear(samplesBox, h("p", {class: "muted", dataset: {state}}, why));
    }
    const step = page.data[0].step; // newest evaluation first, in index order
    samplesStep = step;
    const shown = (text) => (text.length > PROMPT_SHOWN ? `…${text.slice(-PROMPT_SHOWN)}` : text);
    clear(samplesBox,
      h("p", {class: "muted", dataset: {state: "shown"}}, step === 0
        ? "The base model's greedy answers to the first validation prompts (step 0, before training); "
          + "each evaluation's replace them."
        : `Greedy answers to the first validation prompts at step ${step}.`),
      h("table", {class: "table samples", dataset: {step: String(step)}},
        h("thead", {}, h("tr", {}, ["#", "Prompt", "Expected", "Answer"].map((t) => h("th", {}, t)))),
        h("tbody", {}, page.data.filter((sample) => sample.step === step).map((sample) =>
          h("tr", {dataset: {index: String(sample.index)}},
            h("td", {}, String(sample.index)),
            h("td", {class: "sample-text mono small", title: sample.prompt}, shown(sample.prompt)),
            h("td", {class: "sample-text"}, sample.expected),
            h("td", {class: "sample-text sample-answer"}, sample.answer))))));
  }

  // the eval runs of this job's model and checkpoints (their ids are what a run names as its model);
  // read when the job's status changes, never in the way of the rest of the page
  async function loadEvalRuns() {
    const models = new Set([job.fine_tuned_model, ...checkpointIds].filter(Boolean));
    const byModel = new Map([...models].map((model) => [fineTunedOf(model), job])); // labels the runs' models
    try {
      const entries = await runsOfModels(models);
      if (!stopped) clear(evalsBox, evalRunsTable(entries, byModel));
    } catch (error) {
      if (!stopped) clear(evalsBox, h("p", {class: "error"}, `Could not read the eval runs: ${error.message}`));
    }
  }

  async function loadArtifacts() {
    const page = await getJson(`${jobPath}/artifacts`);
    if (!page.data.length) {
      const why = job.status === "succeeded" ? "This job has no artifacts."
        : TERMINAL.has(job.status) ? `No artifacts: the job ${job.status}.` : "Artifacts appear when the job has succeeded.";
      return clear(artifactsBody, h("p", {class: "muted"}, why));
    }
    clear(artifactsBody, h("table", {class: "table"},
      h("thead", {}, h("tr", {}, ["Artifact", "Size", "Files", "sha256", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, page.data.map((artifact) => h("tr", {dataset: {artifact: artifact.name}},
        h("td", {}, h("strong", {}, artifact.name)),
        h("td", {class: "artifact-size"}, formatBytes(artifact.bytes)),
        h("td", {}, h("details", {}, h("summary", {}, `${artifact.files.length} files`),
          h("ul", {class: "file-list"}, artifact.files.map((file) => h("li", {},
            downloadButton(file.path, artifactPath(job.id, artifact.name, file.path), file.path.split("/").pop()),
            h("span", {class: "muted small"}, ` ${formatBytes(file.bytes)}`)))))),
        h("td", {class: "mono small", title: artifact.sha256}, `${artifact.sha256.slice(0, 12)}…`),
        h("td", {}, downloadButton("Download .tar", artifact.download_url, `${job.id}-${artifact.name}.tar`,
                                   {dataset: {download: artifact.name}})))))));
  }

  async function refresh() {
    try {
      job = await getJson(jobPath);
      if (stopped) return;
      message.textContent = "";
      drawJob();
      const changed = job.status !== lastDrawnStatus;
      if (job.status === "running" || changed) await loadCheckpoints();
      if (job.status === "running" || changed) await loadSamples();
      if (changed) await loadArtifacts();
      if (changed) loadEvalRuns();
      if (lastDrawnStatus === null) loadScores(); // then on its own timer
      await reconcileMetrics(TERMINAL.has(job.status));
      lastDrawnStatus = job.status;
      if (!streams.length) startStreams();
    } catch (error) {
      if (stopped) return;
      message.textContent = error.status === 404 ? `No such job: ${id}` : `Could not load the job: ${error.message}`;
      if (error.status === 404) return;
    }
    if (!stopped && !TERMINAL.has(job && job.status)) timer = setTimeout(refresh, REFRESH_MS);
  }

  function showState(node) {
    return (state) => {
      node.textContent = state === "done" ? "complete" : state;
      node.dataset.state = state.split(":")[0];
    };
  }

  function startStreams() {
    streams.push(
      follow({path: `${jobPath}/metrics`, onItems: addMetrics, poll: pollMetrics, onState: showState(liveState.metrics)}),
      follow({path: `${jobPath}/events`, onItems: addEvents, poll: pollEvents, onState: showState(liveState.events)}));
  }

  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
    clearTimeout(scoreTimer);
    for (const stream of streams) stream.stop();
  };
}
