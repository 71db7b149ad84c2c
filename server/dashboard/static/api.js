// The REST API under /api/v1, the admin key (kept in this tab's session storage), and the server's clock.

const KEY = "feddetox.adminKey";

export class ApiError extends Error {
  constructor(status, code, message, reason) {
    super(message);
    this.status = status;
    this.code = code;
    this.reason = reason;
  }
}

// the coordinator's time minus ours, from each answer's Date header (whole seconds), so that deadlines
// count down against the coordinator's clock
export const clock = {
  skew: 0,
  now() { return Date.now() / 1000 + this.skew; },
};

export function adminKey() {
  try { return sessionStorage.getItem(KEY) || ""; } catch { return ""; }
}

export function setAdminKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  } catch { /* storage off: the key lasts until the page reloads */ }
  window.dispatchEvent(new Event("adminkey"));
}

/**
 * fetch /api/v1{path}; returns the JSON answer (null for 204) or throws ApiError with the coordinator's message.
 * opts: {method, json, bytes, admin: send the admin key (default: for every method but GET), key: this key}
 */
export async function api(path, opts = {}) {
  const method = opts.method || "GET";
  const headers = { Accept: "application/json" };
  let body;
  if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(opts.json); }
  if (opts.bytes !== undefined) { headers["Content-Type"] = "application/octet-stream"; body = opts.bytes; }
  const key = opts.key !== undefined ? opts.key : adminKey();
  if ((opts.admin ?? method !== "GET") && key) headers["X-Admin-Key"] = key;
  let res;
  try {
    res = await fetch(`/api/v1${path}`, { method, headers, body, cache: "no-store", credentials: "omit" });
  } catch (err) {
    throw new ApiError(0, "unreachable", `the coordinator did not answer (${err.message})`);
  }
  const date = Date.parse(res.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    const skew = date / 1000 - Date.now() / 1000 + 0.5;
    if (Math.abs(skew - clock.skew) > 1) clock.skew = skew; // steady countdowns: move only on a real difference
  }
  if (res.status === 204) return null;
  let data = null;
  try { data = await res.json(); } catch { /* not JSON */ }
  if (!res.ok) {
    const message = (data && data.message) || `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, (data && data.error) || "http_error", message, data && data.reason);
  }
  return data;
}
