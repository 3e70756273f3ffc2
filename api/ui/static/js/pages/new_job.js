// New job: upload a dataset (validated by the server; its line-numbered problems are shown) or pick
// an uploaded one, optionally a validation file or a validation_split (one or the other, as the run
// contract requires), pick a base model (the smallest listed by default), DoRA or LoRA, rank and the
// common settings, create.

import {ApiError, getJson, postJson, uploadFile} from "../api.js";
import {clear, formatBytes, h} from "../dom.js";

const NUMBERS = [
  // [name in method.<kind>.hyperparameters, label, integer?, min, step]
  ["rank", "Rank", true, 1, 1],
  ["n_epochs", "Epochs", false, 0, "any"],
  ["batch_size", "Batch size", true, 1, 1],
  ["learning_rate", "Learning rate", false, 0, "any"],
  ["max_steps", "Max steps", true, 1, 1],
];

/**
 * {name: {description, default}} of the job's hyperparameters, from the API's OpenAPI document
 * (no key needed): each field's description there ends "Default: <the run contract's default>".
 * Missing or unreadable, the form just says "default".
 */
async function contractDefaults() {
  try {
    const response = await fetch("/openapi.json", {credentials: "omit"});
    const properties = (await response.json()).components.schemas.TrainingHyperparameters.properties;
    return Object.fromEntries(Object.entries(properties).map(([name, field]) => {
      const match = /^(.*?)\.?\s*Default: (.*)$/s.exec(field.description || "");
      return [name, match ? {description: match[1], default: match[2]} : {description: field.description || ""}];
    }));
  } catch {
    return {};
  }
}

/**
 * The base model the form starts with: the fastest to try, so a first job finishes in seconds.
 * /v1/models lists names only, so: one named tiny (what `dora up --demo` registers, tiny-llama),
 * else the one with the fewest parameters its name states ("135m", "1.5b"), else the first.
 */
export function defaultModel(ids) {
  const tiny = ids.find((id) => /(^|[^a-z])tiny([^a-z]|$)/i.test(id));
  if (tiny) return tiny;
  const size = (id) => {
    const match = /(?:^|[^a-z0-9.])(\d+(?:\.\d+)?)([mb])(?![a-z])/i.exec(id);
    return match ? Number(match[1]) * (match[2].toLowerCase() === "b" ? 1e9 : 1e6) : Infinity;
  };
  let best = ids[0];
  for (const id of ids) if (size(id) < size(best)) best = id;
  return best;
}

function fileLabel(file) {
  const what = [file.format, file.rows !== null && file.rows !== undefined ? `${file.rows} rows` : null,
                formatBytes(file.bytes)].filter(Boolean).join(", ");
  return `${file.filename} (${what}) · ${file.id}`;
}

export function uploadErrors(error) {
  const lines = error.details.map((detail) => h("li", {dataset: {line: detail.line ?? ""}},
    detail.line !== null && detail.line !== undefined ? h("strong", {}, `line ${detail.line}`) : h("strong", {}, "file"),
    detail.field ? h("span", {class: "muted"}, ` (${detail.field})`) : null,
    `: ${detail.message}`));
  return h("div", {class: "upload-errors", role: "alert"},
    h("p", {class: "error"}, error.message),
    lines.length ? h("ul", {class: "line-errors"}, lines) : null);
}

export function render(main, {query}) {
  let stopped = false;
  const fileSelect = h("select", {id: "training-file", name: "training_file", required: true},
    h("option", {value: ""}, "choose an uploaded file…"));
  const validationSelect = h("select", {id: "validation-file", name: "validation_file"},
    h("option", {value: ""}, "none"));
  const splitInput = h("input", {type: "number", id: "hp-validation_split", name: "validation_split", min: 0,
                                 max: 0.5, step: "any", placeholder: "0 (none)", inputmode: "decimal",
                                 "aria-describedby": "hint-validation_split"});
  const validationHint = h("span", {class: "hint", id: "hint-validation_split"},
    "A share of the training rows held out instead (at most 0.5); one or the other, not both.");
  const uploadStatus = h("div", {id: "upload-status"});
  const fileInput = h("input", {type: "file", id: "dataset-file", accept: ".jsonl,.json,application/jsonl",
                                onchange: () => upload()});
  const modelSelect = h("select", {id: "model", name: "model", required: true});
  const fields = Object.fromEntries(NUMBERS.map(([name, , integer, min, step]) =>
    [name, h("input", {type: "number", id: `hp-${name}`, name, min, step, placeholder: "default",
                       inputmode: integer ? "numeric" : "decimal", "aria-describedby": `hint-${name}`})]));
  const hints = Object.fromEntries(NUMBERS.map(([name]) => [name, h("span", {class: "hint", id: `hint-${name}`})]));
  const methodInputs = ["dora", "lora"].map((kind) =>
    h("label", {class: "radio"}, h("input", {type: "radio", name: "method", value: kind, checked: kind === "dora"}),
      kind === "dora" ? " DoRA" : " LoRA"));
  // the run contract's outputs (dora_contract/run.py OUTPUTS); gguf is off by default, as there
  const outputs = ["adapter", "merged", "gguf"].map((name) =>
    h("label", {class: "radio"}, h("input", {type: "checkbox", name: "outputs", value: name, checked: name !== "gguf"}),
      ` ${name}`));
  const suffix = h("input", {type: "text", id: "suffix", name: "suffix", maxlength: 64, pattern: "[A-Za-z0-9_.\\-]*",
                             placeholder: "optional"});
  const createError = h("div", {id: "create-error", role: "alert"});
  const createButton = h("button", {type: "submit", id: "create-job"}, "Create job");

  const form = h("form", {class: "card form", id: "new-job", method: "post", novalidate: true,
                          onsubmit: (event) => { event.preventDefault(); create(); }},
    h("fieldset", {},
      h("legend", {}, "1. Training data"),
      h("label", {for: "dataset-file"}, "Upload a dataset (JSONL: chat messages, prompt/completion, Alpaca or text)"),
      fileInput, uploadStatus,
      h("label", {for: "training-file"}, "Training file"), fileSelect,
      h("p", {class: "muted small"}, "A validation set gives eval loss and accuracy, and sample answers after "
        + "each evaluation."),
      h("div", {class: "grid validation"},
        h("div", {class: "field", dataset: {field: "validation_file"}},
          h("label", {for: "validation-file"}, "Validation file"), validationSelect),
        h("div", {class: "field", dataset: {field: "validation_split"}},
          h("label", {for: "hp-validation_split"}, "or validation split"), splitInput, validationHint))),
    h("fieldset", {},
      h("legend", {}, "2. Model and method"),
      h("label", {for: "model"}, "Base model"), modelSelect,
      h("div", {class: "label"}, "Method"), h("div", {class: "choices"}, methodInputs)),
    h("fieldset", {},
      h("legend", {}, "3. Settings"),
      h("p", {class: "muted small"}, "Empty fields take the server's defaults; the job shows every resolved value."),
      h("div", {class: "grid"}, NUMBERS.map(([name, label]) =>
        h("div", {class: "field", dataset: {field: name}}, h("label", {for: `hp-${name}`}, label), fields[name],
          hints[name]))),
      h("div", {class: "grid"},
        h("div", {class: "field"}, h("label", {for: "suffix"}, "Suffix"), suffix),
        h("div", {class: "field"}, h("div", {class: "label"}, "Outputs"), h("div", {class: "choices"}, outputs)))),
    createError, createButton);

  clear(main, h("div", {class: "page-head"}, h("h1", {}, "New fine-tuning job")), form);

  let wanted = query.get("file"), listing = 0;
  fileSelect.addEventListener("change", () => { wanted = fileSelect.value; });

  // a validation file and a validation_split exclude each other (the API refuses both): the one
  // set disables the other
  function exclusive() {
    const split = Number(splitInput.value);
    validationSelect.disabled = splitInput.value.trim() !== "" && split > 0;
    splitInput.disabled = validationSelect.value !== "";
  }
  validationSelect.addEventListener("change", exclusive);
  splitInput.addEventListener("input", exclusive);

  function showFiles(files) {
    clear(fileSelect, h("option", {value: ""}, files.length ? "choose an uploaded file…" : "no files yet: upload one"),
      files.map((file) => h("option", {value: file.id, selected: file.id === wanted}, fileLabel(file))));
    const validation = validationSelect.value;
    clear(validationSelect, h("option", {value: ""}, "none"),
      files.map((file) => h("option", {value: file.id, selected: file.id === validation}, fileLabel(file))));
    exclusive();
  }

  async function loadFiles() {
    const mine = ++listing; // only the newest listing is shown (one sent before an upload may answer after it)
    const page = await getJson("/v1/files", {query: {purpose: "fine-tune", limit: 200}});
    if (!stopped && mine === listing) showFiles(page.data);
  }

  async function loadModels() {
    const page = await getJson("/v1/models");
    if (stopped) return;
    const base = page.data.filter((model) => model.owned_by === "system");
    const chosen = defaultModel(base.map((model) => model.id));
    clear(modelSelect, base.length ? base.map((model) => h("option", {value: model.id, selected: model.id === chosen},
                                                         model.id))
      : h("option", {value: ""}, "no base models are configured"));
  }

  async function upload() {
    const file = fileInput.files[0];
    if (!file) return;
    clear(uploadStatus, h("p", {class: "muted"}, `Uploading and validating ${file.name} (${formatBytes(file.size)})…`));
    try {
      const stored = await uploadFile(file);
      wanted = stored.id;
      listing += 1; // a listing still on its way predates this file
      fileSelect.querySelector(`option[value="${CSS.escape(stored.id)}"]`)?.remove();
      fileSelect.options[0].after(h("option", {value: stored.id}, fileLabel(stored)));
      fileSelect.value = stored.id;
      validationSelect.querySelector(`option[value="${CSS.escape(stored.id)}"]`)?.remove();
      validationSelect.options[0].after(h("option", {value: stored.id}, fileLabel(stored)));
      clear(uploadStatus, h("p", {class: "ok", id: "upload-ok"}, `Uploaded ${fileLabel(stored)}`));
      loadFiles().catch(() => {});
    } catch (error) {
      clear(uploadStatus, error instanceof ApiError ? uploadErrors(error) : h("p", {class: "error"}, error.message));
    } finally {
      fileInput.value = "";
    }
  }

  function body() {
    const kind = form.querySelector("input[name=method]:checked").value;
    const hyperparameters = {};
    for (const [name, , integer] of NUMBERS) {
      const raw = fields[name].value.trim();
      if (raw !== "") hyperparameters[name] = integer ? Number.parseInt(raw, 10) : Number(raw);
    }
    const request = {model: modelSelect.value, training_file: fileSelect.value,
                     method: {type: kind, [kind]: {hyperparameters}},
                     outputs: [...form.querySelectorAll("input[name=outputs]:checked")].map((box) => box.value)};
    if (validationSelect.value) request.validation_file = validationSelect.value;
    else if (splitInput.value.trim() !== "" && Number(splitInput.value) > 0) {
      hyperparameters.validation_split = Number(splitInput.value);
    }
    if (suffix.value.trim()) request.suffix = suffix.value.trim();
    return request;
  }

  async function create() {
    for (const field of form.querySelectorAll(".field.invalid")) field.classList.remove("invalid");
    clear(createError);
    if (!fileSelect.value) return clear(createError, h("p", {class: "error"}, "Choose or upload a training file first."));
    createButton.disabled = true;
    try {
      const job = await postJson("/v1/fine_tuning/jobs", body());
      window.location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      const name = (error.param || "").split(".").pop();
      form.querySelector(`.field[data-field="${CSS.escape(name)}"]`)?.classList.add("invalid");
      clear(createError, h("p", {class: "error"}, error.message,
        error.param ? h("span", {class: "muted"}, ` (${error.param})`) : null));
    } finally {
      createButton.disabled = false;
    }
  }

  contractDefaults().then((defaults) => {
    for (const [name] of NUMBERS) {
      const known = defaults[name];
      if (!known || stopped) continue;
      if (known.default !== undefined) {
        fields[name].placeholder = known.default === "null" ? "not set" : `default: ${known.default}`;
      }
      hints[name].textContent = known.description;
    }
  });
  Promise.all([loadFiles(), loadModels()]).catch((error) => {
    if (!stopped) clear(createError, h("p", {class: "error"}, `Could not load files or models: ${error.message}`));
  });
  return () => { stopped = true; };
}
