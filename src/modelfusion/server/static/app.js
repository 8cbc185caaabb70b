// modelfusion web page: one streaming request to /v1/chat/completions, rendered live.
// The stream carries the answer as standard `data:` chunks and panel progress as
// `: fusion {json}` comment lines (see docs/server.md). Model text is rendered as
// markdown by markdown.js (raw HTML off, an allowlist rebuild); nothing from a model is
// ever put on the page as markup. Every fusion has a permalink, /?trace=<id>.
import { $, el } from "./dom.js";
import { copyButton, renderMarkdown } from "./markdown.js";
import { renderDiffs, resetDiffs, showDiffs } from "./diffview.js";
import { fmtCost, fmtMs, renderSummary, renderVerdict } from "./result.js";

const PROGRESS = ": fusion ";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

async function getJSON(url) {
  const r = await fetch(url, { headers: headers() });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(body.error ? body.error.message : `HTTP ${r.status}`);
    err.code = body.error && body.error.code;
    throw err;
  }
  return body;
}

// ---------------------------------------------------------------- rendering, batched

const columns = new Map(); // member index -> {root, badge, meta, text, raw, model}
const answer = { raw: "", streaming: false };
const dirty = new Set(); // what to re-render on the next frame: columns and `answer`

function paint(target) {
  dirty.add(target);
  if (dirty.size === 1) requestAnimationFrame(flushPaint);
}

function flushPaint() {
  for (const target of dirty) {
    const nodes = renderMarkdown(target.raw, { streaming: target.streaming });
    (target === answer ? $("answer") : target.text).replaceChildren(nodes);
  }
  dirty.clear();
}

function setAnswer(text, streaming = false) {
  answer.raw = text || "";
  answer.streaming = streaming;
  paint(answer);
}

// ---------------------------------------------------------------- the panel columns

function resetView() {
  columns.clear();
  dirty.clear();
  answer.raw = "";
  $("members").replaceChildren();
  $("analysis").replaceChildren();
  $("answer").replaceChildren();
  $("summary").replaceChildren();
  $("judge-status").textContent = "–";
  $("answer-tools").hidden = true;
  resetDiffs();
}

function column(index, model) {
  let col = columns.get(index);
  if (col) return col;
  const badge = el("span", { class: "badge" }, "waiting");
  const meta = el("div", { class: "meta" }, "–");
  const text = el("div", { class: "text md" });
  col = { badge, meta, text, raw: "", streaming: false, model: model || `member ${index + 1}` };
  const copy = copyButton(() => col.raw, "Copy this answer");
  col.root = el("article", { class: "member", "data-member": index },
    el("header", {}, el("span", { class: "name" }, col.model), badge, copy), meta, text);
  columns.set(index, col);
  const container = $("members");
  const after = [...container.children].find((c) => Number(c.dataset.member) > index);
  container.insertBefore(col.root, after || null);
  return col;
}

function setBadge(col, status, label) {
  col.badge.className = `badge ${status}`;
  col.badge.textContent = label || status;
}

function memberMeta(r) {
  const parts = [fmtMs(r.latency_ms || 0)];
  if (r.usage) parts.push(`${r.usage.prompt_tokens}+${r.usage.completion_tokens} tok`);
  parts.push(fmtCost(r.cost));
  if (r.attempts > 1) parts.push(`${r.attempts} attempts`);
  return parts.join(" · ");
}

function showMember(r, index) {
  const col = column(index, r.model);
  if (r.status === "ok") {
    setBadge(col, "ok");
    col.raw = r.content || "";
    col.streaming = false;
    paint(col);
  } else {
    setBadge(col, r.status, `${r.status}: ${r.reason}`);
    dirty.delete(col);
    col.text.replaceChildren(el("span", { class: "error" }, r.error || r.reason || "failed"));
  }
  col.meta.textContent = memberMeta(r);
}

// ---------------------------------------------------------------- progress events

const started = new Map(); // member index -> performance.now() of its current attempt
let lastTraceId = null; // the trace of the fusion on screen, from its `done` event

function onProgress(ev) {
  switch (ev.type) {
    case "member_started": {
      const col = column(ev.member, ev.model);
      col.raw = ""; // a retry or a new debate round starts over
      col.streaming = true;
      paint(col);
      started.set(ev.member, performance.now());
      setBadge(col, "running", ev.round ? `round ${ev.round}` : "running");
      col.meta.textContent = "…";
      break;
    }
    case "member_delta": {
      const col = column(ev.member);
      col.raw += ev.text || "";
      paint(col);
      const t0 = started.get(ev.member);
      if (t0 !== undefined) col.meta.textContent = `${fmtMs(performance.now() - t0)} …`;
      break;
    }
    case "member_done":
    case "member_failed":
      showMember(ev.member_result, ev.member);
      break;
    case "round_started":
      setStatus(`Debate round ${ev.round}…`);
      break;
    case "judge_started":
      $("judge-status").textContent = `Judging with ${ev.model}…`;
      setStatus("The judge is fusing the answers…");
      break;
    case "judge_done":
      $("judge-status").textContent = `Judged by ${ev.model}.`;
      break;
    case "done":
      lastTraceId = ev.trace_id;
      showResult(ev.result, ev.trace_id);
      if (ev.trace_id) linkTo(ev.trace_id);
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------- the result

function showResult(result, traceId) {
  result.members.forEach((m, i) => showMember(m, i));
  const j = result.judge;
  const judgeNote = j.status === "skipped"
    ? `Judge skipped (${j.reason}).`
    : `Judge ${j.model}: ${j.status}${j.reason ? ` (${j.reason})` : ""} · ${fmtMs(j.latency_ms)}`;
  $("judge-status").textContent = judgeNote;
  $("analysis").replaceChildren(renderVerdict(result));
  setAnswer(result.answer);
  $("answer-tools").hidden = false;
  $("summary").replaceChildren(renderSummary(result, traceId));
  showDiffs(result.members.filter((m) => m.status === "ok")
    .map((m, i) => ({ label: labelOf(result.members, m, i), text: m.content || "" })),
  result.answer);
  const ok = result.members.filter((m) => m.status === "ok").length;
  setStatus(`Done: ${result.mode}, ${ok}/${result.members.length} members answered, `
    + `${fmtMs(result.timings.total_ms)}.`);
}

// A member's name in the diff menus; copies of one model are told apart by number.
function labelOf(members, m, i) {
  const same = members.filter((x) => x.model === m.model).length;
  return same > 1 ? `${m.model} #${members.indexOf(m) + 1}` : m.model || `member ${i + 1}`;
}

// ---------------------------------------------------------------- permalinks

function traceFromUrl() {
  return new URLSearchParams(window.location.search).get("trace");
}

// The fusion on screen is /?trace=<id>: the address bar, the Permalink link, reloads.
function linkTo(id) {
  const href = `/?trace=${encodeURIComponent(id)}`;
  if (traceFromUrl() !== id) window.history.pushState({ trace: id }, "", href);
  $("permalink").href = href;
  $("permalink").hidden = false;
}

// ---------------------------------------------------------------- the request

function requestBody(prompt) {
  const fusion = {};
  const models = $("models").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (models.length) fusion.models = models;
  if ($("judge").value.trim()) fusion.judge = $("judge").value.trim();
  if ($("mode").value) fusion.mode = $("mode").value;
  return {
    model: $("preset").value,
    messages: [{ role: "user", content: prompt }],
    stream: true,
    fusion,
  };
}

function onFrame(frame) {
  for (const line of frame.split("\n")) {
    if (line.startsWith(PROGRESS)) {
      onProgress(JSON.parse(line.slice(PROGRESS.length)));
    } else if (line.startsWith("data: ")) {
      const data = line.slice(6);
      if (data === "[DONE]") return;
      const obj = JSON.parse(data);
      if (obj.error) {
        lastTraceId = obj.error.trace_id || null;
        if (lastTraceId) linkTo(lastTraceId); // a failed fusion is traced too
        throw new Error(obj.error.message);
      }
      for (const choice of obj.choices || []) {
        if (choice.delta && choice.delta.content) setAnswer(answer.raw + choice.delta.content, true);
      }
    }
  }
}

let running = null; // the AbortController of the fusion in flight

function busy(on) {
  $("run").disabled = on;
  $("stop").hidden = !on;
  $("stop").disabled = !on;
}

async function fuse(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || running) return;
  resetView();
  $("permalink").hidden = true;
  lastTraceId = null;
  running = new AbortController();
  busy(true);
  setStatus("Asking the panel…");
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody(prompt)),
      signal: running.signal,
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      const e = body.error || {};
      const where = e.param ? ` (${e.param})` : "";
      throw new Error(`${r.status}: ${e.message || r.statusText}${where}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        onFrame(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
    loadHistory(lastTraceId);
  } catch (err) {
    if (err.name === "AbortError") {
      for (const col of columns.values()) {
        if (col.badge.classList.contains("running") || col.badge.textContent === "waiting") {
          setBadge(col, "cancelled", "stopped");
        }
      }
      setStatus("Stopped: the fusion was cancelled.");
    } else {
      setStatus(`Failed: ${err.message}`, true);
    }
    loadHistory(lastTraceId);
  } finally {
    running = null;
    busy(false);
  }
}

// Aborting the fetch closes the connection: the server cancels the fusion (docs/server.md).
function stop() {
  if (running) running.abort();
}

// ---------------------------------------------------------------- presets and history

async function loadPresets() {
  try {
    const { data } = await getJSON("/v1/models");
    const select = $("preset");
    select.replaceChildren(...data.filter((m) => m.id.startsWith("fusion")).map((m) =>
      el("option", { value: m.id }, m.id === "fusion" ? "fusion (default)" : m.id)));
  } catch (err) {
    setStatus(`Could not list presets: ${err.message}`, true);
  }
}

function traceLabel(t) {
  const text = t.prompt_preview || "(prompt not stored)";
  return text.length > 90 ? `${text.slice(0, 90)}…` : text;
}

// Traces are written by a background thread, so a fusion that just finished may not be
// listed yet: when we know its id, look again a few times before settling.
async function loadHistory(expectId = null, tries = 6) {
  const list = $("history");
  try {
    const { data } = await getJSON("/v1/fusion/traces?limit=25");
    if (expectId && tries > 1 && !data.some((t) => t.id === expectId)) {
      setTimeout(() => loadHistory(expectId, tries - 1), 250);
    }
    if (!data.length) {
      list.replaceChildren(el("li", { class: "muted" }, "No fusions yet."));
      return;
    }
    list.replaceChildren(...data.map((t) => {
      const failed = t.status === "failed";
      const when = t.created_at ? new Date(t.created_at).toLocaleString() : "";
      return el("li", {}, el("button", { type: "button", "data-trace": t.id,
        onclick: () => openTrace(t.id, { link: true }) },
      el("span", { class: failed ? "failed" : "" }, traceLabel(t)),
      el("span", { class: "when" },
        [when, t.mode, t.preset, failed ? "failed" : null].filter(Boolean).join(" · "))));
    }));
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted" }, `History unavailable: ${err.message}`));
  }
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function openTrace(id, { link = false, tries = 4 } = {}) {
  try {
    let t;
    for (let left = tries; ; left -= 1) {
      try {
        t = await getJSON(`/v1/fusion/traces/${encodeURIComponent(id)}`);
        break;
      } catch (err) { // a link to a fusion that finished a moment ago: still being written
        if (err.code !== "trace_not_found" || left <= 1) throw err;
        await sleep(300);
      }
    }
    if (running) {
      setStatus("A fusion is running: stop it to open another.");
      return;
    }
    resetView();
    const messages = t.messages || [];
    const user = [...messages].reverse().find((m) => m.role === "user");
    $("prompt").value = user ? user.content : "";
    if (link) linkTo(t.id);
    else { $("permalink").href = `/?trace=${encodeURIComponent(t.id)}`; $("permalink").hidden = false; }
    if (t.status === "ok") {
      showResult(t, t.id); // a trace holds the same keys as the fusion result
    } else {
      (t.members || []).forEach((m, i) => showMember(m, i));
      const e = t.error || {};
      setStatus(`Trace ${t.id} ${t.status}: ${e.message || e.code || "unknown error"}`, true);
    }
  } catch (err) {
    setStatus(`Could not open trace ${id}: ${err.message}`, true);
  }
}

// Back and forward move between the fusions opened here.
function onPopState() {
  const id = traceFromUrl();
  if (running) return;
  if (id) openTrace(id);
  else { resetView(); $("permalink").hidden = true; setStatus(""); }
}

function init() {
  const key = $("api-key");
  key.value = localStorage.getItem("fusion.apiKey") || "";
  key.addEventListener("change", () => {
    localStorage.setItem("fusion.apiKey", key.value.trim());
    loadPresets();
    loadHistory();
  });
  $("ask").addEventListener("submit", fuse);
  $("stop").addEventListener("click", stop);
  $("refresh").addEventListener("click", () => loadHistory());
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      $("ask").requestSubmit();
    }
  });
  $("diff-a").addEventListener("change", renderDiffs);
  $("diff-b").addEventListener("change", renderDiffs);
  $("answer-tools").prepend(copyButton(() => answer.raw, "Copy the answer"));
  window.addEventListener("popstate", onPopState);
  loadPresets();
  loadHistory();
  const id = traceFromUrl();
  if (id) openTrace(id);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
