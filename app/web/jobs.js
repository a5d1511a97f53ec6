// Jobs list: status, progress (step/total from the latest metrics event) and ETA, refreshed.

import { api } from "./api.js";
import { TERMINAL, el, etaSeconds, formatDuration, formatTime, labelCells, statusBadge } from "./format.js";

const REFRESH_MS = 3000;

// The newest metrics event's data, or null: events come newest first.
export async function latestMetrics(jobId) {
  const page = await api(`/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?limit=20`);
  return page.data.find((event) => event.type === "metrics")?.data ?? null;
}

function progressCell(job, metrics) {
  if (!metrics) return el("td", {}, job.status === "succeeded" ? "done" : "–");
  const bar = el("progress", { max: metrics.total_steps, value: metrics.step });
  bar.setAttribute("aria-label", `${job.id}: step ${metrics.step} of ${metrics.total_steps}`);
  return el("td", { className: "progress-cell" }, bar, el("span", {}, ` ${metrics.step}/${metrics.total_steps}`));
}

export function render(root, _params, { announce }) {
  const tbody = root.querySelector("#jobs-table tbody");
  const empty = root.querySelector("#jobs-empty");
  // Finished jobs' metrics never change: fetched once.
  const finished = new Map();
  let timer = null;
  let alive = true;

  async function metricsFor(job) {
    if (finished.has(job.id)) return finished.get(job.id);
    const metrics = await latestMetrics(job.id);
    if (TERMINAL.has(job.status)) finished.set(job.id, metrics);
    return metrics;
  }

  async function refresh() {
    const page = await api("/fine_tuning/jobs?limit=50");
    const metrics = await Promise.all(page.data.map(metricsFor));
    if (!alive) return;
    tbody.replaceChildren(
      ...page.data.map((job, i) => {
        const running = !TERMINAL.has(job.status);
        return el(
          "tr",
          { dataset: { jobId: job.id } },
          el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, className: "id" }, job.id)),
          el("td", {}, job.fine_tuned_model || job.model),
          el("td", {}, statusBadge(job.status)),
          progressCell(job, metrics[i]),
          el("td", {}, running ? formatDuration(etaSeconds(job, metrics[i])) : "–"),
          el("td", {}, formatTime(job.created_at)),
        );
      }),
    );
    labelCells(tbody.parentElement);
    empty.hidden = page.data.length > 0;
  }

  async function loop() {
    try {
      await refresh();
    } catch (error) {
      announce(`Could not list jobs: ${error.message}`);
    }
    if (alive) timer = setTimeout(loop, REFRESH_MS);
  }

  loop();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
