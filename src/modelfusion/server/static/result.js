// A finished fusion's verdict and accounts: the judge's analysis, the vote split, the
// best-of choice, verified mode's checks, the time/tokens/cost table. The judge's words
// are inline markdown (renderInline); everything else is text.
import { el } from "./dom.js";
import { renderInline } from "./markdown.js";

const SECTIONS = [
  ["consensus", "Consensus"],
  ["contradictions", "Contradictions"],
  ["partial_coverage", "Partial coverage"],
  ["unique_insights", "Unique insights"],
  ["blind_spots", "Blind spots"],
];

export const fmtMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);
export const fmtCost = (c) => (c === null || c === undefined ? "–" : `$${Number(c).toFixed(5)}`);

export function renderVerdict(result) {
  if (result.analysis) {
    return el("div", { class: "analysis" }, ...SECTIONS.map(([key, title]) => {
      const items = result.analysis[key] || [];
      return el("div", { "data-section": key }, el("h3", {}, title),
        items.length ? el("ul", {}, ...items.map((x) => el("li", {}, renderInline(x))))
          : el("p", { class: "none" }, "none"));
    }));
  }
  if (result.votes) {
    const v = result.votes;
    return el("div", {},
      el("p", {}, `Winner: ${v.winner} — `, renderInline(v.summary), v.tie ? " (tie broken)" : ""),
      el("div", { class: "scroll" }, el("table", { class: "votes" }, ...v.split.map((s) => el("tr", {},
        el("td", {}, s.label),
        el("td", {}, bar(s.share)),
        el("td", {}, `${s.count} (${Math.round(s.share * 100)} %)`),
        el("td", { class: "muted" }, (s.members || []).join(", ")))))));
  }
  const chosen = result.chosen
    ? el("p", {}, `Chosen: ${result.chosen}`, result.reason ? " — " : "",
      result.reason ? renderInline(result.reason) : "")
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
  return el("div", { class: "scroll" }, el("table", { class: "checks" },
    el("thead", {}, el("tr", {}, el("th", {}, "member"), el("th", {}, "passed"),
      el("th", { class: "num" }, "same outputs as"), el("th", {}, "checks"))),
    el("tbody", {}, ...rows)));
}

// Adaptive compute's account, worded as the CLI's `compute.line()`: what was spent, why
// it stopped.
function renderCompute(c) {
  if (!c) return null;
  const revised = c.revised ? ` · ${c.revised} revised the lead` : "";
  return el("p", { class: "compute" }, `Compute: ${c.samples_used} of ${c.max_samples} samples · `
    + `${String(c.stopped).replaceAll("_", " ")}${revised} (lead ${c.lead})`);
}

// CSSOM, not a style attribute: the page's CSP forbids inline styles.
function bar(share) {
  const b = el("span", { class: "bar" });
  b.style.width = `${Math.round(share * 120)}px`;
  return b;
}

export function renderSummary(result, traceId) {
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
  return el("div", {}, renderCompute(result.compute),
    el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {},
      el("th", {}, "model"), el("th", {}, "status"), el("th", { class: "num" }, "time"),
      el("th", { class: "num" }, "tokens"), el("th", { class: "num" }, "cost"))),
    el("tbody", {}, ...rows))),
    el("p", { class: "totals" },
      `Total ${fmtMs(t.total_ms)} (panel ${fmtMs(t.panel_ms)}, judge ${fmtMs(t.judge_ms)}) · `
      + `${result.usage.prompt_tokens + result.usage.completion_tokens} tokens · `
      + `cost ${fmtCost(result.cost)}${traceId ? ` · trace ${traceId}` : ""}`));
}
