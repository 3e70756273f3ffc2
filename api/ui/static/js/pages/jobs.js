// Jobs: the tenant's fine-tuning jobs, newest first, refreshed every few seconds; filter by
// status (kept in the URL's hash), cancel a queued or running job, pause or resume one.

import {getJson, postJson} from "../api.js";
import {
  TERMINAL, clear, formatDuration, formatTime, h, jobDuration, jobMethod, progressBar, statusBadge, timeAgo,
} from "../dom.js";

const STATUSES = ["queued", "running", "paused", "succeeded", "failed", "cancelled"];
const REFRESH_MS = 2500;
const PAGE = 100;

// A button that POSTs /v1/fine_tuning/jobs/{id}/{action} and hands the updated job to `after`.
function jobAction(job, action, label, className, after, question = null) {
  return h("button", {type: "button", class: className, dataset: {action, job: job.id},
                      onclick: async (event) => {
                        const button = event.currentTarget;
                        if (question && !window.confirm(question)) return;
                        button.disabled = true;
                        try {
                          after(await postJson(`/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/${action}`, {}));
                        } catch (error) {
                          button.disabled = false;
                          window.alert(`Could not ${action}: ${error.message}`);
                        }
                      }}, label);
}

export function cancelButton(job, after) {
  if (TERMINAL.has(job.status) || job.cancel_requested) return null;
  return jobAction(job, "cancel", "Cancel", "danger small", after, `Cancel job ${job.id}?`);
}

// Pause a queued or running job (a running one checkpoints at its next step and frees its GPU);
// resume a paused one (it continues from that checkpoint on any worker).
export function pauseButton(job, after) {
  if (job.status === "paused") return jobAction(job, "resume", "Resume", "small", after);
  if (TERMINAL.has(job.status) || job.cancel_requested || job.pause_requested) return null;
  return jobAction(job, "pause", "Pause", "secondary small", after);
}

export function render(main, {query}) {
  const status = STATUSES.includes(query.get("status")) ? query.get("status") : "";
  let jobs = [], hasMore = false, timer = null, stopped = false;
  const message = h("p", {class: "error", role: "alert"});
  const body = h("tbody");
  const more = h("button", {type: "button", class: "secondary", hidden: true, onclick: () => loadOlder()}, "Load more");
  const filter = h("select", {id: "status-filter", "aria-label": "Filter by status",
                              onchange: (event) => {
                                const value = event.target.value;
                                window.location.hash = value ? `#/jobs?status=${value}` : "#/jobs";
                              }},
    h("option", {value: ""}, "all statuses"),
    STATUSES.map((s) => h("option", {value: s, selected: s === status}, s)));

  clear(main,
    h("div", {class: "page-head"},
      h("h1", {}, "Fine-tuning jobs"),
      h("div", {class: "actions"}, h("label", {for: "status-filter", class: "muted"}, "Status "), filter,
        h("a", {class: "button", href: "#/new"}, "New job"))),
    message,
    h("table", {class: "table", id: "jobs-table"},
      h("thead", {}, h("tr", {}, ["Status", "Job", "Model", "Method", "Progress", "Created", "Duration", ""]
        .map((title) => h("th", {}, title)))),
      body),
    more);

  function row(job) {
    const method = jobMethod(job);
    return h("tr", {dataset: {job: job.id, status: job.status}},
      h("td", {}, statusBadge(job.status, job.cancel_requested, job.pause_requested)),
      h("td", {}, h("a", {href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono"}, job.id),
        job.suffix ? h("div", {class: "muted small"}, job.suffix) : null),
      h("td", {}, job.model),
      h("td", {}, method.label, method.rank !== null ? h("span", {class: "muted"}, ` · r${method.rank}`) : null),
      h("td", {class: "progress-cell"}, progressBar(job)),
      h("td", {title: formatTime(job.created_at)}, timeAgo(job.created_at)),
      h("td", {}, formatDuration(jobDuration(job))),
      h("td", {class: "actions"}, pauseButton(job, (updated) => { merge([updated]); draw(); }),
        cancelButton(job, (updated) => { merge([updated]); draw(); })));
  }

  function draw() {
    clear(body, jobs.length ? jobs.map(row)
      : h("tr", {}, h("td", {colspan: 8, class: "empty"}, status ? `No ${status} jobs.` : "No jobs yet.")));
    more.hidden = !hasMore;
  }

  function merge(fresh) {
    const byId = new Map(jobs.map((job) => [job.id, job]));
    for (const job of fresh) byId.set(job.id, job);
    jobs = [...byId.values()].filter((job) => !status || job.status === status)
      .sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  }

  async function refresh() {
    try {
      const page = await getJson("/v1/fine_tuning/jobs", {query: {limit: PAGE, status}});
      if (stopped) return;
      // rows "Load more" brought in stay (older than this page); the first page is replaced
      const oldest = page.data.length ? page.data[page.data.length - 1].id : null;
      const older = page.has_more && oldest ? jobs.filter((job) => job.id < oldest) : [];
      jobs = [];
      merge([...page.data, ...older]);
      if (!older.length) hasMore = page.has_more;
      message.textContent = "";
      draw();
    } catch (error) {
      if (!stopped) message.textContent = `Could not load jobs: ${error.message}`;
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }

  async function loadOlder() {
    const last = jobs[jobs.length - 1];
    try {
      const page = await getJson("/v1/fine_tuning/jobs", {query: {limit: PAGE, status, after: last && last.id}});
      merge(page.data);
      hasMore = page.has_more;
      draw();
    } catch (error) {
      message.textContent = `Could not load jobs: ${error.message}`;
    }
  }

  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
