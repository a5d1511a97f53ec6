// New job: the model and file pickers, every knob with its default, the memory
// estimate (POST /v1/fine_tuning/estimates) as the form changes, and creation.

import { api } from "./api.js";
import { el, formatBytes } from "./format.js";

const ESTIMATE_DELAY_MS = 400;
const MEMORY_PARTS = [
  ["linear_weights_bytes", "Base weights (quantized linear layers)"],
  ["embeddings_bytes", "Embeddings, head and norms"],
  ["lora_params_bytes", "LoRA parameters"],
  ["gradients_bytes", "LoRA gradients"],
  ["optimizer_state_bytes", "Optimizer state"],
  ["activations_bytes", "Activations (one micro-batch)"],
  ["cuda_context_bytes", "CUDA context"],
];

function controlValue(control) {
  const kind = control.dataset.kind || "string";
  const raw = control.value.trim();
  switch (kind) {
    case "bool":
      return control.checked;
    case "bits":
      return raw === "none" ? null : Number(raw);
    case "modules":
      return raw === "all-linear" || raw === "" ? "all-linear" : raw.split(",").map((s) => s.trim()).filter(Boolean);
    case "auto-int":
    case "auto-float":
      return raw === "" ? "auto" : Number(raw);
    case "int":
    case "float":
    case "optional-int":
      return raw === "" ? undefined : Number(raw);
    case "optional-string":
      return raw === "" ? undefined : raw;
    default:
      return raw;
  }
}

// The form's named controls as the JSON body of POST /v1/fine_tuning/jobs (dotted names
// are paths: "lora.r" -> {"lora": {"r": ...}}). The shared hyperparameter fields are named
// for supervised jobs; a DPO job sends them, with beta, under method.dpo (OpenAI's shape).
export function jobBody(form) {
  const body = {};
  for (const control of form.elements) {
    // :disabled, not .disabled: a control is also off inside a disabled fieldset.
    if (!control.name || control.matches(":disabled")) continue;
    const value = controlValue(control);
    if (value === undefined) continue;
    const path = control.name.split(".");
    let target = body;
    for (const part of path.slice(0, -1)) target = target[part] ??= {};
    target[path.at(-1)] = value;
  }
  const method = body.method;
  if (method?.type === "dpo") {
    const dpo = method.dpo?.hyperparameters ?? {};
    method.dpo = { hyperparameters: { ...method.supervised?.hyperparameters, ...dpo } };
    delete method.supervised;
  }
  return body;
}

// Beta is DPO's: shown, and sent, only when DPO is chosen.
function showMethod(form) {
  const dpo = form.elements["method.type"].value === "dpo";
  form.querySelector("#job-beta-field").hidden = !dpo;
  form.elements["method.dpo.hyperparameters.beta"].disabled = !dpo;
}

// A job that continues a fine-tuned model starts from its adapter, so it keeps the parent's
// LoRA layers and base quantization: those fieldsets are off (not sent, hence inherited).
function showParent(form, fineTuned) {
  const continuing = fineTuned.has(form.elements.model.value);
  for (const id of ["#job-lora", "#job-quantization"]) {
    const fieldset = form.querySelector(id);
    fieldset.disabled = continuing;
    fieldset.querySelector(".inherited").hidden = !continuing;
  }
}

// Base models, then the organization's fine-tuned models newest first.
function fillModels(select, models) {
  const groups = [
    ["Base models", models.filter((model) => model.kind === "base")],
    ["Fine-tuned models", models.filter((model) => model.kind !== "base").reverse()],
  ];
  select.replaceChildren(
    ...groups
      .filter(([, members]) => members.length > 0)
      .map(([label, members]) => el("optgroup", { label }, ...members.map((m) => el("option", { value: m.id }, m.id)))),
  );
}

function fillSelect(select, options, { empty } = {}) {
  const items = options.map(([value, label]) => el("option", { value }, label));
  if (empty) items.unshift(el("option", { value: "" }, empty));
  select.replaceChildren(...items);
}

function estimateView(estimate) {
  const resolved = estimate.hyperparameters;
  const lines = [
    el(
      "p",
      {},
      `Resolved: ${resolved.n_epochs} epochs, batch size ${resolved.batch_size}, ` +
        `learning rate ${estimate.training.learning_rate.toExponential(2)}` +
        (resolved.beta != null ? `, beta ${resolved.beta}.` : "."),
    ),
  ];
  if (!estimate.memory) {
    lines.push(el("p", { className: "hint" }, "This server does not know the model's shape, so it cannot estimate its memory."));
  } else {
    const memory = estimate.memory;
    lines.push(
      el("p", { className: "estimate-total" }, "About ", el("strong", { id: "estimate-total" }, formatBytes(memory.total_bytes)), " of accelerator memory"),
      el(
        "table",
        { className: "compact" },
        el("caption", { className: "visually-hidden" }, "Memory by part"),
        el("tbody", {}, ...MEMORY_PARTS.map(([key, label]) => el("tr", {}, el("th", { scope: "row" }, label), el("td", { className: "num" }, formatBytes(memory[key]))))),
      ),
      el("p", { className: "hint" }, `${memory.trainable_parameters.toLocaleString()} trainable parameters; ${memory.bits_per_quantized_weight.toFixed(3)} bits per base weight.`),
    );
  }
  lines.push(
    estimate.fits
      ? el("p", {}, "Runs on the worker queue ", el("code", {}, estimate.queue), ".")
      : el("p", { className: "error" }, `Fits no worker: ${estimate.error?.message}`),
  );
  return lines;
}

export function render(root, _params, { navigate }) {
  const form = root.querySelector("#job-form");
  const estimateBox = root.querySelector("#estimate");
  const formError = root.querySelector("#job-form-error");
  const submit = root.querySelector("#create-job-button");
  let timer = null;
  let sequence = 0;
  let fineTuned = new Set();

  function markInvalid(param) {
    for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
    const control = param && form.querySelector(`[name="${CSS.escape(param)}"]`);
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
  }

  async function estimate() {
    const body = jobBody(form);
    if (!body.model || !body.training_file) return;
    const mine = ++sequence;
    estimateBox.setAttribute("aria-busy", "true");
    try {
      const result = await api("/fine_tuning/estimates", { method: "POST", json: body });
      if (mine === sequence) estimateBox.replaceChildren(...estimateView(result));
    } catch (error) {
      if (mine === sequence) estimateBox.replaceChildren(el("p", { className: "error" }, error.message));
    } finally {
      if (mine === sequence) estimateBox.removeAttribute("aria-busy");
    }
  }

  function scheduleEstimate() {
    clearTimeout(timer);
    timer = setTimeout(estimate, ESTIMATE_DELAY_MS);
  }

  async function load() {
    const [models, files] = await Promise.all([api("/models"), api("/files?purpose=fine-tune&limit=100")]);
    fillModels(form.elements.model, models.data);
    fineTuned = new Set(models.data.filter((model) => model.kind !== "base").map((model) => model.id));
    showParent(form, fineTuned);
    // Preference files say so: only DPO jobs take them, and DPO jobs take only them.
    const what = (f) => (f.stats?.format === "preference" ? "preference pairs" : "examples");
    const choices = files.data.map((f) => [f.id, `${f.filename} · ${f.stats?.examples ?? "?"} ${what(f)} · ${f.id}`]);
    if (choices.length === 0) {
      fillSelect(form.elements.training_file, [], { empty: "No files yet: upload one under Files" });
    } else {
      fillSelect(form.elements.training_file, choices);
    }
    fillSelect(form.elements.validation_file, choices, { empty: "None" });
    scheduleEstimate();
  }

  form.elements["method.type"].addEventListener("change", () => showMethod(form));
  form.elements.model.addEventListener("change", () => showParent(form, fineTuned));
  showMethod(form);
  form.addEventListener("input", scheduleEstimate);
  form.addEventListener("change", scheduleEstimate);
  root.querySelector("#estimate-button").addEventListener("click", () => {
    clearTimeout(timer);
    estimate();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.textContent = "";
    const body = jobBody(form);
    if (!body.training_file) {
      formError.textContent = "Choose a training file (upload one under Files).";
      markInvalid("training_file");
      return;
    }
    submit.disabled = true;
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", json: body });
      navigate(`#/jobs/${encodeURIComponent(job.id)}`, `Created job ${job.id}.`);
    } catch (error) {
      formError.textContent = `The job was not created: ${error.message}`;
      markInvalid(error.param);
    } finally {
      submit.disabled = false;
    }
  });

  load().catch((error) => {
    formError.textContent = `Could not load models and files: ${error.message}`;
  });
  return () => clearTimeout(timer);
}
