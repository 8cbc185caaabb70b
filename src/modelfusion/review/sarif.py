"""SARIF 2.1.0 output, so code-scanning UIs (GitHub, GitLab, IDEs) show the findings."""

from __future__ import annotations

import hashlib
from typing import Any

from .findings import CATEGORIES, Finding

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
# SARIF has three result levels; our five severities map onto them.
LEVELS = {"critical": "error", "high": "error", "medium": "warning", "low": "note",
          "info": "note"}


def to_sarif(findings: list[Finding], *, version: str) -> dict[str, Any]:
    rules = [{"id": c, "name": c.title().replace("-", ""),
              "shortDescription": {"text": f"{c} finding from a fused model review"}}
             for c in CATEGORIES]
    index = {c: i for i, c in enumerate(CATEGORIES)}
    results = []
    for f in findings:
        location: dict[str, Any] = {"artifactLocation": {"uri": f.file}}
        if f.line:
            location["region"] = {"startLine": f.line}
        text = f.message + (f"\n\nSuggestion: {f.suggestion}" if f.suggestion else "")
        text += f"\n\nAgreed by {f.agreed_by} of {f.panel} reviewing models."
        results.append({
            "ruleId": f.category,
            "ruleIndex": index[f.category],
            "level": LEVELS[f.severity],
            "message": {"text": text},
            "locations": [{"physicalLocation": location}],
            # Stable across runs while the message stays: lets a UI track one finding.
            "partialFingerprints": {"modelfusion/v1": _fingerprint(f)},
            "properties": {"severity": f.severity, "agreedBy": f.agreed_by,
                           "panel": f.panel, "singleMember": f.single},
        })
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "modelfusion-review",
                "version": version,
                "informationUri": "https://github.com/modelfusion/modelfusion",
                "rules": rules,
            }},
            "results": results,
        }],
    }


def _fingerprint(f: Finding) -> str:
    return hashlib.sha256(f"{f.file}|{f.category}|{f.message}".encode()).hexdigest()[:32]
