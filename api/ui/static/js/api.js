// The REST API with the signed-in key. The key lives in this tab's sessionStorage only: it is sent
// as `Authorization: Bearer` on every call (downloads and streams included) and never put in a URL.

const KEY = "dora.apiKey";
const listeners = new Set();

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
}

/** Called with a message when the key is refused (401), so the app can go back to sign-in. */
export function onUnauthorized(listener) {
  listeners.add(listener);
}

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code ?? null;
    this.param = error.param ?? null;
    this.details = Array.isArray(error.details) ? error.details : [];
  }
}

function headers(extra = {}, key = getKey()) {
  return key ? {Authorization: `Bearer ${key}`, ...extra} : {...extra};
}

async function failure(response) {
  let error = {message: `${response.status} ${response.statusText}`};
  try {
    const body = await response.json();
    if (body && body.error) error = body.error;
    else if (body && body.detail) error = {message: typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)};
  } catch { /* not JSON: keep the status line */ }
  const apiError = new ApiError(response.status, error);
  if (response.status === 401) for (const listener of listeners) listener(apiError.message);
  return apiError;
}

/** fetch() with the key; a non-2xx answer is thrown as an ApiError carrying OpenAI's error body. */
export async function request(path, {method = "GET", json, body, query, signal, accept, key, extraHeaders} = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const extra = {...(extraHeaders || {})};
  if (accept) extra.Accept = accept;
  if (json !== undefined) {
    extra["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(url, {method, body, signal, headers: headers(extra, key), cache: "no-store",
                                     credentials: "omit"});
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}

export async function postJson(path, json, options = {}) {
  return (await request(path, {...options, method: "POST", json})).json();
}

/** Checks a key before keeping it: a 401 is thrown, anything else means the key works. */
export async function checkKey(key) {
  await request("/v1/models", {key});
}

export function uploadFile(file, purpose = "fine-tune") {
  const form = new FormData();
  form.append("purpose", purpose);
  form.append("file", file, file.name);
  return request("/v1/files", {method: "POST", body: form}).then((r) => r.json());
}

/**
 * Downloads `path` with the key (a plain link cannot carry the Authorization header): reads the
 * body as it arrives, reporting progress, then hands the bytes to the browser as a file.
 */
export async function download(path, filename, onProgress = () => {}) {
  const response = await request(path);
  const total = Number(response.headers.get("Content-Length")) || null;
  const chunks = [];
  let received = 0;
  const reader = response.body.getReader();
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(received, total);
  }
  const blob = new Blob(chunks, {type: response.headers.get("Content-Type") || "application/octet-stream"});
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return received;
}
