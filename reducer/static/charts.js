// Small inline-SVG charts: lines per round, stacked bars per round, box plots per round.
// Each draws into a container at the container's current width and redraws on resize;
// drawing the same data at the same width again is a no-op (hover tooltips survive polls).
// Line charts take session boundaries, dashed (overlaid) series, a log y scale and an
// exponential moving average; every chart can be exported as the CSV of what it shows.
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
    h("span", { class: it.dash ? "swatch dashed" : "swatch", style: it.dash ? `border-color:${it.color}` : `background:${it.color}` }), it.label,
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
function roundAxis(svg, [lo, hi], scale, plotW, title = "round") {
  const every = Math.max(1, Math.ceil((hi - lo + 1) / Math.max(1, Math.floor(plotW / 48))));
  const g = s("g", { class: "axis x" });
  for (let x = lo; x <= hi; x += 1) {
    if ((x - lo) % every) continue;
    g.append(s("text", { x: scale(x), y: HEIGHT - M.b + 18, "text-anchor": "middle" }, String(x)));
  }
  g.append(s("text", { x: M.l + plotW, y: HEIGHT - 2, "text-anchor": "end", class: "axis-title" }, title));
  svg.append(g);
}

// A dashed vertical line where a session starts, labelled with the session's short id.
function boundaries(svg, marks, scale) {
  const g = s("g", { class: "boundaries" });
  for (const b of marks || []) {
    const x = scale(b.x);
    g.append(s("line", { x1: x, x2: x, y1: M.t, y2: HEIGHT - M.b, class: "boundary", "data-session": b.session },
      tip(`session ${b.label} starts`)));
    g.append(s("text", { x: x + 3, y: M.t + 9, class: "boundary-label" }, b.label));
  }
  svg.append(g);
}

// A log10 axis from the 1, 2, 5 x 10^k at or below min to the one at or above max (min, max > 0);
// ticks at each of those, or at the powers of ten only when the values span many decades.
export function logTicks(min, max) {
  const steps = Math.log10(max) - Math.log10(min) > 3 ? [1] : [1, 2, 5];
  const candidates = [];
  for (let k = Math.floor(Math.log10(min)) - 1; k <= Math.ceil(Math.log10(max)) + 1; k += 1) {
    for (const m of steps) candidates.push(Number((m * 10 ** k).toPrecision(6)));
  }
  const lo = Math.max(...candidates.filter((v) => v <= min));
  const hi = Math.min(...candidates.filter((v) => v >= max));
  const ticks = candidates.filter((v) => v >= lo && v <= hi);
  return { lo, hi: hi > lo ? hi : candidates[candidates.indexOf(lo) + 1], ticks: hi > lo ? ticks : [lo, candidates[candidates.indexOf(lo) + 1]] };
}

// TensorBoard's smoothing: an exponential moving average, debiased so the first points are
// not pulled towards zero. weight 0 leaves the values as they are.
export function ema(values, weight) {
  if (!(weight > 0)) return values.slice();
  let last = 0;
  return values.map((v, i) => {
    last = last * weight + (1 - weight) * v;
    return last / (1 - weight ** (i + 1));
  });
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
    if (yt.log) {
      g.append(s("line", { x1: M.l, x2: width - M.r, y1: y, y2: y, class: "grid" }));
      g.append(s("text", { x: M.l - 6, y: y + 4, "text-anchor": "end" }, num(v, 3)));
      continue;
    }
    g.append(s("line", { x1: M.l, x2: width - M.r, y1: y, y2: y, class: "grid" }));
    g.append(s("text", { x: M.l - 6, y: y + 4, "text-anchor": "end" }, format ? format(v) : tickLabel(v, yt.ticks)));
  }
  svg.append(g);
}

// series: [{key, label, color, dash?, points: [{x, y}]}]; marks: session starts [{x, label, session}];
// domain: the x range shown [lo, hi]; log: a log10 y scale (points <= 0 are left out and said so);
// smooth: the EMA weight (0 to <1): the line follows the smoothed values, the dots stay the raw ones.
export function lineChart(el, { title, series, emptyText = "No rounds with this metric yet.", marks = [], domain = null,
  log = false, smooth = 0, xTitle = "round" }) {
  draw(el, "line", { title, series, emptyText, marks, domain, log, smooth, xTitle }, (width, spec) => {
    const shown = spec.series.map((se) => {
      const sorted = [...se.points].sort((a, b) => a.x - b.x).filter((p) => !spec.log || p.y > 0);
      const smoothed = ema(sorted.map((p) => p.y), spec.smooth);
      return { ...se, sorted, smoothed };
    });
    const pts = shown.flatMap((se) => se.sorted);
    const dropped = spec.series.reduce((n, se) => n + se.points.length, 0) - pts.length;
    if (!pts.length) return empty(dropped ? "No value above zero to draw on a log scale." : spec.emptyText);
    const plotW = width - M.l - M.r;
    const plotH = HEIGHT - M.t - M.b;
    const xs = pts.map((p) => p.x);
    const xlo = spec.domain ? Math.min(spec.domain[0], ...xs) : Math.min(...xs);
    const xhi = spec.domain ? Math.max(spec.domain[1], ...xs) : Math.max(...xs);
    const x = (v) => (xhi === xlo ? M.l + plotW / 2 : M.l + 8 + ((v - xlo) / (xhi - xlo)) * (plotW - 16));
    const ys = shown.flatMap((se) => [...se.sorted.map((p) => p.y), ...se.smoothed]);
    const yt = spec.log ? { ...logTicks(Math.min(...ys), Math.max(...ys)), log: true } : niceTicks(Math.min(...ys), Math.max(...ys));
    const f = spec.log ? Math.log10 : (v) => v;
    const y = (v) => M.t + plotH - ((f(v) - f(yt.lo)) / (f(yt.hi) - f(yt.lo))) * plotH;
    const svg = frame(width, spec.title);
    yAxis(svg, yt, y, width);
    roundAxis(svg, [xlo, xhi], x, plotW, spec.xTitle);
    boundaries(svg, spec.marks.filter((b) => b.x >= xlo && b.x <= xhi), x);
    for (const se of shown) {
      const { sorted, smoothed } = se;
      if (sorted.length > 1) {
        svg.append(s("path", { d: sorted.map((p, i) => `${i ? "L" : "M"}${x(p.x).toFixed(1)},${y(smoothed[i]).toFixed(1)}`).join(""),
          class: "line", stroke: se.color, "stroke-dasharray": se.dash ? "6 4" : null, "data-series": se.key }));
      }
      sorted.forEach((p, i) => {
        const also = spec.smooth > 0 ? ` (smoothed ${num(smoothed[i])})` : "";
        svg.append(s("circle", { cx: x(p.x), cy: y(p.y), r: spec.smooth > 0 || sorted.length > 60 ? 2.5 : 3.5, fill: se.color,
          class: spec.smooth > 0 ? "pt raw" : "pt", "data-series": se.key, "data-round": p.x },
        tip(`${spec.xTitle} ${p.x}${p.note || ""} · ${se.label} ${num(p.y)}${also}`)));
      });
    }
    const items = shown.filter((se) => se.sorted.length).map((se) => ({
      label: se.label, color: se.color, dash: se.dash, value: num(se.smoothed[se.smoothed.length - 1]) }));
    const notes = [spec.log ? "log scale" : null, spec.smooth > 0 ? `smoothed (EMA ${spec.smooth})` : null,
      dropped ? `${dropped} value${dropped === 1 ? "" : "s"} at or below zero not drawn` : null].filter(Boolean);
    return [legend(items), notes.length ? h("p", { class: "chart-note" }, notes.join(" · ")) : null, svg].filter(Boolean);
  });
}

// bars: [{label, note?, parts: {key: value}}] in order; parts: [{key, label, color}], stacked bottom-up
// bands whose `session` differs from the band before start a session: a line between them
function bandBoundaries(svg, items, band) {
  const marks = [];
  items.forEach((it, i) => {
    if (i && it.session && it.session !== items[i - 1].session) marks.push({ x: i, label: it.session.slice(0, 8), session: it.session });
  });
  boundaries(svg, marks, (i) => M.l + band * i);
}

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
    bandBoundaries(svg, spec.bars, band);
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
    bandBoundaries(svg, spec.groups, band);
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

// ---- CSV of what a chart shows

// A spreadsheet runs a text cell starting with = + - @ (or a tab, a return) as a formula; session
// ids and metric names come from outside parties. The same rule as reducer/round_pages.py.
export function csvCell(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "";
  let text = String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function csvText(rows) {
  return rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

// The rows of what `el` draws now: its x values and, per series, the raw values and (when
// smoothed) the smoothed ones; the header names the scale and smoothing. Bars: seconds per phase.
export function chartRows(el) {
  const chart = el._chart;
  if (!chart) return [];
  const { spec } = chart;
  if (chart.kind === "line") {
    const xs = [...new Set(spec.series.flatMap((se) => se.points.map((p) => p.x)))].sort((a, b) => a - b);
    const scale = spec.log ? " (log scale)" : "";
    const header = [spec.xTitle];
    const cols = [];
    for (const se of spec.series) {
      const sorted = [...se.points].sort((a, b) => a.x - b.x).filter((p) => !spec.log || p.y > 0);
      const byX = new Map(sorted.map((p) => [p.x, p.y]));
      header.push(`${se.label}${scale}`);
      cols.push(byX);
      if (spec.smooth > 0) {
        const sm = ema(sorted.map((p) => p.y), spec.smooth);
        header.push(`${se.label} EMA ${spec.smooth}${scale}`);
        cols.push(new Map(sorted.map((p, i) => [p.x, sm[i]])));
      }
    }
    return [header, ...xs.map((xv) => [xv, ...cols.map((c) => (c.has(xv) ? c.get(xv) : null))])];
  }
  if (chart.kind === "bars") {
    return [["round", "session_id", "status", ...spec.parts.map((p) => `${p.key} s`), "total s"],
      ...spec.bars.map((b) => [b.label, b.session || "", b.status || "", ...spec.parts.map((p) => b.parts[p.key] || 0),
        spec.parts.reduce((t, p) => t + (b.parts[p.key] || 0), 0)])];
  }
  if (chart.kind === "box") {
    return [["round", "client", spec.metric], ...spec.groups.flatMap((g) => g.values.map((v) => [g.label, v.label, v.v]))];
  }
  return [];
}

// Download the CSV of what `el` shows as `name`.csv (a Blob: nothing leaves the browser).
export function downloadCsv(el, name) {
  const url = URL.createObjectURL(new Blob([csvText(chartRows(el))], { type: "text/csv" }));
  const a = h("a", { href: url, download: `${name}.csv`, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
