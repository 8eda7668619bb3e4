// Small inline-SVG charts: lines per round, stacked bars per round, box plots per round.
// Each draws into a container at the container's current width and redraws on resize;
// drawing the same data at the same width again is a no-op (hover tooltips survive polls).
import { h, num } from "./app.js";

const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 220;
const M = { l: 52, r: 14, t: 12, b: 30 };

function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

const tip = (text) => s("title", {}, text);

function niceStep(raw) {
  const exp = Math.floor(Math.log10(raw));
  const f = raw / 10 ** exp;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * 10 ** exp;
}

export function niceTicks(min, max, count = 4) {
  if (!(max > min)) {
    const pad = Math.abs(min) * 0.05 || 0.5;
    min -= pad;
    max += pad;
  }
  const step = niceStep((max - min) / count);
  const lo = Math.floor(min / step + 1e-9) * step;
  const hi = Math.ceil(max / step - 1e-9) * step;
  const ticks = [];
  for (let v = lo; v <= hi + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return { lo, hi, ticks };
}

function tickLabel(v, ticks) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : 1;
  if (step >= 1 && Number.isInteger(v)) return String(v);
  const digits = Math.min(6, Math.max(0, -Math.floor(Math.log10(step))));
  return Math.abs(v) >= 1e5 || (v !== 0 && Math.abs(v) < 1e-4) ? v.toExponential(1) : v.toFixed(digits);
}

// Draw only if data or width changed; remember how to redraw on resize.
function draw(el, kind, spec, render) {
  const width = Math.max(240, Math.floor(el.clientWidth || 0));
  const key = `${width}|${JSON.stringify(spec)}`;
  el._chart = { kind, spec, render };
  if (el._chartKey === key) return;
  el._chartKey = key;
  el.replaceChildren(...render(width, spec));
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const el of document.querySelectorAll(".chart")) {
      if (el._chart) draw(el, el._chart.kind, el._chart.spec, el._chart.render);
    }
  }, 100);
});

function legend(items) {
  return h("ul", { class: "legend" }, items.map((it) => h("li", {},
    h("span", { class: "swatch", style: `background:${it.color}` }), it.label,
    it.value !== undefined ? h("span", { class: "legend-value" }, it.value) : null)));
}

function empty(text) {
  return [h("p", { class: "chart-empty" }, text)];
}

function frame(width, title) {
  return s("svg", { viewBox: `0 0 ${width} ${HEIGHT}`, width, height: HEIGHT, class: "chart-svg", role: "img",
    "aria-label": title });
}

// Integer x positions (rounds) spread over [x0, x1]; at most one label every ~48px.
function roundAxis(svg, xs, scale, plotW) {
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  const every = Math.max(1, Math.ceil((hi - lo + 1) / Math.max(1, Math.floor(plotW / 48))));
  const g = s("g", { class: "axis x" });
  for (let x = lo; x <= hi; x += 1) {
    if ((x - lo) % every) continue;
    g.append(s("text", { x: scale(x), y: HEIGHT - M.b + 18, "text-anchor": "middle" }, String(x)));
  }
  g.append(s("text", { x: M.l + plotW, y: HEIGHT - 2, "text-anchor": "end", class: "axis-title" }, "round"));
  svg.append(g);
}

// One label per band (bars, boxes), thinned out to one every ~40px.
function bandAxis(svg, labels, cx, plotW) {
  const every = Math.max(1, Math.ceil(labels.length / Math.max(1, Math.floor(plotW / 40))));
  const g = s("g", { class: "axis x" });
  labels.forEach((label, i) => {
    if (i % every === 0) g.append(s("text", { x: cx(i), y: HEIGHT - M.b + 18, "text-anchor": "middle" }, String(label)));
  });
  g.append(s("text", { x: M.l + plotW, y: HEIGHT - 2, "text-anchor": "end", class: "axis-title" }, "round"));
  svg.append(g);
}

function yAxis(svg, yt, scale, width, format) {
  const g = s("g", { class: "axis y" });
  for (const v of yt.ticks) {
    const y = scale(v);
    g.append(s("line", { x1: M.l, x2: width - M.r, y1: y, y2: y, class: "grid" }));
    g.append(s("text", { x: M.l - 6, y: y + 4, "text-anchor": "end" }, format ? format(v) : tickLabel(v, yt.ticks)));
  }
  svg.append(g);
}

// series: [{key, label, color, points: [{x, y}]}]
export function lineChart(el, { title, series, emptyText = "No rounds with this metric yet." }) {
  draw(el, "line", { title, series, emptyText }, (width, spec) => {
    const pts = spec.series.flatMap((se) => se.points);
    if (!pts.length) return empty(spec.emptyText);
    const plotW = width - M.l - M.r;
    const plotH = HEIGHT - M.t - M.b;
    const xs = pts.map((p) => p.x);
    const xlo = Math.min(...xs);
    const xhi = Math.max(...xs);
    const x = (v) => (xhi === xlo ? M.l + plotW / 2 : M.l + 8 + ((v - xlo) / (xhi - xlo)) * (plotW - 16));
    const yt = niceTicks(Math.min(...pts.map((p) => p.y)), Math.max(...pts.map((p) => p.y)));
    const y = (v) => M.t + plotH - ((v - yt.lo) / (yt.hi - yt.lo)) * plotH;
    const svg = frame(width, spec.title);
    yAxis(svg, yt, y, width);
    roundAxis(svg, xs, x, plotW);
    for (const se of spec.series) {
      const sorted = [...se.points].sort((a, b) => a.x - b.x);
      if (sorted.length > 1) {
        svg.append(s("path", { d: sorted.map((p, i) => `${i ? "L" : "M"}${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join(""),
          class: "line", stroke: se.color }));
      }
      for (const p of sorted) {
        svg.append(s("circle", { cx: x(p.x), cy: y(p.y), r: 3.5, fill: se.color, class: "pt",
          "data-series": se.key, "data-round": p.x }, tip(`round ${p.x} · ${se.label} ${num(p.y)}`)));
      }
    }
    const items = spec.series.filter((se) => se.points.length).map((se) => ({
      label: se.label, color: se.color, value: num(se.points[se.points.length - 1].y) }));
    return [legend(items), svg];
  });
}

// bars: [{label, note?, parts: {key: value}}] in order; parts: [{key, label, color}], stacked bottom-up
export function stackedBars(el, { title, bars, parts, emptyText = "No finished rounds yet." }) {
  draw(el, "bars", { title, bars, parts, emptyText }, (width, spec) => {
    if (!spec.bars.length) return empty(spec.emptyText);
    const plotW = width - M.l - M.r;
    const plotH = HEIGHT - M.t - M.b;
    const totals = spec.bars.map((b) => spec.parts.reduce((sum, p) => sum + (b.parts[p.key] || 0), 0));
    const yt = niceTicks(0, Math.max(...totals, 1e-3));
    const y = (v) => M.t + plotH - ((v - yt.lo) / (yt.hi - yt.lo)) * plotH;
    const band = plotW / spec.bars.length;
    const barW = Math.max(2, Math.min(36, band * 0.7));
    const cx = (i) => M.l + band * i + band / 2;
    const svg = frame(width, spec.title);
    yAxis(svg, yt, y, width);
    bandAxis(svg, spec.bars.map((b) => b.label), cx, plotW);
    spec.bars.forEach((b, i) => {
      let base = 0;
      const g = s("g", { class: "bar", "data-round": b.label }, tip(`round ${b.label}${b.note || ""} · total ${num(totals[i], 3)} s`));
      for (const p of spec.parts) {
        const v = b.parts[p.key] || 0;
        if (v <= 0) continue;
        const top = y(base + v);
        g.append(s("rect", { x: cx(i) - barW / 2, y: top, width: barW, height: Math.max(0.5, y(base) - top),
          fill: p.color, "data-phase": p.key }, tip(`round ${b.label}${b.note || ""} · ${p.label} ${num(v, 3)} s`)));
        base += v;
      }
      svg.append(g);
    });
    return [legend(spec.parts.filter((p) => spec.bars.some((b) => b.parts[p.key] > 0))), svg];
  });
}

function quantile(sorted, q) {
  const pos = (sorted.length - 1) * q;
  const i = Math.floor(pos);
  return sorted[i] + (sorted[Math.min(i + 1, sorted.length - 1)] - sorted[i]) * (pos - i);
}

// groups: [{label, values: [{v, label}]}]: one box (quartiles, min-max whiskers) and its points per round
export function boxPlot(el, { title, groups, metric, color = "#3b6fd8", emptyText = "No client validations yet." }) {
  draw(el, "box", { title, groups, metric, color, emptyText }, (width, spec) => {
    const all = spec.groups.flatMap((g) => g.values.map((v) => v.v));
    if (!all.length) return empty(spec.emptyText);
    const plotW = width - M.l - M.r;
    const plotH = HEIGHT - M.t - M.b;
    const yt = niceTicks(Math.min(...all), Math.max(...all));
    const y = (v) => M.t + plotH - ((v - yt.lo) / (yt.hi - yt.lo)) * plotH;
    const band = plotW / spec.groups.length;
    const boxW = Math.max(4, Math.min(34, band * 0.55));
    const cx = (i) => M.l + band * i + band / 2;
    const svg = frame(width, spec.title);
    yAxis(svg, yt, y, width);
    bandAxis(svg, spec.groups.map((g) => g.label), cx, plotW);
    spec.groups.forEach((g, i) => {
      const vals = g.values.map((v) => v.v).sort((a, b) => a - b);
      if (!vals.length) return;
      const [q1, med, q3] = [0.25, 0.5, 0.75].map((q) => quantile(vals, q));
      const c = cx(i);
      const box = s("g", { class: "box", "data-round": g.label },
        tip(`round ${g.label} · ${spec.metric}: ${vals.length} clients, min ${num(vals[0])}, median ${num(med)}, max ${num(vals[vals.length - 1])}`));
      box.append(s("line", { x1: c, x2: c, y1: y(vals[0]), y2: y(vals[vals.length - 1]), class: "whisker" }));
      for (const v of [vals[0], vals[vals.length - 1]]) {
        box.append(s("line", { x1: c - boxW / 4, x2: c + boxW / 4, y1: y(v), y2: y(v), class: "whisker" }));
      }
      box.append(s("rect", { x: c - boxW / 2, y: y(q3), width: boxW, height: Math.max(1, y(q1) - y(q3)),
        class: "box-body", fill: spec.color }));
      box.append(s("line", { x1: c - boxW / 2, x2: c + boxW / 2, y1: y(med), y2: y(med), class: "median" }));
      svg.append(box);
      g.values.forEach((v, j) => {
        const jitter = g.values.length > 1 ? ((j / (g.values.length - 1)) - 0.5) * boxW * 0.5 : 0;
        svg.append(s("circle", { cx: c + jitter, cy: y(v.v), r: 3, class: "client-pt", "data-round": g.label },
          tip(`round ${g.label} · ${v.label}: ${spec.metric} ${num(v.v)}`)));
      });
    });
    return [h("p", { class: "legend" }, `${spec.metric} per client · box: quartiles · bar: median · whiskers: min to max · dots: clients`), svg];
  });
}
