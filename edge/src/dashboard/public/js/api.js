/**
 * The one door to the public API: same-origin fetches that carry the session cookie, the CSRF token on every state
 * change, and one error type built from the API's error envelope.
 */
export class ApiError extends Error {
  constructor(status, body) {
    const e = body?.error;
    super(e ? e.message : `HTTP ${status}`);
    this.status = status;
    this.type = e?.type;
    this.code = e?.code;
    this.param = e?.param;
    this.requestId = e?.request_id;
  }
}

let csrfToken = null;
/** Called with the token signin/signup/session answered. */
export function setCsrfToken(token) {
  csrfToken = token;
}

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** Calls `/v1${path}`; answers the parsed JSON (null for 204) or throws ApiError. */
export async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (UNSAFE.has(method) && csrfToken) headers["x-csrf-token"] = csrfToken;
  const res = await fetch(`/v1${path}`, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = res.status === 204 ? "" : await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    // A session that ended elsewhere (sign-out everywhere, expiry): the shell sends the person to sign in again.
    if (res.status === 401 && !path.startsWith("/auth/")) window.dispatchEvent(new CustomEvent("session-ended"));
    throw new ApiError(res.status, json);
  }
  return json;
}

/**
 * PUTs `file` to a presigned URL with XMLHttpRequest, the one browser API that reports upload progress.
 * `onProgress(loaded, total)` is called as bytes leave; resolves on 2xx, rejects otherwise.
 */
export function putWithProgress(upload, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(upload.method ?? "PUT", upload.url);
    for (const [name, value] of Object.entries(upload.headers ?? {})) {
      // The browser sets these itself and refuses to be told.
      if (!["host", "content-length"].includes(name.toLowerCase())) xhr.setRequestHeader(name, value);
    }
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () =>
      xhr.status >= 200 && xhr.status < 300
        ? resolve()
        : reject(new Error(`Storage refused the upload (HTTP ${xhr.status}).`));
    xhr.onerror = () => reject(new Error("The upload failed (network error)."));
    xhr.onabort = () => reject(new Error("The upload was aborted."));
    xhr.send(file);
  });
}

/** Lowercase hex SHA-256 of a Blob, which the API asks for before it presigns the upload. */
export async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Follows a generation over server-sent events; `onUpdate(generation)` for each state. Answers a function that
 * closes the stream. The stream closes itself after the final state.
 */
export function followGeneration(id, onUpdate, onEnd) {
  const source = new EventSource(`/v1/generations/${encodeURIComponent(id)}/events`, { withCredentials: true });
  let done = false;
  source.addEventListener("generation", (e) => {
    const g = JSON.parse(e.data);
    onUpdate(g);
    if (["succeeded", "failed", "canceled"].includes(g.status)) {
      done = true;
      source.close();
      onEnd?.(g);
    }
  });
  source.onerror = () => {
    // The server closes the stream after the last state; the browser would reconnect (with Last-Event-ID).
    if (done) source.close();
  };
  return () => source.close();
}
