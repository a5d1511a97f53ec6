// A metric chart (the loss, or DPO's reward margin and preference accuracy): the training
// value as a line, the validation value as a line with markers, drawn as SVG. Points are
// keyed by step, so steps trained again after a resume replace the old.
// One SVG unit is one CSS pixel: the chart is redrawn at its box's width when that changes,
// so its labels keep their size on a phone instead of shrinking with a scaled drawing.

const SVG = "http://www.w3.org/2000/svg";
const DEFAULT_WIDTH = 800;
const MARGIN = { top: 12, right: 20, bottom: 40, left: 56 };
// Room per tick label, in pixels: fewer ticks on a narrow chart, so labels never collide.
const PX_PER_X_TICK = 80;
const PX_PER_Y_TICK = 45;

function svgEl(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text != null) node.textContent = text;
  return node;
}

// Round tick values: 1, 2 or 5 times a power of ten.
function ticks(min, max, count) {
  const span = max - min || 1;
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const values = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
    values.push(Number(v.toPrecision(12)));
  }
  return values;
}

// What a chart plots: the event `data` keys of its two series, and its name in the labels.
export const LOSS = { train: "train_loss", valid: "valid_loss", name: "loss", title: "Loss" };
export const REWARD_MARGIN = {
  train: "train_reward_margin",
  valid: "valid_reward_margin",
  name: "reward margin",
  title: "Reward margin",
};
export const PREFERENCE_ACCURACY = {
  train: "train_preference_accuracy",
  valid: "valid_preference_accuracy",
  name: "preference accuracy",
  title: "Preference accuracy",
};

export class MetricChart {
  constructor(svg, metric = LOSS) {
    this.svg = svg;
    this.metric = metric;
    this.train = new Map();
    this.eval = new Map();
    this.totalSteps = 0;
    this.pending = false;
    this.width = 0;
    this.height = 0;
    this.resize();
    this.observer = new ResizeObserver(() => {
      if (this.resize()) this.schedule();
    });
    this.observer.observe(svg);
  }

  // Size the drawing to the box (height follows the width, within 200..300 px); true if changed.
  resize() {
    const width = Math.round(this.svg.clientWidth) || DEFAULT_WIDTH;
    if (width === this.width) return false;
    this.width = width;
    this.height = Math.round(Math.min(300, Math.max(200, width * 0.4)));
    this.svg.setAttribute("viewBox", `0 0 ${this.width} ${this.height}`);
    return true;
  }

  dispose() {
    this.observer.disconnect();
  }

  // Whether `metrics` (an event's data) carries this chart's training value.
  carries(metrics) {
    return metrics[this.metric.train] != null;
  }

  add(metrics) {
    const { train, valid } = this.metric;
    if (metrics[train] != null) this.train.set(metrics.step, metrics[train]);
    if (metrics[valid] != null) this.eval.set(metrics.step, metrics[valid]);
    this.totalSteps = Math.max(this.totalSteps, metrics.total_steps || 0);
    this.schedule();
  }

  // Draw at most once per animation frame, however many events arrived.
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  series(map) {
    return [...map.entries()].sort((a, b) => a[0] - b[0]);
  }

  draw() {
    const train = this.series(this.train);
    const evals = this.series(this.eval);
    const all = [...train, ...evals];
    this.svg.replaceChildren();
    this.svg.dataset.trainPoints = String(train.length);
    this.svg.dataset.evalPoints = String(evals.length);
    const { name, title } = this.metric;
    if (all.length === 0) {
      this.svg.setAttribute("aria-label", `${title} chart: no points yet`);
      return;
    }
    // Loops, not Math.min(...points): a long job has more points than a call takes arguments.
    // The x axis ends at the newest step (the progress bar shows how far that is), so the
    // first steps of a long job are readable too.
    let lastStep = 10;
    let low = Infinity;
    let high = -Infinity;
    for (const [step, loss] of all) {
      lastStep = Math.max(lastStep, step);
      low = Math.min(low, loss);
      high = Math.max(high, loss);
    }
    const pad = (high - low) * 0.05 || Math.abs(high) * 0.05 || 1;
    low -= pad;
    high += pad;
    const plotW = this.width - MARGIN.left - MARGIN.right;
    const plotH = this.height - MARGIN.top - MARGIN.bottom;
    const x = (step) => MARGIN.left + (step / lastStep) * plotW;
    const y = (loss) => MARGIN.top + (1 - (loss - low) / (high - low)) * plotH;
    this.axes(x, y, lastStep, low, high, plotW, plotH);
    const path = (points) =>
      points.map(([s, l], i) => `${i ? "L" : "M"}${x(s).toFixed(1)},${y(l).toFixed(1)}`).join("");
    this.svg.append(svgEl("path", { d: path(train), class: "line train-line" }));
    if (evals.length) {
      this.svg.append(svgEl("path", { d: path(evals), class: "line eval-line" }));
      for (const [step, loss] of evals) {
        const marker = svgEl("circle", { cx: x(step), cy: y(loss), r: 3.5, class: "eval-point" });
        marker.append(svgEl("title", {}, `step ${step}: validation ${name} ${loss.toFixed(4)}`));
        this.svg.append(marker);
      }
    }
    const [step, loss] = train.at(-1) || evals.at(-1);
    this.svg.setAttribute(
      "aria-label",
      `${title} chart: ${train.length} training points up to step ${step} of ${this.totalSteps || "?"}, ` +
        `latest training ${name} ${loss.toFixed(4)}` +
        (evals.length ? `, latest validation ${name} ${evals.at(-1)[1].toFixed(4)}` : ""),
    );
  }

  axes(x, y, lastStep, low, high, plotW, plotH) {
    const bottom = this.height - MARGIN.bottom;
    const right = this.width - MARGIN.right;
    const group = svgEl("g", { class: "axes", "aria-hidden": "true" });
    for (const value of ticks(low, high, Math.max(2, Math.floor(plotH / PX_PER_Y_TICK)))) {
      if (value < low || value > high) continue;
      group.append(
        svgEl("line", { x1: MARGIN.left, x2: right, y1: y(value), y2: y(value), class: "grid" }),
        svgEl("text", { x: MARGIN.left - 6, y: y(value) + 4, "text-anchor": "end" }, value.toString()),
      );
    }
    for (const value of ticks(0, lastStep, Math.max(2, Math.floor(plotW / PX_PER_X_TICK)))) {
      if (!Number.isInteger(value)) continue;
      // The label of a tick at the right edge ends there rather than running off the chart.
      const anchor = x(value) > right - 20 ? "end" : "middle";
      group.append(
        svgEl("line", { x1: x(value), x2: x(value), y1: bottom, y2: bottom + 5, class: "tick" }),
        svgEl("text", { x: x(value), y: bottom + 18, "text-anchor": anchor }, String(value)),
      );
    }
    group.append(
      svgEl("line", { x1: MARGIN.left, x2: right, y1: bottom, y2: bottom, class: "axis" }),
      svgEl("text", { x: MARGIN.left + plotW / 2, y: this.height - 4, "text-anchor": "middle" }, "step"),
    );
    this.svg.append(group);
  }
}
