// Charts as SVG drawn from the analytics report: horizontal bars, one per row, each with its
// value written beside it, and the same figures as a table for screen readers and copying.

import { h, s } from "./dom.js";

const ROW = 28;
const LABEL = 200;
const WIDTH = 640;

/** A horizontal bar chart. rows: [{label, value, max, text, key}]: the bar is value/max of
 *  the width; text is what is written beside it. */
export function barChart({ id, title, description, rows, columns }) {
  const height = Math.max(rows.length, 1) * ROW + 8;
  const plot = WIDTH - LABEL - 120;
  const svg = s("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-labelledby": `${id}-title`,
                         "aria-describedby": `${id}-desc`, class: "chart", preserveAspectRatio: "xMinYMin meet" },
    rows.map((row, i) => {
      const y = i * ROW + 4;
      const fraction = row.max > 0 ? Math.max(0, Math.min(1, row.value / row.max)) : 0;
      return s("g", { class: "bar", "data-key": row.key, "data-value": row.value },
        s("title", {}, `${row.label}: ${row.text}`),
        s("text", { x: LABEL - 8, y: y + ROW / 2 + 4, "text-anchor": "end", class: "label" }, truncate(row.label, 28)),
        s("rect", { x: LABEL, y: y + 4, width: plot, height: ROW - 10, class: "track" }),
        s("rect", { x: LABEL, y: y + 4, width: Math.max(fraction * plot, row.value > 0 ? 2 : 0), height: ROW - 10, class: "fill" }),
        s("text", { x: LABEL + plot + 8, y: y + ROW / 2 + 4, class: "value" }, row.text));
    }));
  return h("figure", { class: "chart-figure", id, "data-chart": id },
    h("figcaption", {}, h("h3", { id: `${id}-title` }, title), h("p", { id: `${id}-desc`, class: "muted" }, description)),
    rows.length ? svg : h("p", {}, "No data yet."),
    h("details", {}, h("summary", {}, "As a table"), table(columns, rows.map((row) => row.cells))));
}

/** A figure of a few numbers (completion, time to completion). */
export function figures({ id, title, items }) {
  return h("figure", { class: "chart-figure figures", id, "data-chart": id },
    h("figcaption", {}, h("h3", {}, title)),
    h("dl", {}, items.map(([label, value, key]) => [h("dt", {}, label), h("dd", { "data-key": key }, value)])));
}

export function table(columns, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c ?? "—"))))));
}

function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** A ratio (0 to 1) as a percentage. */
export const percent = (ratio) => (ratio === null || ratio === undefined ? "—" : `${Math.round(ratio * 1000) / 10}%`);
/** A percentage (0 to 100, as the report's rates are). */
export const rate = (value) => (value === null || value === undefined ? "—" : `${Math.round(value * 10) / 10}%`);
