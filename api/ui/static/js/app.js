// The dashboard's shell: sign-in, the top bar, and hash routing to the pages
//   #/jobs[?status=...]   jobs          #/jobs/<id>   one job
//   #/new                 new job       #/files       files
//   #/playground[?model=<id>&compare=<id>&job=<id>]   chat with a model, or compare two
//   #/evals               evals         #/evals/<id>  an eval's runs compared
//   #/evals/<id>/runs/<run id>[?status=pass|fail|error]   one run's report (its report_url)
// Each page's render(main, params) returns a function that stops its timers and streams.

import {checkKey, clearKey, getKey, onUnauthorized, setKey} from "./api.js";
import {clear, h} from "./dom.js";
import * as evalPage from "./pages/eval.js";
import * as evalRunPage from "./pages/eval_run.js";
import * as evalsPage from "./pages/evals.js";
import * as filesPage from "./pages/files.js";
import * as jobPage from "./pages/job.js";
import * as jobsPage from "./pages/jobs.js";
import * as newJobPage from "./pages/new_job.js";
import * as playgroundPage from "./pages/playground.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const session = document.getElementById("session");
let cleanup = null;

function parseHash() {
  const hash = window.location.hash.replace(/^#\/?/, "");
  const [path, queryString = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return {parts, query: new URLSearchParams(queryString)};
}

function route() {
  const {parts, query} = parseHash();
  if (parts[0] === "jobs" && parts[1]) return {name: "jobs", page: jobPage, params: {id: parts[1]}};
  if (parts[0] === "new") return {name: "new", page: newJobPage, params: {query}};
  if (parts[0] === "files") return {name: "files", page: filesPage, params: {}};
  if (parts[0] === "playground") return {name: "playground", page: playgroundPage, params: {query}};
  if (parts[0] === "evals" && parts[1] && parts[2] === "runs" && parts[3]) {
    return {name: "evals", page: evalRunPage, params: {evalId: parts[1], runId: parts[3], query}};
  }
  if (parts[0] === "evals" && parts[1]) return {name: "evals", page: evalPage, params: {id: parts[1]}};
  if (parts[0] === "evals") return {name: "evals", page: evalsPage, params: {}};
  return {name: "jobs", page: jobsPage, params: {query}};
}

function stopPage() {
  if (cleanup) {
    try { cleanup(); } catch (error) { console.warn(error); }
  }
  cleanup = null;
}

function show() {
  stopPage();
  if (!getKey()) return signIn();
  nav.hidden = false;
  session.hidden = false;
  const key = getKey();
  document.getElementById("key-hint").textContent = `key ${key.slice(0, 7)}…${key.slice(-4)}`;
  const {name, page, params} = route();
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("active", link.dataset.nav === name);
  clear(main);
  cleanup = page.render(main, params) || null;
}

function signIn(message = "") {
  stopPage();
  nav.hidden = true;
  session.hidden = true;
  const input = h("input", {type: "password", id: "api-key", name: "api-key", autocomplete: "off", required: true,
                            placeholder: "sk-...", spellcheck: "false", "aria-label": "API key"});
  const error = h("p", {class: "error", id: "sign-in-error", role: "alert"}, message);
  const button = h("button", {type: "submit"}, "Sign in");
  // POST, and handled here: a key is never put in a URL, even if this script fails to load
  const form = h("form", {class: "card sign-in", method: "post", id: "sign-in",
                          onsubmit: async (event) => {
                            event.preventDefault();
                            const key = input.value.trim();
                            if (!key) return;
                            button.disabled = true;
                            error.textContent = "";
                            try {
                              await checkKey(key);
                              setKey(key);
                              input.value = "";
                              show();
                            } catch (failure) {
                              error.textContent = failure.status === 401
                                ? "This API key was not accepted." : `Could not sign in: ${failure.message}`;
                            } finally {
                              button.disabled = false;
                            }
                          }},
    h("h1", {}, "Sign in"),
    h("p", {class: "muted"}, "Paste an API key (", h("code", {}, "dora keys create --tenant NAME"),
      "). It is kept in this browser tab only, until you sign out or close the tab."),
    h("p", {class: "muted"}, "Running ", h("code", {}, "make run"), " (", h("code", {}, "dora up --demo"),
      ")? Its demo key is in ", h("code", {}, "var/demo-api-key"), ": ", h("code", {}, "cat var/demo-api-key"), "."),
    h("label", {for: "api-key"}, "API key"), input, error, button);
  clear(main, form);
  input.focus();
}

document.getElementById("sign-out").addEventListener("click", () => {
  clearKey();
  signIn("Signed out.");
});

onUnauthorized((message) => {
  if (!getKey()) return;
  clearKey();
  signIn(`Signed out: ${message}`);
});

window.addEventListener("hashchange", show);
show();
