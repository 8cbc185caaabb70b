"""`fusion eval`: measure fused configurations against their members on ground truth.

    suite.py    the protocol a dataset fills (tasks, messages, grade) and the registry
    dataset.py  HumanEval problems, the subset rule and the prompt members get
    grade.py    a candidate's program assembled with the hidden tests, run in the sandbox
    outputs.py  output-prediction questions from HumanEval (truth: the canonical solution)
    outputs_grade.py  reading an outputs answer as a Python value, exact comparison
    metrics.py  pass@k (unbiased estimator) and the per-config summary with ratios
    replay.py   the replay cache: identical member calls answered from disk
    store.py    the run folder: settings.json, records.jsonl, atomic summary writes
    configs.py  which configurations run (solo members, fused modes, self-fusion)
    runner.py   the problem-major loop, every config through `Fusion`
    report.py   results.json, results.md, chart.png
    (cli/eval.py: `fusion eval DATASET ...`)
"""

from .metrics import pass_at_k

__all__ = ["pass_at_k"]
