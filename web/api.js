// The API client: the bearer token of the session, the error shape, retries of 503.

import { announce } from "./dom.js";

const SESSION_KEY = "lessonstream.session";
// A 503 (a service restarting, the database away) is asked again for this long.
const RETRY_FOR_MS = 30_000;

export class ApiError extends Error {
  /** An answer in the API's error shape: {code, message, data: {status, ...}}. */
  constructor(status, body) {
    super((body && body.message) || `Request failed (${status})`);
    this.status = status;
    this.code = (body && body.code) || "error";
    this.data = (body && body.data) || {};
  }
}

/** The signed-in user: {token, user: {id, name, email, roles}}, kept for this tab only. */
export const session = {
  get() {
    try {
      return JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    } catch {
      return null;
    }
  },
  start(token) {
    const claims = decodeClaims(token);
    const roles = Array.isArray(claims.roles) ? claims.roles : [claims.roles || "learner"];
    const value = { token, user: { id: claims.sub, name: claims.name || claims.sub, email: claims.email || "", roles } };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
    return value;
  },
  end() {
    sessionStorage.removeItem(SESSION_KEY);
  },
};

/** The token's claims, for display only: the services verify it on every request. */
function decodeClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

export function isStaff(user) {
  return Boolean(user && user.roles.some((role) => role === "instructor" || role === "admin"));
}

export const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One call to the API on this origin. A 503 (a service restarting, the database away:
 *  nothing was written) and a failed connection are asked again after Retry-After for up
 *  to 30 s, telling the user; any other error is thrown as an ApiError with the server's
 *  message. Answers: {status, body, headers}. */
export async function api(path, { method = "GET", body, accept = "application/json", auth = true } = {}) {
  const headers = { Accept: accept };
  const current = session.get();
  if (auth && current) headers.Authorization = `Bearer ${current.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const deadline = Date.now() + RETRY_FOR_MS;
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      if (Date.now() < deadline) {
        announce("The server cannot be reached; trying again…", "warning");
        await wait(Math.min(1000 * 2 ** attempt, 5000));
        continue;
      }
      announce("");
      throw new ApiError(0, { code: "network_error", message: "The server cannot be reached. Check your connection and try again." });
    }
    if (response.status === 503 && Date.now() < deadline) {
      const after = Math.min(Math.max(Number(response.headers.get("Retry-After")) || 1, 1), 10);
      announce(`The service is unavailable for a moment; trying again in ${after} s…`, "warning");
      await wait(after * 1000);
      continue;
    }
    if (attempt > 0) announce("");
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text && accept === "application/json" ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    if (!response.ok) {
      const error = new ApiError(response.status, parsed || { message: `${response.status} ${response.statusText}` });
      if (response.status === 401 && auth) {
        // Expired or refused token: sign in again, then come back here.
        session.end();
        sessionStorage.setItem("lessonstream.expired", "1");
        sessionStorage.setItem("lessonstream.after-sign-in", location.hash);
        location.hash = "#/signin";
      }
      throw error;
    }
    return { status: response.status, body: parsed ?? text, headers: response.headers };
  }
}

/** The path of an absolute URL the API gave (certificate links name the public base URL):
 *  opened on this origin, the gateway that serves this app. */
export function onThisOrigin(url) {
  try {
    const parsed = new URL(url, location.origin);
    return parsed.pathname + parsed.search;
  } catch {
    return url;
  }
}
