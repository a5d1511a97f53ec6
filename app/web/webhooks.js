// Webhooks: the organization's endpoints, adding one (its signing secret shown once, with a
// copy button), deleting one, "Send test", and each endpoint's deliveries, one row per
// attempt, refreshed while the page is open.

import { api } from "./api.js";
import { el, formatTime, labelCells } from "./format.js";

const REFRESH_MS = 3000;
const DELIVERY_COLUMNS = ["Time", "Event", "Status code", "Latency", "Error", "Attempt"];

function attemptRow(delivery, attempt) {
  const status = attempt.status_code == null ? "–" : String(attempt.status_code);
  const failed = attempt.status_code == null || attempt.status_code < 200 || attempt.status_code >= 300;
  return el(
    "tr",
    { dataset: { deliveryId: delivery.id, attempt: String(attempt.number) } },
    el("td", {}, formatTime(attempt.attempted_at)),
    el("td", {}, el("code", {}, delivery.event_type)),
    el("td", { className: "num" }, failed ? el("span", { className: "failed" }, status) : status),
    el("td", { className: "num" }, `${Math.round(attempt.latency_ms)} ms`),
    el("td", { className: "wrap" }, attempt.error || "–"),
    el("td", { className: "num" }, String(attempt.number)),
  );
}

// A delivery no worker has attempted yet: one row that says it waits.
function pendingRow(delivery) {
  return el(
    "tr",
    { dataset: { deliveryId: delivery.id, attempt: "0" } },
    el("td", {}, formatTime(delivery.created_at)),
    el("td", {}, el("code", {}, delivery.event_type)),
    el("td", { className: "num" }, delivery.status === "pending" ? "pending" : "–"),
    el("td", { className: "num" }, "–"),
    el("td", { className: "wrap" }, delivery.status === "pending" ? "waiting for a worker" : "–"),
    el("td", { className: "num" }, "–"),
  );
}

function deliveryRows(deliveries) {
  return deliveries.flatMap((delivery) =>
    delivery.attempts.length
      ? [...delivery.attempts].reverse().map((attempt) => attemptRow(delivery, attempt))
      : [pendingRow(delivery)],
  );
}

function deliveriesTable(webhook) {
  const table = el(
    "table",
    { className: "stack-narrow deliveries" },
    el("caption", { className: "visually-hidden" }, `Deliveries to ${webhook.url}, newest first`),
    el("thead", {}, el("tr", {}, ...DELIVERY_COLUMNS.map((name) => el("th", { scope: "col" }, name)))),
    el("tbody"),
  );
  return table;
}

export function render(root, _params, { announce }) {
  const form = root.querySelector("#webhook-form");
  const url = root.querySelector("#webhook-url");
  const description = root.querySelector("#webhook-description");
  const formError = root.querySelector("#webhook-form-error");
  const addButton = root.querySelector("#webhook-add");
  const secretBox = root.querySelector("#webhook-secret");
  const secretValue = root.querySelector("#webhook-secret-value");
  const copyButton = root.querySelector("#webhook-secret-copy");
  const list = root.querySelector("#webhooks-list");
  const empty = root.querySelector("#webhooks-empty");
  // The events the API accepts, as the form offers them (an endpoint created with none
  // subscribes to all of them).
  const allEvents = [...form.querySelectorAll('input[name="events"]')].map((box) => box.value);
  // The deliveries table body of each listed endpoint, by id.
  const bodies = new Map();
  let timer = null;
  let alive = true;

  function webhookCard(webhook) {
    const titleId = `webhook-${webhook.id}-title`;
    const test = el("button", { type: "button", className: "secondary small" }, "Send test");
    test.setAttribute("aria-label", `Send test event to ${webhook.url}`);
    test.addEventListener("click", () => sendTest(webhook, test));
    const remove = el("button", { type: "button", className: "danger small" }, "Delete");
    remove.setAttribute("aria-label", `Delete the webhook ${webhook.url} (${webhook.id})`);
    remove.addEventListener("click", () => deleteWebhook(webhook));
    const table = deliveriesTable(webhook);
    bodies.set(webhook.id, table.tBodies[0]);
    const every = allEvents.every((name) => webhook.events.includes(name));
    const events = every || !webhook.events.length ? "every event" : webhook.events.join(", ");
    return el(
      "article",
      { className: "webhook", dataset: { webhookId: webhook.id }, "aria-labelledby": titleId },
      el("h3", { id: titleId, className: "webhook-url" }, webhook.url),
      el(
        "dl",
        { className: "stats wide" },
        el("div", {}, el("dt", {}, "ID"), el("dd", {}, el("code", { className: "id" }, webhook.id))),
        el("div", {}, el("dt", {}, "Events"), el("dd", {}, events)),
        el("div", {}, el("dt", {}, "Description"), el("dd", {}, webhook.description || "–")),
        el("div", {}, el("dt", {}, "Created"), el("dd", {}, formatTime(webhook.created_at))),
      ),
      el("div", { className: "toolbar row-actions" }, test, remove),
      el("h4", {}, "Deliveries"),
      el("div", { className: "table-wrap" }, table),
      el("p", { className: "hint deliveries-empty" }, "No deliveries yet."),
    );
  }

  async function refreshDeliveries() {
    const pages = await Promise.all(
      [...bodies.keys()].map((id) => api(`/webhooks/${encodeURIComponent(id)}/deliveries?limit=20`)),
    );
    if (!alive) return;
    [...bodies.entries()].forEach(([, tbody], i) => {
      tbody.replaceChildren(...deliveryRows(pages[i].data));
      labelCells(tbody.parentElement);
      const card = tbody.closest("article");
      card.querySelector(".deliveries-empty").hidden = pages[i].data.length > 0;
      card.querySelector(".table-wrap").hidden = pages[i].data.length === 0;
    });
  }

  async function refresh() {
    const page = await api("/webhooks?limit=100");
    if (!alive) return;
    bodies.clear();
    list.replaceChildren(...page.data.map(webhookCard));
    empty.hidden = page.data.length > 0;
    await refreshDeliveries();
  }

  async function poll() {
    try {
      await refreshDeliveries();
    } catch (error) {
      if (alive) announce(`Could not list deliveries: ${error.message}`);
    }
    if (alive) timer = setTimeout(poll, REFRESH_MS);
  }

  async function sendTest(webhook, button) {
    button.disabled = true;
    try {
      await api(`/webhooks/${encodeURIComponent(webhook.id)}/test`, { method: "POST" });
      announce(`Sent a test event to ${webhook.url}; its delivery is listed below.`);
      await refreshDeliveries();
    } catch (error) {
      announce(`Could not send a test event: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async function deleteWebhook(webhook) {
    if (!window.confirm(`Delete the webhook ${webhook.url}? Deliveries not yet sent are dropped.`)) return;
    try {
      await api(`/webhooks/${encodeURIComponent(webhook.id)}`, { method: "DELETE" });
      announce(`Deleted the webhook ${webhook.url}.`);
      await refresh();
    } catch (error) {
      announce(`Could not delete the webhook: ${error.message}`);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.textContent = "";
    url.removeAttribute("aria-invalid");
    if (!url.value.trim()) {
      formError.textContent = "Enter the URL to send events to.";
      url.setAttribute("aria-invalid", "true");
      url.focus();
      return;
    }
    const events = [...form.querySelectorAll('input[name="events"]:checked')].map((box) => box.value);
    addButton.disabled = true;
    try {
      const created = await api("/webhooks", {
        method: "POST",
        json: { url: url.value.trim(), events, description: description.value },
      });
      secretValue.value = created.secret;
      secretBox.hidden = false;
      form.reset();
      announce(`Added the webhook ${created.url}. Copy its signing secret now: it is shown once.`);
      await refresh();
      secretValue.focus();
      secretValue.select();
    } catch (error) {
      formError.textContent = `The webhook was refused: ${error.message}`;
      if (error.param === "url" || !error.param) url.setAttribute("aria-invalid", "true");
      url.focus();
    } finally {
      addButton.disabled = false;
    }
  });

  copyButton.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secretValue.value);
      announce("Copied the signing secret.");
    } catch {
      // No clipboard access (an insecure origin, a refused permission): select it instead.
      secretValue.focus();
      secretValue.select();
      announce("Select and copy the signing secret yourself (Ctrl+C).");
    }
  });

  refresh()
    .catch((error) => announce(`Could not list webhooks: ${error.message}`))
    .finally(() => {
      if (alive) timer = setTimeout(poll, REFRESH_MS);
    });
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
