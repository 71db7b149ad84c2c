// Line charts per round, drawn as SVG by our own code: one <g data-series=KEY> per series, one
// <circle class="pt"> per point, a legend with the newest values, and the same numbers as a table.

import { h, svg } from "./dom.js";

const W = 480, H = 220;
const M = { left: 48, right: 14, top: 14, bottom: 34 };
const MARKERS = ["circle", "square", "triangle", "diamond"];

// "nice" ticks covering [lo, hi]: steps of 1, 2 or 5 times a power of ten
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
  const raw = (hi - lo) / Math.max(1, count - 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const start = Math.floor(lo / step + 1e-9) * step, end = Math.ceil(hi / step - 1e-9) * step;
  const ticks = [];
  for (let v = start; v <= end + step / 2; v += step) ticks.push(Number(v.toFixed(10)));
  return ticks;
}

function roundTicks(lo, hi) {
  const span = hi - lo;
  const step = Math.max(1, Math.ceil(span / 8));
  const ticks = [];
  for (let x = Math.ceil(lo); x <= hi; x += step) ticks.push(x);
  return ticks;
}

function marker(kind, x, y) {
  const r = 3.6;
  if (kind === "square") return svg("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r });
  if (kind === "triangle") return svg("path", { d: `M${x} ${y - r - 0.8}L${x + r + 0.6} ${y + r}L${x - r - 0.6} ${y + r}Z` });
  if (kind === "diamond") return svg("path", { d: `M${x} ${y - r - 1}L${x + r + 1} ${y}L${x} ${y + r + 1}L${x - r - 1} ${y}Z` });
  return svg("circle", { cx: x, cy: y, r });
}

/**
 * A chart of series [{key, label, points: [[round, value, note?], ...]}].
 * options: {id, title, subtitle, format(v) -> text, tick(v) -> text (default: format), empty: text, xLabel(x),
 *           percent: true for a fixed 0..1 domain, zero: true for a domain from 0 to the data's nice maximum}
 */
export function lineChart(series, options) {
  const fmt = options.format;
  const tickText = options.tick || fmt;
  const xLabel = options.xLabel || ((x) => `round ${x}`);
  const drawn = series.filter((s) => s.points.length > 0);
  const titleId = `${options.id}-title`;
  const figure = h("figure", { class: "chart", id: options.id, "data-chart": options.id },
    h("figcaption", { id: titleId }, h("span", { class: "chart-title" }, options.title),
      options.subtitle ? h("span", { class: "muted small" }, ` ${options.subtitle}`) : null));
  if (!drawn.length) {
    figure.append(h("p", { class: "empty", "data-empty": "" }, options.empty || "No data yet"));
    return figure;
  }
  const xs = drawn.flatMap((s) => s.points.map((p) => p[0]));
  const ys = drawn.flatMap((s) => s.points.map((p) => p[1]));
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  let yTicks;
  if (options.percent) {
    yTicks = [0, 0.25, 0.5, 0.75, 1];
  } else if (options.zero) {
    yTicks = niceTicks(0, Math.max(...ys) || 1, 4);
  } else {
    yTicks = niceTicks(Math.min(...ys), Math.max(...ys));
  }
  const y0 = yTicks[0], y1 = yTicks[yTicks.length - 1];
  const px = (x) => M.left + ((x - x0) / (x1 - x0)) * (W - M.left - M.right);
  const py = (y) => H - M.bottom - ((y - y0) / (y1 - y0 || 1)) * (H - M.top - M.bottom);

  const plot = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": titleId, class: "plot", focusable: "false",
  });
  const grid = svg("g", { class: "grid" });
  for (const t of yTicks) {
    grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: py(t), y2: py(t) }));
    grid.append(svg("text", { x: M.left - 6, y: py(t) + 4, class: "tick y" }, tickText(t)));
  }
  for (const t of roundTicks(Math.min(...xs), Math.max(...xs))) {
    grid.append(svg("line", { x1: px(t), x2: px(t), y1: H - M.bottom, y2: H - M.bottom + 4, class: "xtick" }));
    grid.append(svg("text", { x: px(t), y: H - M.bottom + 17, class: "tick x" }, t === 0 ? "start" : String(t)));
  }
  grid.append(svg("text", { x: (M.left + W - M.right) / 2, y: H - 3, class: "axis-label" }, "round"));
  grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }));
  plot.append(grid);

  series.forEach((s, i) => {
    if (!s.points.length) return;
    const g = svg("g", { class: `series s${i}`, "data-series": s.key, "data-points": s.points.length });
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    if (pts.length > 1) {
      g.append(svg("path", { class: "line", d: pts.map((p, j) => `${j ? "L" : "M"}${px(p[0]).toFixed(1)} ${py(p[1]).toFixed(1)}`).join("") }));
    }
    for (const p of pts) {
      const m = marker(MARKERS[i % MARKERS.length], px(p[0]), py(p[1]));
      m.setAttribute("class", "pt");
      m.setAttribute("data-x", p[0]);
      m.setAttribute("data-y", p[1]);
      m.append(svg("title", {}, `${s.label}, ${xLabel(p[0])}: ${fmt(p[1])}${p[2] ? ` (${p[2]})` : ""}`));
      g.append(m);
    }
    plot.append(g);
  });
  figure.append(plot);

  const legend = h("ul", { class: "legend" });
  series.forEach((s, i) => {
    const last = [...s.points].sort((a, b) => a[0] - b[0]).at(-1);
    const key = svg("svg", { viewBox: "0 0 22 10", class: `swatch s${i}`, "aria-hidden": "true" },
      svg("line", { x1: 1, x2: 21, y1: 5, y2: 5, class: "line" }));
    const mk = marker(MARKERS[i % MARKERS.length], 11, 5);
    mk.setAttribute("class", "pt");
    key.append(mk);
    legend.append(h("li", { class: s.points.length ? "" : "absent" }, key, h("span", {}, s.label),
      h("strong", { class: "value" }, last ? fmt(last[1]) : "—")));
  });
  figure.append(legend);

  const rounds = [...new Set(xs)].sort((a, b) => a - b);
  const table = h("table", { class: "data" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Round"), ...drawn.map((s) => h("th", { scope: "col" }, s.label)))),
    h("tbody", {}, ...rounds.map((r) => h("tr", {}, h("th", { scope: "row" }, r === 0 ? "start" : String(r)),
      ...drawn.map((s) => { const p = s.points.find((q) => q[0] === r); return h("td", {}, p ? fmt(p[1]) : "—"); })))));
  figure.append(h("details", { class: "as-table" }, h("summary", {}, "Numbers"), h("div", { class: "scroll" }, table)));
  return figure;
}
