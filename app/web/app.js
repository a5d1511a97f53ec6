// The dashboard's shell: sign-in, the hash router (#/jobs, #/jobs/ID, #/new, #/files,
// #/playground, #/playground/MODEL, #/webhooks), navigation state, focus on view change, and the status
// line screen readers announce.
// The status line speaks for the view it was written on: opening another view clears it
// (a message meant for the next view is passed to navigate()).

import { api, session } from "./api.js";
import * as filesView from "./files.js";
import * as jobView from "./job.js";
import * as jobsView from "./jobs.js";
import * as newJobView from "./new-job.js";
import * as playgroundView from "./playground.js";
import * as webhooksView from "./webhooks.js";

const VIEWS = {
  files: { module: filesView, template: "view-files", title: "Files" },
  new: { module: newJobView, template: "view-new-job", title: "New job" },
  jobs: { module: jobsView, template: "view-jobs", title: "Jobs" },
  job: { module: jobView, template: "view-job", title: "Job" },
  playground: { module: playgroundView, template: "view-playground", title: "Playground" },
  webhooks: { module: webhooksView, template: "view-webhooks", title: "Webhooks" },
};

const main = document.getElementById("main");
const statusBar = document.getElementById("status");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");
let cleanup = null;
// Bumped by each message and each view change: a message still waiting for its animation
// frame when the view changes is dropped, not shown on the next view.
let statusVersion = 0;
let nextViewMessage = null;

function announce(message) {
  // Clear first so that the same message twice is announced twice.
  const version = ++statusVersion;
  statusBar.textContent = "";
  requestAnimationFrame(() => {
    if (version === statusVersion) statusBar.textContent = message;
  });
}

function clearStatus() {
  statusVersion += 1;
  statusBar.textContent = "";
}

// Open a view; `message` is announced on it (say, "Created job ..." on the new job's page).
function navigate(hash, message = null) {
  nextViewMessage = message;
  if (location.hash === hash) route();
  else location.hash = hash;
}

const context = { announce, navigate };

function mount(templateId) {
  const content = document.getElementById(templateId).content.cloneNode(true);
  main.replaceChildren(content);
}

function focusHeading() {
  const heading = main.querySelector("h1");
  if (heading) heading.focus({ preventScroll: false });
}

function showSignIn(message) {
  nav.hidden = true;
  signOutButton.hidden = true;
  document.title = "Sign in · loraforge";
  mount("view-signin");
  const form = main.querySelector("#signin-form");
  const input = main.querySelector("#signin-key");
  const error = main.querySelector("#signin-error");
  if (message) error.textContent = message;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      error.textContent = "Enter an API key.";
      input.focus();
      return;
    }
    error.textContent = "";
    try {
      await api("/models", { key });
    } catch (failure) {
      error.textContent =
        failure.status === 401
          ? `This key was refused: ${failure.message}`
          : `Could not reach the server: ${failure.message}`;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    session.key = key;
    route();
    announce("Signed in.");
  });
  input.focus();
}

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) return { view: "job", params: { id: decodeURIComponent(parts[1]) } };
  if (parts[0] === "playground") return { view: "playground", params: { model: parts[1] ? decodeURIComponent(parts[1]) : null } };
  if (parts[0] in VIEWS && parts[0] !== "job") return { view: parts[0], params: {} };
  return { view: "jobs", params: {} };
}

function route() {
  cleanup?.();
  cleanup = null;
  clearStatus();
  const message = nextViewMessage;
  nextViewMessage = null;
  if (!session.key) {
    showSignIn();
    return;
  }
  nav.hidden = false;
  signOutButton.hidden = false;
  const { view, params } = parseHash();
  const spec = VIEWS[view];
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    const current = link.dataset.nav === view || (view === "job" && link.dataset.nav === "jobs");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${spec.title}${params.id ? ` ${params.id}` : ""} · loraforge`;
  mount(spec.template);
  cleanup = spec.module.render(main, params, context) || null;
  focusHeading();
  if (message) announce(message);
}

session.onUnauthorized = (message) => {
  if (!session.key) return;
  session.key = null;
  cleanup?.();
  cleanup = null;
  clearStatus();
  showSignIn(`Signed out: ${message || "the key was refused"}.`);
};

signOutButton.addEventListener("click", () => {
  session.key = null;
  route();
  announce("Signed out.");
});

window.addEventListener("hashchange", route);
route();
