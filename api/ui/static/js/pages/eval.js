// One eval's comparison, the point of running evals: one column per run (base, each fine-tuned model,
// each checkpoint), the pass rate of every testing criterion and of the whole item with its 95%
// Wilson interval (js/stats.js), then the items where the runs disagree (passed by some, not by
// others) with each run's answer and grade. Rates come from the runs' own counts (the API's
// result_counts and per_testing_criteria_results); disagreements from their output items, matched
// by datasource_item_id (the item's line in the run's data). Re-read every few seconds while a
// run is queued or in progress.
//   #/evals/<eval id>

import {getJson} from "../api.js";
import {clear, formatTime, h} from "../dom.js";
import {
  ACTIVE, answerOf, criterion, criterionText, describeModel, evalPath, gradeBadge, itemText, jobsByModel, listAll,
  orderRuns, overall, rateCell, resultsList, runHref,
} from "../evals.js";

const REFRESH_MS = 3000;
const MAX_RUNS = 500; // columns shown at most (the newest; an eval rarely has more than a handful)
const MAX_ITEMS = 10_000; // output items read per run (DORA_MAX_EVAL_ITEMS' default: every item of a run)
const SHOWN_STEP = 50; // disagreements shown at a time ("Show more" adds as many)

/**
 * The items some runs passed and others did not (failed or errored), by datasource_item_id:
 * [{id, item, outcomes: Map(run id -> output item)}], in item order. `itemsByRun`: run id -> its
 * output items. An item only one run has cannot disagree.
 */
export function disagreements(itemsByRun) {
  const byItem = new Map();
  for (const [runId, items] of itemsByRun) {
    for (const item of items) {
      if (!byItem.has(item.datasource_item_id)) {
        byItem.set(item.datasource_item_id, {id: item.datasource_item_id, item: item.datasource_item,
                                             outcomes: new Map()});
      }
      byItem.get(item.datasource_item_id).outcomes.set(runId, item);
    }
  }
  return [...byItem.values()].filter((entry) => {
    const passed = [...entry.outcomes.values()].map((item) => item.status === "pass");
    return passed.includes(true) && passed.includes(false);
  }).sort((a, b) => a.id - b.id);
}

export function render(main, {id}) {
  let stopped = false, timer = null, evaluation = null, runs = [], jobs = new Map();
  let itemsKey = null, found = [], shown = SHOWN_STEP, compared = [], truncated = false;
  const head = h("div", {class: "page-head"});
  const about = h("div", {id: "eval-about"});
  const message = h("p", {class: "error", role: "alert"});
  const ratesBox = h("div", {id: "comparison-box", class: "scroll-x"});
  const disagreeSummary = h("p", {id: "disagreement-summary", class: "muted"}, "Reading the runs' output items…");
  const disagreeBox = h("div", {id: "disagreements-box", class: "scroll-x"});
  const more = h("button", {type: "button", class: "secondary", id: "more-disagreements", hidden: true,
                            onclick: () => { shown += SHOWN_STEP; drawDisagreements(); }}, "Show more");

  clear(main,
    h("p", {}, h("a", {href: "#/evals"}, "← Evals")),
    head, message, about,
    h("section", {class: "card"}, h("h2", {}, "Pass rates"), ratesBox,
      h("p", {class: "muted small"}, "Passed / graded, with a 95% Wilson score interval. A whole item passes when ",
        "every criterion passes; an item whose sample or grader errored counts as not passed. Runs whose intervals ",
        "overlap widely may not differ at all: more items narrow them.")),
    h("section", {class: "card"}, h("h2", {}, "Where the runs disagree"), disagreeSummary, disagreeBox, more));

  function columnHead(run) {
    const model = describeModel(run.model, jobs);
    return h("th", {class: "run-head", dataset: {run: run.id, kind: model.kind}},
      h("div", {class: "run-label"}, model.label),
      h("div", {class: "mono small wrap-anywhere"}, run.model),
      h("div", {class: "small"}, h("a", {href: runHref(id, run.id), dataset: {action: "report"}}, run.name || run.id),
        " ", h("span", {class: `badge status-${run.status}`, dataset: {status: run.status}}, run.status)),
      model.job ? h("div", {class: "small"}, h("a", {href: `#/jobs/${encodeURIComponent(model.job.id)}`}, "job")) : null);
  }

  function drawRates() {
    if (!runs.length) {
      return clear(ratesBox, h("p", {class: "muted", dataset: {state: "no-runs"}},
        "No runs yet. Run this eval on a model (client.evals.runs.create with a completions data source) — the base ",
        "model and a fine-tuned one, say — and each run gets a column here."));
    }
    const criteria = (evaluation.testing_criteria || []).map((c) => c.name);
    clear(ratesBox, h("table", {class: "table comparison", id: "comparison"},
      h("thead", {}, h("tr", {}, h("th", {}, ""), runs.map(columnHead))),
      h("tbody", {},
        h("tr", {dataset: {row: "overall"}}, h("th", {}, "All criteria (items passed)"),
          runs.map((run) => { const {passed, trials} = overall(run); return rateCell(passed, trials, {"data-run": run.id}); })),
        criteria.map((name) => h("tr", {dataset: {row: "criterion", criterion: name}}, h("th", {}, name),
          runs.map((run) => { const {passed, trials} = criterion(run, name); return rateCell(passed, trials, {"data-run": run.id}); }))),
        h("tr", {dataset: {row: "errored"}}, h("th", {class: "muted"}, "Errored"),
          runs.map((run) => h("td", {dataset: {run: run.id}, class: "muted"}, String((run.result_counts || {}).errored || 0)))))));
  }

  function drawDisagreements() {
    const total = new Set(compared.flatMap(([, items]) => items.map((item) => item.datasource_item_id))).size;
    if (compared.length < 2) {
      disagreeSummary.textContent = "Disagreements need two runs with graded items.";
      disagreeSummary.dataset.count = "0";
      clear(disagreeBox);
      more.hidden = true;
      return;
    }
    disagreeSummary.dataset.count = String(found.length);
    disagreeSummary.textContent = `${found.length} of ${total} items: passed by some of the ${compared.length} runs `
      + `and not by the others.${truncated ? ` Only each run's first ${MAX_ITEMS} output items were read.` : ""}`;
    const columns = runs.filter((run) => compared.some(([runId]) => runId === run.id));
    clear(disagreeBox, found.length ? h("table", {class: "table disagreements", id: "disagreements"},
      h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Item"),
        columns.map((run) => h("th", {dataset: {run: run.id}, title: run.model}, describeModel(run.model, jobs).label)))),
      h("tbody", {}, found.slice(0, shown).map((entry) => h("tr", {dataset: {item: String(entry.id)}},
        h("td", {}, String(entry.id)),
        h("td", {class: "item-text"}, itemText(entry.item)),
        columns.map((run) => {
          const outcome = entry.outcomes.get(run.id);
          if (!outcome) return h("td", {class: "muted", dataset: {run: run.id}}, "not in this run");
          const answer = answerOf(outcome);
          return h("td", {class: "outcome", dataset: {run: run.id, grade: outcome.status}},
            h("div", {class: `answer${answer.error ? " error" : ""}`}, answer.text), gradeBadge(outcome.status),
            resultsList(outcome));
        }))))) : null);
    more.hidden = found.length <= shown;
  }

  async function loadItems() {
    const withItems = runs.filter((run) => overall(run).trials > 0);
    const key = withItems.map((run) => `${run.id}:${overall(run).trials}:${run.status}`).join(",");
    if (key === itemsKey) return;
    const read = await Promise.all(withItems.map(async (run) =>
      [run.id, await listAll(`${evalPath(id)}/runs/${encodeURIComponent(run.id)}/output_items`, {max: MAX_ITEMS})]));
    if (stopped) return;
    itemsKey = key;
    truncated = read.some(([, page]) => page.truncated);
    compared = read.map(([runId, page]) => [runId, page.data]);
    found = disagreements(new Map(compared));
    drawDisagreements();
  }

  async function refresh() {
    try {
      const [fresh, freshRuns, freshJobs] = await Promise.all([
        getJson(evalPath(id)), listAll(`${evalPath(id)}/runs`, {query: {order: "desc"}, max: MAX_RUNS}),
        jobsByModel()]);
      if (stopped) return;
      evaluation = fresh;
      jobs = freshJobs;
      runs = orderRuns(freshRuns.data, jobs);
      message.textContent = "";
      clear(head, h("h1", {}, evaluation.name || "Eval", " ", h("span", {class: "mono muted small"}, evaluation.id)));
      clear(about, h("div", {class: "card"}, h("h2", {}, "Testing criteria"),
        h("ul", {class: "criteria"}, (evaluation.testing_criteria || []).map((c) =>
          h("li", {dataset: {criterion: c.name}}, h("strong", {}, c.name), ` (${c.type}) `,
            h("code", {}, criterionText(c))))),
        h("p", {class: "muted small"}, `Created ${formatTime(evaluation.created_at)}.`)));
      drawRates();
      await loadItems();
    } catch (error) {
      if (stopped) return;
      message.textContent = error.status === 404 ? `No such eval: ${id}` : `Could not load the eval: ${error.message}`;
      if (error.status === 404) return;
    }
    if (!stopped && (!evaluation || runs.some((run) => ACTIVE.has(run.status)))) timer = setTimeout(refresh, REFRESH_MS);
  }

  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
