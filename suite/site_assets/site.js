// Sortable leaderboard tables. Click a header to sort by it, click again to reverse. A header's
// data-dir gives its first direction (best first: ascending for lower-is-better metrics). Rows with
// no value sort last either way; the n/a and missing rows stay below the runs.
"use strict";

function sortKey(row, col, numeric) {
  const raw = row.cells[col].dataset.sort;
  if (raw === undefined || raw === "") return null;
  return numeric ? Number(raw) : raw;
}

function compare(a, b, ascending) {
  if (a.key === null || b.key === null) {
    return (a.key === null) - (b.key === null) || a.index - b.index;
  }
  const order = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
  return (ascending ? order : -order) || a.index - b.index;
}

function sortBy(th) {
  const table = th.closest("table");
  const body = table.tBodies[0];
  const col = th.cellIndex;
  const numeric = th.dataset.type === "num";
  const now = th.getAttribute("aria-sort");
  const first = th.dataset.dir === "desc" ? "descending" : "ascending";
  const next = now === "ascending" ? "descending" : now === "descending" ? "ascending" : first;
  const runs = Array.from(body.querySelectorAll("tr.run"), (row) => ({
    row, key: sortKey(row, col, numeric), index: Number(row.dataset.index),
  }));
  runs.sort((a, b) => compare(a, b, next === "ascending"));
  const rest = Array.from(body.querySelectorAll("tr:not(.run)"));
  for (const item of runs) body.appendChild(item.row);
  for (const row of rest) body.appendChild(row);
  for (const other of table.tHead.querySelectorAll("th[aria-sort]")) other.setAttribute("aria-sort", "none");
  th.setAttribute("aria-sort", next);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.board-table")) {
    table.querySelectorAll("tbody tr.run").forEach((row, i) => { row.dataset.index = String(i); });
    for (const th of table.tHead.querySelectorAll("th[data-type]")) {
      th.querySelector("button").addEventListener("click", () => sortBy(th));
    }
  }
});
