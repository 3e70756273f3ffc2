// Evals: the tenant's evals, newest first (each links its comparison page). Evals are created with
// the API (the openai client's client.evals.create); this page reads them.

import {getJson} from "../api.js";
import {clear, formatTime, h, timeAgo} from "../dom.js";
import {PAGE_LIMIT, criterionText, evalHref} from "../evals.js";

export function render(main) {
  let evals = [], hasMore = false, stopped = false;
  const message = h("p", {class: "error", role: "alert"});
  const body = h("tbody");
  const more = h("button", {type: "button", class: "secondary", hidden: true, onclick: () => load(true)}, "Load more");

  clear(main,
    h("div", {class: "page-head"}, h("h1", {}, "Evals")),
    h("p", {class: "muted"}, "Each eval's page compares its runs side by side: the base model, fine-tuned models and ",
      "their checkpoints, with pass rates and 95% intervals, and the items where they disagree. Create evals and runs ",
      "with the API (", h("code", {}, "client.evals.create"), ", ", h("code", {}, "client.evals.runs.create"), ")."),
    message,
    h("table", {class: "table", id: "evals-table"},
      h("thead", {}, h("tr", {}, ["Eval", "Id", "Testing criteria", "Created"].map((t) => h("th", {}, t)))),
      body),
    more);

  function draw() {
    clear(body, evals.length ? evals.map((evaluation) => h("tr", {dataset: {eval: evaluation.id}},
      h("td", {}, h("a", {href: evalHref(evaluation.id)}, evaluation.name || "(unnamed)")),
      h("td", {class: "mono small"}, evaluation.id),
      h("td", {class: "small"}, (evaluation.testing_criteria || []).map((criterion) =>
        h("div", {}, h("strong", {}, criterion.name), " ", h("span", {class: "muted"}, criterionText(criterion))))),
      h("td", {title: formatTime(evaluation.created_at)}, timeAgo(evaluation.created_at))))
      : h("tr", {}, h("td", {colspan: 4, class: "empty"}, "No evals yet.")));
    more.hidden = !hasMore;
  }

  async function load(older = false) {
    try {
      const last = older && evals.length ? evals[evals.length - 1].id : undefined;
      const page = await getJson("/v1/evals", {query: {limit: PAGE_LIMIT, order: "desc", after: last}});
      if (stopped) return;
      evals = older ? [...evals, ...page.data] : page.data;
      hasMore = page.has_more;
      message.textContent = "";
      draw();
    } catch (error) {
      if (!stopped) message.textContent = `Could not load evals: ${error.message}`;
    }
  }

  load();
  return () => { stopped = true; };
}
