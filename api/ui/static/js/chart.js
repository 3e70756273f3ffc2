// A small SVG line chart: one series of (step, value) points, axes with round ticks, a hover
// read-out. Redrawn whole on each update (a job has at most some thousands of points; beyond
// MAX_DRAWN the drawing keeps each bucket's extremes, so spikes stay visible).

import {formatNumber, h, svg} from "./dom.js";

const WIDTH = 460, HEIGHT = 190;
const PAD = {left: 56, right: 14, top: 12, bottom: 26};
const MAX_DRAWN = 1500;

function niceStep(range, count) {
  const rough = range / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(rough));
  const fraction = rough / power;
  return (fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10) * power;
}

function ticks(min, max, count, integer = false) {
  let step = niceStep(max - min, count);
  if (integer) step = Math.max(1, Math.round(step));
  const out = [];
  for (let value = Math.ceil(min / step) * step; value <= max + step * 1e-9; value += step) {
    out.push(Math.abs(value) < step * 1e-9 ? 0 : value);
  }
  return out;
}

function decimate(points) {
  if (points.length <= MAX_DRAWN) return points;
  const size = Math.ceil(points.length / (MAX_DRAWN / 2));
  const kept = [];
  for (let start = 0; start < points.length; start += size) {
    const bucket = points.slice(start, start + size);
    let low = bucket[0], high = bucket[0];
    for (const point of bucket) {
      if (point.y < low.y) low = point;
      if (point.y > high.y) high = point;
    }
    if (low === high) kept.push(low);
    else kept.push(...(low.x <= high.x ? [low, high] : [high, low]));
  }
  const last = points[points.length - 1];
  if (kept[kept.length - 1] !== last) kept.push(last);
  return kept;
}

export class LineChart {
  constructor({key, title, color = "#2f5fd0"}) {
    this.key = key;
    this.color = color;
    this.points = [];
    this.latest = h("span", {class: "chart-latest"}, "–");
    this.readout = h("span", {class: "chart-readout muted"});
    this.svg = svg("svg", {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart-svg", role: "img",
                           "aria-label": title});
    this.element = h("figure", {class: "chart", dataset: {metric: key, points: "0"}},
      h("figcaption", {}, h("span", {class: "chart-title"}, title), this.readout, this.latest),
      this.svg);
    this.svg.addEventListener("mousemove", (event) => this.hover(event));
    this.svg.addEventListener("mouseleave", () => this.hover(null));
    this.render();
  }

  /** points: [{x: step, y: value}], in any order; replaces what was drawn. */
  setPoints(points) {
    this.points = points.filter((p) => Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
    this.element.dataset.points = String(this.points.length);
    const last = this.points[this.points.length - 1];
    this.latest.textContent = last ? formatNumber(last.y) : "–";
    this.latest.title = last ? `step ${last.x}` : "";
    this.render();
  }

  scales() {
    const xs = this.points.map((p) => p.x), ys = this.points.map((p) => p.y);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const margin = (y1 - y0) * 0.06;
    y0 -= margin; y1 += margin;
    const plotW = WIDTH - PAD.left - PAD.right, plotH = HEIGHT - PAD.top - PAD.bottom;
    return {
      x0, x1, y0, y1,
      x: (v) => PAD.left + ((v - x0) / (x1 - x0)) * plotW,
      y: (v) => PAD.top + (1 - (v - y0) / (y1 - y0)) * plotH,
    };
  }

  render() {
    const node = this.svg;
    node.replaceChildren();
    const frame = svg("rect", {x: PAD.left, y: PAD.top, width: WIDTH - PAD.left - PAD.right,
                               height: HEIGHT - PAD.top - PAD.bottom, class: "chart-frame"});
    node.append(frame);
    if (!this.points.length) {
      node.append(svg("text", {x: WIDTH / 2, y: HEIGHT / 2, class: "chart-empty", "text-anchor": "middle"},
                      "waiting for data"));
      return;
    }
    const s = this.scales();
    this.scale = s;
    for (const value of ticks(s.y0, s.y1, 4)) {
      const y = s.y(value);
      node.append(svg("line", {x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y, class: "chart-grid"}),
                  svg("text", {x: PAD.left - 6, y: y + 3, class: "chart-tick", "text-anchor": "end"},
                      formatNumber(Number(value.toPrecision(6)))));
    }
    for (const value of ticks(Math.max(0, s.x0), s.x1, 5, true)) {
      if (value < s.x0 || value > s.x1) continue;
      const x = s.x(value);
      node.append(svg("line", {x1: x, x2: x, y1: HEIGHT - PAD.bottom, y2: HEIGHT - PAD.bottom + 4, class: "chart-axis"}),
                  svg("text", {x, y: HEIGHT - 8, class: "chart-tick", "text-anchor": "middle"}, String(value)));
    }
    const drawn = decimate(this.points);
    node.append(svg("polyline", {class: "chart-line", stroke: this.color,
                                 points: drawn.map((p) => `${s.x(p.x).toFixed(1)},${s.y(p.y).toFixed(1)}`).join(" ")}));
    if (drawn.length <= 60) {
      for (const p of drawn) {
        node.append(svg("circle", {cx: s.x(p.x), cy: s.y(p.y), r: 2.4, fill: this.color, class: "chart-dot"}));
      }
    }
    this.cursor = svg("g", {class: "chart-cursor", visibility: "hidden"},
      svg("line", {y1: PAD.top, y2: HEIGHT - PAD.bottom}),
      svg("circle", {r: 4, fill: this.color}));
    node.append(this.cursor);
  }

  hover(event) {
    if (!event || !this.points.length || !this.cursor) {
      this.readout.textContent = "";
      this.cursor?.setAttribute("visibility", "hidden");
      return;
    }
    const box = this.svg.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * WIDTH;
    const s = this.scale;
    const step = s.x0 + ((px - PAD.left) / (WIDTH - PAD.left - PAD.right)) * (s.x1 - s.x0);
    let nearest = this.points[0];
    for (const p of this.points) if (Math.abs(p.x - step) < Math.abs(nearest.x - step)) nearest = p;
    const [line, dot] = this.cursor.children;
    line.setAttribute("x1", s.x(nearest.x));
    line.setAttribute("x2", s.x(nearest.x));
    dot.setAttribute("cx", s.x(nearest.x));
    dot.setAttribute("cy", s.y(nearest.y));
    this.cursor.setAttribute("visibility", "visible");
    this.readout.textContent = `step ${nearest.x}: ${formatNumber(nearest.y)}`;
  }
}
