// Files: upload with a progress bar, a refused file's problems by line, list and delete.

import { api, uploadFile } from "./api.js";
import { el, formatBytes, formatTime, labelCells } from "./format.js";

function problemsTable(error) {
  const rows = error.problems.map((problem) =>
    el(
      "tr",
      {},
      el("td", {}, problem.line ? String(problem.line) : "file"),
      el("td", {}, problem.field || ""),
      el("td", {}, el("code", {}, problem.code)),
      el("td", {}, problem.message),
    ),
  );
  const shown = error.problems.length;
  const more =
    error.problemCount > shown ? el("p", { className: "hint" }, `Showing the first ${shown} of ${error.problemCount} problems.`) : null;
  const table = el(
    "table",
    { className: "problems stack-narrow", id: "problems-table" },
    el("caption", {}, `Problems in the file (${error.problemCount})`),
    el("thead", {}, el("tr", {}, ...["Line", "Field", "Code", "Message"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows),
  );
  labelCells(table);
  return [
    el("p", { className: "error" }, `The file was refused: ${error.message}`),
    el("div", { className: "table-wrap" }, table),
    more,
  ];
}

export function render(root, _params, { announce }) {
  const form = root.querySelector("#upload-form");
  const input = root.querySelector("#upload-file");
  const button = root.querySelector("#upload-button");
  const progress = root.querySelector("#upload-progress");
  const percent = root.querySelector("#upload-percent");
  const result = root.querySelector("#upload-result");
  const problems = root.querySelector("#upload-problems");
  const tbody = root.querySelector("#files-table tbody");
  const empty = root.querySelector("#files-empty");
  let alive = true;

  async function refresh() {
    const page = await api("/files?limit=100");
    if (!alive) return;
    tbody.replaceChildren(...page.data.map(fileRow));
    labelCells(tbody.parentElement);
    empty.hidden = page.data.length > 0;
  }

  function fileRow(file) {
    const remove = el("button", { type: "button", className: "secondary small" }, "Delete");
    remove.setAttribute("aria-label", `Delete ${file.filename} (${file.id})`);
    remove.addEventListener("click", () => deleteFile(file));
    return el(
      "tr",
      { dataset: { fileId: file.id } },
      el("td", {}, file.filename),
      el("td", {}, el("code", { className: "id" }, file.id)),
      el("td", {}, file.purpose),
      el("td", { className: "num" }, file.stats ? String(file.stats.examples) : "–"),
      el("td", {}, file.stats?.format || "–"),
      el("td", { className: "num" }, formatBytes(file.bytes)),
      el("td", {}, formatTime(file.created_at)),
      el("td", {}, remove),
    );
  }

  async function deleteFile(file) {
    if (!window.confirm(`Delete ${file.filename} (${file.id})? Jobs that used it keep running.`)) return;
    try {
      await api(`/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
      announce(`Deleted ${file.filename}.`);
      await refresh();
    } catch (error) {
      announce(`Could not delete ${file.filename}: ${error.message}`);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files[0];
    problems.replaceChildren();
    if (!file) {
      result.textContent = "Choose a JSONL file first.";
      input.focus();
      return;
    }
    button.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    percent.textContent = "0%";
    result.textContent = `Uploading ${file.name}…`;
    try {
      const created = await uploadFile(file, (loaded, total) => {
        progress.value = Math.round((loaded / total) * 100);
        percent.textContent = `${progress.value}%`;
      });
      progress.value = 100;
      percent.textContent = "100%";
      const stats = created.stats;
      result.textContent = `Uploaded ${created.filename} as ${created.id}` +
        (stats ? `: ${stats.examples} ${stats.format} examples.` : ".");
      announce(`Uploaded ${created.filename}.`);
      form.reset();
      await refresh();
    } catch (error) {
      result.textContent = "";
      progress.hidden = true;
      percent.textContent = "";
      if (error.problems.length) problems.replaceChildren(...problemsTable(error).filter(Boolean));
      else problems.replaceChildren(el("p", { className: "error" }, `Upload failed: ${error.message}`));
    } finally {
      button.disabled = false;
    }
  });

  refresh().catch((error) => announce(`Could not list files: ${error.message}`));
  return () => {
    alive = false;
  };
}
