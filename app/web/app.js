// The dashboard's shell: sign-in, the hash router (#/jobs, #/jobs/ID, #/new, #/files),
// navigation state, focus on view change, and the status line screen readers announce.

import { api, session } from "./api.js";
import * as filesView from "./files.js";
import * as jobView from "./job.js";
import * as jobsView from "./jobs.js";
import * as newJobView from "./new-job.js";

const VIEWS = {
  files: { module: filesView, template: "view-files", title: "Files" },
  new: { module: newJobView, template: "view-new-job", title: "New job" },
  jobs: { module: jobsView, template: "view-jobs", title: "Jobs" },
  job: { module: jobView, template: "view-job", title: "Job" },
};

const main = document.getElementById("main");
const statusBar = document.getElementById("status");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");
let cleanup = null;

function announce(message) {
  // Clear first so that the same message twice is announced twice.
  statusBar.textContent = "";
  requestAnimationFrame(() => {
    statusBar.textContent = message;
  });
}

function navigate(hash) {
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
    announce("Signed in.");
    route();
  });
  input.focus();
}

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) return { view: "job", params: { id: decodeURIComponent(parts[1]) } };
  if (parts[0] in VIEWS && parts[0] !== "job") return { view: parts[0], params: {} };
  return { view: "jobs", params: {} };
}

function route() {
  cleanup?.();
  cleanup = null;
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
}

session.onUnauthorized = (message) => {
  if (!session.key) return;
  session.key = null;
  cleanup?.();
  cleanup = null;
  showSignIn(`Signed out: ${message || "the key was refused"}.`);
};

signOutButton.addEventListener("click", () => {
  session.key = null;
  announce("Signed out.");
  route();
});

window.addEventListener("hashchange", route);
route();
