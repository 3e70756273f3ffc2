// Files: the tenant's uploads and job results; upload, download, start a job from one, delete one
// the API lets go (api/services/files.py delete_file refuses, 409, a job's result, kept with its
// job, and a file an active job uses: no Delete for the first, a disabled one for the second).

import {ApiError, download, getJson, request, uploadFile} from "../api.js";
import {clear, formatBytes, formatTime, h, timeAgo} from "../dom.js";
import {uploadErrors} from "./new_job.js";

const PAGE = 100;

export function render(main) {
  let files = [], hasMore = false, stopped = false;
  let inUse = new Map(); // file id -> the queued or running job that uses it
  const message = h("div", {id: "files-message", role: "alert"});
  const body = h("tbody");
  const more = h("button", {type: "button", class: "secondary", hidden: true, onclick: () => load(true)}, "Load more");
  const input = h("input", {type: "file", id: "files-upload", accept: ".jsonl,.json", onchange: () => upload()});

  clear(main,
    h("div", {class: "page-head"}, h("h1", {}, "Files"),
      h("div", {class: "actions"}, h("label", {for: "files-upload", class: "button"}, "Upload dataset"), input)),
    message,
    h("table", {class: "table", id: "files-table"},
      h("thead", {}, h("tr", {}, ["File", "Name", "Purpose", "Format", "Rows", "Size", "Created", ""]
        .map((title) => h("th", {}, title)))),
      body),
    more);
  input.classList.add("visually-hidden");

  function row(file) {
    const note = h("span", {class: "muted small"});
    return h("tr", {dataset: {file: file.id}},
      h("td", {class: "mono small nowrap"}, file.id),
      h("td", {}, file.filename),
      h("td", {}, file.purpose),
      h("td", {}, file.format || "–"),
      h("td", {}, file.rows ?? "–"),
      h("td", {}, formatBytes(file.bytes)),
      h("td", {title: formatTime(file.created_at)}, timeAgo(file.created_at)),
      h("td", {class: "row-actions"},
        file.purpose === "fine-tune" ? h("a", {class: "button small secondary", href: `#/new?file=${encodeURIComponent(file.id)}`},
          "New job") : null,
        h("button", {type: "button", class: "secondary small", onclick: async () => {
          note.textContent = "…";
          try {
            note.textContent = `saved ${formatBytes(await download(`/v1/files/${encodeURIComponent(file.id)}/content`,
                                                                    file.filename))}`;
          } catch (error) { note.textContent = `failed: ${error.message}`; }
        }}, "Download"),
        deleteButton(file),
        note));
  }

  function deleteButton(file) {
    if (file.purpose === "fine-tune-results") {
      return h("span", {class: "muted small", dataset: {kept: "results"}, title: "A job's result is kept with its job"},
        "kept with its job");
    }
    const user = inUse.get(file.id);
    const remove = async (event) => {
      const button = event.currentTarget;
      if (!window.confirm(`Delete ${file.filename} (${file.id})?`)) return;
      button.disabled = true;
      try {
        await request(`/v1/files/${encodeURIComponent(file.id)}`, {method: "DELETE"});
        files = files.filter((f) => f.id !== file.id);
        draw();
        clear(message, h("p", {class: "ok"}, `Deleted ${file.filename}.`));
      } catch (error) {
        button.disabled = false;
        clear(message, h("p", {class: "error"}, `Could not delete: ${error.message}`));
      }
    };
    return h("button", {type: "button", class: "danger small", dataset: {action: "delete"}, disabled: Boolean(user),
                        title: user ? `Used by active job ${user}: cancel it first` : null, onclick: remove},
      "Delete");
  }

  function draw() {
    clear(body, files.length ? files.map(row) : h("tr", {}, h("td", {colspan: 8, class: "empty"}, "No files yet.")));
    more.hidden = !hasMore;
  }

  async function load(older = false) {
    try {
      const after = older && files.length ? files[files.length - 1].id : undefined;
      const [page, active] = await Promise.all([getJson("/v1/files", {query: {limit: PAGE, after}}), activeJobs()]);
      if (stopped) return;
      inUse = active;
      files = older ? [...files, ...page.data] : page.data;
      hasMore = page.has_more;
      draw();
    } catch (error) {
      if (!stopped) clear(message, h("p", {class: "error"}, `Could not load files: ${error.message}`));
    }
  }

  async function activeJobs() {
    const used = new Map();
    try {
      for (const status of ["queued", "running"]) {
        const page = await getJson("/v1/fine_tuning/jobs", {query: {status, limit: 100}});
        for (const job of page.data) {
          for (const id of [job.training_file, job.validation_file]) if (id) used.set(id, job.id);
        }
      }
    } catch { /* unknown: Delete stays offered, and the API says why if it refuses */ }
    return used;
  }

  async function upload() {
    const file = input.files[0];
    if (!file) return;
    clear(message, h("p", {class: "muted"}, `Uploading and validating ${file.name}…`));
    try {
      const stored = await uploadFile(file);
      clear(message, h("p", {class: "ok"}, `Uploaded ${stored.filename}: ${stored.format}, ${stored.rows} rows.`));
      await load();
    } catch (error) {
      clear(message, error instanceof ApiError ? uploadErrors(error) : h("p", {class: "error"}, error.message));
    } finally {
      input.value = "";
    }
  }

  load();
  return () => { stopped = true; };
}
