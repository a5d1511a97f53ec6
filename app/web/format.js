// Formatting and small DOM helpers shared by the views.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function formatBytes(bytes) {
  if (bytes == null) return "–";
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${UNITS[unit]}`;
}

export function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

export function formatTime(unixSeconds) {
  if (!unixSeconds) return "–";
  return new Date(unixSeconds * 1000).toLocaleString();
}

export function formatNumber(value, digits = 4) {
  if (value == null || !Number.isFinite(value)) return "–";
  return Number(value).toFixed(digits);
}

export function formatRate(value) {
  if (value == null || !Number.isFinite(value)) return "–";
  return Number(value).toExponential(2);
}

// Seconds until `estimated_finish` (unix seconds), or the metrics event's own ETA.
export function etaSeconds(job, metrics) {
  if (job.estimated_finish) return job.estimated_finish - Date.now() / 1000;
  return metrics?.eta_seconds ?? null;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// el("td", {className: "x"}, "text", child): a tiny element builder (textContent only, so
// nothing from the server is ever parsed as HTML).
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function statusBadge(status) {
  return el("span", { className: `badge status-${status}` }, status.replace("_", " "));
}

// Give every body cell its column's name (data-label): on narrow screens the stack-narrow
// tables show each row as lines of "name value". Visually hidden headers give no label.
export function labelCells(table) {
  const names = [...table.tHead.rows[0].cells].map((header) =>
    header.querySelector(".visually-hidden") ? "" : header.textContent.trim(),
  );
  for (const row of table.tBodies[0].rows) {
    [...row.cells].forEach((cell, i) => {
      cell.dataset.label = names[i] ?? "";
    });
  }
}
