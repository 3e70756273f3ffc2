// A small SVG line chart: one or more series of (step, value) points on one step axis (train and
// eval loss overlaid, say), a legend once two have data, axes with round ticks, a hover read-out.
// Redrawn whole on each update (a job has at most some thousands of points; beyond MAX_DRAWN the
// drawing keeps each bucket's extremes, so spikes stay visible).

import {formatNumber, h, svg} from "./dom.js";

const WIDTH = 460, HEIGHT = 190;
const PAD = {left: 56, right: 14, top: 12, bottom: 26};
const MAX_DRAWN = 1500;
const DOTS_UNDER = 60; // a series with fewer points gets a dot on each (an eval series always does)

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

/**
 * The value axis of `values`: their range plus a small margin, a flat series a range of 10% around
 * its value (0..1 around 0), never below `floor` nor above `ceiling`. A series with no negative
 * value (loss, learning rate, a norm, an accuracy) gets a floor of 0, so its axis never goes negative.
 */
export function yDomain(values, {floor = null, ceiling = null} = {}) {
  let low = Math.min(...values), high = Math.max(...values);
  if (floor === null && low >= 0) floor = 0;
  if (low === high) {
    const half = Math.abs(low) * 0.1 || 1;
    low -= half;
    high += half;
  } else {
    const margin = (high - low) * 0.06;
    low -= margin;
    high += margin;
  }
  if (floor !== null) low = Math.max(low, floor);
  if (ceiling !== null) high = Math.min(high, ceiling);
  if (high <= low) high = low + 1; // a value outside [floor, ceiling]: still an axis
  return [low, high];
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
  /**
   * key: the chart's name (data-metric); series: [{key, label, color}], the first the main one
   * (data-points counts its points); floor/ceiling: the value axis's bounds (accuracy: 0 and 1).
   */
  constructor({key, title, color = "#2f5fd0", series = null, floor = null, ceiling = null}) {
    this.key = key;
    this.series = (series || [{key, label: title, color}]).map((s) => ({...s, points: []}));
    this.floor = floor;
    this.ceiling = ceiling;
    this.latest = h("span", {class: "chart-latest"}, "–");
    this.readout = h("span", {class: "chart-readout muted"});
    this.legend = h("span", {class: "chart-legend", hidden: true});
    this.svg = svg("svg", {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart-svg", role: "img",
                           "aria-label": title});
    this.element = h("figure", {class: "chart", dataset: {metric: key, points: "0", series: ""}},
      h("figcaption", {}, h("span", {class: "chart-title"}, title), this.readout, this.legend, this.latest),
      this.svg);
    this.svg.addEventListener("mousemove", (event) => this.hover(event));
    this.svg.addEventListener("mouseleave", () => this.hover(null));
    this.render();
  }

  /** The main series' points: [{x: step, y: value}], in any order; replaces what was drawn. */
  setPoints(points) {
    this.setData({[this.series[0].key]: points});
  }

  /** {seriesKey: points} for some of the series (the others keep theirs); redraws once. */
  setData(bySeries) {
    for (const series of this.series) {
      if (!(series.key in bySeries)) continue;
      series.points = bySeries[series.key].filter((p) => Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
    }
    const shown = this.series.filter((s) => s.points.length);
    this.element.dataset.points = String(this.series[0].points.length);
    this.element.dataset.series = shown.map((s) => s.key).join(" ");
    const lastOf = (s) => s.points[s.points.length - 1];
    this.legend.hidden = shown.length < 2;
    this.latest.hidden = shown.length >= 2;
    this.legend.replaceChildren(...shown.map((s) => h("span", {class: "legend-item", dataset: {series: s.key},
                                                                title: `step ${lastOf(s).x}`},
      h("span", {class: "legend-swatch", style: {background: s.color}}), `${s.label} `,
      h("span", {class: "legend-value"}, formatNumber(lastOf(s).y)))));
    const main = shown[0];
    this.latest.textContent = main ? formatNumber(lastOf(main).y) : "–";
    this.latest.title = main ? `${main.label}, step ${lastOf(main).x}` : "";
    this.render();
  }

  scales() {
    const all = this.series.flatMap((s) => s.points);
    const xs = all.map((p) => p.x);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    if (x0 === x1) { x0 = Math.max(0, x0 - 1); x1 = x0 + 2; }
    const [y0, y1] = yDomain(all.map((p) => p.y), {floor: this.floor, ceiling: this.ceiling});
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
    this.cursor = null;
    if (!this.series.some((s) => s.points.length)) {
      node.append(svg("text", {x: WIDTH / 2, y: HEIGHT / 2, class: "chart-empty", "text-anchor": "middle"},
                      "waiting for data"));
      delete this.element.dataset.yMin;
      delete this.element.dataset.yMax;
      return;
    }
    const s = this.scales();
    this.scale = s;
    this.element.dataset.yMin = String(s.y0);
    this.element.dataset.yMax = String(s.y1);
    for (const value of ticks(s.y0, s.y1, 4)) {
      const y = s.y(value);
      node.append(svg("line", {x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y, class: "chart-grid"}),
                  svg("text", {x: PAD.left - 6, y: y + 3, class: "chart-tick chart-tick-y", "text-anchor": "end"},
                      formatNumber(Number(value.toPrecision(6)))));
    }
    for (const value of ticks(Math.max(0, s.x0), s.x1, 5, true)) {
      if (value < s.x0 || value > s.x1) continue;
      const x = s.x(value);
      node.append(svg("line", {x1: x, x2: x, y1: HEIGHT - PAD.bottom, y2: HEIGHT - PAD.bottom + 4, class: "chart-axis"}),
                  svg("text", {x, y: HEIGHT - 8, class: "chart-tick chart-tick-x", "text-anchor": "middle"},
                      String(value)));
    }
    const dots = [];
    for (const series of this.series) {
      if (!series.points.length) continue;
      const drawn = decimate(series.points);
      node.append(svg("polyline", {class: "chart-line", stroke: series.color,
                                   dataset: {series: series.key, points: String(series.points.length)},
                                   points: drawn.map((p) => `${s.x(p.x).toFixed(1)},${s.y(p.y).toFixed(1)}`).join(" ")}));
      if (drawn.length <= DOTS_UNDER) {
        for (const p of drawn) {
          dots.push(svg("circle", {cx: s.x(p.x), cy: s.y(p.y), r: 2.4, fill: series.color, class: "chart-dot"}));
        }
      }
    }
    node.append(...dots);
    this.cursor = svg("g", {class: "chart-cursor", visibility: "hidden"},
      svg("line", {y1: PAD.top, y2: HEIGHT - PAD.bottom}),
      this.series.map((series) => svg("circle", {r: 4, fill: series.color})));
    node.append(this.cursor);
  }

  hover(event) {
    if (!event || !this.cursor) {
      this.readout.textContent = "";
      this.cursor?.setAttribute("visibility", "hidden");
      return;
    }
    const box = this.svg.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * WIDTH;
    const s = this.scale;
    const step = s.x0 + ((px - PAD.left) / (WIDTH - PAD.left - PAD.right)) * (s.x1 - s.x0);
    let nearest = null; // the nearest step any series has
    for (const series of this.series) {
      for (const p of series.points) if (nearest === null || Math.abs(p.x - step) < Math.abs(nearest - step)) nearest = p.x;
    }
    const [line, ...dots] = this.cursor.children;
    line.setAttribute("x1", s.x(nearest));
    line.setAttribute("x2", s.x(nearest));
    const values = [];
    this.series.forEach((series, i) => {
      const point = series.points.find((p) => p.x === nearest);
      dots[i].setAttribute("display", point ? "inline" : "none"); // (visibility would override the group's)
      if (!point) return;
      dots[i].setAttribute("cx", s.x(point.x));
      dots[i].setAttribute("cy", s.y(point.y));
      values.push(this.series.length > 1 ? `${series.label.toLowerCase()} ${formatNumber(point.y)}` : formatNumber(point.y));
    });
    this.cursor.setAttribute("visibility", "visible");
    this.readout.textContent = `step ${nearest}: ${values.join(" · ")}`;
  }
}
