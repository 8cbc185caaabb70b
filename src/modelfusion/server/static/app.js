// modelfusion web page: one streaming request to /v1/chat/completions, rendered live.
// The stream carries the answer as standard `data:` chunks and panel progress as
// `: fusion {json}` comment lines (see docs/server.md). All model text goes through
// textContent: nothing from a model is ever parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const PROGRESS = ": fusion ";
const SECTIONS = [
  ["consensus", "Consensus"],
  ["contradictions", "Contradictions"],
  ["partial_coverage", "Partial coverage"],
  ["unique_insights", "Unique insights"],
  ["blind_spots", "Blind spots"],
];

// el("div", {class: "x"}, "text", child) — strings become text nodes, never markup.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

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

const fmtMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);
const fmtCost = (c) => (c === null || c === undefined ? "–" : `$${Number(c).toFixed(5)}`);

async function getJSON(url) {
  const r = await fetch(url, { headers: headers() });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error ? body.error.message : `HTTP ${r.status}`);
  return body;
}

// ---------------------------------------------------------------- the panel columns

const columns = new Map(); // member index -> {root, badge, meta, text}

function resetView() {
  columns.clear();
  $("members").replaceChildren();
  $("analysis").replaceChildren();
  $("answer").textContent = "";
  $("summary").replaceChildren();
  $("judge-status").textContent = "–";
}

function column(index, model) {
  let col = columns.get(index);
  if (col) return col;
  const badge = el("span", { class: "badge" }, "waiting");
  const meta = el("div", { class: "meta" }, "–");
  const text = el("div", { class: "text" });
  const root = el("article", { class: "member", "data-member": index },
    el("header", {}, el("span", { class: "name" }, model || `member ${index + 1}`), badge),
    meta, text);
  col = { root, badge, meta, text };
  columns.set(index, col);
  const container = $("members");
  const after = [...container.children].find((c) => Number(c.dataset.member) > index);
  container.insertBefore(root, after || null);
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
    col.text.textContent = r.content || "";
  } else {
    setBadge(col, r.status, `${r.status}: ${r.reason}`);
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
      col.text.textContent = ""; // a retry or a new debate round starts over
      started.set(ev.member, performance.now());
      setBadge(col, "running", ev.round ? `round ${ev.round}` : "running");
      col.meta.textContent = "…";
      break;
    }
    case "member_delta": {
      const col = column(ev.member);
      col.text.append(document.createTextNode(ev.text || ""));
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
  $("answer").textContent = result.answer;
  $("summary").replaceChildren(renderSummary(result, traceId));
  const ok = result.members.filter((m) => m.status === "ok").length;
  setStatus(`Done: ${result.mode}, ${ok}/${result.members.length} members answered, `
    + `${fmtMs(result.timings.total_ms)}.`);
}

function renderVerdict(result) {
  if (result.analysis) {
    return el("div", { class: "analysis" }, ...SECTIONS.map(([key, title]) => {
      const items = result.analysis[key] || [];
      return el("div", { "data-section": key }, el("h3", {}, title),
        items.length ? el("ul", {}, ...items.map((x) => el("li", {}, x)))
          : el("p", { class: "none" }, "none"));
    }));
  }
  if (result.votes) {
    const v = result.votes;
    return el("div", {},
      el("p", {}, `Winner: ${v.winner} — ${v.summary}${v.tie ? " (tie broken)" : ""}`),
      el("table", { class: "votes" }, ...v.split.map((s) => el("tr", {},
        el("td", {}, s.label),
        el("td", {}, bar(s.share)),
        el("td", {}, `${s.count} (${Math.round(s.share * 100)} %)`),
        el("td", { class: "muted" }, (s.members || []).join(", "))))));
  }
  const chosen = result.chosen
    ? el("p", {}, `Chosen: ${result.chosen}${result.reason ? ` — ${result.reason}` : ""}`)
    : null;
  if (result.checks) return el("div", { class: "verified" }, chosen, renderChecks(result.checks));
  if (chosen) return chosen;
  return el("p", { class: "muted" }, "No analysis for this fusion.");
}

// verified mode: which visible checks each candidate's code passed, as text only.
function renderChecks(checks) {
  if (!checks.total) {
    return el("p", { class: "muted" }, "No visible checks found in the request: nothing to run.");
  }
  const rows = checks.candidates.map((c) => el("tr", { "data-member": c.member },
    el("td", {}, c.model),
    el("td", { class: c.passed === c.total ? "pass" : "fail" }, `${c.passed}/${c.total}`),
    el("td", { class: "num" }, c.agreement === null ? "–" : String(c.agreement)),
    el("td", {},
      c.error ? el("div", { class: "muted" }, c.error) : null,
      el("ul", { class: "check-list" }, ...c.results.map((r) => el("li",
        { class: r.ok ? "pass" : "fail" },
        `${r.ok ? "✓" : "✗"} ${r.check}${r.ok ? "" : ` — expected ${r.expected ?? "true"}, `
          + `got ${r.actual ?? "(not run)"}`}`))))));
  return el("table", { class: "checks" },
    el("thead", {}, el("tr", {}, el("th", {}, "member"), el("th", {}, "passed"),
      el("th", { class: "num" }, "same outputs as"), el("th", {}, "checks"))),
    el("tbody", {}, ...rows));
}

// CSSOM, not a style attribute: the page's CSP forbids inline styles.
function bar(share) {
  const b = el("span", { class: "bar" });
  b.style.width = `${Math.round(share * 120)}px`;
  return b;
}

function renderSummary(result, traceId) {
  const rows = result.members.map((m) => el("tr", {},
    el("td", {}, m.model), el("td", {}, m.status),
    el("td", { class: "num" }, fmtMs(m.latency_ms)),
    el("td", { class: "num" }, String(m.usage.prompt_tokens + m.usage.completion_tokens)),
    el("td", { class: "num" }, fmtCost(m.cost))));
  const j = result.judge;
  if (j.status !== "skipped") {
    rows.push(el("tr", {}, el("td", {}, `judge ${j.model}`), el("td", {}, j.status),
      el("td", { class: "num" }, fmtMs(j.latency_ms)),
      el("td", { class: "num" }, String(j.usage.prompt_tokens + j.usage.completion_tokens)),
      el("td", { class: "num" }, fmtCost(j.cost))));
  }
  const t = result.timings;
  return el("div", {},
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "model"), el("th", {}, "status"),
      el("th", { class: "num" }, "time"), el("th", { class: "num" }, "tokens"),
      el("th", { class: "num" }, "cost"))), el("tbody", {}, ...rows)),
    el("p", { class: "totals" },
      `Total ${fmtMs(t.total_ms)} (panel ${fmtMs(t.panel_ms)}, judge ${fmtMs(t.judge_ms)}) · `
      + `${result.usage.prompt_tokens + result.usage.completion_tokens} tokens · `
      + `cost ${fmtCost(result.cost)}${traceId ? ` · trace ${traceId}` : ""}`));
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
        throw new Error(obj.error.message);
      }
      for (const choice of obj.choices || []) {
        if (choice.delta && choice.delta.content) {
          $("answer").append(document.createTextNode(choice.delta.content));
        }
      }
    }
  }
}

async function fuse(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  resetView();
  lastTraceId = null;
  $("run").disabled = true;
  setStatus("Asking the panel…");
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody(prompt)),
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
    setStatus(`Failed: ${err.message}`, true);
    loadHistory(lastTraceId);
  } finally {
    $("run").disabled = false;
  }
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
      return el("li", {}, el("button", { type: "button", onclick: () => openTrace(t.id) },
        el("span", { class: failed ? "failed" : "" }, traceLabel(t)),
        el("span", { class: "when" },
          [when, t.mode, t.preset, failed ? "failed" : null].filter(Boolean).join(" · "))));
    }));
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted" }, `History unavailable: ${err.message}`));
  }
}

async function openTrace(id) {
  try {
    const t = await getJSON(`/v1/fusion/traces/${encodeURIComponent(id)}`);
    resetView();
    const messages = t.messages || [];
    const user = [...messages].reverse().find((m) => m.role === "user");
    if (user) $("prompt").value = user.content;
    if (t.status === "ok") {
      showResult(t, t.id); // a trace holds the same keys as the fusion result
    } else {
      (t.members || []).forEach((m, i) => showMember(m, i));
      const e = t.error || {};
      setStatus(`Trace ${t.id} failed: ${e.message || e.code || "unknown error"}`, true);
    }
  } catch (err) {
    setStatus(`Could not open trace: ${err.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const key = $("api-key");
  key.value = localStorage.getItem("fusion.apiKey") || "";
  key.addEventListener("change", () => {
    localStorage.setItem("fusion.apiKey", key.value.trim());
    loadPresets();
    loadHistory();
  });
  $("ask").addEventListener("submit", fuse);
  $("refresh").addEventListener("click", () => loadHistory());
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("ask").requestSubmit();
  });
  loadPresets();
  loadHistory();
});
