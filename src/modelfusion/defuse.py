"""Defusing: text that addresses the judge is taken out of the judge's view of a candidate.

Candidates are data, but a small judge obeys an in-band instruction anyway ("ignore the
rubric", a fake `system:` line, a forged closing fence: docs/judge.md). So before a
candidate is fenced for the judge, the sentences or lines that speak to the judge are
replaced by a visible marker, `[removed: text addressed to the judge]`. Only the judge's
view changes: the member's answer (what best-of returns, what traces keep) stays verbatim.

What counts (each hit is recorded under its kind):

- `role`: a line that opens like a chat turn of a privileged role (`system:`,
  `assistant:`, `developer:`, `[system]`), outside code blocks;
- `template`: chat-template tokens (`<|im_start|>`, `[INST]`, `<<SYS>>`) and the turn
  they open: a judge's tokenizer may read them as real turn boundaries;
- `fence`: tags that look like our candidate fences or the request tag;
- `address`: text to the judge/grader/evaluator ("note to the judge", "judge
  instructions", "as the evaluator you must", a line opening "Judge:");
- `override`: "ignore the rubric", "disregard all previous instructions";
- `steer`: "choose this answer", "select candidate B", "the best candidate is B", a forged
  `"choice": "B"`;
- `claim`: claims about candidates ("candidate A is wrong", "this answer was verified").

Matching looks at a normalised copy of each line (`_normal`: NFKC, so fullwidth
`ＳＹＳＴＥＭ：` and DeepSeek's fullwidth-bar tokens read as ASCII; zero-width and other
format characters removed; a few Cyrillic/Greek look-alikes folded to Latin), and lines are
split at every line break a tokenizer may honour (`\r`, U+2028, U+0085 …, as
`str.splitlines`). A line without a hit is kept as written; a line with a sentence-level
hit is shown normalised around its marker.

Conservative on purpose: every pattern needs judge vocabulary, a candidate label, a role
prefix at the start of a line, a template token or a fence look-alike. Prose or code that
merely says "system" or "choose" passes unchanged, and role prefixes are not looked for
inside ``` code blocks (YAML `system:` keys, chat transcripts). Known false positives,
documented in docs/judge.md: a prose line starting "System:" or "Assistant:", answers that
quote injection phrases or chat-template tokens, and answers about job candidates that say
"candidate A is better".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

MARKER = "[removed: text addressed to the judge]"

_JUDGE = r"(?:judge|grader|evaluator|reviewer|rater|assessor|scorer|referee)s?"
_LABEL = r'"?(?-i:[A-Z])"?(?![\w])'  # a candidate label: one capital letter, maybe quoted

_ROLE_LINE = re.compile(
    r"^\s*[>*#_\-\s]*(?:\[\s*(?:system|assistant|developer)\s*\]"
    r"|<\s*(?:system|assistant|developer)\s*>"
    r"|(?:system|assistant|developer)(?:\s+(?:message|prompt|note|override))?\s*:)",
    re.I,
)
# `▁` (U+2581): DeepSeek's word separator inside its tokens (<｜end▁of▁sentence｜>).
_TEMPLATE = re.compile(r"<\|[A-Za-z0-9_\u2581]{1,32}\|>|<</?SYS>>|\[/?INST\]"
                       r"|<(?:start|end)_of_turn>")
_TEMPLATE_OPEN = re.compile(r"<\|(?:im_start|start_header_id|system|user|assistant)\|>|\[INST\]"
                            r"|<<SYS>>|<start_of_turn>", re.I)
_TEMPLATE_CLOSE = re.compile(r"<\|(?:im_end|eot_id|end|end_header_id|end\u2581of\u2581sentence)"
                             r"\|>|\[/INST\]|<</SYS>>|<end_of_turn>", re.I)
_FENCE = re.compile(r"</?\s*candidate(?:[-_][\w-]*)?(?:\s[^>\n]{0,200})?\s*/?>|</?\s*request\s*>",
                    re.I)

_SENTENCE_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("address", re.compile(
        rf"\b(?:note|message|instructions?|hint|reminder|memo|notice|attention|update)\s+"
        rf"(?:to|for)\s+(?:the\s+|any\s+|all\s+)?(?:ai\s+|llm\s+)?{_JUDGE}\b"
        rf"|\b{_JUDGE}\s+(?:instructions?|override|prompt)\b"
        rf"|^\W*(?:dear|hey|hi|hello|attention)\s*,?\s+(?:the\s+)?(?:ai\s+)?{_JUDGE}\b"
        rf"|^\W*(?:to\s+the\s+)?{_JUDGE}\s*[:,]"
        rf"|\bas\s+the\s+(?:ai\s+|llm\s+)?{_JUDGE}\s*,?\s+you\b"
        rf"|\byou\s+are\s+the\s+(?:ai\s+|llm\s+)?{_JUDGE}\b",
        re.I)),
    ("override", re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|the|your|these|those|of)"
        r"\s+)*(?:(?:previous|prior|above|earlier|preceding|original|judging|grading|scoring|"
        r"evaluation)\s+)?(?:rubrics?|(?:scoring|grading|judging|evaluation)\s+"
        r"(?:rules|criteria|instructions))\b"
        r"|\b(?:ignore|disregard|forget)\s+(?:all\s+|any\s+)?(?:(?:the|your)\s+)?"
        r"(?:previous|prior|above|earlier|preceding|system)\s+"
        r"(?:instructions|rules|prompts?|messages?|guidelines)\b"
        r"|\b(?:ignore|disregard|forget)\s+(?:all\s+)?your\s+(?:instructions|rules|guidelines)\b"
        r"|\bdisregard\s+(?:everything\s+|all\s+)?(?:the\s+)?above\b",
        re.I)),
    ("steer", re.compile(
        r"\b(?:choose|pick|select|prefer|favou?r|vote\s+for|rank|rate)\s+(?:this|my)\s+"
        r"(?:answer|response|candidate|reply|submission)\b"
        rf"|\b(?:choose|pick|select|prefer|vote\s+for|output|return|reply\s+with|respond\s+with|"
        rf"answer\s+with)\s+(?:the\s+)?(?:candidate|label|choice)\s+{_LABEL}"
        rf"|\bthe\s+(?:best|correct|right|winning|only\s+correct|better)\s+"
        rf"(?:candidate|choice|label)\s+(?:is|would\s+be)\s+(?:candidate\s+)?{_LABEL}"
        rf"|[\"']choice[\"']\s*:\s*[\"'](?-i:[A-Z])[\"']",
        re.I)),
    ("claim", re.compile(
        rf"\bcandidates?\s+{_LABEL}\s+(?:(?:is|was|has|contains|seems|looks)\b[^.;!?]*?\b"
        r"(?:correct|incorrect|wrong|right|verified|flawed|mistaken|errors?|mistakes?|invalid|"
        r"false|inaccurate|accurate|best|worse|buggy)\b)"
        r"|\b(?:this|my)\s+(?:answer|response|candidate|reply|submission)\s+"
        r"(?:is|was|has\s+been|had\s+been)\s+(?:\w+\s+){0,3}?"
        r"(?:verified|certified|confirmed|approved|validated|checked|guaranteed)\b",
        re.I)),
]
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
# Letters that look like Latin ones, in the words the patterns need (system, assistant,
# judge, ignore, choose, candidate …). Not a full confusables table: the misses are pinned
# as strict xfails in tests/test_defuse.py.
_LOOKALIKES = str.maketrans("аеорсухіјѕԁаАВЕНІЈКМОРСТХЅαεορτυνΑΒΕΗΙΚΜΝΟΡΤΥΧ",
                            "aeopcyxijsdaABEHIJKMOPCTXSaeoptuvABEHIKMNOPTYX")


def _normal(line: str) -> str:
    """What the patterns look at: NFKC, format characters (zero-width space and joiners,
    soft hyphen, BOM, bidi controls) removed, look-alike letters folded to Latin."""
    line = unicodedata.normalize("NFKC", line)
    if not line.isascii():
        line = "".join(c for c in line if unicodedata.category(c) != "Cf")
        line = line.translate(_LOOKALIKES)
    return line
_CODE_FENCE = re.compile(r"^\s*(?:```|~~~)")


@dataclass(frozen=True, slots=True)
class Defused:
    text: str  # the judge's view of the candidate
    kinds: tuple[str, ...]  # what was removed, sorted; empty when nothing was


@lru_cache(maxsize=64)  # fence() and defusals() look at the same answers
def defuse(text: str) -> Defused:
    """The judge's view of one candidate's text, and what was taken out of it."""
    kinds: set[str] = set()
    out: list[str] = []
    in_code = False
    in_turn = False  # inside a chat-template turn opened by a forged token

    def removed(kind: str) -> None:
        kinds.add(kind)
        # Consecutive removals (blank lines between them included) read as one marker.
        while out and not out[-1].strip():
            if len(out) >= 2 and out[-2] == MARKER:
                out.pop()
            else:
                break
        if not out or out[-1] != MARKER:
            out.append(MARKER)

    for raw in text.splitlines():
        line = raw if raw.isascii() else _normal(raw)
        if in_turn:
            if _TEMPLATE_CLOSE.search(line):
                in_turn = False
            removed("template")
            continue
        if _TEMPLATE.search(line):
            opened = [m.end() for m in _TEMPLATE_OPEN.finditer(line)]
            closed = [m.end() for m in _TEMPLATE_CLOSE.finditer(line)]
            in_turn = bool(opened) and (not closed or max(opened) > max(closed))
            removed("template")
            continue
        if _CODE_FENCE.match(line):
            in_code = not in_code
            out.append(raw)
            continue
        if not in_code and _ROLE_LINE.match(line):
            removed("role")
            continue
        fenced = bool(_FENCE.search(line))
        if fenced:
            kinds.add("fence")
            line = _FENCE.sub(MARKER, line)
            if line.strip() == MARKER:
                removed("fence")
                continue
        line, hits = _defuse_sentences(line)
        kinds.update(hits)
        if hits and line.strip() == MARKER:
            removed(hits[0])
            continue
        out.append(line if hits or fenced else raw)
    if not kinds:
        return Defused(text, ())
    return Defused("\n".join(out), tuple(sorted(kinds)))


def _defuse_sentences(line: str) -> tuple[str, list[str]]:
    """The line with every sentence that speaks to the judge replaced by the marker."""
    if not line.strip():
        return line, []
    hits: list[str] = []
    parts: list[str] = []
    for sentence in _SENTENCE_END.split(line):
        kind = next((k for k, p in _SENTENCE_PATTERNS if p.search(sentence)), None)
        if kind is None:
            parts.append(sentence)
            continue
        hits.append(kind)
        if not parts or parts[-1] != MARKER:
            parts.append(MARKER)
    if not hits:
        return line, []
    indent = line[: len(line) - len(line.lstrip())]
    return indent + " ".join(p.strip() for p in parts), hits
