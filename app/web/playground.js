// The Playground: chat with a base model, a fine-tuned model or a checkpoint, each answer
// drawn as its chunks stream in and closed with its finish reason and token usage. Compare
// mode sends the same messages to two models at once, side by side. Stop aborts the
// requests; the server ends a generation whose client has gone.

import { api, streamCompletion } from "./api.js";
import { el } from "./format.js";

const CHECKPOINT = /:ckpt-step-\d+$/;

// The Playground's address with `model` chosen (the job page's "Try it").
export function playgroundHash(model) {
  return `#/playground/${encodeURIComponent(model)}`;
}

// Base models, then fine-tuned ones newest first, then a name only the link knew (a
// checkpoint: /v1/models lists jobs' models, not their checkpoints).
function fillModels(select, models, linked) {
  const groups = [
    ["Base models", models.filter((model) => model.kind === "base").map((model) => model.id)],
    ["Fine-tuned models", models.filter((model) => model.kind !== "base").map((model) => model.id).reverse()],
    [CHECKPOINT.test(linked) ? "Checkpoints" : "From the link", linked ? [linked] : []],
  ];
  select.replaceChildren(
    ...groups
      .filter(([, names]) => names.length > 0)
      .map(([label, names]) => el("optgroup", { label }, ...names.map((name) => el("option", { value: name }, name)))),
  );
}

// The base a fine-tuned model or one of its checkpoints was trained from, or null.
function baseOf(name, models) {
  const model = models.find((m) => m.id === name) ?? models.find((m) => name.startsWith(`${m.id}:`));
  return model && model.kind !== "base" ? model.parent : null;
}

// What to compare `name` with: a fine-tuned model with its base; a base with its newest
// fine-tuned model.
function counterpart(name, models) {
  const base = baseOf(name, models);
  if (base && models.some((m) => m.id === base)) return base;
  const tuned = models.filter((m) => m.kind !== "base" && m.parent === name).at(-1);
  return (tuned ?? models.find((m) => m.id !== name) ?? { id: name }).id;
}

function describe(result) {
  if (result.state === "stopped") return "Stopped.";
  if (result.state === "failed") return result.error;
  const usage = result.usage
    ? ` · ${result.usage.prompt_tokens} prompt + ${result.usage.completion_tokens} completion = ${result.usage.total_tokens} tokens`
    : "";
  const capped = result.finishReason === "length" ? " (max tokens reached)" : "";
  return `Finished: ${result.finishReason ?? "unknown"}${capped}${usage}`;
}

// The status line after a turn: short, the details stay under each answer.
function summary(results) {
  const failed = results.filter((result) => result.state === "failed");
  if (failed.length > 0) return failed.map((result) => `${result.model}: ${result.error}`).join(" ");
  if (results.some((result) => result.state === "stopped")) return "Stopped.";
  if (results.length > 1) return "Both answers finished.";
  const [{ finishReason, usage }] = results;
  return `Answer finished (${finishReason}${usage ? `, ${usage.completion_tokens} tokens` : ""}).`;
}

// One column of the page: a model and its conversation with the user.
function createPane(section) {
  const title = section.querySelector(".pane-title");
  const log = section.querySelector(".transcript");
  const list = log.querySelector("ol");
  const empty = log.querySelector(".hint");
  let messages = [];

  function atBottom() {
    return log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  }

  function append(role, speaker, text) {
    const follow = atBottom();
    const content = el("div", { className: "content" }, text);
    const item = el("li", { className: `message ${role}` }, el("p", { className: "speaker" }, speaker), content);
    list.append(item);
    empty.hidden = true;
    if (follow) log.scrollTop = log.scrollHeight;
    return { item, content };
  }

  const pane = {
    section,
    model: null,
    reset(model) {
      pane.model = model;
      messages = [];
      title.textContent = model;
      list.replaceChildren();
      empty.hidden = false;
    },
    // Send the conversation so far plus `text`; the answer streams into the transcript.
    async ask(text, sampling, signal) {
      const model = pane.model;
      messages.push({ role: "user", content: text });
      const body = { model, messages: [...messages], ...sampling, stream_options: { include_usage: true } };
      append("user", "You", text);
      const { item, content } = append("assistant", model, "");
      const answer = content.appendChild(document.createTextNode(""));
      const result = { model, state: "streaming", finishReason: null, usage: null, error: null };
      item.dataset.state = result.state;
      log.setAttribute("aria-busy", "true");
      try {
        const complete = await streamCompletion("/chat/completions", body, {
          signal,
          onChunk(chunk) {
            const choice = chunk.choices?.[0];
            if (choice?.delta?.content) {
              const follow = atBottom();
              answer.appendData(choice.delta.content);
              if (follow) log.scrollTop = log.scrollHeight;
            }
            if (choice?.finish_reason) result.finishReason = choice.finish_reason;
            if (chunk.usage) result.usage = chunk.usage;
          },
        });
        if (complete) result.state = "done";
        else Object.assign(result, { state: "failed", error: "The connection closed before the answer was complete." });
      } catch (error) {
        if (signal.aborted) result.state = "stopped";
        else Object.assign(result, { state: "failed", error: error.message });
      }
      log.removeAttribute("aria-busy");
      item.dataset.state = result.state;
      if (result.state === "failed") messages.pop();
      else messages.push({ role: "assistant", content: answer.data });
      item.append(el("p", { className: `answer-meta${result.state === "failed" ? " error" : ""}` }, describe(result)));
      return result;
    },
  };
  return pane;
}

export function render(root, { model: linked }, { announce }) {
  const $ = (selector) => root.querySelector(selector);
  const panes = [...root.querySelectorAll(".pane")].map(createPane);
  const selects = [$("#play-model"), $("#play-compare-model")];
  const compare = $("#play-compare");
  const temperature = $("#play-temperature");
  const maxTokens = $("#play-max-tokens");
  const message = $("#play-message");
  const buttons = { send: $("#play-send"), stop: $("#play-stop"), newChat: $("#play-new") };
  const error = $("#play-error");
  let models = [];
  let turn = null; // the AbortController of the answers in flight
  let closed = false;

  function active() {
    return compare.checked ? panes : panes.slice(0, 1);
  }

  function startOver() {
    panes.forEach((pane, i) => pane.reset(selects[i].value));
    panes[1].section.hidden = !compare.checked;
    $("#play-compare-field").hidden = !compare.checked;
    $("#play-panes").classList.toggle("compare", compare.checked);
    error.textContent = "";
  }

  function setBusy(busy) {
    const idle = !busy && selects[0].value !== "";
    buttons.send.disabled = !idle;
    buttons.stop.disabled = !busy;
    buttons.newChat.disabled = busy;
    for (const control of [...selects, compare]) control.disabled = !idle;
  }

  // {temperature, max_tokens} from the inputs, or null (with the first bad input marked).
  function sampling() {
    let first = null;
    for (const input of [temperature, maxTokens]) {
      const valid = input.value.trim() !== "" && input.checkValidity();
      if (valid) input.removeAttribute("aria-invalid");
      else input.setAttribute("aria-invalid", "true");
      first ??= valid ? null : input;
    }
    if (first) {
      error.textContent = `${first.labels[0].textContent}: ${first.validationMessage || "enter a number"}`;
      first.focus();
      return null;
    }
    return { temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) };
  }

  async function sendMessage() {
    const text = message.value.trim();
    if (turn || !text) {
      if (!text) error.textContent = "Write a message first.";
      message.focus();
      return;
    }
    const chosen = sampling();
    if (!chosen) return;
    error.textContent = "";
    message.value = "";
    turn = new AbortController();
    setBusy(true);
    message.focus();
    const results = await Promise.all(active().map((pane) => pane.ask(text, chosen, turn.signal)));
    turn = null;
    if (closed) return;
    setBusy(false);
    announce(summary(results));
  }

  $("#play-chat").addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  buttons.stop.addEventListener("click", () => {
    turn?.abort();
    message.focus();
  });
  buttons.newChat.addEventListener("click", () => {
    startOver();
    announce("New chat.");
    message.focus();
  });
  selects[0].addEventListener("change", () => {
    // The address names the chosen model, so a reload or a shared link opens it again.
    history.replaceState(null, "", playgroundHash(selects[0].value));
    startOver();
  });
  selects[1].addEventListener("change", startOver);
  compare.addEventListener("change", () => {
    if (compare.checked) selects[1].value = counterpart(selects[0].value, models);
    startOver();
  });

  api("/models")
    .then((page) => {
      if (closed) return;
      models = page.data;
      const extra = linked && !models.some((model) => model.id === linked) ? linked : null;
      for (const select of selects) fillModels(select, models, extra);
      const newestTuned = models.filter((model) => model.kind !== "base").at(-1);
      const chosen = linked ?? (newestTuned ?? models[0])?.id;
      if (!chosen) {
        error.textContent = "This server has no models to chat with.";
        return;
      }
      selects[0].value = chosen;
      selects[1].value = counterpart(chosen, models);
      startOver();
      setBusy(false);
    })
    .catch((failure) => {
      if (!closed) error.textContent = `Could not load the models: ${failure.message}`;
    });

  return () => {
    closed = true;
    turn?.abort();
  };
}
