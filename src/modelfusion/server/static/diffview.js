// Where the candidates differ: a line diff (jsdiff, vendor/diff.min.js) of two members, or
// of each member against the answer. Changed lines that pair up also mark the changed
// words. Everything is text nodes; long unchanged runs fold to "… N unchanged lines".
import { $, el } from "./dom.js";

const Diff = window.Diff;
const CONTEXT = 2; // unchanged lines kept around a change

const ending = (s) => (s.endsWith("\n") ? s : `${s}\n`);
const lines = (part) => part.value.replace(/\n$/, "").split("\n");

// [{kind: "same"|"del"|"add", text, pair?}] — `pair` is the line on the other side.
export function lineDiff(a, b) {
  const rows = [];
  const parts = Diff.diffLines(ending(a || ""), ending(b || ""));
  for (let i = 0; i < parts.length; i += 1) {
    const part = parts[i];
    if (!part.added && !part.removed) {
      for (const text of lines(part)) rows.push({ kind: "same", text });
      continue;
    }
    const next = parts[i + 1];
    if (part.removed && next && next.added) { // a change: pair the lines up
      const old = lines(part);
      const now = lines(next);
      old.forEach((text, k) => rows.push({ kind: "del", text, pair: now[k] }));
      now.forEach((text, k) => rows.push({ kind: "add", text, pair: old[k] }));
      i += 1;
      continue;
    }
    for (const text of lines(part)) rows.push({ kind: part.added ? "add" : "del", text });
  }
  return rows;
}

function lineText(row) {
  if (row.pair === undefined) return [row.text];
  const [from, to] = row.kind === "del" ? [row.text, row.pair] : [row.pair, row.text];
  const keep = row.kind === "del" ? "removed" : "added";
  return Diff.diffWordsWithSpace(from, to)
    .filter((p) => !(row.kind === "del" ? p.added : p.removed))
    .map((p) => (p[keep] ? el("mark", {}, p.value) : p.value));
}

const SIGN = { same: " ", del: "−", add: "+" };

function renderRows(rows) {
  const changed = rows.map((r) => r.kind !== "same");
  const near = (i) => changed.slice(Math.max(0, i - CONTEXT), i + CONTEXT + 1).some(Boolean);
  const out = [];
  let skipped = 0;
  const flush = () => {
    if (skipped) out.push(el("div", { class: "line skip" }, `… ${skipped} unchanged line${skipped > 1 ? "s" : ""}`));
    skipped = 0;
  };
  rows.forEach((row, i) => {
    if (row.kind === "same" && !near(i)) { skipped += 1; return; }
    flush();
    out.push(el("div", { class: `line ${row.kind}` },
      el("span", { class: "sign", "aria-hidden": "true" }, SIGN[row.kind]),
      el("span", { class: "text" }, ...lineText(row))));
  });
  flush();
  return out;
}

function pairView(title, a, b) {
  const rows = lineDiff(a, b);
  const del = rows.filter((r) => r.kind === "del").length;
  const add = rows.filter((r) => r.kind === "add").length;
  const note = del || add ? `−${del} +${add} lines` : "identical";
  return el("div", { class: "diff-pair" },
    el("h3", {}, title, " ", el("span", { class: "muted" }, note)),
    del || add ? el("div", { class: "diff-lines" }, ...renderRows(rows)) : null);
}

// candidates: [{label, text}] (the members that answered); answer: the fused text.
let shown = { candidates: [], answer: "" };

function option(value, label) { return el("option", { value }, label); }

export function showDiffs(candidates, answer) {
  shown = { candidates, answer: answer || "" };
  const [left, right] = [$("diff-a"), $("diff-b")];
  const keep = [left.value, right.value];
  left.replaceChildren(option("each", "each member"),
    ...candidates.map((c, i) => option(String(i), c.label)));
  right.replaceChildren(option("answer", "the answer"),
    ...candidates.map((c, i) => option(String(i), c.label)));
  [left.value, right.value] = keep; // the same choice on the next fusion, where it exists
  if (!left.value) left.value = "each";
  if (!right.value) right.value = "answer";
  $("diff-section").hidden = candidates.length === 0;
  renderDiffs();
}

function side(value) {
  if (value === "answer") return { label: "the answer", text: shown.answer };
  return shown.candidates[Number(value)];
}

export function renderDiffs() {
  const [a, b] = [$("diff-a").value, $("diff-b").value];
  const to = side(b);
  const from = a === "each" ? shown.candidates.filter((c) => c !== to) : [side(a)];
  $("diff").replaceChildren(...from.filter(Boolean).map((c) =>
    pairView(`${c.label} → ${to ? to.label : "?"}`, c.text, to ? to.text : "")));
}

export function resetDiffs() {
  shown = { candidates: [], answer: "" };
  $("diff").replaceChildren();
  $("diff-section").hidden = true;
}
