// What the eval pages share: reading whole lists, naming a run's model (base, a job's final model,
// one of its checkpoints), a pass rate's cell with its 95% interval, an output item's answer and
// grade, and the eval runs of a job's models (its page lists them).

import {getJson} from "./api.js";
import {h, jobMethod} from "./dom.js";
import {intervalText, percent, wilson} from "./stats.js";

export const PAGE_LIMIT = 100; // the API's most items per page (api/schemas/params.py MAX_LIMIT)
export const ACTIVE = new Set(["queued", "in_progress"]); // an eval run's statuses that still change
const CHECKPOINT = /^(.*):ckpt-step-(\d+)$/; // `<fine-tuned model>:ckpt-step-<N>` (store/jobs.py)
const ADAPTERS = {dora: "DoRA", lora: "LoRA", supervised: "DoRA", dpo: "DPO"};

export function evalHref(evalId) {
  return `#/evals/${encodeURIComponent(evalId)}`;
}

export function runHref(evalId, runId) {
  return `#/evals/${encodeURIComponent(evalId)}/runs/${encodeURIComponent(runId)}`;
}

export function evalPath(evalId) {
  return `/v1/evals/${encodeURIComponent(evalId)}`;
}

/** Every item of a cursor-paged list, up to `max`: {data, truncated}. */
export async function listAll(path, {query = {}, max = 10_000} = {}) {
  const data = [];
  let after;
  for (;;) {
    const page = await getJson(path, {query: {...query, limit: PAGE_LIMIT, after}});
    data.push(...page.data);
    if (!page.has_more || !page.data.length) return {data, truncated: false};
    if (data.length >= max) return {data: data.slice(0, max), truncated: true};
    after = page.last_id ?? page.data[page.data.length - 1].id;
  }
}

/** fine_tuned_model -> job, for the tenant's newest jobs (a run's column says which job made its model). */
export async function jobsByModel(max = 500) {
  const {data} = await listAll("/v1/fine_tuning/jobs", {max});
  return new Map(data.filter((job) => job.fine_tuned_model).map((job) => [job.fine_tuned_model, job]));
}

/** The fine-tuned model a checkpoint id belongs to (any other id as it is). */
export function fineTunedOf(model) {
  const checkpoint = CHECKPOINT.exec(model || "");
  return checkpoint ? checkpoint[1] : model;
}

/**
 * What a run's model is: {kind: "base" | "fine-tuned" | "checkpoint", label, group, step, job}.
 * `group` is the fine-tuned model a checkpoint belongs to, so columns sort base, then each job's
 * checkpoints by step followed by its final model.
 */
export function describeModel(model, jobs = new Map()) {
  const checkpoint = CHECKPOINT.exec(model || "");
  const group = checkpoint ? checkpoint[1] : model;
  if (!group || !group.startsWith("ft:")) return {kind: "base", label: "base", group: model, step: null, job: null};
  const job = jobs.get(group) || null;
  let adapter = "fine-tuned";
  if (job) {
    const method = jobMethod(job);
    adapter = `${ADAPTERS[method.kind] || method.kind}${method.rank !== null ? ` r${method.rank}` : ""}`;
  }
  return checkpoint
    ? {kind: "checkpoint", label: `${adapter} · step ${checkpoint[2]}`, group, step: Number(checkpoint[2]), job}
    : {kind: "fine-tuned", label: adapter, group, step: Infinity, job};
}

/** Runs in column order: base models first, then each fine-tuned model's checkpoints by step, then it. */
export function orderRuns(runs, jobs) {
  const key = (run) => {
    const model = describeModel(run.model, jobs);
    return [model.kind === "base" ? 0 : 1, model.group || "", model.step ?? 0, run.created_at, run.id];
  };
  return [...runs].sort((a, b) => {
    const [ka, kb] = [key(a), key(b)];
    for (let i = 0; i < ka.length; i += 1) if (ka[i] !== kb[i]) return ka[i] < kb[i] ? -1 : 1;
    return 0;
  });
}

/**
 * A pass rate's cell: "3 / 5 · 60.0%" over its 95% Wilson interval. The raw numbers are kept in
 * data attributes (passed, trials, low, high) for whoever reads the page programmatically.
 */
export function rateCell(passed, trials, attrs = {}) {
  const interval = wilson(passed, trials);
  if (!interval) return h("td", {class: "rate empty-rate", ...attrs, dataset: {passed: "0", trials: "0"}}, "–");
  return h("td", {class: "rate", ...attrs,
                  dataset: {passed: String(passed), trials: String(trials), low: String(interval.low),
                            high: String(interval.high)}},
    h("div", {class: "rate-value"}, `${passed} / ${trials} · `, h("strong", {}, percent(interval.rate))),
    h("div", {class: "rate-bar", title: `95% interval ${intervalText(interval)}`},
      h("span", {class: "rate-range", style: {left: `${interval.low * 100}%`,
                                             width: `${(interval.high - interval.low) * 100}%`}}),
      h("span", {class: "rate-point", style: {left: `${interval.rate * 100}%`}})),
    h("div", {class: "rate-interval muted small"}, intervalText(interval)));
}

/** The overall rate counts an errored item as not passed: passed of total. */
export function overall(run) {
  const counts = run.result_counts || {};
  return {passed: counts.passed || 0, trials: counts.total || 0};
}

/** A criterion's rate: passed of the items it graded (passed + failed). */
export function criterion(run, name) {
  const entry = (run.per_testing_criteria_results || []).find((r) => r.testing_criteria === name);
  return entry ? {passed: entry.passed, trials: entry.passed + entry.failed} : {passed: 0, trials: 0};
}

/** One line saying what a testing criterion checks. */
export function criterionText(criterion) {
  if (criterion.type === "string_check") return `${criterion.input} ${criterion.operation} ${criterion.reference}`;
  if (criterion.type === "text_similarity") {
    return `${criterion.evaluation_metric}(${criterion.input}, ${criterion.reference}) ≥ ${criterion.pass_threshold}`;
  }
  if (criterion.type === "score_model" || criterion.type === "label_model") return `judged by ${criterion.model}`;
  if (criterion.type === "multi") return criterion.calculate_output;
  return criterion.type;
}

/** The sampled answer's text, or its error when the sample failed. */
export function answerOf(item) {
  const sample = item.sample || {};
  if (sample.error && sample.error.code) return {text: `${sample.error.code}: ${sample.error.message}`, error: true};
  return {text: (sample.output || []).map((message) => message.content).join("\n"), error: false};
}

export function gradeBadge(status) {
  return h("span", {class: `badge grade grade-${status}`, dataset: {grade: status}}, status);
}

/** Each grader's result of an item: "name 1 ✓" or "name 0.42 ✗". */
export function resultsList(item) {
  return h("ul", {class: "grader-results"}, (item.results || []).map((result) =>
    h("li", {dataset: {grader: result.name, passed: String(result.passed)}},
      h("span", {}, result.name), " ",
      h("span", {class: "mono"}, typeof result.score === "number" ? String(+result.score.toFixed(4)) : "–"),
      " ", result.passed ? "✓" : "✗")));
}

/** A data source item, one `key: value` per line (values as JSON unless strings). */
export function itemText(item) {
  if (!item || typeof item !== "object") return String(item);
  return Object.entries(item).map(([key, value]) =>
    `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`).join("\n");
}

/**
 * The eval runs whose model is one of `models` (a job's fine-tuned model and its checkpoints),
 * among the tenant's newest `maxEvals` evals and each one's newest `maxRuns` runs; OpenAI's list of
 * runs has no model filter, so the page filters. [{eval, run}], newest first.
 */
export async function runsOfModels(models, {maxEvals = 100, maxRuns = 100} = {}) {
  if (!models.size) return [];
  const evals = (await getJson("/v1/evals", {query: {limit: maxEvals, order: "desc"}})).data;
  const perEval = await Promise.all(evals.map(async (evaluation) => {
    const runs = (await getJson(`${evalPath(evaluation.id)}/runs`, {query: {limit: maxRuns, order: "desc"}})).data;
    return runs.filter((run) => models.has(run.model)).map((run) => ({eval: evaluation, run}));
  }));
  return perEval.flat().sort((a, b) => b.run.created_at - a.run.created_at || (a.run.id < b.run.id ? 1 : -1));
}

/** The table of a job's eval runs (runsOfModels): each links its run's report and its eval's comparison. */
export function evalRunsTable(entries, jobs = new Map()) {
  if (!entries.length) {
    return h("p", {class: "muted", dataset: {state: "none"}},
      "No eval runs of this job's model or its checkpoints yet. Create an eval (client.evals.create) and run it on ",
      "the fine-tuned model or a checkpoint id, then compare it with the base model on the eval's page.");
  }
  return h("table", {class: "table eval-runs", id: "job-eval-runs"},
    h("thead", {}, h("tr", {}, ["Eval", "Run", "Model", "Status", "Passed (95% interval)", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, entries.map(({eval: evaluation, run}) => {
      const {passed, trials} = overall(run);
      return h("tr", {dataset: {run: run.id, eval: evaluation.id}},
        h("td", {}, h("a", {href: evalHref(evaluation.id)}, evaluation.name || evaluation.id)),
        h("td", {}, h("a", {href: runHref(evaluation.id, run.id), class: "mono small"}, run.name || run.id)),
        h("td", {title: run.model}, describeModel(run.model, jobs).label),
        h("td", {}, h("span", {class: `badge status-${run.status}`}, run.status)),
        rateCell(passed, trials),
        h("td", {}, h("a", {class: "small", dataset: {action: "compare"}, href: evalHref(evaluation.id)}, "Compare")));
    })));
}
