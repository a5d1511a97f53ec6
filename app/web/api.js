// Talking to the loraforge API with the signed-in key: JSON calls, uploads with progress,
// downloads as blobs, job event streams and streamed completions read with fetch().

import { createSseParser } from "./sse.js";

const KEY_STORAGE = "loraforge.apiKey";
// The dashboard lives at <root>/ui/; the API at <root>/v1/.
const ROOT = location.pathname.replace(/\/ui\/.*$/, "");

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `request failed with HTTP ${status}`);
    this.status = status;
    this.code = error?.code || null;
    this.param = error?.param || null;
    this.problems = error?.problems || [];
    this.problemCount = error?.problem_count || this.problems.length;
  }
}

export const session = {
  get key() {
    return sessionStorage.getItem(KEY_STORAGE);
  },
  set key(value) {
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  },
  onUnauthorized: () => {},
};

export function apiUrl(path) {
  return `${ROOT}/v1${path}`;
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

async function failure(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    // not JSON: a proxy's page, say; the status is all we know
  }
  if (response.status === 401) session.onUnauthorized(error?.message);
  return new ApiError(response.status, error);
}

export async function api(path, { method = "GET", json, signal, key } = {}) {
  const headers = key ? { Authorization: `Bearer ${key}` } : authHeaders();
  const init = { method, headers, signal };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(apiUrl(path), init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

// Upload with XMLHttpRequest: fetch() reports no upload progress.
export function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl("/files"));
    xhr.setRequestHeader("Authorization", `Bearer ${session.key}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(xhr.response);
        return;
      }
      if (xhr.status === 401) session.onUnauthorized(xhr.response?.error?.message);
      reject(new ApiError(xhr.status, xhr.response?.error));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, { message: "network error" })));
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

function attachmentName(response, fallback) {
  const header = response.headers.get("Content-Disposition") || "";
  const encoded = /filename\*=(?:UTF-8|utf-8)''([^;]+)/.exec(header);
  if (encoded) return decodeURIComponent(encoded[1]);
  const plain = /filename="?([^";]+)"?/.exec(header);
  return plain ? plain[1] : fallback;
}

// Fetch with the key, then hand the bytes to the browser as a file download.
export async function downloadFile(path, fallbackName) {
  const response = await fetch(apiUrl(path), { headers: authHeaders() });
  if (!response.ok) throw await failure(response);
  const blob = await response.blob();
  const name = attachmentName(response, fallbackName);
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { name, bytes: blob.size };
}

const RECONNECT_MS = 2000;

// Read a server-sent event stream until its `done` frame, reconnecting with Last-Event-ID
// after a dropped connection. Resolves with the done frame's data; stops when `signal` aborts.
export async function streamEvents(path, { onEvent, signal }) {
  let lastEventId = null;
  while (!signal.aborted) {
    let done = null;
    try {
      const headers = authHeaders(lastEventId ? { "Last-Event-ID": lastEventId } : {});
      const response = await fetch(apiUrl(path), { headers, signal });
      if (!response.ok) throw await failure(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = createSseParser((frame) => {
        if (frame.event === "done") {
          done = JSON.parse(frame.data || "{}");
          return;
        }
        if (frame.id) lastEventId = frame.id;
        onEvent(frame.event, JSON.parse(frame.data));
      });
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended || done) break;
        parser.feed(value);
      }
      if (done) return done;
    } catch (error) {
      if (signal.aborted) return null;
      if (error instanceof ApiError) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
  return null;
}

// POST a streamed completion (`stream: true` is added) and hand each chunk to onChunk as it
// arrives. Resolves true when the stream reached `data: [DONE]`, false when the connection
// ended before it. Aborting `signal` closes the connection, which stops the generation.
export async function streamCompletion(path, body, { onChunk, signal }) {
  const response = await fetch(apiUrl(path), {
    method: "POST",
    headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let done = false;
  const parser = createSseParser((frame) => {
    if (done) return;
    if (frame.data === "[DONE]") done = true;
    else onChunk(JSON.parse(frame.data));
  });
  for (;;) {
    const { value, done: ended } = await reader.read();
    if (ended) return done;
    parser.feed(value);
  }
}
