// One eval run's report (the run object's report_url points here): its status and model, counts,
// the pass rate of each testing criterion with its 95% interval, the models' usage, and its output
// items a page at a time (filtered by grade), each with the item, the answer and every grader's
// result. Re-read every few seconds while the run is queued or in progress.
//   #/evals/<eval id>/runs/<run id>[?status=pass|fail|error]

import {getJson, postJson} from "../api.js";
import {clear, formatDuration, formatTime, h} from "../dom.js";
import {
  ACTIVE, answerOf, criterion, describeModel, evalHref, evalPath, gradeBadge, itemText, jobsByModel, overall,
  rateCell, resultsList, runHref,
} from "../evals.js";

const REFRESH_MS = 2000;
const ITEMS_PAGE = 20;
const GRADES = ["pass", "fail", "error"];

export function render(main, {evalId, runId, query}) {
  const status = GRADES.includes(query.get("status")) ? query.get("status") : "";
  const runPath = `${evalPath(evalId)}/runs/${encodeURIComponent(runId)}`;
  let stopped = false, timer = null, run = null, evaluation = null, jobs = new Map();
  let cursors = [undefined], pageIndex = 0, hasMore = false, drawnTotal = null;
  const head = h("div", {class: "page-head"});
  const message = h("p", {class: "error", role: "alert"});
  const summary = h("div", {class: "card", id: "run-summary"});
  const countsBox = h("div", {id: "run-counts"});
  const usageBox = h("div", {id: "run-usage"});
  const itemsBody = h("tbody");
  const pager = h("span", {class: "muted small", id: "items-page"});
  const previous = h("button", {type: "button", class: "secondary small", disabled: true,
                                onclick: () => { pageIndex -= 1; loadItems(); }}, "← Previous");
  const next = h("button", {type: "button", class: "secondary small", disabled: true,
                            onclick: () => { pageIndex += 1; loadItems(); }}, "Next →");
  const filter = h("select", {id: "grade-filter", "aria-label": "Show items graded",
                              onchange: (event) => {
                                const value = event.target.value;
                                window.location.hash = `${runHref(evalId, runId)}${value ? `?status=${value}` : ""}`;
                              }},
    h("option", {value: ""}, "all items"), GRADES.map((g) => h("option", {value: g, selected: g === status}, g)));

  clear(main,
    h("p", {}, h("a", {href: evalHref(evalId), id: "back-to-eval"}, "← The eval's comparison")),
    head, message, summary,
    h("section", {class: "card"}, h("h2", {}, "Results"), countsBox),
    h("section", {class: "card"}, h("h2", {}, "Usage"), usageBox),
    h("section", {class: "card"},
      h("div", {class: "section-head"}, h("h2", {}, "Output items"),
        h("div", {class: "actions"}, h("label", {for: "grade-filter", class: "muted"}, "Show "), filter)),
      h("table", {class: "table output-items", id: "output-items"},
        h("thead", {}, h("tr", {}, ["#", "Item", "Answer", "Grade"].map((t) => h("th", {}, t)))), itemsBody),
      h("div", {class: "actions pager"}, previous, pager, next)));

  function drawRun() {
    const model = describeModel(run.model, jobs);
    clear(head,
      h("h1", {}, run.name || "Eval run", " ", h("span", {class: "mono muted small"}, run.id)),
      h("div", {class: "actions"},
        h("span", {class: `badge status-${run.status}`, id: "run-status", dataset: {status: run.status}},
          run.cancel_requested && ACTIVE.has(run.status) ? `${run.status} (cancelling)` : run.status),
        ACTIVE.has(run.status) && !run.cancel_requested ? h("button", {type: "button", class: "danger small",
          dataset: {action: "cancel"}, onclick: async (event) => {
            if (!window.confirm(`Cancel run ${run.id}?`)) return;
            event.currentTarget.disabled = true;
            try { run = await postJson(`${runPath}/cancel`, {}); drawRun(); } catch (error) {
              message.textContent = `Could not cancel: ${error.message}`;
            }
          }}, "Cancel") : null));
    const source = run.data_source || {};
    const started = run.started_at, finished = run.finished_at;
    clear(summary, h("dl", {class: "facts"}, [
      ["Eval", h("a", {href: evalHref(evalId)}, evaluation ? evaluation.name || evalId : evalId)],
      ["Model", h("span", {}, model.label, " ", h("span", {class: "mono small"}, run.model))],
      model.job ? ["Job", h("a", {href: `#/jobs/${encodeURIComponent(model.job.id)}`, class: "mono"}, model.job.id)] : null,
      ["Data source", `${source.type || "–"}${source.source ? ` (${source.source.type})` : ""}`],
      ["Created", formatTime(run.created_at)],
      ["Started", formatTime(started)],
      ["Finished", formatTime(finished)],
      started ? ["Duration", formatDuration((finished || Date.now() / 1000) - started)] : null,
      run.error && run.error.code ? ["Error", h("span", {class: "error"}, `${run.error.code}: ${run.error.message}`)] : null,
    ].filter(Boolean).map(([term, value]) => h("div", {class: "fact"}, h("dt", {}, term), h("dd", {}, value)))));
    const counts = run.result_counts || {};
    const criteria = (run.per_testing_criteria_results || []).map((r) => r.testing_criteria);
    clear(countsBox,
      h("dl", {class: "facts counts"}, ["total", "passed", "failed", "errored"].map((name) =>
        h("div", {class: "fact", dataset: {count: name}}, h("dt", {}, name), h("dd", {class: "count"}, String(counts[name] ?? 0))))),
      h("table", {class: "table comparison", id: "run-rates"},
        h("thead", {}, h("tr", {}, ["", "Passed (95% interval)", "Failed"].map((t) => h("th", {}, t)))),
        h("tbody", {},
          h("tr", {dataset: {row: "overall"}}, h("th", {}, "All criteria (items passed)"),
            rateCell(overall(run).passed, overall(run).trials), h("td", {}, String((counts.failed || 0) + (counts.errored || 0)))),
          criteria.map((name) => {
            const {passed, trials} = criterion(run, name);
            return h("tr", {dataset: {row: "criterion", criterion: name}}, h("th", {}, name), rateCell(passed, trials),
              h("td", {}, String(trials - passed)));
          }))));
    const usage = run.per_model_usage || [];
    clear(usageBox, usage.length ? h("table", {class: "table"},
      h("thead", {}, h("tr", {}, ["Model", "Calls", "Prompt tokens", "Completion tokens", "Total tokens"].map((t) => h("th", {}, t)))),
      h("tbody", {}, usage.map((u) => h("tr", {}, h("td", {class: "mono small"}, u.model_name), h("td", {}, String(u.invocation_count)),
        h("td", {}, String(u.prompt_tokens)), h("td", {}, String(u.completion_tokens)), h("td", {}, String(u.total_tokens))))))
      : h("p", {class: "muted"}, "No model calls yet."));
  }

  async function loadItems() {
    try {
      const page = await getJson(`${runPath}/output_items`, {query: {limit: ITEMS_PAGE, after: cursors[pageIndex],
                                                                     status}});
      if (stopped) return;
      cursors[pageIndex + 1] = page.last_id;
      hasMore = page.has_more;
      clear(itemsBody, page.data.length ? page.data.map((item) => {
        const answer = answerOf(item);
        return h("tr", {dataset: {item: String(item.datasource_item_id), grade: item.status}},
          h("td", {}, String(item.datasource_item_id)),
          h("td", {class: "item-text"}, itemText(item.datasource_item)),
          h("td", {class: `answer${answer.error ? " error" : ""}`}, answer.text),
          h("td", {}, gradeBadge(item.status), resultsList(item)));
      }) : h("tr", {}, h("td", {colspan: 4, class: "empty"},
        status ? `No items graded ${status}.` : ACTIVE.has(run && run.status) ? "No items graded yet." : "No output items.")));
      previous.disabled = pageIndex === 0;
      next.disabled = !hasMore;
      pager.textContent = `page ${pageIndex + 1}`;
    } catch (error) {
      if (!stopped) message.textContent = `Could not load the output items: ${error.message}`;
    }
  }

  async function refresh() {
    try {
      const [freshRun, freshEval, freshJobs] = await Promise.all([getJson(runPath), getJson(evalPath(evalId)), jobsByModel()]);
      if (stopped) return;
      [run, evaluation, jobs] = [freshRun, freshEval, freshJobs];
      message.textContent = "";
      drawRun();
      const total = (run.result_counts || {}).total;
      if (total !== drawnTotal && pageIndex === 0) { // new items graded: the first page again
        drawnTotal = total;
        await loadItems();
      }
    } catch (error) {
      if (stopped) return;
      message.textContent = error.status === 404 ? `No such eval run: ${runId}` : `Could not load the run: ${error.message}`;
      if (error.status === 404) return;
    }
    if (!stopped && (!run || ACTIVE.has(run.status))) timer = setTimeout(refresh, REFRESH_MS);
  }

  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
