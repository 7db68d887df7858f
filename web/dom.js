// A few DOM helpers: every text goes in as text (never as HTML), so nothing the API returns
// can inject markup.

/** An element: h("a", {href: "#/"}, "text", child, ...). Attributes set as properties when
 *  the element has them (onclick, value, disabled), else as attributes (aria-*, data-*). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    // Through the CSSOM: the content security policy refuses style attributes.
    else if (key === "style") Object.assign(el.style, value);
    else if (key in el && !key.includes("-") && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element, attributes always as attributes. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the main content, move focus there (keyboard and screen-reader users land on
 *  the new page) and name the page in the title. */
export function show(title, ...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children.flat(Infinity).filter(Boolean));
  document.title = title ? `${title} · Lessonstream` : "Lessonstream";
  main.focus({ preventScroll: false });
}

/** A short message in the polite live region (read out, shown under the header). */
export function announce(message, kind = "info") {
  const status = document.getElementById("status");
  status.textContent = message;
  status.dataset.kind = kind;
}

/** A progress bar with its value spoken and shown. */
export function progressBar(percent, label) {
  const value = Math.max(0, Math.min(100, Math.round(Number(percent) || 0)));
  return h("div", { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
                    "aria-valuenow": String(value), "aria-label": label },
    h("span", { class: "progress-track" }, h("span", { class: "progress-fill", style: { width: `${value}%` } })),
    h("span", { class: "progress-text" }, `${value}%`));
}

export function formatSeconds(seconds) {
  const total = Math.max(0, Math.floor(Number(seconds) || 0));
  const m = Math.floor(total / 60), sec = total % 60;
  return `${m}:${String(sec).padStart(2, "0")}`;
}

export function formatDate(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value)
    : date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

/** An error as the user should read it: the API's own message. */
export function errorBox(error, ...more) {
  return h("div", { class: "error", role: "alert" },
    h("p", {}, error.message || "Something went wrong."), ...more);
}
