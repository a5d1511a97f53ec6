// One job: live loss chart (and, for DPO, reward margin and preference accuracy charts) and
// stats from its event stream, events log, checkpoints,
// exports, and the actions (cancel, pause, resume, downloads, merged export, and "Try it":
// the fine-tuned model or a checkpoint in the Playground).

import { api, downloadFile, streamEvents } from "./api.js";
import { MetricChart, PREFERENCE_ACCURACY, REWARD_MARGIN } from "./chart.js";
import {
  TERMINAL,
  el,
  etaSeconds,
  formatBytes,
  formatDuration,
  formatNumber,
  formatRate,
  formatTime,
  labelCells,
  statusBadge,
} from "./format.js";
import { playgroundHash } from "./playground.js";

const POLL_MS = 2000;
const PENDING_EXPORT = new Set(["queued", "running"]);

// What the worker measured on a merged export (worker/exports.py writes these keys): the
// largest logit difference between the merged model and base + adapter, and its size.
function exportDetails(details) {
  if (!details) return "";
  const parts = [];
  if (details.max_abs_logit_diff != null) parts.push(`max logit difference ${formatRate(details.max_abs_logit_diff)}`);
  if (details.bytes != null) parts.push(formatBytes(details.bytes));
  return parts.join(" · ");
}

export function render(root, { id }, { announce }) {
  const $ = (selector) => root.querySelector(selector);
  const path = `/fine_tuning/jobs/${encodeURIComponent(id)}`;
  const controller = new AbortController();
  const chart = new MetricChart($("#loss-chart"));
  // Shown once an event carries DPO's figures (the engine reports them on DPO jobs only).
  const preferenceCharts = [
    new MetricChart($("#reward-margin-chart"), REWARD_MARGIN),
    new MetricChart($("#preference-accuracy-chart"), PREFERENCE_ACCURACY),
  ];
  const buttons = {
    cancel: $("#job-cancel"),
    pause: $("#job-pause"),
    resume: $("#job-resume"),
    download: $("#job-download"),
    export: $("#export-start"),
  };
  let job = null;
  let latest = null;
  let exportsPending = false;
  let timer = null;
  $("#job-id").textContent = id;

  function showError(message) {
    $("#job-error").textContent = message;
  }

  function showJob(current) {
    const changed = job && job.status !== current.status;
    job = current;
    $("#job-status").replaceChildren(statusBadge(job.status));
    if (changed) announce(`Job ${job.id}: ${job.status.replace("_", " ")}.`);
    const terminal = TERMINAL.has(job.status);
    buttons.cancel.disabled = terminal || job.cancel_requested;
    buttons.pause.disabled = !["queued", "running"].includes(job.status) || job.pause_requested;
    buttons.resume.disabled = job.status !== "paused";
    buttons.download.disabled = job.status !== "succeeded";
    buttons.export.disabled = job.status !== "succeeded";
    const tryIt = $("#job-try");
    tryIt.hidden = !(job.status === "succeeded" && job.fine_tuned_model);
    if (!tryIt.hidden) tryIt.href = playgroundHash(job.fine_tuned_model);
    $("#job-model").textContent = job.model;
    $("#job-fine-tuned").textContent = job.fine_tuned_model || "–";
    $("#job-training-file").textContent = job.training_file;
    for (const legend of root.querySelectorAll(".legend-eval")) legend.hidden = !job.validation_file;
    $("#job-created").textContent = formatTime(job.created_at);
    $("#job-finished").textContent = formatTime(job.finished_at);
    $("#stat-attempt").textContent = String(job.attempt);
    $("#stat-trained").textContent = job.trained_tokens?.toLocaleString() ?? latest?.trained_tokens?.toLocaleString() ?? "–";
    const h = job.hyperparameters;
    const method = job.method?.type === "dpo" ? `DPO, beta ${h.beta} · ` : "";
    $("#job-settings").textContent =
      `${method}${h.n_epochs} epochs · batch ${h.batch_size} · lr ${job.training.learning_rate.toExponential(1)} · ` +
      `r ${job.lora.r}, alpha ${job.lora.alpha} · ${job.quantization.bits ? `${job.quantization.bits}-bit` : "16-bit"}` +
      ` · max ${job.training.max_seq_length} tokens${job.training.packing ? " · packing" : ""}`;
    showError(job.error ? `${job.error.code}: ${job.error.message}` : "");
    showEta();
  }

  function showEta() {
    const running = job && !TERMINAL.has(job.status) && job.status !== "paused";
    $("#stat-eta").textContent = running ? formatDuration(etaSeconds(job, latest)) : "–";
  }

  function showMetrics(metrics) {
    latest = metrics;
    const progress = $("#job-progress");
    progress.max = metrics.total_steps;
    progress.value = metrics.step;
    $("#job-steps").textContent = `step ${metrics.step} of ${metrics.total_steps}`;
    $("#stat-train-loss").textContent = formatNumber(metrics.train_loss);
    if (metrics.valid_loss != null) $("#stat-eval-loss").textContent = formatNumber(metrics.valid_loss);
    $("#stat-lr").textContent = formatRate(metrics.lr);
    $("#stat-tokens").textContent = formatNumber(metrics.tokens_per_second, 1);
    $("#stat-epoch").textContent = formatNumber(metrics.epoch, 2);
    if (!job?.trained_tokens) $("#stat-trained").textContent = metrics.trained_tokens.toLocaleString();
    showEta();
  }

  function logEvent(event) {
    const log = $("#events-log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.querySelector("ol").append(
      el(
        "li",
        { className: `level-${event.level}` },
        el("time", { dateTime: new Date(event.created_at * 1000).toISOString() }, formatTime(event.created_at)),
        " ",
        event.message,
      ),
    );
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function checkpointRow(checkpoint) {
    const download = el("button", { type: "button", className: "secondary small" }, "Download");
    download.setAttribute("aria-label", `Download the adapter of checkpoint step ${checkpoint.step_number}`);
    download.addEventListener("click", () =>
      runDownload(`${path}/checkpoints/${encodeURIComponent(checkpoint.id)}/adapter`, `checkpoint ${checkpoint.step_number}`),
    );
    const tryIt = el("a", { className: "button secondary small", href: playgroundHash(checkpoint.fine_tuned_model_checkpoint) }, "Try it");
    tryIt.setAttribute("aria-label", `Try it in the Playground: checkpoint step ${checkpoint.step_number}`);
    return el(
      "tr",
      { dataset: { step: String(checkpoint.step_number) } },
      el("td", { className: "num" }, String(checkpoint.step_number)),
      el("td", { className: "num" }, formatNumber(checkpoint.metrics.train_loss)),
      el("td", { className: "num" }, formatNumber(checkpoint.metrics.valid_loss)),
      el("td", {}, el("div", { className: "row-actions" }, download, tryIt)),
    );
  }

  function exportRow(item) {
    const cells = [
      el("td", {}, el("code", { className: "id" }, item.id)),
      el("td", {}, item.dtype),
      el("td", {}, statusBadge(item.status)),
      el("td", {}, item.error ? item.error.message : exportDetails(item.details)),
    ];
    const action = el("td", {});
    if (item.status === "succeeded") {
      const download = el("button", { type: "button", className: "secondary small" }, "Download");
      download.setAttribute("aria-label", `Download merged export ${item.id}`);
      download.addEventListener("click", () =>
        runDownload(`${path}/exports/${encodeURIComponent(item.id)}/content`, `merged export ${item.id}`),
      );
      action.append(download);
    }
    return el("tr", { dataset: { exportId: item.id, status: item.status } }, ...cells, action);
  }

  async function refreshCheckpoints() {
    const page = await api(`${path}/checkpoints?limit=100`, { signal: controller.signal });
    $("#checkpoints-table tbody").replaceChildren(...page.data.map(checkpointRow));
    $("#checkpoints-empty").hidden = page.data.length > 0;
  }

  async function refreshExports() {
    const page = await api(`${path}/exports?limit=100`, { signal: controller.signal });
    const table = $("#exports-table");
    table.tBodies[0].replaceChildren(...page.data.map(exportRow));
    labelCells(table);
    table.hidden = page.data.length === 0;
    $("#exports-empty").hidden = page.data.length > 0;
    exportsPending = page.data.some((item) => PENDING_EXPORT.has(item.status));
  }

  async function refreshAll() {
    showJob(await api(path, { signal: controller.signal }));
    await Promise.all([refreshCheckpoints(), refreshExports()]);
  }

  function schedulePoll() {
    clearTimeout(timer);
    if (controller.signal.aborted) return;
    if (job && TERMINAL.has(job.status) && !exportsPending) return;
    timer = setTimeout(async () => {
      try {
        await refreshAll();
      } catch (error) {
        if (!controller.signal.aborted) showError(error.message);
      }
      schedulePoll();
    }, POLL_MS);
  }

  async function runDownload(downloadPath, what) {
    announce(`Downloading ${what}…`);
    try {
      const saved = await downloadFile(downloadPath, `${id}.tar.gz`);
      announce(`Downloaded ${saved.name} (${saved.bytes.toLocaleString()} bytes).`);
    } catch (error) {
      showError(`Download failed: ${error.message}`);
    }
  }

  async function action(name, verb) {
    try {
      showJob(await api(`${path}/${name}`, { method: "POST" }));
      announce(`${verb}: job ${id} is now ${job.status}${job.cancel_requested || job.pause_requested ? " (after the current step)" : ""}.`);
      schedulePoll();
    } catch (error) {
      showError(`${verb} failed: ${error.message}`);
    }
  }

  buttons.cancel.addEventListener("click", () => action("cancel", "Cancel"));
  buttons.pause.addEventListener("click", () => action("pause", "Pause"));
  buttons.resume.addEventListener("click", () => action("resume", "Resume"));
  buttons.download.addEventListener("click", () => runDownload(`${path}/adapter`, "the adapter"));
  $("#export-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const dtype = $("#export-dtype").value;
      const created = await api(`${path}/exports`, { method: "POST", json: { type: "merged", dtype } });
      announce(`Started merged export ${created.id}.`);
      await refreshExports();
      schedulePoll();
    } catch (error) {
      showError(`Export failed: ${error.message}`);
    }
  });

  streamEvents(`${path}/events?stream=true`, {
    signal: controller.signal,
    onEvent(type, event) {
      if (type === "metrics" && event.data) {
        chart.add(event.data);
        if (preferenceCharts[0].carries(event.data)) {
          $("#preference-section").hidden = false;
          for (const preferenceChart of preferenceCharts) preferenceChart.add(event.data);
        }
        showMetrics(event.data);
      } else {
        logEvent(event);
      }
    },
  })
    .then(async (done) => {
      if (!done) return;
      $("#events-log").dataset.ended = done.status || "";
      await refreshAll();
      schedulePoll();
    })
    .catch((error) => {
      if (!controller.signal.aborted) showError(`Event stream: ${error.message}`);
    });

  // Leaving the page aborts these loads: their elements are gone, nothing is reported.
  refreshAll()
    .then(schedulePoll)
    .catch((error) => {
      if (!controller.signal.aborted) showError(error.message);
    });

  return () => {
    controller.abort();
    clearTimeout(timer);
    chart.dispose();
    for (const preferenceChart of preferenceCharts) preferenceChart.dispose();
  };
}
