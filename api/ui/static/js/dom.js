// DOM building and formatting helpers. Text always goes in as text nodes (never innerHTML), so
// nothing the API returns (file names, error messages, event text) can become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setAttributes(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (name === "style" && typeof value === "object") {
      Object.assign(node.style, value); // CSSOM, which the Content-Security-Policy allows
    } else if (value === true) {
      node.setAttribute(name, "");
    } else {
      node.setAttribute(name, String(value));
    }
  }
  return node;
}

/** h("a", {href: "#/jobs", class: "x"}, "text", child, [more]) */
export function h(tag, attrs, ...children) {
  return append(setAttributes(document.createElement(tag), attrs), children);
}

export function svg(tag, attrs, ...children) {
  return append(setAttributes(document.createElementNS(SVG_NS, tag), attrs), children);
}

export function clear(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const d = Math.floor(seconds / 86400), hh = Math.floor((seconds % 86400) / 3600);
  const mm = Math.floor((seconds % 3600) / 60), ss = seconds % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${mm}m`;
  if (mm) return `${mm}m ${ss}s`;
  return `${ss}s`;
}

export function formatTime(unixSeconds) {
  if (!unixSeconds) return "–";
  return new Date(unixSeconds * 1000).toLocaleString();
}

export function timeAgo(unixSeconds) {
  if (!unixSeconds) return "–";
  const seconds = Date.now() / 1000 - unixSeconds;
  return seconds < 5 ? "just now" : `${formatDuration(seconds)} ago`;
}

export function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return value === null || value === undefined ? "–" : String(value);
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (Number.isInteger(value) && abs < 1e9) return String(value);
  if (abs >= 1e6 || abs < 1e-3) return value.toExponential(2);
  if (abs >= 1000) return String(Math.round(value));
  const text = value.toPrecision(4);
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function statusBadge(status, cancelRequested = false, pauseRequested = false) {
  const asked = TERMINAL.has(status) ? null : (cancelRequested ? "cancelling" : (pauseRequested ? "pausing" : null));
  const text = asked ? `${status} (${asked})` : status;
  return h("span", {class: `badge status-${status}`, dataset: {status}}, text);
}

/** The adapter kind, its resolved hyperparameters and rank of a job (supervised jobs run DoRA). */
export function jobMethod(job) {
  const method = job.method || {};
  const kind = method.type || "supervised";
  const settings = (method[kind] && method[kind].hyperparameters) || {};
  const adapter = kind === "supervised" ? ((method.dora && method.dora.hyperparameters) || {}) : settings;
  return {kind, hyperparameters: adapter, rank: adapter.rank ?? null,
          label: kind === "supervised" ? "supervised (dora)" : kind};
}

export function jobDuration(job) {
  if (!job.created_at) return null;
  const end = job.finished_at || (TERMINAL.has(job.status) ? job.created_at : Date.now() / 1000);
  return end - job.created_at;
}

/**
 * A percent as the dashboard shows it: whole percents, rounded down (a run at 99.7% is not done),
 * one decimal below 1% (so a long run's first steps do not read 0%).
 */
export function formatPercent(percent) {
  if (percent === null || percent === undefined || !Number.isFinite(percent)) return "–";
  if (percent > 0 && percent < 1) return `${(Math.floor(percent * 10) / 10 || 0.1).toFixed(1)}%`;
  return `${Math.min(100, Math.floor(percent))}%`;
}

/**
 * The step a job is at: its own `progress.step` (written with the worker's heartbeat, read by the
 * page on a timer) or the newest metric step the page has seen (streamed), whichever is larger.
 */
export function jobStep(job, metricStep = null) {
  const progress = job.progress || {};
  return Math.max(progress.step || 0, metricStep || 0);
}

/** A progress bar with "step / total steps, percent" and the ETA while running. */
export function progressBar(job, {metricStep = null} = {}) {
  const progress = job.progress || {};
  const total = progress.total_steps || null;
  const step = jobStep(job, metricStep);
  const percent = total ? Math.min(100, (100 * step) / total)
    : progress.percent ?? (job.status === "succeeded" ? 100 : 0);
  const parts = [];
  if (total) parts.push(`${step} / ${total} steps, ${formatPercent(percent)}`);
  else if (step) parts.push(`step ${step}`);
  else parts.push(formatPercent(percent));
  if (job.status === "running" && progress.eta_seconds !== null && progress.eta_seconds !== undefined) {
    parts.push(`ETA ${formatDuration(progress.eta_seconds)}`);
  }
  return h("div", {class: "progress", dataset: {percent: String(percent), step: String(step)}},
    h("div", {class: `progress-track status-${job.status}`},
      h("div", {class: "progress-fill", style: {width: `${Math.min(100, Math.max(0, percent))}%`}})),
    h("span", {class: "progress-label"}, parts.join(" · ")));
}
