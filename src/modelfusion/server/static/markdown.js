// Model text as markdown: markdown-it (vendor/, html: false, so raw HTML in a model's
// text is escaped, never parsed) with highlight.js for code. Its output is parsed in an
// inert document and rebuilt here from an allowlist of elements and attributes, so even
// a markdown-it bug cannot put a script, an image or a handler on the page.
import { el } from "./dom.js";

const hljs = window.hljs;
const AUTO_MAX = 20000; // longer unlabelled blocks are not auto-detected (it is slow)

let autoDetect = true; // off while text is still streaming in: it is redone every frame

function highlight(code, lang) {
  try {
    if (lang && hljs.getLanguage(lang)) {
      return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    }
    if (!lang && autoDetect && code.length <= AUTO_MAX) return hljs.highlightAuto(code).value;
  } catch (_) { /* fall through: markdown-it escapes the code itself */ }
  return "";
}

const md = window.markdownit({ html: false, linkify: false, typographer: false, highlight });
md.disable("image"); // img-src is 'self': a model's image would only be a broken request

// Table alignment comes out as a style attribute, which the page's CSP refuses: a class.
md.core.ruler.push("align_class", (state) => {
  for (const token of state.tokens) {
    const style = token.attrGet && token.attrGet("style");
    if (!style) continue;
    const m = /text-align:(left|right|center)/.exec(style);
    token.attrs = token.attrs.filter(([name]) => name !== "style");
    if (m) token.attrJoin("class", `align-${m[1]}`);
  }
});

const ALLOWED = {
  P: [], BR: [], HR: [], H1: [], H2: [], H3: [], H4: [], H5: [], H6: [], BLOCKQUOTE: [],
  UL: [], OL: ["start"], LI: [], PRE: [], CODE: ["class"], SPAN: ["class"], EM: [],
  STRONG: [], S: [], DEL: [], A: ["href", "title"], TABLE: [], THEAD: [], TBODY: [],
  TR: [], TH: ["class"], TD: ["class"],
};
const SAFE_HREF = /^(https?:|mailto:|#|\/(?!\/))/i;
const CLASS = /^[\w-]+(\s+[\w-]+)*$/;
const BLOCKS = new Set(["UL", "OL", "BLOCKQUOTE", "TABLE", "THEAD", "TBODY", "TR"]);

function rebuild(node, into) {
  for (const child of node.childNodes) {
    if (child.nodeType === Node.TEXT_NODE) {
      // markdown-it puts a newline between blocks: not text anyone wrote
      const between = into.nodeType === Node.DOCUMENT_FRAGMENT_NODE || BLOCKS.has(into.tagName);
      if (!(between && /^\s*$/.test(child.data))) into.append(child.data);
    } else if (child.nodeType === Node.ELEMENT_NODE) {
      const names = ALLOWED[child.tagName];
      if (!names) { rebuild(child, into); continue; } // unknown: keep its text only
      const copy = document.createElement(child.tagName);
      for (const name of names) {
        const value = child.getAttribute(name);
        if (value === null) continue;
        if (name === "href" && !SAFE_HREF.test(value)) continue;
        if (name === "class" && !CLASS.test(value)) continue;
        copy.setAttribute(name, value);
      }
      if (copy.tagName === "A") {
        copy.setAttribute("rel", "noopener noreferrer nofollow");
        copy.setAttribute("target", "_blank");
      }
      rebuild(child, copy);
      into.append(copy);
    }
  }
  return into;
}

function fragment(html) {
  const inert = new DOMParser().parseFromString(`<body>${html}</body>`, "text/html");
  return rebuild(inert.body, document.createDocumentFragment());
}

// Copy to the clipboard; outside a secure context (http on a LAN name) the old way.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = el("textarea", { class: "sr-only", "aria-hidden": "true" });
  area.value = text;
  document.body.append(area);
  area.select();
  try { document.execCommand("copy"); } finally { area.remove(); }
}

// A copy button; its label is CSS (::before), so it adds nothing to the text around it.
export function copyButton(getText, label) {
  const button = el("button", { type: "button", class: "copy", "aria-label": label, title: label });
  button.addEventListener("click", async () => {
    try {
      await copyText(getText());
      button.classList.add("done");
      setTimeout(() => button.classList.remove("done"), 1500);
    } catch (_) {
      button.classList.add("failed");
    }
  });
  return button;
}

// Markdown text -> nodes: code blocks highlighted (hljs classes), each with a copy button.
// `streaming`: the text is still growing; unlabelled code is not auto-detected yet.
export function renderMarkdown(text, { streaming = false } = {}) {
  autoDetect = !streaming;
  const frag = fragment(md.render(text || ""));
  for (const pre of frag.querySelectorAll("pre")) {
    const code = pre.querySelector("code") || pre;
    code.classList.add("hljs");
    const block = el("div", { class: "codeblock" });
    pre.replaceWith(block);
    block.append(copyButton(() => code.textContent, "Copy code"), pre);
  }
  return frag;
}

// One line of the judge's text (an analysis item, a reason): inline markdown only.
export function renderInline(text) {
  return fragment(md.renderInline(String(text ?? "")));
}
